"""The dashboard's buttons: each one the same runtime call the MCP tool makes, acting as the dashboard.

Every call runs under the actor ``spinup-dashboard`` (with the browser session's short label),
so the events it causes (paused, resumed, killed, snapshot-created, ...) say the dashboard did it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from spinup.runtime import Actor, InvalidInput, Runtime, acting_as

from ..cli.common import spinup_version

ACTOR = "spinup-dashboard"
SIGNALS = ("TERM", "INT", "KILL")

Form = Mapping[str, str]
Action = Callable[[Runtime, str, Form], Awaitable[str]]


def dashboard_actor(session: str) -> Actor:
    """Who the dashboard acts as in events and pause records."""
    return Actor(ACTOR, spinup_version(), "http", session)


def _field(form: Form, name: str, limit: int = 200) -> str:
    value = (form.get(name) or "").strip()
    if len(value) > limit:
        raise InvalidInput(f"{name} is longer than {limit} characters.")
    return value


async def _pause(rt: Runtime, agent: str, _: Form) -> str:
    await rt.pause(agent)
    return f"Paused {agent}."


async def _resume(rt: Runtime, agent: str, _: Form) -> str:
    await rt.resume(agent)
    return f"Resumed {agent}."


async def _kill(rt: Runtime, agent: str, _: Form) -> str:
    await rt.kill(agent)
    return f"Killed every process of {agent}; its files are kept and the next call starts it."


async def _start(rt: Runtime, agent: str, _: Form) -> str:
    await rt.wake(agent)
    return f"Started {agent}."


async def _stop(rt: Runtime, agent: str, _: Form) -> str:
    await rt.stop_agent(agent)
    return f"Stopped {agent} (a snapshot was taken first if anything changed)."


async def _hibernate(rt: Runtime, agent: str, _: Form) -> str:
    await rt.stop_agent(agent, hibernate=True)
    return f"Hibernated {agent}: snapshotted, machine removed; the next call rebuilds it."


async def _snapshot(rt: Runtime, agent: str, form: Form) -> str:
    result = await rt.snapshot(agent, _field(form, "label"))
    if not result.created:
        return f"Nothing changed since {result.snapshot.id}: no new snapshot."
    return f"Snapshot {result.snapshot.id} saved."


async def _restore(rt: Runtime, agent: str, form: Form) -> str:
    snapshot = _field(form, "snapshot", 64)
    if not snapshot:
        raise InvalidInput("Choose the snapshot to restore.")
    result = await rt.restore(agent, snapshot)
    saved = result.saved_before_restore
    note = f" Unsnapshotted work was saved first as {saved}." if saved else ""
    return f"Restored {agent} to {snapshot}.{note}"


async def _signal(rt: Runtime, agent: str, form: Form) -> str:
    process = _field(form, "process", 64)
    signal = _field(form, "signal", 8).upper() or "TERM"
    if not process or signal not in SIGNALS:
        raise InvalidInput(f"Name the process and a signal among {', '.join(SIGNALS)}.")
    info = await rt.process_signal(agent, process, signal)
    return f"Sent SIG{signal} to {info.id}."


ACTIONS: dict[str, Action] = {
    "pause": _pause,
    "resume": _resume,
    "kill": _kill,
    "start": _start,
    "stop": _stop,
    "hibernate": _hibernate,
    "snapshot": _snapshot,
    "restore": _restore,
    "signal": _signal,
}


async def perform(rt: Runtime, action: str, agent: str, form: Form, session: str) -> str:
    """Run the button ``action`` on ``agent`` as the dashboard; returns what to tell the operator."""
    call = ACTIONS.get(action)
    if call is None:
        raise InvalidInput(f"Unknown action {action!r}: one of {', '.join(ACTIONS)}.")
    with acting_as(dashboard_actor(session)):
        return await call(rt, agent, form)
