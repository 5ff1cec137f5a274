"""Control endpoints: inside each running ``self_control`` agent's machine, an MCP server bound to that agent.

A harness living in the machine reaches it at ``http://127.0.0.1:7390/mcp`` with the token in
``$SPINUP_CONTROL_TOKEN`` and may snapshot its own machine (a checkpoint before a risky step),
list, diff and restore its snapshots, and read its own status and events; nothing about any other
agent. The listener is placed in the machine's network namespace by the runtime; the Spinup
process that placed it (a server, or the CLI while `spinup shell` runs) serves it. A restore asked
for from inside is started after the answer is sent, since it replaces the machine the caller runs in.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field

from spinup.runtime import ControlListener, Runtime, SpinupError

from .app import RuntimeHolder, build_server
from .auth import BearerAuth, rebinding_protection
from .tools.common import DESTRUCTIVE, AgentArg, Registrar, SnapshotArg

log = logging.getLogger(__name__)

# What a harness inside may do to its own agent (besides snapshot_restore, which is deferred).
CONTROL_TOOLS = frozenset({"agent_status", "agent_events", "snapshot_create", "snapshot_list", "snapshot_diff"})
LOOK_INTERVAL = 2.0  # seconds between two looks for machines to serve (and endpoints to end)
RESTORE_DELAY = 0.5  # seconds a restore asked for from inside waits, so its answer gets out of the machine first
STOP_WAIT = 5.0


class RestoreScheduled(BaseModel):
    """A restore asked for from inside the machine: it starts once this answer is sent."""

    snapshot: str
    scheduled: bool = True
    message: str = Field(description="What happens next.")


def _pinned_holder(runtime: Runtime) -> RuntimeHolder:
    """A holder lending ``runtime`` to an endpoint's MCP server: its owner's reference keeps the server's
    lifespan from closing it."""
    holder = RuntimeHolder(runtime.settings)
    holder.runtime = runtime
    holder.users = 1
    return holder


async def control_app(runtime: Runtime, agent: str, restores: set[asyncio.Task[None]]) -> Any:
    """The ASGI app of one agent's control endpoint: the bound MCP server cut to :data:`CONTROL_TOOLS`, behind
    the agent's control token."""
    holder = _pinned_holder(runtime)
    server = build_server(agent=agent, transport="control", holder=holder)
    for tool in await server.list_tools():
        if tool.name not in CONTROL_TOOLS:
            server.remove_tool(tool.name)
    registrar = Registrar(server, holder.get, agent, frozenset())

    @registrar.tool("snapshot_restore", DESTRUCTIVE)
    async def snapshot_restore(agent: AgentArg, snapshot: SnapshotArg) -> RestoreScheduled:
        """Restore this machine to one of its snapshots (work not yet snapshotted is saved first). Called from
        inside the machine, it answers before the machine is replaced: this connection then ends, and the
        restored machine serves this endpoint again within seconds."""
        runtime.check_snapshot_of(agent, snapshot)

        async def restore() -> None:
            await asyncio.sleep(RESTORE_DELAY)
            try:
                await runtime.restore(agent, snapshot)
            except Exception:  # the caller has its answer already; the failure is in the log and the events
                log.exception("restore of agent %s to %s, asked for from inside, failed", agent, snapshot)

        task = asyncio.create_task(restore())
        restores.add(task)
        task.add_done_callback(restores.discard)
        return RestoreScheduled(
            snapshot=snapshot,
            message=f"The machine is replaced by snapshot {snapshot} in a moment: this command and this connection "
            f"end. Work not yet snapshotted is saved first (see snapshot_list).",
        )

    app = server.streamable_http_app(host="127.0.0.1", transport_security=rebinding_protection("127.0.0.1"))
    return BearerAuth(app, runtime.control_token(agent))


@contextlib.contextmanager
def _no_signal_handlers() -> Iterator[None]:
    yield


@dataclass
class _Served:
    listener: ControlListener
    server: Any  # uvicorn.Server
    task: asyncio.Task[None]


class ControlEndpoints:
    """Serves the control endpoint of every running ``self_control`` agent (or of ``only``) while it runs."""

    def __init__(self, runtime: Runtime, only: str | None = None) -> None:
        self._runtime = runtime
        self._only = only
        self._served: dict[str, _Served] = {}
        self._restores: set[asyncio.Task[None]] = set()

    async def keep_serving(self) -> None:
        """Look every :data:`LOOK_INTERVAL` seconds until cancelled; then end every endpoint."""
        try:
            while True:
                try:
                    await self.look()
                except Exception:  # the top of a background task: look again later
                    log.exception("serving control endpoints failed; looking again in %.0fs", LOOK_INTERVAL)
                await asyncio.sleep(LOOK_INTERVAL)
        finally:
            await asyncio.shield(self.close())

    async def look(self) -> None:
        """End the endpoints of machines gone or replaced; serve the machines that need one."""
        for name, served in list(self._served.items()):
            agent = self._runtime.find_agent(name)
            live = (
                agent is not None
                and agent.policy.self_control
                and agent.machine_id == served.listener.machine_id
                and served.listener.alive()
                and not served.task.done()
            )
            if not live:
                await self._stop(name)
        for agent in self._runtime.list_agents():
            if not agent.policy.self_control or agent.name in self._served:
                continue
            if self._only is not None and agent.name != self._only:
                continue
            try:
                listener = await self._runtime.control_listener(agent.name)
            except SpinupError as exc:
                log.info("no control endpoint for agent %s now: %s", agent.name, exc)
                continue
            if listener is not None:
                await self._start(agent.name, listener)

    async def _start(self, name: str, listener: ControlListener) -> None:
        import uvicorn

        app = await control_app(self._runtime, name, self._restores)
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        server.capture_signals = _no_signal_handlers  # type: ignore[method-assign]  # the host process's own
        task = asyncio.create_task(server.serve(sockets=[listener.sock]))
        self._served[name] = _Served(listener, server, task)
        log.info("serving the control endpoint of agent %s in machine %s", name, listener.machine_id[:12])

    async def _stop(self, name: str) -> None:
        served = self._served.pop(name)
        served.server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(served.task), STOP_WAIT)
        except (TimeoutError, Exception):
            served.task.cancel()
        served.listener.sock.close()

    async def close(self) -> None:
        """End every endpoint, and wait for restores asked for from inside to finish."""
        for name in list(self._served):
            await self._stop(name)
        if self._restores:
            await asyncio.gather(*self._restores, return_exceptions=True)
