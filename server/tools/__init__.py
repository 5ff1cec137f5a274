"""The MCP tools: thin, typed adapters from a call to a runtime method, one module per noun.

Every tool takes an ``agent`` argument unless the server is bound to one agent
(``spinup mcp --agent NAME``), in which case the argument is removed from the schema and the
bound agent is used (created on first use).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mcp.server.mcpserver import MCPServer

from spinup.runtime import MCP_GRANTS, Runtime

from . import agents, commands, control, files, packages, ports, processes, registry, secrets, snapshots
from .common import Registrar


def register_tools(
    server: MCPServer[Any],
    get_runtime: Callable[[], Runtime],
    bound_agent: str | None,
    grants: frozenset[str] = frozenset(MCP_GRANTS),
) -> None:
    """Register every tool on ``server``; ``grants`` is what agent_create may give (Settings.mcp_grants)."""
    registrar = Registrar(server, get_runtime, bound_agent, grants)
    for noun in (agents, commands, control, processes, files, snapshots, registry, secrets, packages, ports):
        noun.register(registrar)
