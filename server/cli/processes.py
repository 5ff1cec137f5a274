"""``spinup process start|list|logs|kill|rm``: background processes in an agent's machine."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Literal

from spinup.runtime import ProcessInfo, Runtime, SpinupError

from .common import SubParsers, dispatch, print_json

FOLLOW_INTERVAL = 0.5


def _row(info: ProcessInfo) -> dict[str, object]:
    return {
        "id": info.id,
        "name": info.name,
        "state": info.state,
        "exit_code": info.exit_code,
        "signal": info.signal,
        "reason": info.reason,
        "command": info.command,
        "cwd": info.cwd,
        "started_at": info.started_at.isoformat(),
        "ended_at": info.ended_at.isoformat() if info.ended_at else None,
        "stdout_bytes": info.stdout_bytes,
        "stderr_bytes": info.stderr_bytes,
    }


async def start(rt: Runtime, args: argparse.Namespace) -> int:
    if not args.argv:
        raise SpinupError("No command given. Usage: spinup process start AGENT [--name N] -- CMD [ARGS...]")
    command: str | list[str] = args.argv[0] if args.shell and len(args.argv) == 1 else list(args.argv)
    info = await rt.process_start(args.agent, command, cwd=args.cwd, process_name=args.name)
    if args.json:
        print_json(_row(info))
    else:
        print(info.id)
    return 0


async def list_processes(rt: Runtime, args: argparse.Namespace) -> int:
    processes = await rt.process_list(args.agent)
    if args.json:
        print_json([_row(p) for p in processes])
        return 0
    print(f"{'ID':<15} {'NAME':<14} {'STATE':<8} {'EXIT':>5} {'OUT':>9} {'ERR':>9}  COMMAND")
    for p in processes:
        exit_text = "-" if p.exit_code is None else str(p.exit_code)
        print(
            f"{p.id:<15} {(p.name or '-'):<14} {p.state:<8} {exit_text:>5} {p.stdout_bytes:>9} {p.stderr_bytes:>9}  "
            f"{p.command[:60]}" + (f"  ({p.reason})" if p.reason else "")
        )
    return 0


async def logs(rt: Runtime, args: argparse.Namespace) -> int:
    stream: Literal["stdout", "stderr"] = "stderr" if args.stderr else "stdout"
    sink = sys.stderr if args.stderr else sys.stdout
    offset = args.offset
    while True:
        read = await rt.process_output(args.agent, args.process, stream=stream, offset=offset, max_bytes=1 << 20)
        if read.dropped_bytes:
            print(f"spinup: {read.dropped_bytes} earlier bytes were dropped (output cap)", file=sys.stderr)
        sink.write(read.data)
        sink.flush()
        if read.next_offset == offset:
            if read.eof or not args.follow:
                return 0
            await asyncio.sleep(FOLLOW_INTERVAL)
        offset = read.next_offset


async def kill(rt: Runtime, args: argparse.Namespace) -> int:
    info = await rt.process_signal(args.agent, args.process, args.signal)
    print(f"sent SIG{args.signal.upper().removeprefix('SIG')} to {info.id} (now {info.state})")
    return 0


async def remove(rt: Runtime, args: argparse.Namespace) -> int:
    info = await rt.process_remove(args.agent, args.process)
    print(f"forgot {info.id}")
    return 0


def register(sub: SubParsers) -> None:
    """Add ``spinup process``."""
    process = sub.add_parser("process", help="background processes: start, list, logs, kill, rm")
    verbs = process.add_subparsers(dest="verb", required=True)
    begin = verbs.add_parser("start", help="start a command in the background: spinup process start AGENT -- CMD")
    begin.add_argument("agent")
    begin.add_argument("--name", help="a name to find it by")
    begin.add_argument("--cwd")
    begin.add_argument("--shell", action="store_true", help="run a single argument as a /bin/sh -c string")
    begin.add_argument("--json", action="store_true")
    begin.add_argument("argv", nargs="*", metavar="CMD", help="the command, after --")
    listing = verbs.add_parser("list", help="an agent's background processes")
    listing.add_argument("agent")
    listing.add_argument("--json", action="store_true")
    output = verbs.add_parser("logs", help="a process's output (stdout; --stderr for stderr)")
    output.add_argument("agent")
    output.add_argument("process", help="process id or name")
    output.add_argument("--stderr", action="store_true")
    output.add_argument("--offset", type=int, default=0, help="byte offset to start from")
    output.add_argument("--follow", "-f", action="store_true", help="keep printing new output until it ends")
    signal = verbs.add_parser("kill", help="signal a process's whole group (default TERM)")
    signal.add_argument("agent")
    signal.add_argument("process", help="process id or name")
    signal.add_argument("--signal", "-s", default="TERM")
    forget = verbs.add_parser("rm", help="forget an ended process and its output")
    forget.add_argument("agent")
    forget.add_argument("process", help="process id or name")
    dispatch(process, "verb", {"start": start, "list": list_processes, "logs": logs, "kill": kill, "rm": remove})
