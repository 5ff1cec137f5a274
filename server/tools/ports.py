"""The MCP tools port_forward, port_list, port_close."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from ..schemas import PortForwardInfo, PortForwardList
from .common import DESTRUCTIVE, IDEMPOTENT, READ_ONLY, AgentArg, Registrar

PortArg = Annotated[int, Field(ge=1, le=65535, description="TCP port on the machine's own 127.0.0.1, e.g. 8000.")]


def register(reg: Registrar) -> None:
    """Register these tools through ``reg``."""
    get_runtime = reg.get_runtime
    tool = reg.tool

    @tool("port_forward", IDEMPOTENT)
    async def port_forward(
        agent: AgentArg,
        port: PortArg,
        host_port: Annotated[
            int | None,
            Field(ge=1, le=65535, description="Port to listen on on the host's 127.0.0.1; default: a free one."),
        ] = None,
    ) -> PortForwardInfo:
        """Make a server the agent runs (bound to 127.0.0.1:PORT in its machine) reachable at
        http://127.0.0.1:HOST_PORT on the host where Spinup runs; returns the url. The machine keeps network none.
        Start the server first (e.g. exec 'nohup python3 -m http.server 8000 --bind 127.0.0.1 &'); a port nothing
        listens on yet is reported by port_list and works once it listens. The forward lasts while this MCP server
        runs and ends when the machine stops, is killed or replaced. Forwarding the same port again returns the
        open forward. Needs Spinup to run as root beside a local Docker daemon."""
        return PortForwardInfo.of(await get_runtime().port_forward(agent, port, host_port))

    @tool("port_list", READ_ONLY)  # on a server bound to an agent: only that agent's
    async def port_list(
        agent: Annotated[str | None, Field(description="Only this agent's forwards (default: all).")] = None,
    ) -> PortForwardList:
        """List the port forwards this server made, open and recently closed: url, connections, bytes carried,
        the last error reaching the machine's port, and why a closed one ended."""
        return PortForwardList(forwards=[PortForwardInfo.of(f) for f in get_runtime().port_list(agent)])

    @tool("port_close", DESTRUCTIVE)
    async def port_close(agent: AgentArg, port: PortArg) -> PortForwardInfo:
        """Stop forwarding the agent's port: the host port is freed and open connections through it are cut.
        Closing a forward that already ended returns it with its reason."""
        return PortForwardInfo.of(await get_runtime().port_close(agent, port))
