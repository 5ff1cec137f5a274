"""An interactive terminal in an agent's machine: a command with a TTY through Docker's exec API.

What the terminal prints is redacted of credential values as it streams. A redactor holds back
the last bytes where a value may still begin; a terminal cannot wait for more output to decide
(a prompt would never show), so what is held back is let out, redacted, after ``SETTLE`` seconds
without output.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from .docker import DockerBackend, ExecSession, Execution
from .errors import SpinupError
from .redact import StreamRedactor

SETTLE = 0.03  # seconds of quiet after which held-back output is let out
END_LOOKS, END_LOOK_INTERVAL = 50, 0.02  # how often, how far apart, a command's exit is looked for
# The shell `spinup shell` starts when given no command: bash when the image has it, else sh; interactive,
# not a login shell (a login shell's /etc/profile would reset the PATH the agent's packages are on).
DEFAULT_SHELL = ["/bin/sh", "-c", "if command -v bash >/dev/null 2>&1; then exec bash -i; else exec sh -i; fi"]


@dataclass(frozen=True)
class TerminalEnd:
    """How a terminal's command ended: its exit code, or None with why when the machine went away."""

    exit_code: int | None
    machine_stopped: bool


class Terminal:
    """A started command with a terminal: keystrokes in, redacted screen output out, resizable."""

    def __init__(
        self,
        docker: DockerBackend,
        machine_id: str,
        execution: Execution,
        session: ExecSession,
        redactor: StreamRedactor,
    ) -> None:
        self._docker = docker
        self._machine_id = machine_id
        self._execution = execution
        self._session = session
        self._redactor = redactor
        self._next: asyncio.Task[bytes | None] | None = None
        self._ended = False

    async def read(self) -> bytes | None:
        """The next output (redacted), or None once the command's output has ended."""
        if self._ended:
            return None
        while True:
            if self._next is None:
                self._next = asyncio.ensure_future(self._raw())
            if self._redactor.holding:
                done, _ = await asyncio.wait({self._next}, timeout=SETTLE)
                if not done:
                    return self._redactor.flush()
            chunk = await self._next
            self._next = None
            if chunk is None:
                self._ended = True
                return self._redactor.flush() or None
            shown = self._redactor.feed(chunk)
            if shown:
                return shown

    async def _raw(self) -> bytes | None:
        message = await self._session.read()
        return None if message is None else message.data

    async def write(self, data: bytes) -> bool:
        """Send keystrokes (bytes, as a terminal would: Ctrl-C is 0x03, Ctrl-D 0x04); False once the command
        has ended (nothing sent)."""
        return await self._session.write(data)

    def close_input(self) -> None:
        """End the command's input (for a command whose caller has nothing more to type)."""
        self._session.close_stdin()

    async def resize(self, rows: int, cols: int) -> None:
        """Tell the command its terminal is now ``rows`` x ``cols``."""
        if rows < 1 or cols < 1:
            raise SpinupError(f"A terminal needs at least one row and one column, not {rows}x{cols}.")
        await self._execution.resize(rows, cols)

    async def end(self) -> TerminalEnd:
        """How the command ended (after :meth:`read` returned None)."""
        if self._next is not None:
            self._next.cancel()
        for _ in range(END_LOOKS):  # Docker records the exit a moment after the output ends
            state = await self._docker.exec_inspect(self._execution.id, self._machine_id)
            if not state.running:
                break
            await asyncio.sleep(END_LOOK_INTERVAL)
        killed = state.running or state.exit_code in (None, 137, 143)
        # A killed command may have gone with its machine a moment before Docker records the machine stopped.
        stopped = await self._machine_stopped(END_LOOKS if killed else 1)
        if stopped and killed:
            return TerminalEnd(None, True)
        return TerminalEnd(state.exit_code, stopped)

    async def _machine_stopped(self, looks: int) -> bool:
        """Whether the machine stopped, looked at up to ``looks`` times."""
        for look in range(looks):
            machine = await self._docker.inspect(self._machine_id)
            if machine is None or not machine.running:
                return True
            if look + 1 < looks:
                await asyncio.sleep(END_LOOK_INTERVAL)
        return False
