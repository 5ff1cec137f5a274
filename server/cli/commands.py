"""``spinup exec``: run one command in an agent's machine, its output and exit status passed through."""

from __future__ import annotations

import argparse
import sys

from spinup.runtime import Runtime, SpinupError

from .common import SubParsers, with_runtime


async def run_command(rt: Runtime, args: argparse.Namespace) -> int:
    command: list[str] = list(args.argv)
    stdin = sys.stdin.buffer.read() if args.stdin else None
    result = await rt.exec(
        args.agent,
        command[0] if args.shell and len(command) == 1 else command,
        cwd=args.cwd,
        stdin=stdin,
        timeout=args.timeout,
    )
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    for denial in result.network_denied:
        times = f" ({denial['count']} times)" if denial["count"] > 1 else ""
        sys.stderr.write(
            f"spinup: egress {denial['decision']} {denial['host']}:{denial['port']}{times}: {denial['reason']}\n"
        )
    if result.timed_out:
        return 124
    return result.exit_code if result.exit_code is not None else 1


def _exec(args: argparse.Namespace) -> int:
    if not args.argv:
        raise SpinupError("No command given. Usage: spinup exec AGENT -- CMD [ARGS...]")
    return with_runtime(run_command, args)


def register(sub: SubParsers) -> None:
    """Add ``spinup exec``."""
    exe = sub.add_parser("exec", help="run a command in an agent's machine: spinup exec AGENT -- CMD...")
    exe.add_argument("agent")
    exe.add_argument("--cwd")
    exe.add_argument("--timeout", type=float, default=600.0)
    exe.add_argument("--stdin", action="store_true", help="feed this process's stdin to the command")
    exe.add_argument("--shell", action="store_true", help="run a single argument as a /bin/sh -c string")
    exe.add_argument("argv", nargs="*", metavar="CMD", help="the command, after -- (for example: -- ls -la)")
    exe.set_defaults(func=_exec)
