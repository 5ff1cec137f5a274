"""What every ``spinup`` command shares: a runtime for one command, JSON output, progress lines, dispatch."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from spinup.runtime import Runtime, Settings

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


def with_runtime(handler: Handler, args: argparse.Namespace) -> int:
    """Run ``handler`` on a runtime opened for this one command (and closed after it)."""

    async def run() -> int:
        runtime = Runtime(Settings())
        try:
            return await handler(runtime, args)
        finally:
            await runtime.close()

    return asyncio.run(run())


def dispatch(parser: argparse.ArgumentParser, dest: str, handlers: dict[str, Handler]) -> None:
    """Make ``parser`` run the handler its subcommand (stored in ``args.<dest>``) names, on a runtime."""

    def run(args: argparse.Namespace) -> int:
        return with_runtime(handlers[getattr(args, dest)], args)

    parser.set_defaults(func=run)
