"""The MCP tools snapshot_create, snapshot_list, snapshot_restore, snapshot_fork, snapshot_diff, snapshot_delete."""

from __future__ import annotations

import time
from typing import Annotated, Literal

from mcp.server.mcpserver import Context
from pydantic import Field

from ..schemas import (
    AgentInfo,
    DiffResult,
    RestoreResult,
    SnapshotCreated,
    SnapshotInfo,
    SnapshotList,
)
from .common import (
    ADDITIVE,
    DESTRUCTIVE,
    READ_ONLY,
    AgentArg,
    Registrar,
    SnapshotArg,
    progress_reporter,
)


def register(reg: Registrar) -> None:
    """Register these tools through ``reg``."""
    get_runtime = reg.get_runtime
    tool = reg.tool

    @tool("snapshot_create", ADDITIVE)
    async def snapshot_create(
        ctx: Context,
        agent: AgentArg,
        label: Annotated[str, Field(max_length=200, description="A note to find it by, e.g. 'before upgrade'.")] = "",
    ) -> SnapshotCreated:
        """Save the agent's machine (files, installed packages) as a snapshot you can restore or fork later. Only
        what changed since the last snapshot is stored. Take one before risky work."""
        return SnapshotCreated.of(await get_runtime().snapshot(agent, label, progress_reporter(ctx)))

    @tool("snapshot_list", READ_ONLY)
    async def snapshot_list(agent: AgentArg) -> SnapshotList:
        """List an agent's snapshots, oldest first, and its current head."""
        runtime = get_runtime()
        return SnapshotList(
            snapshots=[SnapshotInfo.of(s) for s in runtime.list_snapshots(agent)],
            head=runtime.get_agent(agent).head_snapshot,
        )

    @tool("snapshot_restore", DESTRUCTIVE)
    async def snapshot_restore(ctx: Context, agent: AgentArg, snapshot: SnapshotArg) -> RestoreResult:
        """Replace the agent's machine with the state saved in a snapshot of its own (or the one it was forked
        from; another agent's is refused: use snapshot_fork). Work not yet snapshotted is saved first
        (saved_before_restore), so a restore can itself be undone."""
        started = time.monotonic()
        result = await get_runtime().restore(agent, snapshot, progress_reporter(ctx))
        return RestoreResult(
            agent=AgentInfo.of(result.agent),
            restored=snapshot,
            saved_before_restore=result.saved_before_restore,
            duration_s=round(time.monotonic() - started, 4),
        )

    @tool("snapshot_fork", ADDITIVE, takes_agent=False)
    async def snapshot_fork(
        snapshot: SnapshotArg,
        name: Annotated[str, Field(description="Name of the new agent (lowercase letters, digits, '-').")],
        network: Annotated[
            Literal["none", "host"] | None, Field(description="Network of the new agent; default its source's.")
        ] = None,
        user: Annotated[
            Literal["agent", "root"] | None, Field(description="User of the new agent; default its source's.")
        ] = None,
    ) -> AgentInfo:
        """Create a new, independent agent whose machine starts from a snapshot (e.g. to try two approaches),
        under the policy of the snapshot's agent (network and user changed when given); refused when that policy
        is beyond what this server grants MCP clients (and, on a server bound to one agent, for a snapshot that
        is not its agent's)."""
        reg.check_snapshot(snapshot)
        return AgentInfo.of(await get_runtime().fork(snapshot, name, grants=reg.grants, network=network, user=user))

    @tool("snapshot_diff", READ_ONLY)
    async def snapshot_diff(
        agent: AgentArg,
        source: Annotated[str | None, Field(description="Snapshot to compare from; default the agent's head.")] = None,
        target: Annotated[str | None, Field(description="Snapshot to compare to; default the live machine.")] = None,
    ) -> DiffResult:
        """List files added, changed and removed between two snapshots, or between a snapshot and the live
        machine (by default: what changed since the last snapshot)."""
        for snapshot in (source, target):
            if snapshot is not None:
                reg.check_snapshot(snapshot)
        return DiffResult.of(await get_runtime().diff(agent, source, target))

    @tool("snapshot_delete", DESTRUCTIVE, takes_agent=False)
    async def snapshot_delete(snapshot: SnapshotArg) -> SnapshotInfo:
        """Delete a snapshot. Refused for a snapshot that another builds on or that is an agent's head (and, on a
        server bound to one agent, for a snapshot of another agent)."""
        reg.check_snapshot(snapshot, own_only=True)
        return SnapshotInfo.of(await get_runtime().delete_snapshot(snapshot))
