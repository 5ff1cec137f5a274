"""A command started with Docker's exec API: its multiplexed output, its stdin, and the connection under them.

aiodocker offers the stream but not a half-close of stdin, nor a way to learn that the daemon has
ended the output while unread stdin is still queued; both need the connection under the stream,
which only this module touches.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import NamedTuple

import aiodocker
from aiodocker.stream import Stream

from ..errors import DockerFailure, DockerTimeout

STDIN_CHUNK = 64 * 1024


class Output(NamedTuple):
    """One chunk of a command's output: ``stream`` 1 is stdout, 2 is stderr."""

    stream: int
    data: bytes


class ExecSession:
    """The attached streams of a started command; with ``idle``, a read waits at most that many seconds."""

    def __init__(self, stream: Stream, idle: float | None = None) -> None:
        self._stream = stream
        self._idle = idle

    async def read(self) -> Output | None:
        """The next chunk of output, or None once the command's output has ended."""
        if self._idle is None:
            message = await self._stream.read_out()
        else:
            try:
                async with asyncio.timeout(self._idle):
                    message = await self._stream.read_out()
            except TimeoutError as exc:
                host = str(self._stream.docker.docker_host)
                raise DockerTimeout("read a command's output", self._idle, host) from exc
        return None if message is None else Output(message.stream, message.data)

    async def write(self, data: bytes) -> bool:
        """Write ``data`` to the command's stdin (a terminal's keystrokes), leaving it open; False (nothing
        written) once the command has ended and its connection is closed."""
        transport = self._transport()
        if transport is None or transport.is_closing():
            return False
        await self._stream.write_in(data)
        return True

    def close_stdin(self) -> None:
        """Half-close the command's stdin: it sees end of input."""
        transport = self._transport()
        if transport is not None and transport.can_write_eof() and not transport.is_closing():
            transport.write_eof()

    async def send_stdin(self, data: bytes) -> None:
        """Write ``data`` to the command's stdin, then half-close it so the command sees end of input."""
        view = memoryview(data)
        for start in range(0, len(view), STDIN_CHUNK):
            await self._stream.write_in(bytes(view[start : start + STDIN_CHUNK]))
        self.close_stdin()  # aiodocker only offers a full close

    async def drop_unread_stdin_at_eof(self) -> None:
        """Once Docker has ended the stream, drop the stdin the command never read.

        aiohttp reports the end of the output only after the transport has sent everything written
        to it, which never happens when the command exits without reading all its input: without
        this the read would wait until the daemon gives up on the connection (minutes).
        """
        response = self._stream._resp
        connection = response.connection if response else None
        if connection is None or connection.transport is None or connection.protocol is None:
            return
        transport, protocol = connection.transport, connection.protocol
        if not transport.is_closing():
            ended = asyncio.Event()
            eof_received = protocol.eof_received

            def on_eof() -> None:
                ended.set()
                eof_received()

            protocol.eof_received = on_eof  # type: ignore[method-assign]
            await ended.wait()
        transport.abort()

    def _transport(self) -> asyncio.Transport | None:
        response = self._stream._resp
        return response.connection.transport if response and response.connection else None


class Execution:
    """A command created in a machine (not started until :meth:`attach`)."""

    def __init__(self, execution: aiodocker.execs.Exec) -> None:
        self._exec = execution

    @property
    def id(self) -> str:
        """Docker's id of the exec instance."""
        return str(self._exec.id)

    async def resize(self, rows: int, cols: int) -> None:
        """Set the size of the command's terminal (an exec made with ``tty``)."""
        try:
            await self._exec.resize(h=rows, w=cols)
        except aiodocker.DockerError as exc:
            raise DockerFailure(f"Resize of a terminal failed: Docker said: {exc.message}", exc.status) from exc

    @asynccontextmanager
    async def attach(self, idle: float | None = None) -> AsyncIterator[ExecSession]:
        """Start the command attached to its streams (closed when the block ends). ``idle``: the longest a read
        may wait; None for a command bounded by its own timeout."""
        async with self._exec.start(detach=False) as stream:
            yield ExecSession(stream, idle)
