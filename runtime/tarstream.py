"""Read a tar coming from Docker as a stream, without holding it in memory.

The archive API answers with an HTTP body; :class:`ThreadReader` lets blocking ``tarfile``
code in a worker thread pull that body chunk by chunk from the event loop.
"""

from __future__ import annotations

import asyncio
import io
import tarfile
from collections.abc import Callable
from typing import TypeVar

import aiohttp

T = TypeVar("T")


class ThreadReader(io.RawIOBase):
    """A blocking, read-only file over an aiohttp stream, for use from a worker thread."""

    def __init__(self, content: aiohttp.StreamReader, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._content = content
        self._loop = loop
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if not self._pending:
            future = asyncio.run_coroutine_threadsafe(self._content.readany(), self._loop)
            self._pending = future.result()
            if not self._pending:
                return 0
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size


async def with_tar_stream(content: aiohttp.StreamReader, work: Callable[[tarfile.TarFile], T]) -> T:
    """Run ``work`` on a streaming ``tarfile`` over ``content`` in a worker thread."""
    loop = asyncio.get_running_loop()

    def run() -> T:
        raw = io.BufferedReader(ThreadReader(content, loop), buffer_size=256 * 1024)
        with tarfile.open(fileobj=raw, mode="r|") as tar:
            return work(tar)

    try:
        return await asyncio.to_thread(run)
    finally:
        if not content.at_eof():
            _abandon(content)


def _abandon(content: aiohttp.StreamReader) -> None:
    """Close the connection under a body we stopped reading (a range, a cut listing, an error).

    Docker holds the container's lock until it has sent the whole archive: a body left open
    blocks every later call on that machine (stat, exec, even removal) until it is closed.
    aiohttp's reader offers no close of its own, so the transport under it is aborted.
    """
    protocol = getattr(content, "_protocol", None)
    transport = getattr(protocol, "transport", None)
    if transport is not None:
        transport.abort()
