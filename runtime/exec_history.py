"""Exec history: a record of every command in the state database, its output kept on the host.

Each command gets an exec id before it starts. Its row says what ran, where, for whom and how
it ended; its output (already capped and redacted, exactly what the caller got) is kept
zstd-compressed in one file per command beside the database, bounded per agent by count and
bytes, oldest dropped first. The row also holds what another process needs to kill the command
(Docker's exec id, the marker its processes carry, the user), so a kill by id works from the
CLI while an MCP server waits on the command.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import zstandard

from .actors import current_actor
from .errors import ExecNotFound, WrongState
from .exec import ExecResult
from .models import Agent
from .state import StateDB

log = logging.getLogger(__name__)

COMMAND_CHARS = 4096  # of a command's text kept in its row (2 KiB of it in its event)
EVENT_COMMAND_CHARS = 2048
ZSTD_LEVEL = 3


@dataclass(frozen=True)
class ExecRecord:
    """One command run in an agent's machine. ``state``: running, exited, timed-out, killed or lost."""

    id: str
    agent: str
    command: str
    cwd: str | None
    started_at: datetime
    state: str
    exit_code: int | None
    duration_s: float | None
    stdout_bytes: int | None
    stderr_bytes: int | None
    truncated: bool
    timed_out: bool
    limit: str | None
    actor: dict[str, str] | None
    killed_by: str | None
    machine_id: str
    docker_exec: str | None
    marker: str
    user: str
    log_bytes: int


@dataclass(frozen=True)
class ExecLog:
    """A past command and the output it returned (redacted, capped as it was returned)."""

    record: ExecRecord
    stdout: str
    stderr: str
    output_kept: bool  # False when retention already dropped the output (the record stays)


def command_text(command: str | list[str]) -> str:
    """A command as one line of text: the shell string, or the argv joined with spaces."""
    return command if isinstance(command, str) else " ".join(command)


class ExecHistory:
    """Records commands and keeps their output, bounded per agent."""

    def __init__(self, db: StateDB, logs_dir: Path, keep: int, max_bytes: int) -> None:
        self.db = db
        self.logs_dir = logs_dir
        self.keep = keep
        self.max_bytes = max_bytes
        self._compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL)

    def begin(self, agent: Agent, command: str, cwd: str | None, user: str) -> tuple[str, str]:
        """Record a command about to start; returns its exec id and the marker its processes carry."""
        assert agent.machine_id is not None
        exec_id = f"x-{uuid.uuid4().hex[:12]}"
        marker = uuid.uuid4().hex
        actor = current_actor()
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT INTO execs (id, agent_id, agent, command, cwd, started_at, state, machine_id, marker, "
                "user, actor, owner_pid) VALUES (?, ?, ?, ?, ?, ?, 'running', ?, ?, ?, ?, ?)",
                (
                    exec_id,
                    agent.id,
                    agent.name,
                    self.db.redact(command[:COMMAND_CHARS]),
                    cwd,
                    datetime.now(UTC).isoformat(),
                    agent.machine_id,
                    marker,
                    user,
                    json.dumps(actor.as_dict()) if actor is not None else None,
                    os.getpid(),
                ),
            )
        return exec_id, marker

    def attach(self, exec_id: str, docker_exec: str) -> None:
        """Note Docker's id of the running command (what a kill by exec id needs)."""
        with self.db.transaction() as conn:
            conn.execute("UPDATE execs SET docker_exec = ? WHERE id = ?", (docker_exec, exec_id))

    async def finish(self, agent: Agent, exec_id: str, result: ExecResult) -> ExecResult:
        """Keep the output, close the record, record the ``exec`` event; returns ``result`` with its id
        (and, when it was killed by id, who killed it, in words on stderr)."""
        row = self._row(agent, exec_id)
        killed_by = row.killed_by
        if killed_by is not None:
            note = f"[spinup: killed by {killed_by} (exec kill {exec_id})]"
            result = replace(result, stderr=result.stderr + ("\n" if result.stderr else "") + note)
        result = replace(result, id=exec_id, killed_by=killed_by)
        log_bytes = await self._write_log(agent.id, exec_id, result)
        state = "killed" if killed_by else "timed-out" if result.timed_out else "exited"
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE execs SET state = ?, exit_code = ?, duration_s = ?, stdout_bytes = ?, stderr_bytes = ?, "
                "truncated = ?, timed_out = ?, limit_hit = ?, log_bytes = ? WHERE id = ?",
                (
                    state,
                    result.exit_code,
                    result.duration_s,
                    result.stdout_bytes,
                    result.stderr_bytes,
                    int(result.truncated),
                    int(result.timed_out),
                    result.limit,
                    log_bytes,
                    exec_id,
                ),
            )
        self.db.record_event(agent.id, "exec", _summary(row.command, result, state), _event_data(row, result, state))
        self._enforce_bounds(agent.id)
        return result

    def abandon(self, agent: Agent, exec_id: str, error: BaseException) -> None:
        """Close the record of a command that could not run or whose caller went away."""
        with self.db.transaction() as conn:
            conn.execute("UPDATE execs SET state = 'lost' WHERE id = ? AND state = 'running'", (exec_id,))
        self.db.record_event(
            agent.id,
            "exec",
            f"{exec_id} lost: {type(error).__name__}",
            {"id": exec_id, "state": "lost", "error": type(error).__name__},
        )

    def get(self, agent: Agent, exec_id: str) -> ExecRecord:
        """The record of command ``exec_id`` of ``agent``; :class:`ExecNotFound` if there is none."""
        return self._row(agent, exec_id)

    def running(self, agent: Agent) -> list[ExecRecord]:
        """The agent's running commands, oldest first. A command whose Spinup process is gone (it
        crashed or was killed while waiting on it) is marked ``lost`` here and not listed."""
        rows = self.db.query(
            "SELECT * FROM execs WHERE agent_id = ? AND state = 'running' ORDER BY started_at", (agent.id,)
        )
        orphans = [row["id"] for row in rows if not _alive(int(row["owner_pid"]))]
        if orphans:
            with self.db.transaction() as conn:
                conn.executemany(
                    "UPDATE execs SET state = 'lost' WHERE id = ? AND state = 'running'", [(i,) for i in orphans]
                )
        return [_record(row) for row in rows if row["id"] not in orphans]

    def recent(self, agent: Agent, limit: int = 20) -> list[ExecRecord]:
        """The agent's most recent commands, newest first."""
        rows = self.db.query(
            "SELECT * FROM execs WHERE agent_id = ? ORDER BY started_at DESC LIMIT ?", (agent.id, limit)
        )
        return [_record(row) for row in rows]

    def read(self, agent: Agent, exec_id: str) -> ExecLog:
        """A past command's record and output (also after a server restart)."""
        record = self._row(agent, exec_id)
        path = self._path(agent.id, exec_id)
        try:
            packed = path.read_bytes()
        except FileNotFoundError:
            return ExecLog(record, "", "", output_kept=False)
        try:
            data = json.loads(zstandard.ZstdDecompressor().decompress(packed))
        except (zstandard.ZstdError, ValueError):
            log.warning("exec output %s is unreadable; reporting it as not kept", path)
            return ExecLog(record, "", "", output_kept=False)
        return ExecLog(record, str(data.get("stdout", "")), str(data.get("stderr", "")), output_kept=True)

    def request_kill(self, agent: Agent, exec_id: str, by: str) -> ExecRecord:
        """Mark a running command as killed by ``by``; returns its record (for the kill itself)."""
        record = self._row(agent, exec_id)
        if record.state != "running" or record.docker_exec is None:
            raise WrongState(
                f"Command {exec_id} of agent '{agent.name}' is {record.state}, not running: nothing to kill."
            )
        with self.db.transaction() as conn:
            conn.execute("UPDATE execs SET kill_by = ? WHERE id = ?", (by, exec_id))
        return replace(record, killed_by=by)

    def mark_killed(self, agent: Agent, by: str) -> int:
        """Mark every running command of the agent killed (its machine was); returns how many."""
        with self.db.transaction() as conn:
            return conn.execute(
                "UPDATE execs SET kill_by = COALESCE(kill_by, ?) WHERE agent_id = ? AND state = 'running'",
                (by, agent.id),
            ).rowcount

    def forget(self, agent_id: str) -> None:
        """Delete the kept outputs of a removed agent (its rows go with its record)."""
        directory = self.logs_dir / agent_id
        if directory.is_dir():
            for path in directory.iterdir():
                path.unlink(missing_ok=True)
            directory.rmdir()

    def _row(self, agent: Agent, exec_id: str) -> ExecRecord:
        if not isinstance(exec_id, str) or not exec_id:
            raise ExecNotFound(str(exec_id), agent.name)
        rows = self.db.query("SELECT * FROM execs WHERE id = ? AND agent_id = ?", (exec_id, agent.id))
        if not rows:
            raise ExecNotFound(exec_id, agent.name)
        return _record(rows[0])

    def _path(self, agent_id: str, exec_id: str) -> Path:
        return self.logs_dir / agent_id / f"{exec_id}.json.zst"

    async def _write_log(self, agent_id: str, exec_id: str, result: ExecResult) -> int:
        """Write the output beside the database (temp, then rename: never half a file); returns its size."""
        text = json.dumps({"stdout": result.stdout, "stderr": result.stderr}, ensure_ascii=False).encode()
        packed = self._compressor.compress(text)
        path = self._path(agent_id, exec_id)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.logs_dir.chmod(0o700)
        tmp = path.with_suffix(f".tmp-{os.getpid()}")
        tmp.write_bytes(packed)
        os.replace(tmp, path)
        return len(packed)

    def _enforce_bounds(self, agent_id: str) -> None:
        """Drop the oldest outputs (and records) beyond the per-agent count or bytes."""
        rows = self.db.query(
            "SELECT id, log_bytes FROM execs WHERE agent_id = ? AND state != 'running' ORDER BY started_at DESC",
            (agent_id,),
        )
        total, doomed = 0, []
        for index, row in enumerate(rows):
            total += int(row["log_bytes"] or 0)
            if index >= self.keep or total > self.max_bytes:
                doomed.append(row["id"])
        if not doomed:
            return
        for exec_id in doomed:
            self._path(agent_id, exec_id).unlink(missing_ok=True)
        try:
            with self.db.transaction() as conn:
                conn.executemany("DELETE FROM execs WHERE id = ?", [(exec_id,) for exec_id in doomed])
        except sqlite3.Error:
            log.exception("dropping old exec records of agent %s failed", agent_id)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` (a Spinup process on this host) still runs."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _record(row: sqlite3.Row) -> ExecRecord:
    return ExecRecord(
        id=row["id"],
        agent=row["agent"],
        command=row["command"],
        cwd=row["cwd"],
        started_at=datetime.fromisoformat(row["started_at"]),
        state=row["state"],
        exit_code=row["exit_code"],
        duration_s=row["duration_s"],
        stdout_bytes=row["stdout_bytes"],
        stderr_bytes=row["stderr_bytes"],
        truncated=bool(row["truncated"]),
        timed_out=bool(row["timed_out"]),
        limit=row["limit_hit"],
        actor=json.loads(row["actor"]) if row["actor"] else None,
        killed_by=row["kill_by"],
        machine_id=row["machine_id"],
        docker_exec=row["docker_exec"],
        marker=row["marker"],
        user=row["user"],
        log_bytes=int(row["log_bytes"] or 0),
    )


def _summary(command: str, result: ExecResult, state: str) -> str:
    short = command if len(command) <= 80 else command[:77] + "..."
    ending = f"exit {result.exit_code}" if state == "exited" else state
    return f"{result.id} {short!r}: {ending} in {result.duration_s:.2f}s"


def _event_data(row: ExecRecord, result: ExecResult, state: str) -> dict[str, Any]:
    return {
        "id": result.id,
        "command": row.command[:EVENT_COMMAND_CHARS],
        "cwd": row.cwd,
        "state": state,
        "exit_code": result.exit_code,
        "duration_s": result.duration_s,
        "stdout_bytes": result.stdout_bytes,
        "stderr_bytes": result.stderr_bytes,
        "truncated": result.truncated,
        "timed_out": result.timed_out,
        "limit": result.limit,
        "killed_by": result.killed_by,
        **({"network_denied": result.network_denied} if result.network_denied else {}),
    }
