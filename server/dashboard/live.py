"""One live feed for every open dashboard tab: a shared usage sampler, the event log, process output tails.

However many tabs are open, the server asks the runtime once per ``SAMPLE_INTERVAL`` for every
agent's use (``Runtime.overview``: one inspect per machine, cgroup files for CPU and memory),
follows the event log once (woken at once for this process's events, polling the database for
other processes'), and reads each watched background process's new output once per
``TAIL_INTERVAL``. Each tab subscribes to the feed (all agents, or one) and gets what concerns
it as server-sent events. Nothing runs while no tab is open (after ``LINGER`` seconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from spinup.runtime import AgentOverview, Event, ProcessInfo, Runtime, SpinupError

from .views import event_json, usage_json

log = logging.getLogger(__name__)

SAMPLE_INTERVAL = 2.0  # seconds between two usage samples of every agent
HISTORY_SAMPLES = 150  # samples kept per agent for sparklines (5 minutes)
TAIL_INTERVAL = 1.0  # seconds between two reads of a watched process's output
LIST_INTERVAL = 10.0  # seconds a watched agent's process list is reused when no process event came
EVENT_POLL = 0.5  # seconds between looks at the database for other processes' events
LINGER = 30.0  # seconds the feed keeps running after the last tab closed
QUEUE_SIZE = 512  # messages a slow tab may fall behind before it is told to resync
READ_BYTES = 65536  # most output read per process and stream per tail pass
STREAMS: tuple[Literal["stdout"], Literal["stderr"]] = ("stdout", "stderr")


@dataclass(eq=False)
class Subscriber:
    """One open tab: the agent it watches (None: all) and its queue of (event name, JSON data)."""

    agent: str | None
    queue: asyncio.Queue[tuple[str, str]] = field(default_factory=lambda: asyncio.Queue(QUEUE_SIZE))

    def put(self, name: str, payload: str) -> None:
        """Queue a message; a tab too far behind is emptied and told to resync (reload what it shows)."""
        try:
            self.queue.put_nowait((name, payload))
        except asyncio.QueueFull:
            while not self.queue.empty():
                self.queue.get_nowait()
            self.queue.put_nowait(("resync", "{}"))


@dataclass
class _Tail:
    """Where the feed stands in one process's output."""

    offsets: dict[str, int]
    running: bool = True


class LiveHub:
    """The feed shared by every tab of one server."""

    def __init__(
        self,
        get_runtime: Callable[[], Runtime],
        visible: Callable[[str], bool],
        render_event: Callable[[Event], str],
    ) -> None:
        self._get_runtime = get_runtime
        self._visible = visible
        self._render_event = render_event
        self._subs: set[Subscriber] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._unlisten: Callable[[], None] | None = None
        self._idle_since = time.monotonic()
        self._last_event = 0
        self._tails: dict[str, dict[str, _Tail]] = {}
        self._listed: dict[str, float] = {}  # agent -> when its process list was last read
        self.history: dict[str, deque[tuple[float | None, int | None]]] = {}
        self.latest: dict[str, AgentOverview] = {}
        self.samples = 0  # overviews taken (one per interval however many tabs are open)

    # subscribing

    @asynccontextmanager
    async def subscribe(self, agent: str | None) -> AsyncIterator[Subscriber]:
        """A tab's subscription for as long as its stream is open."""
        sub = Subscriber(agent)
        self._subs.add(sub)
        self._start()
        if agent is not None and agent in self.latest:  # what the sampler knows already, at once
            sub.put("usage", json.dumps({"agents": {agent: self._usage(self.latest[agent])}}))
        try:
            yield sub
        finally:
            self._subs.discard(sub)
            if not self._subs:
                self._idle_since = time.monotonic()

    def _start(self) -> None:
        if self._tasks:
            return
        runtime = self._get_runtime()
        self._loop = asyncio.get_running_loop()
        self._last_event = runtime.last_event_id()
        self._unlisten = runtime.on_event(self._poke)
        self._tasks = [
            asyncio.create_task(self._run("sampling agents' use", self._sample)),
            asyncio.create_task(self._run("following events", self._follow)),
            asyncio.create_task(self._run("reading process output", self._tail)),
        ]

    def end_streams_soon(self) -> None:
        """Tell every open stream to end (from any thread, e.g. a signal handler): the server is stopping,
        and an open stream would hold its shutdown."""
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed already
                self._loop.call_soon_threadsafe(self._end_streams)

    def _end_streams(self) -> None:
        for sub in list(self._subs):
            sub.put("close", "{}")

    async def close(self) -> None:
        """Stop the feed (the server is shutting down); open streams end."""
        self._end_streams()
        await self._stop()

    async def _stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        current = asyncio.current_task()
        for task in tasks:
            if task is not current:
                task.cancel()
        for task in tasks:
            if task is not current:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._unlisten is not None:
            self._unlisten()
            self._unlisten = None

    def _poke(self, _: Event) -> None:
        """An event was recorded in this process (from any thread): look now."""
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: the server is going away
                self._loop.call_soon_threadsafe(self._wake.set)

    def _broadcast(self, agent: str | None, name: str, payload: str) -> None:
        for sub in list(self._subs):
            if sub.agent is None or sub.agent == agent:
                sub.put(name, payload)

    async def _run(self, what: str, step: Callable[[Runtime], Any]) -> None:
        """Repeat ``step`` until no tab has been open for ``LINGER`` seconds (then stop the whole feed)."""
        while True:
            if not self._subs and time.monotonic() - self._idle_since > LINGER:
                await self._stop()
                return
            try:
                await step(self._get_runtime())
            except asyncio.CancelledError:
                raise
            except Exception:  # the top of a background task: a dead feed would freeze every tab
                log.exception("dashboard: %s failed; trying again", what)
                await asyncio.sleep(SAMPLE_INTERVAL)

    # usage

    def _usage(self, row: AgentOverview) -> dict[str, Any]:
        return usage_json(row)

    async def _sample(self, runtime: Runtime) -> None:
        started = time.monotonic()
        rows = [row for row in await runtime.overview() if self._visible(row.agent.name)]
        self.samples += 1
        names = {row.agent.name for row in rows}
        for gone in set(self.latest) - names:
            self.latest.pop(gone, None)
            self.history.pop(gone, None)
        payloads: dict[str, dict[str, Any]] = {}
        for row in rows:
            name = row.agent.name
            self.latest[name] = row
            self.history.setdefault(name, deque(maxlen=HISTORY_SAMPLES)).append(
                (row.usage.cpu_percent, row.usage.memory_bytes)
            )
            payloads[name] = self._usage(row)
        everything = json.dumps({"agents": payloads, "names": sorted(names)})
        for sub in list(self._subs):
            if sub.agent is None:
                sub.put("usage", everything)
            elif sub.agent in payloads:
                sub.put("usage", json.dumps({"agents": {sub.agent: payloads[sub.agent]}}))
        await asyncio.sleep(max(0.2, SAMPLE_INTERVAL - (time.monotonic() - started)))

    # events

    async def _follow(self, runtime: Runtime) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(EVENT_POLL):
                await self._wake.wait()
        self._wake.clear()
        if runtime.last_event_id() <= self._last_event:
            return
        events = runtime.events(None, 500, after=self._last_event)
        for event in events:
            if event.agent is None or not self._visible(event.agent):
                continue
            if event.kind.startswith("process-"):
                self._listed.pop(event.agent, None)  # read its process list again at the next pass
            self._broadcast(event.agent, "event", json.dumps(event_json(event, self._render_event(event))))
        if events:
            self._last_event = events[-1].id

    # process output

    async def _tail(self, runtime: Runtime) -> None:
        await asyncio.sleep(TAIL_INTERVAL)
        watched = {sub.agent for sub in self._subs if sub.agent is not None}
        for gone in set(self._tails) - watched:
            self._tails.pop(gone, None)
            self._listed.pop(gone, None)
        for agent in sorted(watched):
            try:
                await self._tail_agent(runtime, agent)
            except SpinupError as exc:  # the agent went away, or its machine is paused: say nothing, look later
                log.debug("dashboard: no output of %s now: %s", agent, exc)

    async def _tail_agent(self, runtime: Runtime, agent: str) -> None:
        tails = self._tails.setdefault(agent, {})
        now = time.monotonic()
        if now - self._listed.get(agent, 0.0) >= LIST_INTERVAL:
            self._listed[agent] = now
            processes: list[ProcessInfo] = await runtime.process_list(agent)
            for info in processes:
                if info.state == "running" and info.id not in tails:
                    tails[info.id] = _Tail({"stdout": info.stdout_bytes, "stderr": info.stderr_bytes})
        for process_id, tail in list(tails.items()):
            for stream in STREAMS:
                out = await runtime.process_output(
                    agent, process_id, stream=stream, offset=tail.offsets[stream], max_bytes=READ_BYTES
                )
                tail.running = out.process.state == "running"
                if out.next_offset != tail.offsets[stream] or out.data:
                    payload = {
                        "id": process_id,
                        "stream": stream,
                        "offset": out.offset,
                        "next_offset": out.next_offset,
                        "data": out.data,
                        "state": out.process.state,
                    }
                    tail.offsets[stream] = out.next_offset
                    self._broadcast(agent, "output", json.dumps(payload))
            if not tail.running:
                del tails[process_id]
