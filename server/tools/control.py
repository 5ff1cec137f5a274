"""The MCP tools agent_events, exec_log, agent_pause, agent_resume, agent_kill, exec_kill."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import Field

from spinup.runtime import InvalidInput

from ..schemas import AgentInfo, EventInfo, EventPage, ExecLogResult, ExecRecordInfo
from .common import DESTRUCTIVE, IDEMPOTENT, READ_ONLY, AgentArg, Registrar

ExecIdArg = Annotated[str, Field(description="Exec id such as x-1a2b3c4d5e6f (returned by exec).")]


def _parse_time(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise InvalidInput(f"since must be an ISO 8601 time such as 2026-12-02T10:00:00Z, got {text!r}.") from exc
    return moment if moment.tzinfo is not None else moment.astimezone()


def register(reg: Registrar) -> None:
    """Register these tools through ``reg``."""
    get_runtime = reg.get_runtime
    tool = reg.tool

    @tool("agent_events", READ_ONLY)
    async def agent_events(
        agent: AgentArg,
        kind: Annotated[
            list[str] | None,
            Field(description="Only these kinds, e.g. ['exec'] or ['paused', 'resumed', 'killed']."),
        ] = None,
        since: Annotated[str | None, Field(description="Only events at or after this ISO 8601 time.")] = None,
        after: Annotated[int | None, Field(ge=0, description="Only events with a larger id (to poll).")] = None,
        before: Annotated[int | None, Field(ge=1, description="Only events with a smaller id (older pages).")] = None,
        limit: Annotated[int, Field(ge=1, le=500, description="Most events returned.")] = 50,
    ) -> EventPage:
        """Read an agent's history, oldest first: lifecycle steps, every command (exec id, exit code, duration),
        file writes, snapshots, package changes, credential use and tool calls, each with the client that caused
        it. Returns the newest `limit` (page back with `before`), or with `after` the ones newer than that id."""
        events = get_runtime().events(
            agent, limit, kinds=kind or (), since=_parse_time(since), after=after, before=before
        )
        older = events[0].id if events and after is None and len(events) == limit else None
        return EventPage(
            events=[EventInfo.of(e) for e in events],
            next_before=older,
            last_id=events[-1].id if events else after,
        )

    @tool("exec_log", READ_ONLY)
    async def exec_log(agent: AgentArg, exec_id: ExecIdArg) -> ExecLogResult:
        """Read a past command again by its exec id: what ran, how it ended, and its output as it was returned
        (capped, credentials redacted). Works after a server restart; old outputs are dropped by retention."""
        entry = get_runtime().exec_log(agent, exec_id)
        return ExecLogResult(
            record=ExecRecordInfo.of(entry.record),
            stdout=entry.stdout,
            stderr=entry.stderr,
            output_kept=entry.output_kept,
        )

    @tool("agent_pause", IDEMPOTENT)
    async def agent_pause(agent: AgentArg) -> AgentInfo:
        """Freeze every process of the agent's machine where it stands (nothing is lost). Until agent_resume,
        calls that need the machine fail at once saying who paused it; stop, kill and snapshot still work."""
        return AgentInfo.of(await get_runtime().pause(agent))

    @tool("agent_resume", IDEMPOTENT)
    async def agent_resume(agent: AgentArg) -> AgentInfo:
        """Thaw a paused agent: its processes continue where they stopped."""
        return AgentInfo.of(await get_runtime().resume(agent))

    @tool("agent_kill", DESTRUCTIVE)
    async def agent_kill(agent: AgentArg) -> AgentInfo:
        """Kill every process of the agent's machine now (SIGKILL, no snapshot). Files on disk are kept; running
        commands end with exit code 137; the next call starts the machine again. A snapshot in progress still
        completes."""
        return AgentInfo.of(await get_runtime().kill(agent))

    @tool("exec_kill", DESTRUCTIVE)
    async def exec_kill(agent: AgentArg, exec_id: ExecIdArg) -> ExecRecordInfo:
        """Kill one running command by its exec id (its whole process group); the machine keeps running. The
        command's own exec call returns with its output so far and says who killed it."""
        return ExecRecordInfo.of(await get_runtime().kill_exec(agent, exec_id))
