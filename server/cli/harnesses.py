"""``spinup harness``: a harness CLI (Claude Code, Codex, Gemini) installed inside an agent's machine."""

from __future__ import annotations

import argparse
import sys

from spinup.runtime import HARNESSES, Runtime

from .common import SubParsers, dispatch


async def install(rt: Runtime, args: argparse.Namespace) -> int:
    harness = HARNESSES.get(args.harness)

    async def progress(elapsed: float, output_bytes: int) -> None:
        print(f"spinup: npm has been installing {args.harness} for {elapsed:.0f}s", file=sys.stderr)

    result = await rt.install_harness(args.agent, args.harness, args.credential, progress)
    for package in result.added:
        print(f"added {package.name} {package.version}")
    assert harness is not None  # install_harness refused an unknown name
    login = (
        f"its login, {harness.login_env}, comes from {args.credential}"
        if args.credential
        else (f"give it a login with: spinup secret bind {args.agent} SECRET --env {harness.login_env}")
    )
    print(
        f"{harness.name} is in {args.agent}'s manifest; run it with: spinup shell {args.agent} -- {harness.command}\n"
        f"{login}; it reaches its API under a policy such as: spinup agent policy {args.agent} "
        + " ".join(f"--allow {rule}" for rule in harness.allow),
        file=sys.stderr,
    )
    return 0


async def listing(rt: Runtime, args: argparse.Namespace) -> int:
    print(f"{'HARNESS':<12} {'COMMAND':<8} {'LOGIN':<18} {'STATE':<26} PACKAGES")
    for harness in HARNESSES.values():
        print(
            f"{harness.name:<12} {harness.command:<8} {harness.login_env:<18} {' '.join(harness.state):<26} "
            f"{' '.join(harness.specs())}"
        )
    return 0


def register(sub: SubParsers) -> None:
    """Add ``spinup harness`` and its subcommands."""
    parser = sub.add_parser("harness", help="install a harness CLI (claude-code, codex, gemini) inside an agent")
    verbs = parser.add_subparsers(dest="harness_command", required=True)
    installed = verbs.add_parser(
        "install", help="install a harness CLI in the agent's machine with npm (recorded in its manifest)"
    )
    installed.add_argument("agent")
    installed.add_argument("harness", help=f"one of: {', '.join(HARNESSES)}")
    installed.add_argument("--credential", metavar="SECRET", help="bind this stored secret as the harness's login")
    verbs.add_parser("list", help="the harnesses Spinup can install, their command, login and state")
    dispatch(parser, "harness_command", {"install": install, "list": listing})
