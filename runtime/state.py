"""The state database: agents and their events in SQLite (WAL), with versioned migrations."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from .errors import AgentExists, AgentNotFound
from .models import Agent, AgentState, Event, PackageEntry, Policy, SecretBinding, Snapshot

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
)

SCHEMA_VERSION = len(MIGRATIONS)


def _now() -> datetime:
    return datetime.now(UTC)


class StateDB:
    """Agent records and event history. Each method is one short transaction."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._migrate()
        # Applied to every event detail before it is stored (the runtime sets credential redaction).
        self.redact: Callable[[str], str] = lambda text: text

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def _migrate(self) -> None:
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

    def create_agent(self, name: str, image: str, policy: Policy) -> Agent:
        """Insert a new agent record; raise :class:`AgentExists` if the name is taken."""
        agent = Agent(
            id=uuid.uuid4().hex[:16],
            name=name,
            image=image,
            policy=policy,
            created_at=_now(),
            machine_id=None,
            state=AgentState.CREATED,
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
                        None,
                        agent.state.value,
                    ),
                )
                self._insert_event(conn, agent.id, "created", f"image={image} {policy.describe()}")
        except sqlite3.IntegrityError as exc:
            raise AgentExists(name) from exc
        return agent

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

    def list_agents(self) -> list[Agent]:
        """All agents, oldest first."""
        rows = self._conn.execute("SELECT * FROM agents ORDER BY created_at, name").fetchall()
        return [self._agent(row) for row in rows]

    def set_image(self, agent_id: str, image: str) -> None:
        """Move the agent to another base image; its head snapshot (tied to the old base) is dropped."""
        with self._tx() as conn:
            conn.execute(
                "UPDATE agents SET image = ?, head_snapshot = NULL, machine_id = NULL, state = ? WHERE id = ?",
                (image, AgentState.MISSING.value, agent_id),
            )
            self._insert_event(conn, agent_id, "image-changed", f"base image is now {image}")

    def set_machine(self, agent_id: str, machine_id: str | None, state: AgentState) -> None:
        """Record the agent's current machine and its state."""
        with self._tx() as conn:
            conn.execute(
                "UPDATE agents SET machine_id = ?, state = ? WHERE id = ?", (machine_id, state.value, agent_id)
            )

    def delete_agent(self, agent_id: str) -> None:
        """Remove the agent record and its events."""
        with self._tx() as conn:
            conn.execute("DELETE FROM agents WHERE id = ?", (agent_id,))
            conn.execute("DELETE FROM events WHERE agent_id = ?", (agent_id,))
            conn.execute("DELETE FROM secret_bindings WHERE agent_id = ?", (agent_id,))
            conn.execute("DELETE FROM packages WHERE agent_id = ?", (agent_id,))

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

    def add_snapshot(self, snapshot: Snapshot, move_head: bool = True) -> None:
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

    def snapshot_children(self, snapshot_id: str) -> list[str]:
        """Ids of snapshots whose parent is ``snapshot_id``."""
        rows = self._conn.execute("SELECT id FROM snapshots WHERE parent_id = ?", (snapshot_id,)).fetchall()
        return [r["id"] for r in rows]

    def agents_with_head(self, snapshot_id: str) -> list[str]:
        """Names of agents whose head is ``snapshot_id``."""
        rows = self._conn.execute("SELECT name FROM agents WHERE head_snapshot = ?", (snapshot_id,)).fetchall()
        return [r["name"] for r in rows]

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
                "INSERT OR REPLACE INTO secret_bindings (agent_id, secret, env, file) VALUES (?, ?, ?, ?)",
                (agent_id, binding.secret, binding.env, binding.file),
            )
            where = ", ".join(
                part for part in (f"env {binding.env}" if binding.env else "", binding.file or "") if part
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
        return [(r["agent_id"], SecretBinding(secret=r["secret"], env=r["env"], file=r["file"])) for r in rows]

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
            conn.execute("DELETE FROM packages WHERE agent_id = ?", (agent_id,))
            for entry in entries:
                conn.execute(
                    "INSERT INTO packages (agent_id, manager, name, spec, version, installed_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (agent_id, entry.manager, entry.name, entry.spec, entry.version, entry.installed_at.isoformat()),
                )

    # events

    def record_event(self, agent_id: str, kind: str, detail: str = "") -> None:
        """Append an event to the agent's history."""
        with self._tx() as conn:
            self._insert_event(conn, agent_id, kind, detail)

    def events(self, agent_id: str, limit: int = 50) -> list[Event]:
        """The agent's most recent events, oldest first."""
        rows = self._conn.execute(
            "SELECT * FROM events WHERE agent_id = ? ORDER BY id DESC LIMIT ?", (agent_id, limit)
        ).fetchall()
        return [
            Event(id=r["id"], agent_id=r["agent_id"], at=r["at"], kind=r["kind"], detail=r["detail"])
            for r in reversed(rows)
        ]

    def _insert_event(self, conn: sqlite3.Connection, agent_id: str, kind: str, detail: str) -> None:
        conn.execute(
            "INSERT INTO events (agent_id, at, kind, detail) VALUES (?, ?, ?, ?)",
            (agent_id, _now().isoformat(), kind, self.redact(detail)),
        )

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
        )
