"""``spinup ps`` and ``spinup top``: every agent, its machine's state and what it uses, once or refreshing."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from spinup.runtime import AgentOverview, Runtime

from ..schemas import EventInfo, ResourceUseInfo
from .common import SubParsers, print_json, with_runtime

CLEAR = "\x1b[H\x1b[2J"  # cursor home, clear the screen


def size_text(size: int | None) -> str:
    """A size in few characters: ``512B``, ``1.5K``, ``80.9M``, ``3.0G``; ``-`` when unknown."""
    if size is None:
        return "-"
    for unit, factor in (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if size >= factor:
            return f"{size / factor:.1f}{unit}"
    return f"{size}B"


def duration_text(seconds: float | None) -> str:
    """A duration in its two largest units: ``45s``, ``12m05s``, ``3h04m``, ``2d03h``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    total = int(seconds)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def percent_text(value: float | None) -> str:
    """``99.5%``, or ``-`` when unknown."""
    return "-" if value is None else f"{value:.1f}%"


def memory_text(used: int | None, limit: int | None) -> str:
    """``12.3M/256.0M`` (used of the limit), or what is known of it."""
    if used is None:
        return "-"
    return size_text(used) if limit is None else f"{size_text(used)}/{size_text(limit)}"


def last_event_text(row: AgentOverview, now: datetime) -> str:
    """The newest event's kind and how long ago: ``exec 12s ago``."""
    event = row.last_event
    if event is None:
        return "-"
    return f"{event.kind} {duration_text((now - event.at).total_seconds())} ago"


def row_json(row: AgentOverview) -> dict[str, Any]:
    """One agent of ``spinup ps --json``."""
    return {
        "name": row.agent.name,
        "id": row.agent.id,
        "state": row.state,
        "agent_state": row.agent.state.value,
        "image": row.image,
        "paused_by": row.agent.paused_by,
        "usage": ResourceUseInfo.of(row.usage).model_dump(),
        "last_event": EventInfo.of(row.last_event).model_dump() if row.last_event is not None else None,
    }


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> list[str]:
    """Lines of a table whose columns fit their widest cell (``right``: indexes of right-aligned columns)."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        parts = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
        return "  ".join(parts).rstrip()

    return [line(headers), *(line(r) for r in rows)]


PS_HEADERS = ("NAME", "STATE", "IMAGE", "UPTIME", "CPU", "MEM", "DISK", "LAST-EVENT")


def ps_lines(rows: Sequence[AgentOverview], now: datetime) -> list[str]:
    """The ``spinup ps`` table."""
    cells = [
        (
            r.agent.name,
            r.state,
            r.image,
            duration_text(r.usage.uptime_s),
            percent_text(r.usage.cpu_percent),
            memory_text(r.usage.memory_bytes, r.usage.memory_limit),
            size_text(r.usage.disk_used),
            last_event_text(r, now),
        )
        for r in rows
    ]
    return table(PS_HEADERS, cells, right={3, 4, 5, 6})


TOP_HEADERS = ("NAME", "STATE", "CPU", "MEM", "MEM%", "PIDS", "DISK", "STORE", "UPTIME", "LAST-EVENT")


def top_lines(rows: Sequence[AgentOverview], now: datetime) -> list[str]:
    """One frame of ``spinup top``: totals, then agents busiest first."""
    ordered = sorted(rows, key=lambda r: (-(r.usage.cpu_percent or 0.0), r.agent.name))
    cells = []
    for r in ordered:
        use = r.usage
        share = None if use.memory_bytes is None or not use.memory_limit else 100 * use.memory_bytes / use.memory_limit
        pids = "-" if use.pids is None else f"{use.pids}/{use.pids_limit}" if use.pids_limit else str(use.pids)
        cells.append(
            (
                r.agent.name,
                r.state,
                percent_text(use.cpu_percent),
                size_text(use.memory_bytes),
                percent_text(share),
                pids,
                size_text(use.disk_used),
                size_text(use.store_bytes),
                duration_text(use.uptime_s),
                last_event_text(r, now),
            )
        )
    running = sum(1 for r in rows if r.state == "running")
    cpu = sum(r.usage.cpu_percent or 0.0 for r in rows)
    memory = sum(r.usage.memory_bytes or 0 for r in rows)
    header = (
        f"spinup top - {now.astimezone().strftime('%H:%M:%S')} - {len(rows)} agent{'' if len(rows) == 1 else 's'}, "
        f"{running} running - "
        f"cpu {cpu:.1f}% - mem {size_text(memory)}"
    )
    return [header, "", *table(TOP_HEADERS, cells, right={2, 3, 4, 5, 6, 7, 8})]


async def ps(rt: Runtime, args: argparse.Namespace) -> int:
    rows = await rt.overview()
    if args.json:
        print_json([row_json(r) for r in rows])
    else:
        print("\n".join(ps_lines(rows, datetime.now(UTC))))
    return 0


async def top(rt: Runtime, args: argparse.Namespace) -> int:
    redraw = not args.once and not args.json and sys.stdout.isatty()
    while True:
        started = time.monotonic()
        rows = await rt.overview()
        if args.json:
            print(json.dumps([row_json(r) for r in rows], default=str), flush=True)
        else:
            frame = "\n".join(top_lines(rows, datetime.now(UTC)))
            print((CLEAR if redraw else "") + frame + ("" if redraw or args.once else "\n"), flush=True)
        if args.once:
            return 0
        await asyncio.sleep(max(args.interval - (time.monotonic() - started), 0.0))


def interval(text: str) -> float:
    """A refresh interval in seconds (above 0)."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds above 0")
    return value


def _top(args: argparse.Namespace) -> int:
    try:
        return with_runtime(top, args)
    except KeyboardInterrupt:  # Ctrl-C is how a refreshing view is left
        return 0


def register(sub: SubParsers) -> None:
    """Add ``spinup ps`` and ``spinup top``."""
    listed = sub.add_parser("ps", help="every agent: machine state, image, uptime, CPU, memory, disk, last event")
    listed.add_argument("--json", action="store_true", help="a JSON list (fields: README, 'Command line')")
    listed.set_defaults(func=lambda args: with_runtime(ps, args))
    watched = sub.add_parser("top", help="what every agent uses, refreshed until Ctrl-C")
    watched.add_argument("--interval", type=interval, default=2.0, help="seconds between frames (default 2)")
    watched.add_argument("--once", action="store_true", help="print one frame and exit")
    watched.add_argument("--json", action="store_true", help="each frame as one line of JSON (a list of agents)")
    watched.set_defaults(func=_top)
