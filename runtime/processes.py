"""Background processes: commands that outlive the tool call, the MCP session and the server.

``start`` launches a supervisor from the read-only toolbox (busybox ``sh``) that detaches into its
own session and runs the command in another one, its output going to files in the machine's
in-memory ``/run/spinup/proc/<id>/`` and its exit status to a file when it ends. Nothing needs the
Spinup process that started it: any server reads the files again by offset. The directory is a
tmpfs, so output is never in a snapshot (a snapshot captures files, not processes) and is gone when
the machine stops; processes of a machine that stopped or restarted are then ``lost``, with why.

The host reads the files through ``/proc/<pid>/root`` with :mod:`machine_files` (no symlink,
FIFO or device is followed) and frees output beyond the cap with a hole (offsets stay), reporting
what was dropped. Credential values are redacted from every read, a value split across two reads
included.
"""

from __future__ import annotations

import errno
import json
import logging
import posixpath
import re
import signal as signals
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from .actors import current_actor
from .config import TOOLBOX_MOUNT
from .docker import DockerBackend, MachineInfo
from .errors import InvalidInput, NotFound, SpinupError, WrongState
from .exec import EXEC_MARKER, build_argv
from .machine_files import UnsafeFile, drop_before, file_size, read_slice, read_small
from .models import Agent
from .policy import PROCESS_DIR
from .redact import Redactor
from .state import StateDB

log = logging.getLogger(__name__)

Stream = Literal["stdout", "stderr"]
OUTPUT_CAP = 16 * 1024 * 1024  # bytes of each stream kept per process; older output is dropped
READ_LIMIT = 1024 * 1024  # most bytes one process_output call returns
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
SIGNALS = ("TERM", "INT", "KILL", "HUP", "QUIT", "USR1", "USR2", "STOP", "CONT")
_FILES = {"stdout": "out", "stderr": "err"}

# Runs as: sh -c SUPERVISOR supervise DIR MARKER CWD ARGV... (detached, its own session). The command
# runs in a session of its own (so a signal reaches its whole group and not the supervisor), carries
# the marker (so processes that left its group are still found), and its status lands in `exit`.
SUPERVISOR = (
    f"d=$1; m=$2; c=$3; shift 3; B={TOOLBOX_MOUNT}; "
    'if ! cd "$c" 2>"$d/err"; then echo "spinup: cannot enter $c" >>"$d/err"; : >"$d/out"; '
    'echo 126 >"$d/exit.tmp"; $B mv "$d/exit.tmp" "$d/exit"; exit 0; fi; '
    f'$B setsid $B env {EXEC_MARKER}="$m" "$@" >"$d/out" 2>"$d/err" </dev/null & '
    'echo $! >"$d/child"; wait $!; echo $? >"$d/exit.tmp"; $B mv "$d/exit.tmp" "$d/exit"'
)
LAUNCHER = (
    'd=$1; s=$2; shift 2; $0 mkdir -p "$d" && '
    '$0 setsid $0 sh -c "$s" supervise "$@" </dev/null >/dev/null 2>&1 & exit 0'
)


@dataclass(frozen=True)
class ProcessInfo:
    """A background process: ``state`` is running, exited or lost (``reason`` says why)."""

    id: str
    agent: str
    name: str | None
    command: str
    cwd: str
    started_at: datetime
    state: str
    exit_code: int | None
    signal: str | None  # the signal that ended it, when one did
    ended_at: datetime | None
    reason: str | None
    stdout_bytes: int
    stderr_bytes: int


@dataclass(frozen=True)
class ProcessOutput:
    """Output of one stream read from an offset: pass ``next_offset`` to the next read."""

    process: ProcessInfo
    stream: Stream
    offset: int
    next_offset: int
    data: str
    dropped_bytes: int  # output before the offset that the cap already dropped (it starts later)
    eof: bool  # the process has ended and everything was read


class ProcessService:
    """Starts background processes in machines and reads their state and output back."""

    def __init__(self, db: StateDB, docker: DockerBackend) -> None:
        self.db = db
        self.docker = docker

    # starting

    def validate(self, command: str | list[str], cwd: str, name: str | None) -> list[str]:
        """The argv to run, after checking the arguments."""
        argv = build_argv(command)
        if not cwd.startswith("/"):
            raise InvalidInput(f"cwd must be an absolute path inside the machine, got {cwd!r}.")
        if name is not None and not NAME_RE.fullmatch(name):
            raise InvalidInput(f"Invalid process name {name!r}: use 1-63 letters, digits, '_', '.', '-'.")
        return argv

    def launch_argv(self, process_id: str, marker: str, cwd: str, argv: list[str]) -> list[str]:
        """The command that starts the supervisor and returns at once."""
        directory = posixpath.join(PROCESS_DIR, process_id)
        return [
            TOOLBOX_MOUNT,
            "sh",
            "-c",
            LAUNCHER,
            TOOLBOX_MOUNT,
            directory,
            SUPERVISOR,
            directory,
            marker,
            cwd,
            *argv,
        ]

    def record(
        self,
        agent: Agent,
        machine: MachineInfo,
        process_id: str,
        marker: str,
        name: str | None,
        command: str,
        cwd: str,
        user: str,
    ) -> None:
        """Remember a started process (its output and status are in the machine)."""
        actor = current_actor()
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT INTO processes (id, agent_id, name, command, cwd, started_at, machine_id, machine_started, "
                "marker, user, actor, state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'running')",
                (
                    process_id,
                    agent.id,
                    name,
                    self.db.redact(command[:4096]),
                    cwd,
                    datetime.now(UTC).isoformat(),
                    machine.id,
                    machine.started_at,
                    marker,
                    user,
                    json.dumps(actor.as_dict()) if actor is not None else None,
                ),
            )
        self.db.record_event(
            agent.id,
            "process-started",
            f"{process_id} {command[:80]!r}",
            {"id": process_id, "name": name, "command": command[:2048], "cwd": cwd},
        )

    @staticmethod
    def new_ids() -> tuple[str, str]:
        """A new process id and marker."""
        return f"p-{uuid.uuid4().hex[:12]}", uuid.uuid4().hex

    # reading

    def list(self, agent: Agent, machine: MachineInfo | None) -> list[ProcessInfo]:
        """The agent's processes, oldest first, each with its state as of now."""
        rows = self.db.query("SELECT * FROM processes WHERE agent_id = ? ORDER BY started_at", (agent.id,))
        return [self._refresh(agent, dict(row), machine) for row in rows]

    def get(self, agent: Agent, process_id: str, machine: MachineInfo | None) -> ProcessInfo:
        """One process by id (or by its name); :class:`NotFound` if the agent has none such."""
        return self._refresh(agent, self._row(agent, process_id), machine)

    def output(
        self,
        agent: Agent,
        process_id: str,
        machine: MachineInfo | None,
        redactor: Redactor,
        stream: Stream,
        offset: int,
        limit: int,
    ) -> ProcessOutput:
        """``stream`` from byte ``offset``: at most ``limit`` bytes, credential values redacted."""
        if stream not in _FILES:
            raise InvalidInput(f"stream must be 'stdout' or 'stderr', got {stream!r}.")
        if offset < 0:
            raise InvalidInput(f"offset must be >= 0, got {offset}.")
        if not 1 <= limit <= READ_LIMIT:
            raise InvalidInput(f"max_bytes must be between 1 and {READ_LIMIT}, got {limit}.")
        row = self._row(agent, process_id)
        info = self._refresh(agent, row, machine)
        reachable = self._reachable(row, machine)
        if reachable is None:
            return ProcessOutput(info, stream, offset, offset, "", 0, eof=True)
        path = posixpath.join(PROCESS_DIR, row["id"], _FILES[stream])
        dropped = int(row[f"{stream}_dropped"])
        start = max(offset, dropped)
        context = redactor.longest
        before = min(start, context)
        try:
            piece = read_slice(reachable.pid, path, start - before, limit + before + context)
        except UnsafeFile as exc:
            if exc.errno == errno.ENOENT:  # not written yet (it has just started) or never: nothing to read
                return ProcessOutput(info, stream, offset, offset, "", 0, eof=info.state != "running")
            raise SpinupError(
                f"The {stream} of {process_id} cannot be read: {path} in the machine is no longer a plain file "
                f"({exc.strerror})."
            ) from exc
        if start >= piece.size:  # at or past the end: nothing (yet)
            ended = info.state != "running"
            return ProcessOutput(info, stream, offset, offset, "", max(0, min(start, piece.size) - offset), ended)
        final = info.state != "running" and start - before + len(piece.data) >= piece.size
        data, end = redactor.redact_window(piece.data, before, min(before + limit, len(piece.data)), final)
        next_offset = start - before + end
        return ProcessOutput(
            info,
            stream,
            offset,
            next_offset,
            data.decode("utf-8", "replace"),
            dropped_bytes=start - offset,
            eof=info.state != "running" and next_offset >= piece.size,
        )

    def forget(self, agent: Agent, process_id: str, machine: MachineInfo | None) -> ProcessInfo:
        """Drop an ended process's record (its files go with them); a running one is refused."""
        info = self.get(agent, process_id, machine)
        if info.state == "running":
            raise WrongState(f"Process {info.id} is still running: signal it first (process_signal).")
        with self.db.transaction() as conn:
            conn.execute("DELETE FROM processes WHERE id = ?", (info.id,))
        return info

    def child_pid(self, agent: Agent, process_id: str, machine: MachineInfo) -> int | None:
        """The command's pid inside the machine (its process group), as the supervisor wrote it."""
        raw = read_small(machine.pid, posixpath.join(PROCESS_DIR, self._row(agent, process_id)["id"], "child"), 64)
        text = raw.decode("ascii", "replace").strip() if raw else ""
        return int(text) if text.isdigit() else None

    def agents_running(self) -> set[str]:
        """Ids of agents with a process recorded as running."""
        return {
            row["agent_id"] for row in self.db.query("SELECT DISTINCT agent_id FROM processes WHERE state = 'running'")
        }

    def mark_lost(self, agent: Agent, reason: str) -> int:
        """Mark the agent's running processes lost (its machine stopped, was killed or removed)."""
        with self.db.transaction() as conn:
            return conn.execute(
                "UPDATE processes SET state = 'lost', reason = ?, ended_at = ? "
                "WHERE agent_id = ? AND state = 'running'",
                (reason, datetime.now(UTC).isoformat(), agent.id),
            ).rowcount

    def row(self, agent: Agent, process_id: str) -> dict[str, Any]:
        """The raw record (for signalling)."""
        return self._row(agent, process_id)

    # internals

    def _row(self, agent: Agent, process_id: str) -> dict[str, Any]:
        if not isinstance(process_id, str) or not process_id:
            raise InvalidInput("Give a process id (p-...) or name, as process_list shows.")
        rows = self.db.query(
            "SELECT * FROM processes WHERE agent_id = ? AND (id = ? OR name = ?) ORDER BY started_at DESC",
            (agent.id, process_id, process_id),
        )
        if not rows:
            raise NotFound(
                f"Agent '{agent.name}' has no process '{process_id}'. List them with process_list "
                f"(CLI: spinup process list {agent.name})."
            )
        return dict(rows[0])

    @staticmethod
    def _reachable(row: dict[str, Any], machine: MachineInfo | None) -> MachineInfo | None:
        """The machine when it still holds this process's files (the same run of the same machine)."""
        if machine is None or machine.id != row["machine_id"] or not machine.running:
            return None
        if machine.started_at != row["machine_started"] or machine.pid <= 0:
            return None
        return machine

    def _refresh(self, agent: Agent, row: dict[str, Any], machine: MachineInfo | None) -> ProcessInfo:
        """The process's state now: running until its exit file appears, lost when its machine's run ended."""
        reachable = self._reachable(row, machine)
        sizes = {"stdout": 0, "stderr": 0}
        if row["state"] == "running":
            if reachable is None:
                reason = _lost_reason(row, machine)
                self._update(row, state="lost", reason=reason, ended_at=datetime.now(UTC).isoformat())
                row.update(state="lost", reason=reason)
                self.db.record_event(
                    agent.id, "process-lost", f"{row['id']}: {reason}", {"id": row["id"], "reason": reason}
                )
            else:
                status = read_small(reachable.pid, posixpath.join(PROCESS_DIR, str(row["id"]), "exit"), 64)
                if status is not None and status.strip().isdigit():
                    code = int(status.strip())
                    ended = datetime.now(UTC).isoformat()
                    self._update(row, state="exited", exit_code=code, ended_at=ended)
                    row.update(state="exited", exit_code=code, ended_at=ended)
                    self.db.record_event(
                        agent.id, "process-exited", f"{row['id']} exit {code}", {"id": row["id"], "exit_code": code}
                    )
        if reachable is not None:
            for stream, name in _FILES.items():
                path = posixpath.join(PROCESS_DIR, str(row["id"]), name)
                size = file_size(reachable.pid, path) or 0
                sizes[stream] = size
                dropped = int(row[f"{stream}_dropped"])
                if size - dropped > OUTPUT_CAP:
                    freed = drop_before(reachable.pid, path, size - OUTPUT_CAP)
                    if freed > dropped:
                        self._update(row, **{f"{stream}_dropped": freed})
                        row[f"{stream}_dropped"] = freed
        code = row["exit_code"]
        signal = None
        if isinstance(code, int) and code > 128 and code - 128 in signals.Signals._value2member_map_:
            signal = signals.Signals(code - 128).name.removeprefix("SIG")
        return ProcessInfo(
            id=str(row["id"]),
            agent=agent.name,
            name=row["name"],
            command=str(row["command"]),
            cwd=str(row["cwd"]),
            started_at=datetime.fromisoformat(str(row["started_at"])),
            state=str(row["state"]),
            exit_code=code if isinstance(code, int) else None,
            signal=signal,
            ended_at=datetime.fromisoformat(str(row["ended_at"])) if row["ended_at"] else None,
            reason=row["reason"],
            stdout_bytes=sizes["stdout"],
            stderr_bytes=sizes["stderr"],
        )

    def _update(self, row: dict[str, Any], **values: object) -> None:
        columns = ", ".join(f"{key} = ?" for key in values)
        with self.db.transaction() as conn:
            conn.execute(f"UPDATE processes SET {columns} WHERE id = ?", (*values.values(), row["id"]))


def _lost_reason(row: dict[str, Any], machine: MachineInfo | None) -> str:
    if machine is None or machine.id != row["machine_id"]:
        return "its machine was replaced or removed"
    if not machine.running:
        return "its machine stopped (stop, kill or hibernate)"
    return "its machine was restarted"


def parse_signal(name: str) -> str:
    """A signal name such as ``TERM``, ``SIGINT`` or ``kill``, checked, without the SIG prefix."""
    bare = str(name).upper().removeprefix("SIG")
    if bare not in SIGNALS:
        raise InvalidInput(f"Unknown signal {name!r}: use one of {', '.join(SIGNALS)}.")
    return bare


def wait_interval(elapsed: float) -> float:
    """How long to sleep between two looks at a process being waited for."""
    return 0.05 if elapsed < 1 else 0.2 if elapsed < 10 else 0.5
