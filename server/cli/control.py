"""``spinup events``, ``logs``, ``pause``, ``resume`` and ``kill``: watch agents and stop what they run.

Exit codes (README, "Command line"): 0 done; 2 the runtime refused with a message (or a bad
argument); 3 ``events --follow`` lost the state database; 130 interrupted (Ctrl-C) where that is
not the normal way out (for ``events --follow`` it is: exit 0).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sqlite3
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from spinup.runtime import Agent, Event, ExecLog, ExecRecord, Runtime

from ..schemas import AgentInfo
from .common import Handler, SubParsers, print_json, with_runtime

P = ParamSpec("P")
T = TypeVar("T")
EXIT_DATABASE_LOST = 3
FOLLOW_INTERVAL = 0.5  # seconds between two looks at the state database
FOLLOW_BATCH = 500  # events read per look (more are read at once when there are more)
DURATION = re.compile(r"(\d+)\s*([smhd])")
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
RECORD_FIELDS = (
    "id",
    "agent",
    "command",
    "cwd",
    "started_at",
    "state",
    "exit_code",
    "duration_s",
    "stdout_bytes",
    "stderr_bytes",
    "truncated",
    "timed_out",
    "limit",
    "actor",
    "killed_by",
)


class DatabaseLost(Exception):
    """The state database went away (or became unreadable) while ``events --follow`` read it."""


def parse_since(text: str) -> datetime:
    """``--since``: ISO 8601 (UTC unless it names a zone) or a duration back from now: 30s, 10m, 2h, 1d."""
    match = DURATION.fullmatch(text.strip())
    if match:
        return datetime.now(UTC) - timedelta(seconds=int(match[1]) * UNIT_SECONDS[match[2]])
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither an ISO 8601 time (such as 2026-12-02T10:00:00Z) nor a duration back from "
            f"now (such as 30s, 10m, 2h, 1d)"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _one_line(text: str) -> str:
    return " ".join(text.split())


# events


def event_json(event: Event) -> dict[str, Any]:
    """An event as JSON: id, agent_id, agent, at, kind, detail, data, actor, client."""
    return {**event.model_dump(mode="json"), "client": event.client}


EVENT_HEADER = f"{'TIME (UTC)':<19}  {'AGENT':<20} {'KIND':<18} {'CLIENT':<12} DETAIL"


def event_line(event: Event) -> str:
    """One row of the events table."""
    return (
        f"{_time(event.at):<19}  {event.agent or '-':<20} {event.kind:<18} {event.client or '-':<12} "
        f"{_one_line(event.detail)}"
    )


def _emit(event: Event, as_json: bool) -> None:
    print(json.dumps(event_json(event), default=str) if as_json else event_line(event), flush=True)


async def events(rt: Runtime, args: argparse.Namespace) -> int:
    if args.follow:
        return await follow(rt, args)
    found = rt.events(args.agent, args.limit, kinds=args.kind, since=args.since)
    if args.json:
        print_json([event_json(e) for e in found])
        return 0
    print(EVENT_HEADER)
    for event in found:
        print(event_line(event))
    return 0


class DatabaseWatch:
    """Notices the state database being removed, replaced or made unreadable under a long-running reader
    (an open SQLite connection would go on reading the deleted file and never say)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.identity = self._identity()

    def _identity(self) -> tuple[int, int]:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            raise DatabaseLost(f"the state database {self.path} is gone (was {self.path.parent} removed?)") from None
        except OSError as exc:
            raise DatabaseLost(f"the state database {self.path} cannot be read: {exc.strerror}") from None
        if not os.access(self.path, os.R_OK):
            raise DatabaseLost(f"the state database {self.path} is no longer readable (permission denied)")
        return stat.st_dev, stat.st_ino

    def check(self) -> None:
        """Raise :class:`DatabaseLost` unless the database is still the readable file it was."""
        if self._identity() != self.identity:
            raise DatabaseLost(f"the state database {self.path} was replaced by another file")


async def follow(rt: Runtime, args: argparse.Namespace) -> int:
    """Print the newest ``--limit`` matching events, then every new one (from any Spinup process) until
    Ctrl-C; exit 3 with a message on stderr if the state database goes away."""
    try:
        watch = _read(DatabaseWatch, rt.settings.db_path)
        cursor = _read(rt.last_event_id)
        # The history first (also when --limit 0: an unknown agent is an error, as without --follow).
        history = _read(rt.events, args.agent, max(args.limit, 1), kinds=args.kind, since=args.since, before=cursor + 1)
        if not args.json:
            print(EVENT_HEADER, flush=True)
        for event in history if args.limit > 0 else []:
            _emit(event, args.json)
        while True:
            await asyncio.sleep(FOLLOW_INTERVAL)
            _read(watch.check)
            top = _read(rt.last_event_id)
            if top < cursor:
                raise DatabaseLost(f"the event log of {watch.path} went back from id {cursor} to {top} (reset?)")
            while top > cursor:
                batch = _read(
                    rt.events, args.agent, FOLLOW_BATCH, kinds=args.kind, since=args.since, after=cursor, before=top + 1
                )
                for event in batch:
                    _emit(event, args.json)
                cursor = batch[-1].id if len(batch) == FOLLOW_BATCH else top
    except DatabaseLost as exc:
        return _lost(rt, str(exc))


def _read(read: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``read(...)``, a failure of the database under it raised as :class:`DatabaseLost`."""
    try:
        return read(*args, **kwargs)
    except (sqlite3.Error, OSError) as exc:
        raise DatabaseLost(f"reading the state database failed ({type(exc).__name__}: {exc})") from exc


def _lost(rt: Runtime, reason: str) -> int:
    print(
        f"spinup: error: stopped following events: {reason}. Check the state directory "
        f"({rt.settings.home}, SPINUP_HOME) and run the command again.",
        file=sys.stderr,
        flush=True,
    )
    return EXIT_DATABASE_LOST


def _events(args: argparse.Namespace) -> int:
    try:
        return with_runtime(events, args)
    except KeyboardInterrupt:
        if args.follow:
            return 0  # Ctrl-C is how a follow ends
        raise
    except BrokenPipeError:
        # The reader went away (spinup events --follow | head -1): stop quietly.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


# logs


def record_json(record: ExecRecord) -> dict[str, Any]:
    """An exec record as JSON (what a caller needs; not the fields kept for a kill)."""
    value = {name: getattr(record, name) for name in RECORD_FIELDS}
    value["started_at"] = record.started_at.isoformat()
    return value


def log_json(entry: ExecLog) -> dict[str, Any]:
    """A command's record and the output it returned, as JSON."""
    return {
        "record": record_json(entry.record),
        "stdout": entry.stdout,
        "stderr": entry.stderr,
        "output_kept": entry.output_kept,
    }


def _duration(record: ExecRecord) -> str:
    return f"{record.duration_s:.2f}s" if record.duration_s is not None else "-"


async def logs(rt: Runtime, args: argparse.Namespace) -> int:
    if args.exec_id is None:
        records = rt.recent_execs(args.agent, args.limit)[::-1]
        if args.json:
            print_json([record_json(r) for r in records])
            return 0
        print(f"{'ID':<14}  {'STARTED (UTC)':<19}  {'STATE':<9} {'EXIT':>4} {'DURATION':>9}  COMMAND")
        for r in records:
            code = str(r.exit_code) if r.exit_code is not None else "-"
            command = _one_line(r.command)
            command = command if len(command) <= 80 else command[:77] + "..."
            print(f"{r.id:<14}  {_time(r.started_at):<19}  {r.state:<9} {code:>4} {_duration(r):>9}  {command}")
        return 0
    entry = rt.exec_log(args.agent, args.exec_id)
    if args.json:
        print_json(log_json(entry))
        return 0
    sys.stdout.write(entry.stdout)
    sys.stdout.flush()
    sys.stderr.write(entry.stderr)
    if not entry.output_kept:
        record = entry.record
        why = (
            f"is still running (since {_time(record.started_at)} UTC); its output is kept when it ends"
            if record.state == "running"
            else f"ended {record.state}; its output is no longer kept (older outputs are trimmed)"
        )
        print(f"spinup: command {record.id} {why}", file=sys.stderr)
    return 0


# pause, resume, kill


def agent_json(agent: Agent) -> dict[str, Any]:
    """The agent record as JSON, with who paused it and when."""
    return {
        **AgentInfo.of(agent).model_dump(),
        "paused_at": agent.paused_at.isoformat() if agent.paused_at is not None else None,
        "paused_by": agent.paused_by,
    }


async def pause(rt: Runtime, args: argparse.Namespace) -> int:
    agent = await rt.pause(args.agent)
    if args.json:
        print_json(agent_json(agent))
    else:
        print(f"paused {agent.name}: its processes are frozen until: spinup resume {agent.name}")
    return 0


async def resume(rt: Runtime, args: argparse.Namespace) -> int:
    agent = await rt.resume(args.agent)
    if args.json:
        print_json(agent_json(agent))
    else:
        print(f"resumed {agent.name}: its processes go on where they stopped")
    return 0


async def kill(rt: Runtime, args: argparse.Namespace) -> int:
    if args.exec_id is not None:
        record = await rt.kill_exec(args.agent, args.exec_id)
        if args.json:
            print_json(record_json(record))
        else:
            print(f"killed command {record.id} of {args.agent}: {_one_line(record.command)[:80]}")
        return 0
    agent = await rt.kill(args.agent)
    if args.json:
        print_json(agent_json(agent))
    else:
        print(f"killed every process of {agent.name}; its files are kept and the next call starts it again")
    return 0


def _on_runtime(handler: Handler) -> Callable[[argparse.Namespace], int]:
    return lambda args: with_runtime(handler, args)


def register(sub: SubParsers) -> None:
    """Add ``spinup events``, ``logs``, ``pause``, ``resume`` and ``kill``."""
    evented = sub.add_parser("events", help="what happened to agents, and who did it (--follow to watch)")
    evented.add_argument("agent", nargs="?", metavar="AGENT", help="only this agent's events (also a removed one's)")
    evented.add_argument("--kind", action="append", default=[], metavar="K", help="only this kind (repeatable)")
    evented.add_argument(
        "--since", type=parse_since, metavar="T", help="ISO 8601 time (UTC unless zoned) or 30s, 10m, 2h, 1d ago"
    )
    evented.add_argument(
        "--limit", type=int, default=20, metavar="N", help="the newest N (default 20; 0 with --follow: only new)"
    )
    evented.add_argument(
        "--follow", "-f", action="store_true", help="then print new events as they happen, until Ctrl-C"
    )
    evented.add_argument("--json", action="store_true", help="a JSON list; with --follow one object per line")
    evented.set_defaults(func=_events)

    logged = sub.add_parser("logs", help="an agent's recent commands, or one command's output by exec id")
    logged.add_argument("agent", metavar="AGENT")
    logged.add_argument("exec_id", nargs="?", metavar="EXEC_ID", help="print this command's stdout and stderr")
    logged.add_argument("--limit", type=int, default=20, metavar="N", help="commands listed (default 20)")
    logged.add_argument("--json", action="store_true")
    logged.set_defaults(func=_on_runtime(logs))

    for name, handler, what in (
        ("pause", pause, "freeze every process of an agent's machine (calls are refused until resume)"),
        ("resume", resume, "thaw a paused agent"),
        ("kill", kill, "SIGKILL every process of an agent (files kept; the next call starts it), or one command"),
    ):
        parser = sub.add_parser(name, help=what)
        parser.add_argument("agent", metavar="AGENT")
        if name == "kill":
            parser.add_argument("--exec", dest="exec_id", metavar="EXEC_ID", help="kill only this running command")
        parser.add_argument("--json", action="store_true", help="print the agent record (with --exec: the command's)")
        parser.set_defaults(func=_on_runtime(handler))
