"""Port forwarding: a listener on the host's 127.0.0.1 relaying each connection to a port inside a machine.

Machines run with network ``none`` (only ``lo``), so no address on the host reaches them. A forward
listens on ``127.0.0.1:HOST_PORT`` on the host; for each accepted connection it makes a socket
*inside the machine's network namespace* and connects it to ``127.0.0.1:PORT`` there, then relays
bytes both ways on the event loop (asyncio transports: reads of up to 256 KiB, writes sent at once
and buffered up to ``WRITE_HIGH_WATER`` before the other side's reading pauses; a BufferedProtocol
reading 1 MiB at a time measured no faster). A few sockets are made ahead in the namespace, so an
accepted connection does not wait for the thread.

A socket keeps the network namespace it was created in, so only ``socket()`` needs the namespace:
each forward owns one dedicated thread that enters the machine's namespace once (``setns``) and
then does nothing but make sockets; the connect and the relay run on the event loop, whose thread
never switches namespace. The thread exits when the forward closes.

A forward lives in the process that made it (``spinup forward`` while the command runs, an MCP
server while it serves). It ends, saying why, when its agent's machine stops, is killed, removed,
hibernated or replaced: events recorded in this process close it at once, and a watch of the
machine's namespace notices the ones made by another process. Forwarding needs a local Docker
daemon (the machine's ``/proc/PID/ns/net`` on this host) and root (``setns`` needs CAP_SYS_ADMIN).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import ctypes
import errno
import logging
import os
import socket
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from .docker import MachineInfo
from .errors import Conflict, ForwardUnavailable, InvalidInput, NotFound
from .models import Agent, Event
from .state import StateDB

log = logging.getLogger(__name__)

CLONE_NEWNET = 0x40000000
LOOPBACK = "127.0.0.1"
CONNECT_TIMEOUT = 5.0  # seconds to reach the port inside the machine
WATCH_INTERVAL = 0.5  # seconds between two looks at the machine's namespace
GONE_GRACE = 2.0  # seconds to wait for the event that says why a machine went away
WRITE_HIGH_WATER = 4 * 1024 * 1024  # bytes buffered towards one side before reading the other pauses
CLOSED_KEPT = 50  # closed forwards still listed (with their reason)
SPARE_SOCKETS = 4  # sockets made ahead in the machine's namespace
# Events of an agent that end its machine's forwards, and how a forward says why it ended.
CLOSING_EVENTS = {
    "machine-stopped": "the machine was stopped",
    "machine-hibernated": "the agent was hibernated (its machine removed)",
    "killed": "the agent was killed",
    "removed": "the agent was removed",
    "machine-restored": "the machine was replaced (restored from a snapshot)",
    "machine-rehydrated": "the machine was replaced (rebuilt from its head snapshot)",
    "machine-recreated": "the machine was replaced",
    "machine-created": "the machine was replaced",
    "machine-missing": "the machine is gone",
}
GONE = "the machine is gone (stopped, killed or replaced outside this process)"

State = Literal["open", "closed"]


@dataclass(frozen=True)
class PortForward:
    """One forward as it stands: where it listens, what it carried, and why it ended (when it did)."""

    agent: str
    port: int  # inside the machine, on its 127.0.0.1
    host_port: int  # on the host's 127.0.0.1
    url: str
    opened_at: datetime
    connections: int  # accepted since it opened
    active: int  # relaying now
    bytes: int  # carried, both directions
    state: State
    reason: str | None = None  # why it closed
    closed_at: datetime | None = None
    refused: int = 0  # connections the machine's port refused (or did not answer)
    last_error: str | None = None
    last_error_at: datetime | None = None


def _now() -> datetime:
    return datetime.now(UTC)


def _libc_setns(fd: int, nstype: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, nstype) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def enter_namespace(path: str, nstype: int) -> None:
    """Move the calling thread into the namespace at ``path`` (``os.setns``, or libc before 3.12)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns: Callable[[int, int], None] = getattr(os, "setns", _libc_setns)
        setns(fd, nstype)
    finally:
        os.close(fd)


def enter_netns(path: str) -> None:
    """Move the calling thread into the network namespace at ``path``."""
    enter_namespace(path, CLONE_NEWNET)


def netns_inode(pid: int) -> int | None:
    """The inode of process ``pid``'s network namespace, or None when the process is gone."""
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


class _NetnsWorker:
    """A thread of its own in one machine's network namespace, making sockets there and nothing else.

    A few sockets are made ahead (unconnected, harmless), so a new connection does not wait for the thread.
    """

    def __init__(self, pid: int, label: str) -> None:
        self._path = f"/proc/{pid}/ns/net"
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"netns-{label}")
        self._spares: list[socket.socket] = []
        self._refilling = False
        self._stopped = False

    async def start(self) -> None:
        """Enter the namespace (the first job of the only thread); raises when that is not permitted."""
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, enter_netns, self._path)
        except BaseException:
            self.stop()
            raise
        self._refill()

    async def new_socket(self) -> socket.socket:
        """A new non-blocking TCP socket in the namespace (a spare one when there is one)."""
        if self._spares:
            sock = self._spares.pop()
            self._refill()
            return sock
        return await self._make()

    async def _make(self) -> socket.socket:
        sock = await asyncio.get_running_loop().run_in_executor(self._executor, socket.socket)
        sock.setblocking(False)
        return sock

    def _refill(self) -> None:
        if self._refilling or self._stopped:
            return
        self._refilling = True
        task = asyncio.get_running_loop().create_task(self._fill())
        _background.add(task)
        task.add_done_callback(_background.discard)

    async def _fill(self) -> None:
        try:
            while not self._stopped and len(self._spares) < SPARE_SOCKETS:
                sock = await self._make()
                if self._stopped:
                    sock.close()
                else:
                    self._spares.append(sock)
        except (RuntimeError, OSError):  # stopped meanwhile, or out of descriptors: made on demand instead
            pass
        finally:
            self._refilling = False

    def stop(self) -> None:
        """Close the spare sockets and let the thread exit (after any socket it is making)."""
        self._stopped = True
        for sock in self._spares:
            sock.close()
        self._spares.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)


_background: set[asyncio.Task[None]] = set()


class _Side(asyncio.Protocol):
    """One end of a relayed connection: what it reads is written to its peer, with back-pressure both ways."""

    def __init__(self, forward: PortForwarder) -> None:
        self.forward = forward
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None
        self.got_eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)

    def data_received(self, data: bytes) -> None:
        self.forward.bytes += len(data)
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.write(data)

    def eof_received(self) -> bool:
        self.got_eof = True
        peer = self.peer
        if peer is None or peer.transport is None or peer.got_eof:
            self.close()
            return False
        if peer.transport.can_write_eof():
            peer.transport.write_eof()  # half-close: the other direction goes on
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None:
            self.peer.close()
        self.forward.ended(self)

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None and not self.peer.transport.is_closing():
            self.peer.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class _Client(_Side):
    """The host side of a connection: held unread until the machine's side is connected."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert self.transport is not None
        self.transport.pause_reading()
        self.forward.accepted(self)


class PortForwarder:
    """A listener on the host's 127.0.0.1 relaying to one port of one machine, until it is closed."""

    def __init__(self, db: StateDB, agent: Agent, machine: MachineInfo, port: int) -> None:
        self._db = db
        self.agent_id = agent.id
        self.agent_name = agent.name
        self.machine_id = machine.id
        self.port = port
        self._pid = machine.pid
        self._netns = netns_inode(machine.pid)
        self._worker = _NetnsWorker(machine.pid, agent.name)
        self._loop = asyncio.get_running_loop()
        self._server: asyncio.Server | None = None
        self._sides: set[_Side] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = asyncio.Event()
        self._gone_at: float | None = None
        self._first_event = 0
        self.host_port = 0
        self.opened_at = _now()
        self.connections = 0
        self.bytes = 0
        self.refused = 0
        self.last_error: str | None = None
        self.last_error_at: datetime | None = None
        self.state: State = "open"
        self.reason: str | None = None
        self.closed_at: datetime | None = None

    async def open(self, host_port: int | None) -> None:
        """Enter the machine's namespace, listen on 127.0.0.1:``host_port`` (any free one when None), record it."""
        if self._netns is None:
            raise ForwardUnavailable(f"The machine of agent '{self.agent_name}' has no process to forward into.")
        try:
            await self._worker.start()
        except PermissionError as exc:
            raise ForwardUnavailable(
                f"Cannot enter the network namespace of agent '{self.agent_name}' ({exc.strerror}): port forwarding "
                f"needs root (CAP_SYS_ADMIN) and a local Docker daemon. Run Spinup as root on the Docker host."
            ) from exc
        try:
            self._server = await self._loop.create_server(lambda: _Client(self), LOOPBACK, host_port or 0)
        except OSError as exc:
            self._worker.stop()
            if exc.errno == errno.EADDRINUSE:
                raise Conflict(
                    f"Host port {host_port} on 127.0.0.1 is already in use by another program. Pick another "
                    f"host_port, or leave it out to get a free one."
                ) from exc
            raise InvalidInput(f"Cannot listen on 127.0.0.1:{host_port}: {exc.strerror or exc}.") from exc
        self.host_port = self._server.sockets[0].getsockname()[1]
        self._first_event = self._db.last_event_id()
        self._db.record_event(
            self.agent_id,
            "port-forwarded",
            f"{self.url} -> port {self.port}",
            {"port": self.port, "host_port": self.host_port},
        )
        self._spawn(self._watch())

    @property
    def url(self) -> str:
        """Where the forward is reached on the host."""
        return f"http://{LOOPBACK}:{self.host_port}"

    def info(self) -> PortForward:
        """The forward as it stands now."""
        return PortForward(
            agent=self.agent_name,
            port=self.port,
            host_port=self.host_port,
            url=self.url,
            opened_at=self.opened_at,
            connections=self.connections,
            active=sum(1 for side in self._sides if isinstance(side, _Client)),
            bytes=self.bytes,
            state=self.state,
            reason=self.reason,
            closed_at=self.closed_at,
            refused=self.refused,
            last_error=self.last_error,
            last_error_at=self.last_error_at,
        )

    @property
    def is_open(self) -> bool:
        """Whether it still listens."""
        return self.state == "open"

    async def wait_closed(self) -> PortForward:
        """Wait until the forward closes; returns it with its reason."""
        await self._closed.wait()
        return self.info()

    def close(self, reason: str) -> None:
        """Stop listening, drop every relayed connection, let the namespace thread go, record why (on the loop)."""
        if not self.is_open:
            return
        self.state = "closed"
        self.reason = reason
        self.closed_at = _now()
        if self._server is not None:
            self._server.close()
        for side in list(self._sides):
            side.abort()
        for task in list(self._tasks):
            if task is not asyncio.current_task():
                task.cancel()
        self._worker.stop()
        self._closed.set()
        self._db.record_event(
            self.agent_id,
            "port-closed",
            f"{self.url} -> port {self.port}: {reason}",
            {
                "port": self.port,
                "host_port": self.host_port,
                "reason": reason,
                "connections": self.connections,
                "bytes": self.bytes,
            },
        )

    def close_soon(self, reason: str) -> None:
        """:meth:`close`, from any thread."""
        if self.is_open and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.close, reason)

    # connections

    def accepted(self, client: _Client) -> None:
        """A host connection arrived: reach the machine's port for it."""
        if not self.is_open:
            client.abort()
            return
        self.connections += 1
        self._sides.add(client)
        self._spawn(self._connect(client))

    def ended(self, side: _Side) -> None:
        """A side's connection is gone."""
        self._sides.discard(side)

    async def _connect(self, client: _Client) -> None:
        if not self.alive():
            client.close()
            self._machine_gone()
            return
        sock: socket.socket | None = None
        try:
            sock = await self._worker.new_socket()
            async with asyncio.timeout(CONNECT_TIMEOUT):
                await self._loop.sock_connect(sock, (LOOPBACK, self.port))
        except (OSError, TimeoutError, RuntimeError) as exc:  # RuntimeError: the worker was stopped
            if sock is not None:
                sock.close()
            client.close()
            if self.is_open:
                self._refused(exc)
            return
        # Linked before its transport exists: a server that speaks first (a banner) reaches the client.
        inner = _Side(self)
        inner.peer, client.peer = client, inner
        try:
            await self._loop.connect_accepted_socket(lambda: inner, sock)
        except OSError as exc:
            sock.close()
            client.close()
            self._refused(exc)
            return
        if client.transport is None or client.transport.is_closing() or not self.is_open:
            inner.abort()
            return
        self._sides.add(inner)
        client.transport.resume_reading()

    def _refused(self, exc: BaseException) -> None:
        """Note that the machine's port could not be reached; the first of a run of failures is an event."""
        if isinstance(exc, ConnectionRefusedError):
            error = f"nothing listens on 127.0.0.1:{self.port} inside the machine (connection refused)"
        elif isinstance(exc, TimeoutError):
            error = f"127.0.0.1:{self.port} inside the machine did not answer within {CONNECT_TIMEOUT:g}s"
        else:
            error = f"cannot reach 127.0.0.1:{self.port} inside the machine: {exc}"
        self.refused += 1
        first = self.last_error is None
        self.last_error, self.last_error_at = error, _now()
        if first:
            self._db.record_event(
                self.agent_id,
                "port-refused",
                f"port {self.port}: {error}",
                {"port": self.port, "host_port": self.host_port, "error": error},
            )

    # the machine going away

    def alive(self) -> bool:
        """Whether the machine's first process still runs in the namespace the forward entered."""
        return self._netns is not None and netns_inode(self._pid) == self._netns

    async def _watch(self) -> None:
        while self.is_open:
            await asyncio.sleep(WATCH_INTERVAL)
            if not self.alive():
                self._machine_gone()

    def _machine_gone(self) -> None:
        """Close once the event saying why has been recorded (by any process), or after a grace period."""
        now = time.monotonic()
        if self._gone_at is None:
            self._gone_at = now
        events = self._db.events(self.agent_id, limit=100, kinds=list(CLOSING_EVENTS), after=self._first_event)
        if events:
            self.close(closing_reason(events[-1]))
        elif now - self._gone_at >= GONE_GRACE:
            self.close(GONE)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def closing_reason(event: Event) -> str:
    """How a forward says an event ended it."""
    return CLOSING_EVENTS.get(event.kind, GONE)


class PortService:
    """The forwards this process made, closed by the events that end their machines."""

    def __init__(self, db: StateDB) -> None:
        self._db = db
        self._forwards: list[PortForwarder] = []
        self._opening = asyncio.Lock()  # one forward per agent and port, also when asked twice at once
        db.event_listeners.append(self._on_event)

    def _on_event(self, event: Event) -> None:
        if event.kind not in CLOSING_EVENTS:
            return
        for forward in self._forwards:
            if forward.is_open and forward.agent_id == event.agent_id:
                forward.close_soon(closing_reason(event))

    def find(self, agent_name: str, port: int) -> PortForwarder | None:
        """The newest forward of ``agent_name``'s ``port`` (open or closed), or None."""
        return next((f for f in reversed(self._forwards) if f.agent_name == agent_name and f.port == port), None)

    async def forward(
        self, agent: Agent, machine: MachineInfo | None, port: int, host_port: int | None, is_local: bool
    ) -> PortForward:
        """Forward 127.0.0.1:``host_port`` on the host to ``port`` in ``machine`` (or return the open forward)."""
        check_port(port, "port")
        if host_port is not None:
            check_port(host_port, "host_port")
        if machine is None or not machine.running or machine.pid <= 0:
            raise ForwardUnavailable(f"The machine of agent '{agent.name}' is not running; nothing to forward to.")
        async with self._opening:
            existing = self.find(agent.name, port)
            if existing is not None and existing.is_open and not existing.alive():
                existing.close(GONE)  # restarted since (the same container, a new namespace)
            if existing is not None and existing.is_open:
                if existing.machine_id == machine.id and host_port in (None, existing.host_port):
                    return existing.info()
                if existing.machine_id == machine.id:
                    raise Conflict(
                        f"Port {port} of agent '{agent.name}' is already forwarded to {existing.url}. Use that, or "
                        f"close it first with port_close (CLI: Ctrl-C the spinup forward command)."
                    )
                existing.close("the machine was replaced")
            if not is_local:
                raise ForwardUnavailable(
                    "Port forwarding needs a local Docker daemon (reached over a unix socket) and root: it enters the "
                    "machine's network namespace on this host. Run Spinup on the Docker host."
                )
            forwarder = PortForwarder(self._db, agent, machine, port)
            await forwarder.open(host_port)
            self._forwards.append(forwarder)
            self._trim()
            return forwarder.info()

    def list(self, agent_name: str | None = None) -> builtins.list[PortForward]:
        """The forwards of this process (of ``agent_name`` when given), open and recently closed, oldest first."""
        return [f.info() for f in self._forwards if agent_name is None or f.agent_name == agent_name]

    def close(self, agent_name: str, port: int, reason: str) -> PortForward:
        """Close the forward of ``agent_name``'s ``port``; an already closed one is returned as it is."""
        check_port(port, "port")
        forwarder = self.find(agent_name, port)
        if forwarder is None:
            raise NotFound(
                f"Port {port} of agent '{agent_name}' is not forwarded by this process (forwards live in the "
                f"process that made them). List them with port_list."
            )
        forwarder.close(reason)
        return forwarder.info()

    async def wait_closed(self, agent_name: str, port: int) -> PortForward:
        """Wait until the forward of ``agent_name``'s ``port`` closes."""
        forwarder = self.find(agent_name, port)
        if forwarder is None:
            raise NotFound(f"Port {port} of agent '{agent_name}' is not forwarded by this process.")
        return await forwarder.wait_closed()

    def close_all(self, reason: str) -> None:
        """Close every forward (the runtime is closing) and stop listening to events."""
        for forwarder in self._forwards:
            forwarder.close(reason)
        with contextlib.suppress(ValueError):
            self._db.event_listeners.remove(self._on_event)

    def _trim(self) -> None:
        closed = [f for f in self._forwards if not f.is_open]
        for old in closed[: max(0, len(closed) - CLOSED_KEPT)]:
            self._forwards.remove(old)


def check_port(port: int, what: str) -> None:
    """Refuse a port number outside 1-65535."""
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise InvalidInput(f"{what} must be a TCP port number from 1 to 65535, got {port!r}.")
