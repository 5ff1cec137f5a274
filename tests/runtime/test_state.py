"""The state database: real SQLite files, migrations, uniqueness, events."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

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


def test_machine_state_and_events_are_recorded_and_deleted_with_the_agent(tmp_path: Path) -> None:
    db = StateDB(tmp_path / "state.db")
    try:
        agent = db.create_agent("ev", "img", Policy())
        db.set_machine(agent.id, "abc", AgentState.RUNNING)
        db.record_event(agent.id, "machine-started", "abc")
        fresh = db.get_agent("ev")
        assert (fresh.machine_id, fresh.state) == ("abc", AgentState.RUNNING)
        assert [e.kind for e in db.events(agent.id)] == ["created", "machine-started"]
        db.delete_agent(agent.id)
        with pytest.raises(AgentNotFound):
            db.get_agent("ev")
        assert db.events(agent.id) == []
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
