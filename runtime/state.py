"""The state database: agents and their events in SQLite (WAL), with versioned migrations."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from .actors import current_actor
from .errors import AgentExists, AgentNotFound, StateDiskFull
from .models import Agent, AgentState, Event, HeaderBinding, PackageEntry, Policy, SecretBinding, Snapshot

# Each entry moves the schema from version i to i+1. Never edit one that has shipped: append.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE agents (
        id          TEXT PRIMARY KEY,
        name        TEXT NOT NULL UNIQUE,
        image       TEXT NOT NULL,
        policy      TEXT NOT NULL,
        created_at  TEXT NOT NULL,
        machine_id  TEXT,
        state       TEXT NOT NULL
    );
    CREATE TABLE events (
        id        INTEGER PRIMARY KEY AUTOINCREMENT,
        agent_id  TEXT NOT NULL,
        at        TEXT NOT NULL,
        kind      TEXT NOT NULL,
        detail    TEXT NOT NULL
    );
    CREATE INDEX events_by_agent ON events (agent_id, id);
    """,
    """
    ALTER TABLE agents ADD COLUMN head_snapshot TEXT;
    CREATE TABLE snapshots (
        id               TEXT PRIMARY KEY,
        agent_id         TEXT NOT NULL,
        parent_id        TEXT,
        label            TEXT NOT NULL,
        created_at       TEXT NOT NULL,
        manifest_digest  TEXT NOT NULL,
        machine_id       TEXT NOT NULL,
        base_image       TEXT NOT NULL,
        layers           INTEGER NOT NULL,
        layer_size       INTEGER NOT NULL,
        layer_uncompressed INTEGER NOT NULL,
        paths_changed    INTEGER NOT NULL
    );
    CREATE INDEX snapshots_by_agent ON snapshots (agent_id, created_at);
    CREATE INDEX snapshots_by_parent ON snapshots (parent_id);
    """,
    # Agents made before policies had a user ran their commands as root: they keep doing so.
    """
    UPDATE agents SET policy = json_set(policy, '$.user', 'root') WHERE json_extract(policy, '$.user') IS NULL;
    CREATE TABLE secret_bindings (
        agent_id  TEXT NOT NULL,
        secret    TEXT NOT NULL,
        env       TEXT,
        file      TEXT,
        PRIMARY KEY (agent_id, secret)
    );
    """,
    """
    CREATE TABLE packages (
        agent_id      TEXT NOT NULL,
        manager       TEXT NOT NULL,
        name          TEXT NOT NULL,
        spec          TEXT NOT NULL,
        version       TEXT NOT NULL,
        installed_at  TEXT NOT NULL,
        PRIMARY KEY (agent_id, manager, name)
    );
    """,
    # Events: of the runtime too (no agent), named after their agent (kept past its removal), with a
    # JSON payload and the client that caused them. Exec history. Who paused an agent, and when.
    """
    CREATE TABLE events_v5 (
        id        INTEGER PRIMARY KEY AUTOINCREMENT,
        agent_id  TEXT,
        agent     TEXT,
        at        TEXT NOT NULL,
        kind      TEXT NOT NULL,
        detail    TEXT NOT NULL,
        data      TEXT NOT NULL DEFAULT '{}',
        actor     TEXT
    );
    INSERT INTO events_v5 (id, agent_id, agent, at, kind, detail)
        SELECT e.id, e.agent_id, a.name, e.at, e.kind, e.detail FROM events e LEFT JOIN agents a ON a.id = e.agent_id;
    DROP TABLE events;
    ALTER TABLE events_v5 RENAME TO events;
    CREATE INDEX events_by_agent ON events (agent_id, id);
    CREATE INDEX events_by_kind ON events (kind, id);
    CREATE INDEX events_by_time ON events (at);
    CREATE TABLE execs (
        id           TEXT PRIMARY KEY,
        agent_id     TEXT NOT NULL,
        agent        TEXT NOT NULL,
        command      TEXT NOT NULL,
        cwd          TEXT,
        started_at   TEXT NOT NULL,
        state        TEXT NOT NULL,
        machine_id   TEXT NOT NULL,
        docker_exec  TEXT,
        marker       TEXT NOT NULL,
        user         TEXT NOT NULL,
        actor        TEXT,
        owner_pid    INTEGER NOT NULL,
        kill_by      TEXT,
        exit_code    INTEGER,
        duration_s   REAL,
        stdout_bytes INTEGER,
        stderr_bytes INTEGER,
        truncated    INTEGER,
        timed_out    INTEGER,
        limit_hit    TEXT,
        log_bytes    INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX execs_by_agent ON execs (agent_id, started_at);
    ALTER TABLE agents ADD COLUMN paused_at TEXT;
    ALTER TABLE agents ADD COLUMN paused_by TEXT;
    """,
    # Background processes: what was started where; their output and exit status live in the machine.
    """
    CREATE TABLE processes (
        id               TEXT PRIMARY KEY,
        agent_id         TEXT NOT NULL,
        name             TEXT,
        command          TEXT NOT NULL,
        cwd              TEXT NOT NULL,
        started_at       TEXT NOT NULL,
        machine_id       TEXT NOT NULL,
        machine_started  TEXT NOT NULL,
        marker           TEXT NOT NULL,
        user             TEXT NOT NULL,
        actor            TEXT,
        state            TEXT NOT NULL,
        exit_code        INTEGER,
        ended_at         TEXT,
        reason           TEXT,
        stdout_dropped   INTEGER NOT NULL DEFAULT 0,
        stderr_dropped   INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX processes_by_agent ON processes (agent_id, started_at);
    """,
    # Credentials the egress proxy adds as a request header (JSON: host, name, template).
    """
    ALTER TABLE secret_bindings ADD COLUMN header TEXT;
    """,
    # A rebuild in progress: the base image and snapshot it rolls back to if its process dies.
    """
    CREATE TABLE rebuilds (
        agent_id    TEXT PRIMARY KEY,
        image       TEXT NOT NULL,
        saved       TEXT NOT NULL,
        started_at  TEXT NOT NULL
    );
    """,
    # The Docker daemon an agent was moved to (NULL: the daemon of the Spinup process driving it).
    """
    ALTER TABLE agents ADD COLUMN host TEXT;
    """,
)

SCHEMA_VERSION = len(MIGRATIONS)
TRIM_EVERY = 500  # events recorded by one process between two trims of the log

log = logging.getLogger(__name__)


def _now() -> datetime:
    return datetime.now(UTC)


class StateDB:
    """Agent records and event history. Each method is one short transaction."""

    def __init__(self, path: Path) -> None:
        # The state directory and database are the operator's alone (SQLite gives the WAL and
        # shared-memory files the database file's mode).
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = path
        self._conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        os.chmod(path, 0o600)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        # Applied to every event detail before it is stored (the runtime sets credential redaction).
        self.redact: Callable[[str], str] = lambda text: text
        # Called with every event this process records, after its transaction commits.
        self.event_listeners: list[Callable[[Event], None]] = []
        # Retention: events kept per agent, and the oldest kept (days). Trimmed in the background.
        self.events_keep = 10_000
        self.events_max_age_days = 30.0
        self._pending: list[Event] = []
        self._since_trim = 0
        self._trimming = threading.Lock()
        self._tx_lock = threading.RLock()
        self._migrate()

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        # One connection serves the event loop and worker threads (a snapshot records itself from
        # one): their transactions take turns.
        with self._tx_lock, self._disk_full_is_clear():
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                self._pending.clear()
                raise
            events, self._pending = self._pending, []
        if events:
            self._announce(events)

    @contextmanager
    def _disk_full_is_clear(self) -> Iterator[None]:
        """Turn SQLite's "database or disk is full" into :class:`StateDiskFull` (the transaction is rolled back)."""
        try:
            yield
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorcode", None) != sqlite3.SQLITE_FULL:
                raise
            try:
                stats = os.statvfs(self.path.parent)
                free: int | None = stats.f_bavail * stats.f_frsize
            except OSError:
                free = None
            raise StateDiskFull(str(self.path), free) from exc

    def transaction(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT) for callers keeping their own tables here."""
        return self._tx()

    def query(self, sql: str, parameters: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """Rows of a read-only query."""
        return self._conn.execute(sql, parameters).fetchall()

    def _migrate(self) -> None:
        if self.schema_version == SCHEMA_VERSION:
            return  # nothing to write (a server still starts on a full disk)
        with self._tx() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise RuntimeError(
                    f"State database {self.path} has schema version {version}, newer than this Spinup "
                    f"understands ({SCHEMA_VERSION}). Upgrade Spinup."
                )
            for index in range(version, SCHEMA_VERSION):
                for statement in MIGRATIONS[index].split(";"):
                    if statement.strip():
                        conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @property
    def schema_version(self) -> int:
        """The schema version the database is at."""
        return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    # agents

    def create_agent(
        self,
        name: str,
        image: str,
        policy: Policy,
        head: tuple[str, list[PackageEntry]] | None = None,
        *,
        agent_id: str | None = None,
        machine_id: str | None = None,
    ) -> Agent:
        """Insert a new agent record, with ``head`` (snapshot id, its package manifest) for a fork, in one
        transaction; raise :class:`AgentExists` if the name is taken. ``agent_id`` and ``machine_id`` give it
        a running machine made ahead for that id (a warm-pool spare)."""
        agent = Agent(
            id=agent_id or uuid.uuid4().hex[:16],
            name=name,
            image=image,
            policy=policy,
            created_at=_now(),
            machine_id=machine_id,
            state=AgentState.RUNNING if machine_id is not None else AgentState.CREATED,
        )
        try:
            with self._tx() as conn:
                conn.execute(
                    "INSERT INTO agents (id, name, image, policy, created_at, machine_id, state) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        agent.id,
                        agent.name,
                        agent.image,
                        policy.model_dump_json(),
                        agent.created_at.isoformat(),
                        agent.machine_id,
                        agent.state.value,
                    ),
                )
                self._insert_event(conn, agent.id, "created", f"image={image} {policy.describe()}")
                if head is not None:
                    conn.execute("UPDATE agents SET head_snapshot = ? WHERE id = ?", (head[0], agent.id))
                    self._replace_packages(conn, agent.id, head[1])
        except sqlite3.IntegrityError as exc:
            raise AgentExists(name) from exc
        return agent.model_copy(update={"head_snapshot": head[0]}) if head is not None else agent

    def get_agent(self, name: str) -> Agent:
        """The agent named ``name``; raise :class:`AgentNotFound` if there is none."""
        row = self._conn.execute("SELECT * FROM agents WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise AgentNotFound(name)
        return self._agent(row)

    def find_agent(self, name: str) -> Agent | None:
        """The agent named ``name``, or None."""
        row = self._conn.execute("SELECT * FROM agents WHERE name = ?", (name,)).fetchone()
        return None if row is None else self._agent(row)

    def agent_by_id(self, agent_id: str) -> Agent | None:
        """The agent with id ``agent_id``, or None."""
        row = self._conn.execute("SELECT * FROM agents WHERE id = ?", (agent_id,)).fetchone()
        return None if row is None else self._agent(row)

    def list_agents(self) -> list[Agent]:
        """All agents, oldest first."""
        rows = self._conn.execute("SELECT * FROM agents ORDER BY created_at, name").fetchall()
        return [self._agent(row) for row in rows]

    def set_image(self, agent_id: str, image: str, rebuild_from: tuple[str, str] | None = None) -> None:
        """Move the agent to another base image; its head snapshot (tied to the old base) is dropped.

        With ``rebuild_from`` (the old image, a snapshot of the agent on it) a rebuild is recorded as in
        progress in the same transaction, until :meth:`finish_rebuild` or :meth:`roll_back_rebuild`.
        """
        with self._tx() as conn:
            conn.execute(
                "UPDATE agents SET image = ?, head_snapshot = NULL, machine_id = NULL, state = ? WHERE id = ?",
                (image, AgentState.MISSING.value, agent_id),
            )
            if rebuild_from is not None:
                conn.execute(
                    "INSERT OR REPLACE INTO rebuilds (agent_id, image, saved, started_at) VALUES (?, ?, ?, ?)",
                    (agent_id, *rebuild_from, _now().isoformat()),
                )
            self._insert_event(conn, agent_id, "image-changed", f"base image is now {image}")

    def rebuild_in_progress(self, agent_id: str) -> tuple[str, str] | None:
        """The (old image, saved snapshot) of the agent's unfinished rebuild, or None."""
        row = self._conn.execute("SELECT image, saved FROM rebuilds WHERE agent_id = ?", (agent_id,)).fetchone()
        return None if row is None else (row["image"], row["saved"])

    def finish_rebuild(self, agent_id: str, entries: list[PackageEntry]) -> None:
        """In one transaction: the rebuilt agent's manifest is ``entries`` and its rebuild is no longer in progress."""
        with self._tx() as conn:
            self._replace_packages(conn, agent_id, entries)
            conn.execute("DELETE FROM rebuilds WHERE agent_id = ?", (agent_id,))

    def roll_back_rebuild(self, agent_id: str, packages: list[PackageEntry], reason: str) -> None:
        """In one transaction: put the agent back on its rebuild's old image with the saved snapshot as head
        and that snapshot's manifest, and no machine (the next wake makes one from the head)."""
        with self._tx() as conn:
            row = conn.execute("SELECT image, saved FROM rebuilds WHERE agent_id = ?", (agent_id,)).fetchone()
            if row is None:
                return
            conn.execute(
                "UPDATE agents SET image = ?, head_snapshot = ?, machine_id = NULL, state = ? WHERE id = ?",
                (row["image"], row["saved"], AgentState.HIBERNATED.value, agent_id),
            )
            self._replace_packages(conn, agent_id, packages)
            conn.execute("DELETE FROM rebuilds WHERE agent_id = ?", (agent_id,))
            self._insert_event(
                conn,
                agent_id,
                "rebuild-rolled-back",
                f"back on {row['image']} from snapshot {row['saved']}: {reason}",
                {"image": row["image"], "saved": row["saved"]},
            )

    def set_machine(self, agent_id: str, machine_id: str | None, state: AgentState) -> None:
        """Record the agent's current machine and its state."""
        with self._tx() as conn:
            conn.execute(
                "UPDATE agents SET machine_id = ?, state = ? WHERE id = ?", (machine_id, state.value, agent_id)
            )

    def machine_host(self, machine_id: str) -> str | None:
        """The Docker daemon of the agent whose machine this is (None: this process's daemon, or no such agent)."""
        row = self._conn.execute("SELECT host FROM agents WHERE machine_id = ?", (machine_id,)).fetchone()
        return row["host"] if row is not None else None

    def move_machine(self, agent_id: str, host: str, machine_id: str, detail: str, data: dict[str, Any]) -> None:
        """In one transaction: the agent's machine is now ``machine_id`` on the daemon at ``host``, running."""
        with self._tx() as conn:
            conn.execute(
                "UPDATE agents SET host = ?, machine_id = ?, state = ? WHERE id = ?",
                (host, machine_id, AgentState.RUNNING.value, agent_id),
            )
            self._insert_event(conn, agent_id, "moved", detail, data)

    def delete_agent(self, agent_id: str, event: tuple[str, str] | None = None) -> None:
        """Remove the agent record; its events stay (under its name) until retention trims them.

        ``event`` (kind, detail) is recorded in the same transaction, e.g. ``("removed", ...)``.
        """
        with self._tx() as conn:
            if event is not None:
                self._insert_event(conn, agent_id, *event)
            conn.execute("DELETE FROM agents WHERE id = ?", (agent_id,))
            conn.execute("DELETE FROM secret_bindings WHERE agent_id = ?", (agent_id,))
            conn.execute("DELETE FROM packages WHERE agent_id = ?", (agent_id,))
            conn.execute("DELETE FROM execs WHERE agent_id = ?", (agent_id,))
            conn.execute("DELETE FROM processes WHERE agent_id = ?", (agent_id,))
            conn.execute("DELETE FROM rebuilds WHERE agent_id = ?", (agent_id,))

    def set_paused(self, agent_id: str, by: str | None, kind: str, detail: str) -> None:
        """Record that a client paused the agent (``by`` set) or that it no longer is (None), with an event."""
        with self._tx() as conn:
            conn.execute(
                "UPDATE agents SET paused_at = ?, paused_by = ? WHERE id = ?",
                (_now().isoformat() if by is not None else None, by, agent_id),
            )
            self._insert_event(conn, agent_id, kind, detail)

    def set_policy(self, agent_id: str, policy: Policy) -> None:
        """Replace the agent's policy."""
        with self._tx() as conn:
            conn.execute("UPDATE agents SET policy = ? WHERE id = ?", (policy.model_dump_json(), agent_id))
            self._insert_event(conn, agent_id, "policy-changed", policy.describe())

    def set_head(self, agent_id: str, snapshot_id: str | None) -> None:
        """Move the agent's head snapshot."""
        with self._tx() as conn:
            conn.execute("UPDATE agents SET head_snapshot = ? WHERE id = ?", (snapshot_id, agent_id))

    # snapshots

    def add_snapshot(self, snapshot: Snapshot, move_head: bool = True, duration_s: float | None = None) -> None:
        """Record a snapshot (already durable in the store) and, by default, make it the agent's head."""
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO snapshots (id, agent_id, parent_id, label, created_at, manifest_digest, machine_id, "
                "base_image, layers, layer_size, layer_uncompressed, paths_changed) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    snapshot.id,
                    snapshot.agent_id,
                    snapshot.parent_id,
                    snapshot.label,
                    snapshot.created_at.isoformat(),
                    snapshot.manifest_digest,
                    snapshot.machine_id,
                    snapshot.base_image,
                    snapshot.layers,
                    snapshot.layer_size,
                    snapshot.layer_uncompressed,
                    snapshot.paths_changed,
                ),
            )
            if move_head:
                conn.execute("UPDATE agents SET head_snapshot = ? WHERE id = ?", (snapshot.id, snapshot.agent_id))
            self._insert_event(
                conn,
                snapshot.agent_id,
                "snapshot-created",
                f"{snapshot.id} label={snapshot.label!r} paths={snapshot.paths_changed} bytes={snapshot.layer_size}",
                {
                    "id": snapshot.id,
                    "label": snapshot.label,
                    "paths": snapshot.paths_changed,
                    "bytes": snapshot.layer_size,
                    "uncompressed": snapshot.layer_uncompressed,
                    "layers": snapshot.layers,
                    "duration_s": duration_s,
                },
            )

    def get_snapshot(self, snapshot_id: str) -> Snapshot | None:
        """The snapshot with this id, or None."""
        row = self._conn.execute("SELECT * FROM snapshots WHERE id = ?", (snapshot_id,)).fetchone()
        return None if row is None else self._snapshot(row)

    def list_snapshots(self, agent_id: str | None = None) -> list[Snapshot]:
        """Snapshots, oldest first; of one agent when ``agent_id`` is given."""
        if agent_id is None:
            rows = self._conn.execute("SELECT * FROM snapshots ORDER BY created_at").fetchall()
        else:
            rows = self._conn.execute(
                "SELECT * FROM snapshots WHERE agent_id = ? ORDER BY created_at", (agent_id,)
            ).fetchall()
        return [self._snapshot(r) for r in rows]

    def store_bytes(self, agent_ids: Sequence[str]) -> dict[str, int]:
        """Compressed bytes of the layers each agent's snapshots added to the store, in one query."""
        if not agent_ids:
            return {}
        marks = ", ".join("?" * len(agent_ids))
        rows = self._conn.execute(
            f"SELECT agent_id, SUM(layer_size) FROM snapshots WHERE agent_id IN ({marks}) GROUP BY agent_id",
            tuple(agent_ids),
        ).fetchall()
        return {row[0]: int(row[1] or 0) for row in rows}

    def snapshot_children(self, snapshot_id: str) -> list[str]:
        """Ids of snapshots whose parent is ``snapshot_id``."""
        rows = self._conn.execute("SELECT id FROM snapshots WHERE parent_id = ?", (snapshot_id,)).fetchall()
        return [r["id"] for r in rows]

    def agents_with_head(self, snapshot_id: str) -> list[str]:
        """Names of agents whose head is ``snapshot_id``."""
        rows = self._conn.execute("SELECT name FROM agents WHERE head_snapshot = ?", (snapshot_id,)).fetchall()
        return [r["name"] for r in rows]

    def set_snapshot_manifest(self, snapshot_id: str, manifest_digest: str) -> None:
        """Point a snapshot at a rewritten manifest of the same content (a store migration)."""
        with self._tx() as conn:
            conn.execute("UPDATE snapshots SET manifest_digest = ? WHERE id = ?", (manifest_digest, snapshot_id))

    def delete_snapshot(self, snapshot_id: str) -> None:
        """Forget a snapshot record."""
        with self._tx() as conn:
            conn.execute("DELETE FROM snapshots WHERE id = ?", (snapshot_id,))

    @staticmethod
    def _snapshot(row: sqlite3.Row) -> Snapshot:
        return Snapshot(**{key: row[key] for key in row.keys()})  # noqa: SIM118 - sqlite3.Row

    # credential bindings (names and where they go; values live in the encrypted credential store)

    def bind_secret(self, agent_id: str, binding: SecretBinding) -> None:
        """Bind a credential to an agent (replacing an earlier binding of the same credential)."""
        with self._tx() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO secret_bindings (agent_id, secret, env, file, header) VALUES (?, ?, ?, ?, ?)",
                (
                    agent_id,
                    binding.secret,
                    binding.env,
                    binding.file,
                    binding.header.model_dump_json() if binding.header else None,
                ),
            )
            where = ", ".join(
                part
                for part in (
                    f"env {binding.env}" if binding.env else "",
                    binding.file or "",
                    f"header {binding.header.describe()}" if binding.header else "",
                )
                if part
            )
            self._insert_event(conn, agent_id, "secret-bound", f"{binding.secret} -> {where}")

    def unbind_secret(self, agent_id: str, secret: str) -> bool:
        """Remove a binding; returns whether there was one."""
        with self._tx() as conn:
            gone = conn.execute(
                "DELETE FROM secret_bindings WHERE agent_id = ? AND secret = ?", (agent_id, secret)
            ).rowcount
            if gone:
                self._insert_event(conn, agent_id, "secret-unbound", secret)
        return bool(gone)

    def secret_bindings(self, agent_id: str | None = None) -> list[tuple[str, SecretBinding]]:
        """(agent id, binding) pairs, of one agent when ``agent_id`` is given."""
        query = "SELECT * FROM secret_bindings" + (" WHERE agent_id = ?" if agent_id else "") + " ORDER BY secret"
        rows = self._conn.execute(query, (agent_id,) if agent_id else ()).fetchall()
        return [
            (
                r["agent_id"],
                SecretBinding(
                    secret=r["secret"],
                    env=r["env"],
                    file=r["file"],
                    header=HeaderBinding.model_validate_json(r["header"]) if r["header"] else None,
                ),
            )
            for r in rows
        ]

    # package manifest

    def packages(self, agent_id: str) -> list[PackageEntry]:
        """The agent's package manifest, by manager and name."""
        rows = self._conn.execute(
            "SELECT * FROM packages WHERE agent_id = ? ORDER BY manager, name", (agent_id,)
        ).fetchall()
        return [
            PackageEntry(
                manager=r["manager"],
                name=r["name"],
                spec=r["spec"],
                version=r["version"],
                installed_at=datetime.fromisoformat(r["installed_at"]),
            )
            for r in rows
        ]

    def record_packages(self, agent_id: str, added: list[PackageEntry], removed: list[tuple[str, str]]) -> None:
        """Add or update manifest entries and drop (manager, name) pairs, in one transaction."""
        with self._tx() as conn:
            for manager, name in removed:
                conn.execute(
                    "DELETE FROM packages WHERE agent_id = ? AND manager = ? AND name = ?", (agent_id, manager, name)
                )
            for entry in added:
                conn.execute(
                    "INSERT OR REPLACE INTO packages (agent_id, manager, name, spec, version, installed_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (agent_id, entry.manager, entry.name, entry.spec, entry.version, entry.installed_at.isoformat()),
                )
            if added:
                self._insert_event(
                    conn, agent_id, "packages-installed", ", ".join(f"{e.manager}:{e.name}=={e.version}" for e in added)
                )
            if removed:
                self._insert_event(conn, agent_id, "packages-removed", ", ".join(f"{m}:{n}" for m, n in removed))

    def set_packages(self, agent_id: str, entries: list[PackageEntry]) -> None:
        """Replace the agent's whole manifest (after a restore or fork: the snapshot's manifest)."""
        with self._tx() as conn:
            self._replace_packages(conn, agent_id, entries)

    @staticmethod
    def _replace_packages(conn: sqlite3.Connection, agent_id: str, entries: list[PackageEntry]) -> None:
        conn.execute("DELETE FROM packages WHERE agent_id = ?", (agent_id,))
        for entry in entries:
            conn.execute(
                "INSERT INTO packages (agent_id, manager, name, spec, version, installed_at) VALUES (?, ?, ?, ?, ?, ?)",
                (agent_id, entry.manager, entry.name, entry.spec, entry.version, entry.installed_at.isoformat()),
            )

    def detach_machine(
        self,
        agent_id: str,
        *,
        head: tuple[str, list[PackageEntry]] | None = None,
        policy: Policy | None = None,
    ) -> None:
        """In one transaction: forget the agent's machine (hibernated: the next wake makes one from its head),
        and move its head to ``head`` (snapshot id, that snapshot's package manifest) or give it ``policy``.
        A process that dies after this leaves an agent whose next wake completes the change; before it, the
        agent as it was."""
        with self._tx() as conn:
            conn.execute(
                "UPDATE agents SET machine_id = NULL, state = ? WHERE id = ?", (AgentState.HIBERNATED.value, agent_id)
            )
            if head is not None:
                conn.execute("UPDATE agents SET head_snapshot = ? WHERE id = ?", (head[0], agent_id))
                self._replace_packages(conn, agent_id, head[1])
            if policy is not None:
                conn.execute("UPDATE agents SET policy = ? WHERE id = ?", (policy.model_dump_json(), agent_id))
                self._insert_event(conn, agent_id, "policy-changed", policy.describe())

    # events

    def record_event(
        self, agent_id: str | None, kind: str, detail: str = "", data: dict[str, Any] | None = None
    ) -> None:
        """Append an event (of an agent, or of the runtime when ``agent_id`` is None), with who caused it."""
        with self._tx() as conn:
            self._insert_event(conn, agent_id, kind, detail, data)

    def events(
        self,
        agent_id: str | None = None,
        limit: int = 50,
        *,
        kinds: Sequence[str] = (),
        since: datetime | None = None,
        after: int | None = None,
        before: int | None = None,
        agent_name: str | None = None,
    ) -> list[Event]:
        """Matching events, oldest first: the first ``limit`` with an id above ``after`` when it is given
        (to follow the log), else the newest ``limit`` (below ``before``, to page back).

        ``agent_name`` matches events recorded under that name, also of a removed agent.
        """
        where: list[str] = []
        args: list[str | int] = []
        if agent_id is not None:
            where.append("agent_id = ?")
            args.append(agent_id)
        if agent_name is not None:
            where.append("agent = ?")
            args.append(agent_name)
        if kinds:
            where.append(f"kind IN ({', '.join('?' * len(kinds))})")
            args.extend(kinds)
        if since is not None:
            where.append("at >= ?")
            args.append(since.astimezone(UTC).isoformat())
        if after is not None:
            where.append("id > ?")
            args.append(after)
        if before is not None:
            where.append("id < ?")
            args.append(before)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        order = "ASC" if after is not None else "DESC"
        rows = self._conn.execute(
            f"SELECT * FROM events {clause} ORDER BY id {order} LIMIT ?", (*args, limit)
        ).fetchall()
        events = [_event(row) for row in rows]
        return events if after is not None else events[::-1]

    def last_event_id(self) -> int:
        """The id of the newest event (0 when there is none): cheap, for noticing new events."""
        row = self._conn.execute("SELECT MAX(id) FROM events").fetchone()
        return int(row[0] or 0)

    def last_events(self, agent_ids: Sequence[str]) -> dict[str, Event]:
        """Each agent's newest event, in one query."""
        if not agent_ids:
            return {}
        marks = ", ".join("?" * len(agent_ids))
        rows = self._conn.execute(
            f"SELECT * FROM events WHERE id IN (SELECT MAX(id) FROM events WHERE agent_id IN ({marks}) "
            f"GROUP BY agent_id)",
            tuple(agent_ids),
        ).fetchall()
        return {row["agent_id"]: _event(row) for row in rows}

    def trim_events(self) -> int:
        """Apply retention now: drop events older than the age limit and beyond the per-agent count.

        Runs on its own connection, so it never holds up this one's callers; returns how many went.
        """
        with self._trimming:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            try:
                cutoff = (_now() - timedelta(days=self.events_max_age_days)).isoformat()
                gone = conn.execute("DELETE FROM events WHERE at < ?", (cutoff,)).rowcount
                crowded = conn.execute(
                    "SELECT agent_id FROM events GROUP BY agent_id HAVING COUNT(*) > ?", (self.events_keep,)
                ).fetchall()
                for (agent_id,) in crowded:
                    match = "agent_id IS ?" if agent_id is None else "agent_id = ?"
                    gone += conn.execute(
                        f"DELETE FROM events WHERE {match} AND id <= (SELECT id FROM events WHERE {match} "
                        f"ORDER BY id DESC LIMIT 1 OFFSET ?)",
                        (agent_id, agent_id, self.events_keep),
                    ).rowcount
                return gone
            finally:
                conn.close()

    def _insert_event(
        self,
        conn: sqlite3.Connection,
        agent_id: str | None,
        kind: str,
        detail: str,
        data: dict[str, Any] | None = None,
    ) -> None:
        actor = current_actor()
        payload = _redacted(data or {}, self.redact)
        row = (
            agent_id,
            agent_id,
            _now().isoformat(),
            kind,
            self.redact(detail),
            json.dumps(payload, separators=(",", ":"), default=str),
            json.dumps(actor.as_dict()) if actor is not None else None,
        )
        cursor = conn.execute(
            "INSERT INTO events (agent_id, agent, at, kind, detail, data, actor) "
            "VALUES (?, (SELECT name FROM agents WHERE id = ?), ?, ?, ?, ?, ?) RETURNING *",
            row,
        )
        self._pending.append(_event(cursor.fetchone()))
        cursor.close()

    def _announce(self, events: list[Event]) -> None:
        for event in events:
            for listener in self.event_listeners:
                try:
                    listener(event)
                except Exception:
                    log.exception("an event listener failed on event %d", event.id)
        self._since_trim += len(events)
        if self._since_trim >= TRIM_EVERY and not self._trimming.locked():
            self._since_trim = 0
            threading.Thread(target=self._trim_quietly, name="spinup-event-trim", daemon=True).start()

    def _trim_quietly(self) -> None:
        try:
            self.trim_events()
        except sqlite3.Error:
            log.exception("trimming the event log failed; it is tried again later")

    @staticmethod
    def _agent(row: sqlite3.Row) -> Agent:
        return Agent(
            id=row["id"],
            name=row["name"],
            image=row["image"],
            policy=Policy.model_validate_json(row["policy"]),
            created_at=row["created_at"],
            machine_id=row["machine_id"],
            state=AgentState(row["state"]),
            head_snapshot=row["head_snapshot"],
            paused_at=row["paused_at"],
            paused_by=row["paused_by"],
            host=row["host"],
        )


def _event(row: sqlite3.Row) -> Event:
    return Event(
        id=row["id"],
        agent_id=row["agent_id"],
        agent=row["agent"],
        at=row["at"],
        kind=row["kind"],
        detail=row["detail"],
        data=json.loads(row["data"]),
        actor=json.loads(row["actor"]) if row["actor"] else None,
    )


def _redacted(value: Any, redact: Callable[[str], str]) -> Any:
    """``value`` (JSON-like) with every string in it redacted."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {str(key): _redacted(item, redact) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redacted(item, redact) for item in value]
    return value
