"""Build the MCP server around a :class:`~spinup.runtime.Runtime`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from importlib import resources
from typing import TYPE_CHECKING, Any

from mcp.server.mcpserver import MCPServer
from mcp.server.subscriptions import InMemorySubscriptionBus

from spinup.runtime import Runtime, Settings, validate_agent_name

from .observe import ToolCallRecorder
from .resources import ResourceNotifier, register_resources, serve_legacy_subscriptions
from .tools import register_tools

if TYPE_CHECKING:
    from .metrics import SpinupMetrics

log = logging.getLogger(__name__)
TRIM_INTERVAL = 0.5  # seconds between two passes over background processes' output


def guide_text() -> str:
    """The usage guide served as the server's instructions and as spinup://guide."""
    return resources.files("spinup.server").joinpath("guide.md").read_text(encoding="utf-8")


class RuntimeHolder:
    """The runtime of the running server, set for the lifetime of the server's lifespan; what else serves
    over HTTP beside MCP (the dashboard) reads it here and registers ``closing`` hooks run before it closes."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.runtime: Runtime | None = None
        self.background: list[asyncio.Task[None]] = []
        self.closing: list[Callable[[], Awaitable[None]]] = []
        self.users = 0

    def get(self) -> Runtime:
        if self.runtime is None:
            raise RuntimeError("the Spinup runtime is not started (the server's lifespan has not run)")
        return self.runtime


async def _trim_process_output(runtime: Runtime) -> None:
    """Background loop: keep background processes' output within its cap while this server runs."""
    while True:
        await asyncio.sleep(TRIM_INTERVAL)
        try:
            await runtime.trim_process_output()
        except Exception:  # the top of a background task: a dead loop would never trim again
            log.exception("trimming background processes' output failed; retrying at the next interval")


async def _hibernate_idle(runtime: Runtime, idle_seconds: float) -> None:
    """Background loop: hibernate agents left idle for ``idle_seconds``."""
    interval = max(0.5, min(60.0, idle_seconds / 2))
    while True:
        await asyncio.sleep(interval)
        try:
            await runtime.hibernate_idle(idle_seconds)
        except Exception:  # the top of a background task: a dead reaper would never hibernate again
            log.exception("idle hibernation failed; retrying at the next interval")


def build_server(
    settings: Settings | None = None,
    agent: str | None = None,
    transport: str = "in-memory",
    metrics: SpinupMetrics | None = None,
    holder: RuntimeHolder | None = None,
) -> MCPServer[Any]:
    """An MCP server exposing the runtime; bound to ``agent`` when given. ``transport`` (stdio,
    streamable-http, in-memory) is recorded with every tool call's client; ``metrics`` count the
    runtime's events; ``holder`` (made here when None) holds the runtime while the server runs."""
    settings = holder.settings if holder is not None else settings or Settings()
    if agent is not None:
        validate_agent_name(agent)
    holder = holder or RuntimeHolder(settings)
    bus = InMemorySubscriptionBus()
    notifier = ResourceNotifier(bus, agent)

    @asynccontextmanager
    async def lifespan(mcp_server: MCPServer[Any]) -> AsyncIterator[None]:
        # One runtime however often the lifespan is entered (once per session on some transports).
        if holder.runtime is None:
            holder.runtime = Runtime(settings)
            holder.background.append(asyncio.create_task(notifier.run(holder.runtime)))
            holder.background.append(asyncio.create_task(_trim_process_output(holder.runtime)))
            if settings.idle_timeout > 0:
                holder.background.append(asyncio.create_task(_hibernate_idle(holder.runtime, settings.idle_timeout)))
            if agent is None:  # a bound server serves an agent that mostly exists: it claims, never fills
                holder.background.append(asyncio.create_task(holder.runtime.keep_warm()))
            from .control import ControlEndpoints  # it builds servers itself

            endpoints = ControlEndpoints(holder.runtime, only=agent)
            holder.background.append(asyncio.create_task(endpoints.keep_serving()))
            if metrics is not None:
                metrics.attach(holder.runtime, [tool.name for tool in await mcp_server.list_tools()])
        holder.users += 1
        try:
            yield None
        finally:
            holder.users -= 1
            if holder.users == 0 and holder.runtime is not None:
                for hook in holder.closing:
                    try:
                        await hook()
                    except Exception:  # one failing hook must not keep the runtime open
                        log.exception("a shutdown hook failed; closing the runtime anyway")
                for task in holder.background:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                holder.background.clear()
                if agent is None and holder.runtime.warm_pool_on:
                    try:
                        await holder.runtime.reap_spares()
                    except Exception:  # shutting down: say so, and close the runtime anyway
                        log.exception("removing the warm pool's spare machines failed (spinup doctor --fix does)")
                if metrics is not None:
                    metrics.detach()
                await holder.runtime.close()
                holder.runtime = None

    instructions = guide_text()
    if agent is not None:
        instructions += f"\nThis server is bound to the agent '{agent}': tools take no agent argument.\n"
    server: MCPServer[Any] = MCPServer(
        name="spinup",
        title="Spinup",
        instructions=instructions,
        lifespan=lifespan,
        log_level="WARNING",
        subscriptions=bus,
    )
    server.middleware.append(ToolCallRecorder(holder.get, transport, agent))
    register_tools(server, holder.get, agent, settings.mcp_grants)
    register_resources(server, holder.get, agent)
    serve_legacy_subscriptions(server, notifier)

    @server.resource("spinup://guide", name="guide", mime_type="text/markdown")
    def guide() -> str:
        """How to use the Spinup runtime."""
        return instructions

    return server
