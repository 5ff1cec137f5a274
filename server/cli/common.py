"""What every ``spinup`` command shares: a runtime for one command, JSON output, progress lines, dispatch."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from spinup.runtime import Actor, Runtime, Settings, acting_as

Handler = Callable[[Runtime, argparse.Namespace], Awaitable[int]]
SubParsers = argparse._SubParsersAction


def print_json(value: Any) -> None:
    """Print ``value`` as indented JSON on stdout."""
    print(json.dumps(value, indent=2, default=str))


def progress_printer(interval: float = 0.5) -> Callable[[str, float | None], None]:
    """Progress lines on stderr, at most one per ``interval`` seconds (the first always)."""
    last: list[float] = []

    def report(message: str, _: float | None) -> None:
        now = time.monotonic()
        if last and now - last[0] < interval:
            return
        last[:] = [now]
        print(message, file=sys.stderr, flush=True)

    return report


def spinup_version() -> str:
    """The installed Spinup's version."""
    try:
        return version("spinup")
    except PackageNotFoundError:
        return "unknown"


def cli_actor() -> Actor:
    """Who the CLI acts as in events and pause records: ``spinup-cli`` with its version and pid."""
    return Actor("spinup-cli", spinup_version(), "cli", f"pid-{os.getpid()}")


def with_runtime(handler: Handler, args: argparse.Namespace) -> int:
    """Run ``handler`` on a runtime opened for this one command (and closed after it), as the CLI's actor."""

    async def run() -> int:
        runtime = Runtime(Settings())
        try:
            with acting_as(cli_actor()):
                return await handler(runtime, args)
        finally:
            await runtime.close()

    return asyncio.run(run())


def dispatch(parser: argparse.ArgumentParser, dest: str, handlers: dict[str, Handler]) -> None:
    """Make ``parser`` run the handler its subcommand (stored in ``args.<dest>``) names, on a runtime."""

    def run(args: argparse.Namespace) -> int:
        return with_runtime(handlers[getattr(args, dest)], args)

    parser.set_defaults(func=run)
