"""Per-agent locks that hold across every Spinup process sharing one state directory.

Two ``flock`` files per agent under ``<home>/locks``:

- ``<agent>.op`` serialises what changes the agent's machine or record (wake, stop, snapshot,
  restore, policy change, remove), so a machine frozen by a snapshot is only ever frozen by a
  process that still holds this lock: one found frozen by a caller that holds it was left so by
  a process that died, and is thawed at once.
- ``<agent>.use`` is held shared by every call that talks to the machine through Docker (an
  exec being set up, an archive read or write), and exclusive by whatever freezes, stops or
  replaces it. Docker 20.10 blocks an exec or archive call into a paused container while holding
  that container's lock, which then blocks even ``docker unpause``: no call may reach a frozen
  machine.

The order is always ``op`` then ``use``. Locks are re-entrant within one task and the tasks it
starts (a ``ContextVar`` records what the context holds), so an operation may call another that
takes the same lock. ``flock`` locks belong to an open file, so two tasks of one process exclude
each other as two processes do, and the kernel drops a dead process's locks. Waiting polls with
a non-blocking ``flock`` (no thread stays blocked), bounded by ``Settings.lock_wait``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import time
from collections.abc import AsyncIterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .errors import AgentBusy
from .models import Agent

Kind = Literal["op", "use"]
Mode = Literal["shared", "exclusive"]



@dataclass
class _Held:
    """One lock as a context holds it; ``active`` goes False at release, so a task started inside the
    block that outlives it does not take itself for a holder."""

    mode: Mode
    active: bool = True


# (locks directory, agent id, kind) -> the hold, for the locks the current context (and the tasks it
# started while holding them) holds.
_held: ContextVar[dict[tuple[str, str, Kind], _Held]] = ContextVar("spinup_agent_locks", default={})  # noqa: B039

POLL_FIRST = 0.002
POLL_MAX = 0.05


@dataclass
class Hold:
    """A lock taken by :meth:`Locks.share`; :meth:`release` may be called more than once."""

    _fd: int | None
    _key: tuple[str, Kind] | None = None

    def release(self) -> None:
        """Let go of the lock (nothing happens the second time)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None


class Locks:
    """The agents' cross-process locks in ``directory``, each waited for at most ``wait`` seconds."""

    def __init__(self, directory: Path, wait: float) -> None:
        self.directory = directory
        self.wait = wait

    def path(self, agent_id: str, kind: Kind) -> Path:
        return self.directory / f"{agent_id}.{kind}"

    def holds(self, agent: Agent, kind: Kind) -> Mode | None:
        """How the current context holds the lock (None: not at all)."""
        held = _held.get().get(self._key(agent, kind))
        return held.mode if held is not None and held.active else None

    def _key(self, agent: Agent, kind: Kind) -> tuple[str, str, Kind]:
        return (str(self.directory), agent.id, kind)

    @contextlib.asynccontextmanager
    async def operating(self, agent: Agent) -> AsyncIterator[None]:
        """Hold the agent's operation lock (exclusive)."""
        async with self._lock(agent, "op", "exclusive"):
            yield

    @contextlib.asynccontextmanager
    async def exclusive(self, agent: Agent) -> AsyncIterator[None]:
        """Hold the operation lock and the machine lock, both exclusive: nothing else reaches the machine."""
        async with self._lock(agent, "op", "exclusive"), self._lock(agent, "use", "exclusive"):
            yield

    async def share(self, agent: Agent) -> Hold:
        """Take the machine lock shared and return it held (released by :meth:`Hold.release`). Inside a
        context that already holds it, the hold is a no-op."""
        if self.holds(agent, "use") is not None:
            return Hold(None)
        return Hold(await self._acquire(agent, "use", "shared"))

    @contextlib.asynccontextmanager
    async def using(self, agent: Agent) -> AsyncIterator[None]:
        """Hold the machine lock shared for the block (re-entrant)."""
        async with self._lock(agent, "use", "shared"):
            yield

    def forget(self, agent_id: str) -> None:
        """Remove a removed agent's lock files (a process still waiting on one holds its own open file)."""
        for kind in ("op", "use"):
            self.path(agent_id, kind).unlink(missing_ok=True)

    @contextlib.asynccontextmanager
    async def _lock(self, agent: Agent, kind: Kind, mode: Mode) -> AsyncIterator[None]:
        have = self.holds(agent, kind)
        if have is not None:
            if have == "shared" and mode == "exclusive":
                raise RuntimeError(f"the {kind} lock of {agent.name} is held shared here and cannot be made exclusive")
            yield
            return
        fd = await self._acquire(agent, kind, mode)
        hold = _Held(mode)
        token = _held.set({**_held.get(), self._key(agent, kind): hold})
        try:
            yield
        finally:
            hold.active = False
            _held.reset(token)
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    async def _acquire(self, agent: Agent, kind: Kind, mode: Mode) -> int:
        """Open and lock the file, polling until it is free or the wait runs out (:class:`AgentBusy`)."""
        fd = await lock_file(self.path(agent.id, kind), self.wait, shared=mode == "shared")
        if fd is None:
            raise AgentBusy(agent.name, self.wait)
        return fd


async def lock_file(path: Path, wait: float, *, shared: bool = False) -> int | None:
    """Open ``path`` (made if missing) and ``flock`` it, polling (no thread blocks) for at most ``wait``
    seconds; the locked descriptor (the caller unlocks and closes it), or None when the wait ran out."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    flag = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB
    deadline = time.monotonic() + wait
    delay = POLL_FIRST
    try:
        while True:
            try:
                fcntl.flock(fd, flag)
                return fd
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    return None
                await asyncio.sleep(delay)
                delay = min(delay * 2, POLL_MAX)
    except BaseException:
        os.close(fd)
        raise
