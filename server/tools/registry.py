"""The MCP tools snapshot_push and agent_pull: snapshots through OCI registries, if the operator grants it."""

from __future__ import annotations

from typing import Annotated

from mcp.server.mcpserver import Context
from pydantic import Field

from spinup.runtime import OutsideBinding, check_registry_granted

from ..schemas import AgentInfo, SnapshotPushed
from .common import ADDITIVE, AgentArg, Registrar, progress_reporter

RefArg = Annotated[
    str, Field(max_length=300, description="host[:port]/path[:tag], e.g. registry.example.com/team/agent:v1.")
]
InsecureArg = Annotated[bool, Field(description="Plain HTTP: only for a registry on this machine's loopback.")]


def register(reg: Registrar) -> None:
    """Register these tools through ``reg``."""
    get_runtime = reg.get_runtime
    tool = reg.tool

    @tool("snapshot_push", ADDITIVE)
    async def snapshot_push(
        ctx: Context,
        agent: AgentArg,
        ref: RefArg,
        snapshot: Annotated[str | None, Field(description="A snapshot of the agent; default: its head.")] = None,
        insecure: InsecureArg = False,
    ) -> SnapshotPushed:
        """Push the agent's head (or one of its snapshots) to an OCI registry as a complete image; only blobs the
        registry lacks are sent. Allowed only when the operator granted 'registry' (SPINUP_MCP_GRANTS)."""
        check_registry_granted(reg.grants)
        reg.check_agent(agent)
        runtime = get_runtime()
        source = agent if snapshot is None else runtime.check_snapshot_of(agent, snapshot, own_only=True).id
        pushed = await runtime.push_snapshot(source, ref, insecure=insecure, progress=progress_reporter(ctx))
        return SnapshotPushed(snapshot=pushed.snapshot_id, ref=pushed.ref, digest=pushed.digest)

    @tool("agent_pull", ADDITIVE, takes_agent=False)
    async def agent_pull(
        ctx: Context,
        ref: RefArg,
        name: Annotated[str | None, Field(description="The new agent's name; default: the ref's last part.")] = None,
        insecure: InsecureArg = False,
    ) -> AgentInfo:
        """Make a new agent from a snapshot in an OCI registry (pushed with snapshot_push); it runs under the
        default policy. Everything is checked before it is stored. Allowed only when the operator granted
        'registry' (SPINUP_MCP_GRANTS), and not on a server bound to one agent."""
        check_registry_granted(reg.grants)
        if reg.bound_agent is not None:
            raise OutsideBinding(reg.bound_agent, "a new agent")
        runtime = get_runtime()
        return AgentInfo.of(await runtime.pull_agent(ref, name, insecure=insecure, progress=progress_reporter(ctx)))
