"""``spinup shell`` and ``spinup run``: a terminal in an agent's machine, its exit status passed through.

``shell`` puts this terminal in raw mode, so every key (Ctrl-C, Ctrl-D, arrows) reaches the
machine's terminal as typed, and follows this window's size. Without a terminal on this side
(a pipe, CI), ``shell`` says so and runs the command (or a shell reading the piped input)
without one. ``run`` gives the command a terminal but sends it no input.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import termios
import tty
from collections.abc import Iterator
from typing import Any

from spinup.runtime import Runtime, SpinupError, Terminal, TerminalEnd

from ..control import ControlEndpoints
from .commands import run_command
from .common import SubParsers, with_runtime

STOPPED_EXIT = 255  # the exit status when the machine stopped under the terminal (as ssh does on a lost link)
DEFAULT_SIZE = (24, 80)  # rows, columns when this side has no terminal to measure


def _size(fd: int) -> tuple[int, int]:
    try:
        size = os.get_terminal_size(fd)
    except OSError:
        return DEFAULT_SIZE
    return (size.lines or DEFAULT_SIZE[0], size.columns or DEFAULT_SIZE[1])


@contextlib.contextmanager
def _raw(fd: int) -> Iterator[None]:
    """This terminal in raw mode for the block (restored however the block ends)."""
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def _pump_output(terminal: Terminal, out: int) -> None:
    while (chunk := await terminal.read()) is not None:
        os.write(out, chunk)


async def _session(rt: Runtime, agent: str, command: list[str] | None, interactive: bool) -> TerminalEnd:
    """Run a terminal session; how its command ended."""
    rows, cols = _size(sys.stdin.fileno() if interactive else sys.stdout.fileno())
    term = os.environ.get("TERM") or "xterm-256color"
    # A harness in the shell reaches its agent's control endpoint (self_control) while the shell runs.
    endpoints = asyncio.create_task(ControlEndpoints(rt, only=agent).keep_serving())
    try:
        async with rt.terminal(agent, command, rows=rows, cols=cols, term=term) as terminal:
            return await _attached(terminal, interactive)
    finally:
        endpoints.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await endpoints


async def _attached(terminal: Terminal, interactive: bool) -> TerminalEnd:
    """Pass keys in and output out until the command ends; how it ended."""
    loop = asyncio.get_running_loop()
    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
    pending: set[asyncio.Task[Any]] = set()  # keystrokes and resizes being sent

    def typed() -> None:
        try:
            data = os.read(stdin, 4096)
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(stdin)
            terminal.close_input()
            return
        keys = loop.create_task(terminal.write(data))
        pending.add(keys)
        keys.add_done_callback(pending.discard)

    def resized() -> None:
        resize = loop.create_task(terminal.resize(*_size(stdin)))
        pending.add(resize)
        resize.add_done_callback(pending.discard)

    if interactive:
        loop.add_reader(stdin, typed)
        loop.add_signal_handler(signal.SIGWINCH, resized)
    else:
        # End of input as a terminal gives it (Ctrl-D): half-closing the stream would hang the terminal up.
        await terminal.write(b"\x04")
    try:
        await _pump_output(terminal, stdout)
    finally:
        if interactive:
            loop.remove_reader(stdin)
            loop.remove_signal_handler(signal.SIGWINCH)
        for task in pending:
            task.cancel()
    return await terminal.end()


def _exit_status(agent: str, end: TerminalEnd) -> int:
    """The exit status to pass on (this terminal back in its normal mode), saying why when the machine stopped."""
    if end.machine_stopped and end.exit_code is None:
        print(
            f"\nspinup: the machine of agent '{agent}' stopped, so the terminal ended. Its files are kept: "
            f"the next command starts it again (spinup shell {agent}).",
            file=sys.stderr,
        )
        return STOPPED_EXIT
    return end.exit_code if end.exit_code is not None else 1


async def shell(rt: Runtime, args: argparse.Namespace) -> int:
    command = list(args.argv) or None
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        print(
            "spinup shell: this side has no terminal (stdin or stdout is not a TTY): running without one"
            + ("" if command else ", the shell reading commands from stdin"),
            file=sys.stderr,
        )
        args.stdin, args.shell, args.cwd, args.timeout = True, False, None, None
        args.argv = command or ["sh", "-s"]
        return await run_command(rt, args)
    with _raw(sys.stdin.fileno()):
        end = await _session(rt, args.agent, command, interactive=True)
    return _exit_status(args.agent, end)


async def run(rt: Runtime, args: argparse.Namespace) -> int:
    if not args.argv:
        raise SpinupError("No command given. Usage: spinup run AGENT -- CMD [ARGS...]")
    return _exit_status(args.agent, await _session(rt, args.agent, list(args.argv), interactive=False))


def register(sub: SubParsers) -> None:
    """Add ``spinup shell`` and ``spinup run``."""
    opened = sub.add_parser(
        "shell", help="an interactive terminal in an agent's machine: spinup shell AGENT [-- CMD...]"
    )
    opened.add_argument("agent")
    opened.add_argument("argv", nargs="*", metavar="CMD", help="the command (default: a shell), after --")
    opened.set_defaults(func=lambda args: with_runtime(shell, args))
    ran = sub.add_parser("run", help="run a command with a terminal (no input): spinup run AGENT -- CMD...")
    ran.add_argument("agent")
    ran.add_argument("argv", nargs="*", metavar="CMD", help="the command, after --")
    ran.set_defaults(func=lambda args: with_runtime(run, args))
