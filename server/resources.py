"""MCP resources to observe agents, and notifications to clients subscribed to them.

``spinup://agents`` lists agents, ``spinup://agents/{name}`` is one agent's status and resource
use, ``spinup://agents/{name}/events`` its recent events. A client subscribes with
``subscriptions/listen`` (protocol 2026-07-28) or ``resources/subscribe`` (earlier versions) and
is told ``notifications/resources/updated`` when new events arrive for that agent, whichever
Spinup process (this server, another server, the CLI) recorded them: the watcher follows the
shared state database, and wakes at once for events recorded in this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from mcp.server.context import ServerRequestContext
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ResourceError
from mcp.server.subscriptions import InMemorySubscriptionBus, ResourceUpdated
from mcp.types import EmptyResult, SubscribeRequestParams, UnsubscribeRequestParams

from spinup.runtime import Event, Runtime, validate_agent_name

from .schemas import AgentInfo, AgentList, AgentStatusResult, EventInfo, EventPage

log = logging.getLogger(__name__)

AGENTS_URI = "spinup://agents"
POLL_INTERVAL = 0.5  # seconds between looks at the database for events of other processes
RESOURCE_EVENTS = 50  # events in spinup://agents/{name}/events
LIST_KINDS = frozenset({"created", "removed", "paused", "resumed", "killed"})  # change spinup://agents


def agent_uri(name: str) -> str:
    """The resource of one agent's status."""
    return f"{AGENTS_URI}/{name}"


def events_uri(name: str) -> str:
    """The resource of one agent's recent events."""
    return f"{AGENTS_URI}/{name}/events"


def uris_for(event: Event) -> set[str]:
    """Resources an event changes."""
    uris = {agent_uri(event.agent), events_uri(event.agent)} if event.agent else set()
    if event.kind in LIST_KINDS or event.kind.startswith("machine-"):
        uris.add(AGENTS_URI)
    return uris


class ResourceNotifier:
    """Follows the event log and tells subscribed clients which agent resources changed."""

    def __init__(self, bus: InMemorySubscriptionBus, bound_agent: str | None) -> None:
        self.bus = bus
        self.bound_agent = bound_agent
        # Per client connection: a session to notify through and the URIs it subscribed to.
        self._legacy: dict[int, tuple[Any, set[str]]] = {}
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    # resources/subscribe (protocol versions before 2026-07-28)

    async def subscribe(self, ctx: ServerRequestContext[Any, Any], params: SubscribeRequestParams) -> EmptyResult:
        """Handle ``resources/subscribe``: remember the client's connection for this URI."""
        uri = str(params.uri)
        self._check_visible(uri)
        # The session object is a per-request proxy; its connection lives as long as the client's.
        connection = getattr(ctx.session, "_connection", None)
        key = id(connection if connection is not None else ctx.session)
        entry = self._legacy.get(key)
        if entry is None:
            entry = self._legacy[key] = (ctx.session, set())
            teardown = getattr(connection, "exit_stack", None)
            if teardown is not None:  # forget the client when its connection closes
                teardown.callback(self._legacy.pop, key, None)
        entry[1].add(uri)
        return EmptyResult()

    async def unsubscribe(self, ctx: ServerRequestContext[Any, Any], params: UnsubscribeRequestParams) -> EmptyResult:
        """Handle ``resources/unsubscribe``."""
        connection = getattr(ctx.session, "_connection", None)
        entry = self._legacy.get(id(connection if connection is not None else ctx.session))
        if entry is not None:
            entry[1].discard(str(params.uri))
        return EmptyResult()

    def _check_visible(self, uri: str) -> None:
        if not uri.startswith(AGENTS_URI):
            raise ResourceError(f"Only spinup://agents resources can be subscribed to, not {uri}.")
        if self.bound_agent is not None and uri not in (
            AGENTS_URI,
            agent_uri(self.bound_agent),
            events_uri(self.bound_agent),
        ):
            raise ResourceError(f"This server is bound to agent '{self.bound_agent}': {uri} is not visible.")

    # following the event log

    def poke(self, _: Event) -> None:
        """An event was recorded in this process (from any thread): look now rather than at the next poll."""
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: the server is going away
                self._loop.call_soon_threadsafe(self._wake.set)

    async def run(self, runtime: Runtime) -> None:
        """Until cancelled: publish an update for every resource new events changed."""
        self._loop = asyncio.get_running_loop()
        stop_listening = runtime.on_event(self.poke)
        last = runtime.last_event_id()
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(POLL_INTERVAL):
                        await self._wake.wait()
                self._wake.clear()
                try:
                    last = await self._publish_since(runtime, last)
                except Exception:  # the top of a background task: keep notifying after a bad moment
                    log.exception("publishing resource updates failed; trying again")
        finally:
            stop_listening()

    async def _publish_since(self, runtime: Runtime, last: int) -> int:
        if runtime.last_event_id() <= last:
            return last
        events = runtime.events(None, 1000, after=last)
        uris: set[str] = set()
        for event in events:
            if self.bound_agent is None or event.agent == self.bound_agent:
                uris |= uris_for(event)
        for uri in sorted(uris):
            await self.bus.publish(ResourceUpdated(uri=uri))
            await self._notify_legacy(uri)
        return events[-1].id if events else last

    async def _notify_legacy(self, uri: str) -> None:
        for key, (session, uris) in list(self._legacy.items()):
            if uri not in uris:
                continue
            try:
                await session.send_resource_updated(uri)
            except Exception:  # the client went away: forget it
                log.debug("dropping a subscriber of %s that went away", uri, exc_info=True)
                self._legacy.pop(key, None)


def register_resources(server: MCPServer[Any], get_runtime: Callable[[], Runtime], bound_agent: str | None) -> None:
    """Register the agent resources on ``server`` (only its own agent on a bound server)."""

    def visible(name: str) -> str:
        validate_agent_name(name)
        if bound_agent is not None and name != bound_agent:
            raise ResourceError(f"This server is bound to agent '{bound_agent}': '{name}' is not visible.")
        return name

    @server.resource(AGENTS_URI, name="agents", mime_type="application/json")
    def agents() -> str:
        """Every agent with its state (on a bound server: only its agent)."""
        listed = [a for a in get_runtime().list_agents() if bound_agent is None or a.name == bound_agent]
        return AgentList(agents=[AgentInfo.of(a) for a in listed]).model_dump_json(indent=2)

    @server.resource(f"{AGENTS_URI}/{{name}}", name="agent", mime_type="application/json")
    async def agent(name: str) -> str:
        """One agent: its record, its machine now, resource use, recent events."""
        return AgentStatusResult.of(await get_runtime().status(visible(name))).model_dump_json(indent=2)

    @server.resource(f"{AGENTS_URI}/{{name}}/events", name="agent-events", mime_type="application/json")
    def agent_events(name: str) -> str:
        """One agent's most recent events, oldest first."""
        events = get_runtime().events(visible(name), RESOURCE_EVENTS)
        page = EventPage(
            events=[EventInfo.of(e) for e in events],
            next_before=events[0].id if len(events) == RESOURCE_EVENTS else None,
            last_id=events[-1].id if events else None,
        )
        return page.model_dump_json(indent=2)


def serve_legacy_subscriptions(server: MCPServer[Any], notifier: ResourceNotifier) -> None:
    """Answer ``resources/subscribe`` and ``resources/unsubscribe`` (clients before protocol 2026-07-28).

    MCPServer serves only ``subscriptions/listen``; the legacy methods are registered on the SDK's
    low-level server, which owns the request table.
    """
    lowlevel = server._lowlevel_server
    lowlevel.add_request_handler("resources/subscribe", SubscribeRequestParams, notifier.subscribe)
    lowlevel.add_request_handler("resources/unsubscribe", UnsubscribeRequestParams, notifier.unsubscribe)
