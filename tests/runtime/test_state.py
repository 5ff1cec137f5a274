"""The state database: real SQLite files, migrations, uniqueness, events."""

from __future__ import annotations

import sqlite3
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from spinup.runtime.actors import Actor, acting_as
from spinup.runtime.errors import AgentExists, AgentNotFound
from spinup.runtime.models import AgentState, Policy
from spinup.runtime.state import MIGRATIONS, SCHEMA_VERSION, StateDB


def test_a_new_database_is_migrated_to_the_current_schema_in_wal_mode(tmp_path: Path) -> None:
    db = StateDB(tmp_path / "state.db")
    try:
        assert db.schema_version == SCHEMA_VERSION
        mode = sqlite3.connect(tmp_path / "state.db").execute("PRAGMA journal_mode").fetchone()[0]
        assert mode == "wal"
    finally:
        db.close()


def test_reopening_keeps_agents_and_does_not_migrate_again(tmp_path: Path) -> None:
    db = StateDB(tmp_path / "state.db")
    created = db.create_agent("keep-me", "img:1", Policy())
    db.close()
    db = StateDB(tmp_path / "state.db")
    try:
        assert db.get_agent("keep-me") == created
        assert db.schema_version == SCHEMA_VERSION
    finally:
        db.close()


def test_a_database_from_a_newer_spinup_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(RuntimeError, match="Upgrade Spinup"):
        StateDB(path)


def test_names_are_unique(tmp_path: Path) -> None:
    db = StateDB(tmp_path / "state.db")
    try:
        db.create_agent("dup", "img", Policy())
        with pytest.raises(AgentExists):
            db.create_agent("dup", "img", Policy())
        assert [a.name for a in db.list_agents()] == ["dup"]
    finally:
        db.close()


def test_policy_defaults_to_no_network_and_survives_a_round_trip(tmp_path: Path) -> None:
    db = StateDB(tmp_path / "state.db")
    try:
        db.create_agent("p1", "img", Policy())
        db.create_agent("p2", "img", Policy(network="host"))
        assert db.get_agent("p1").policy.network == "none"
        assert db.get_agent("p2").policy.network == "host"
    finally:
        db.close()


def test_machine_state_and_events_are_recorded_and_outlive_the_agent(tmp_path: Path) -> None:
    db = StateDB(tmp_path / "state.db")
    try:
        agent = db.create_agent("ev", "img", Policy())
        db.set_machine(agent.id, "abc", AgentState.RUNNING)
        db.record_event(agent.id, "machine-started", "abc")
        fresh = db.get_agent("ev")
        assert (fresh.machine_id, fresh.state) == ("abc", AgentState.RUNNING)
        assert [e.kind for e in db.events(agent.id)] == ["created", "machine-started"]
        db.delete_agent(agent.id, ("removed", "gone"))
        with pytest.raises(AgentNotFound):
            db.get_agent("ev")
        # The history stays under the agent's name until retention trims it.
        assert [e.kind for e in db.events(agent_name="ev")] == ["created", "machine-started", "removed"]
        assert {e.agent for e in db.events(agent.id)} == {"ev"}
    finally:
        db.close()


def test_events_carry_the_actor_a_payload_and_filter_by_kind_time_and_id(tmp_path: Path) -> None:
    db = StateDB(tmp_path / "state.db")
    seen: list[str] = []
    db.event_listeners.append(lambda event: seen.append(event.kind))
    try:
        agent = db.create_agent("ev", "img", Policy())
        with acting_as(Actor("claude-code", "2.1.0", "stdio", "s1")):
            db.record_event(agent.id, "exec", "ls", {"exit_code": 0, "nested": ["a", {"b": 1}]})
        db.record_event(None, "tool-call", "agent_list: ok", {"tool": "agent_list"})
        assert seen == ["created", "exec", "tool-call"]
        everything = db.events()
        assert [e.kind for e in everything] == ["created", "exec", "tool-call"]
        exec_event = everything[1]
        assert exec_event.client == "claude-code" and exec_event.actor == {
            "client": "claude-code",
            "version": "2.1.0",
            "transport": "stdio",
            "session": "s1",
        }
        assert exec_event.data == {"exit_code": 0, "nested": ["a", {"b": 1}]}
        assert everything[0].client is None and everything[2].agent_id is None
        assert [e.kind for e in db.events(kinds=["exec", "tool-call"])] == ["exec", "tool-call"]
        assert [e.kind for e in db.events(after=everything[0].id, limit=1)] == ["exec"]
        assert [e.kind for e in db.events(before=everything[2].id, limit=1)] == ["exec"]
        assert db.events(since=datetime.now(UTC) + timedelta(minutes=1)) == []
        assert db.last_event_id() == everything[2].id
        assert db.last_events([agent.id])[agent.id].kind == "exec"
    finally:
        db.close()


def test_retention_trims_by_count_per_agent_and_by_age(tmp_path: Path) -> None:
    db = StateDB(tmp_path / "state.db")
    try:
        db.events_keep = 5
        one = db.create_agent("one", "img", Policy())
        two = db.create_agent("two", "img", Policy())
        for index in range(12):
            db.record_event(one.id, "note", str(index))
        db.record_event(two.id, "note", "kept")
        old = (datetime.now(UTC) - timedelta(days=40)).isoformat()
        with db.transaction() as conn:
            conn.execute("UPDATE events SET at = ? WHERE agent_id = ? AND detail = 'kept'", (old, two.id))
        gone = db.trim_events()
        assert gone == 8 + 1
        assert [e.detail for e in db.events(one.id)] == ["7", "8", "9", "10", "11"]
        assert [e.kind for e in db.events(two.id)] == ["created"]
    finally:
        db.close()


def test_events_written_before_this_schema_are_migrated_with_their_agent_name(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    conn = sqlite3.connect(path)
    for statement in ";".join(MIGRATIONS[:4]).split(";"):
        if statement.strip():
            conn.execute(statement)
    conn.execute(
        "INSERT INTO agents (id, name, image, policy, created_at, state) VALUES ('a1', 'old', 'img', ?, ?, 'running')",
        (Policy().model_dump_json(), datetime.now(UTC).isoformat()),
    )
    conn.execute(
        "INSERT INTO events (agent_id, at, kind, detail) VALUES ('a1', ?, 'created', 'x')",
        (datetime.now(UTC).isoformat(),),
    )
    conn.execute("PRAGMA user_version = 4")
    conn.commit()
    conn.close()
    db = StateDB(path)
    try:
        (event,) = db.events("a1")
        assert (event.agent, event.kind, event.data, event.actor) == ("old", "created", {}, None)
        assert db.get_agent("old").paused_at is None
    finally:
        db.close()


def test_agents_from_before_policies_had_a_user_keep_running_as_root(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    conn = sqlite3.connect(path)
    for statement in ";".join(MIGRATIONS[:2]).split(";"):
        if statement.strip():
            conn.execute(statement)
    conn.execute(
        "INSERT INTO agents (id, name, image, policy, created_at, machine_id, state) "
        "VALUES ('old1', 'old', 'img', '{\"network\": \"host\"}', '2026-01-01T00:00:00+00:00', NULL, 'stopped')"
    )
    conn.execute("PRAGMA user_version = 2")
    conn.commit()
    conn.close()
    db = StateDB(path)
    try:
        old = db.get_agent("old")
        assert old.policy.user == "root" and old.policy.network == "host"
        assert db.create_agent("new", "img", Policy()).policy.user == "agent"
    finally:
        db.close()


def test_the_state_directory_and_database_are_the_operators_alone(tmp_path: Path) -> None:
    home = tmp_path / "home"
    db = StateDB(home / "state.db")
    try:
        db.record_event(None, "note", "x")
        assert stat.S_IMODE(home.stat().st_mode) == 0o700
        for name in ("state.db", "state.db-wal", "state.db-shm"):
            assert stat.S_IMODE((home / name).stat().st_mode) == 0o600, name
    finally:
        db.close()
