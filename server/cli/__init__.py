"""The ``spinup`` command line: one module per noun, each a thin adapter to :class:`~spinup.runtime.Runtime`."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from spinup.runtime import SpinupError, redact_stored

from ..harness import register_config_command
from . import (
    agents,
    commands,
    control,
    harnesses,
    monitor,
    packages,
    ports,
    processes,
    secrets,
    serving,
    shell,
    snapshots,
    system,
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every ``spinup`` subcommand."""
    parser = argparse.ArgumentParser(prog="spinup", description="A durable runtime for AI agents, over MCP.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details to stderr")
    sub = parser.add_subparsers(dest="command", required=True)
    nouns = (agents, monitor, secrets, packages, harnesses, commands, shell, processes, control, ports, snapshots)
    for noun in (*nouns, serving):
        noun.register(sub)
    system.register_image(sub)
    register_config_command(sub)
    system.register_doctor(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``spinup`` command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # Everything after the first "--" is the command (of exec, shell, run, process start), options and all.
    tail: list[str] = []
    if "--" in argv:
        split = argv.index("--")
        argv, tail = argv[:split], argv[split + 1 :]
    args = build_parser().parse_args(argv)
    if tail:
        if getattr(args, "argv", None) is None:
            build_parser().error("'--' only separates the command of: spinup exec|shell|run|process start AGENT -- CMD")
        args.argv = [*args.argv, *tail]
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        code = int(args.func(args))
    except SpinupError as exc:
        print(f"spinup: error: {redact_stored(str(exc))}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        code = 130
    return code
