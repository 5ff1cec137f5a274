"""The snapshot store's disk filling up during a snapshot, on a tmpfs the test mounts over the store:
a clear error, no partial blob visible, the previous head intact, the agent still running; and
with room again the next snapshot works. The same for the state database's disk: each change fails
clearly with nothing recorded, the server keeps answering, and with room again all works."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from mcp import Client

from conftest import call, fails, unique_name
from spinup.runtime import Runtime, Settings
from spinup.runtime.errors import StateDiskFull
from spinup.server.app import build_server
from spinup.snapshot.errors import StoreFull

ROOMY = "2g"
MIB = 1024 * 1024


def _mount(option: str, target: Path) -> None:
    subprocess.run(["mount", "-t", "tmpfs", "-o", option, "spinup-test-store", str(target)], check=True)


@pytest.fixture
def small_store(settings: Settings) -> Iterator[Settings]:
    """Settings whose store lives on a tmpfs of its own (no shared base cache: it would be hard-linked)."""
    store = settings.home / "store"
    store.mkdir(parents=True)
    _mount(f"size={ROOMY},mode=0700", store)
    try:
        yield replace(settings, base_cache=None)
    finally:
        subprocess.run(["umount", "-l", str(store)], check=False)


def _resize(store: Path, size: int) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(store)], check=True)


async def test_a_snapshot_that_fills_the_store_fails_clearly_and_keeps_everything_as_it_was(
    small_store: Settings,
) -> None:
    runtime = Runtime(small_store)
    store = small_store.home / "store"
    name = unique_name("full")
    try:
        await runtime.create_agent(name)
        await runtime.exec(name, "echo first > /workspace/kept")
        head = (await runtime.snapshot(name, "fits")).snapshot
        blobs_before = set(os.listdir(store / "blobs" / "sha256"))
        used = os.statvfs(store)
        _resize(store, (used.f_blocks - used.f_bfree) * used.f_frsize + 8 * MIB)  # 8 MiB left
        made = await runtime.exec(
            name, "head -c 60000000 /dev/urandom > /workspace/big && echo second > /workspace/kept"
        )
        assert made.exit_code == 0

        with pytest.raises(StoreFull, match="disk is full") as failed:
            await runtime.snapshot(name, "too big")

        assert "previous snapshot is intact" in str(failed.value)
        assert os.listdir(store / "tmp") == []  # nothing partial left
        assert set(os.listdir(store / "blobs" / "sha256")) == blobs_before
        assert runtime.get_agent(name).head_snapshot == head.id
        machine = await runtime.machine(name)
        assert machine is not None and machine.running and not machine.paused
        assert (await runtime.exec(name, "cat /workspace/kept")).stdout == "second\n"
        report = await runtime.verify_store()
        assert report.ok and report.garbage == [], report

        _resize(store, 2 * 1024 * MIB)
        again = await runtime.snapshot(name, "fits now")
        assert again.created and runtime.get_agent(name).head_snapshot == again.snapshot.id
        await runtime.restore(name, head.id)
        assert (await runtime.exec(name, "cat /workspace/kept")).stdout == "first\n"
    finally:
        for agent in runtime.list_agents():
            await runtime.remove_agent(agent.name)
        await runtime.close()


@pytest.fixture
def small_home(settings: Settings) -> Iterator[Settings]:
    """Settings whose whole state directory (database, exec logs, store) is a tmpfs of its own."""
    settings.home.mkdir(parents=True)
    _mount(f"size={ROOMY},mode=0700", settings.home)
    try:
        yield replace(settings, base_cache=None)
    finally:
        subprocess.run(["umount", "-l", str(settings.home)], check=False)


def _fill(home: Path) -> Path:
    """Shrink the tmpfs to what it holds and fill any last pages: not one more byte fits."""
    used = os.statvfs(home)
    _resize(home, (used.f_blocks - used.f_bfree) * used.f_frsize)
    filler = home / "filler"
    subprocess.run(["sh", "-c", f"cat /dev/zero > {filler}"], check=False, stderr=subprocess.DEVNULL)
    assert os.statvfs(home).f_bavail == 0
    return filler


async def test_a_full_state_database_disk_fails_each_change_clearly_and_loses_nothing(small_home: Settings) -> None:
    runtime = Runtime(small_home)
    name, other = unique_name("dbfull"), unique_name("dbnew")
    try:
        await runtime.create_agent(name)
        await runtime.exec(name, "echo kept > /workspace/kept")
        head = (await runtime.snapshot(name, "before the disk filled")).snapshot
        filler = _fill(small_home.home)

        with pytest.raises(StateDiskFull, match="nothing recorded before is lost"):
            await runtime.create_agent(other)
        assert [a.name for a in runtime.list_agents()] == [name]  # no half-made agent
        async with Client(build_server(small_home)) as client:
            error = await fails(client, "exec", agent=name, command="echo more >> /workspace/kept")
            assert "disk of Spinup's state database is full" in error
            assert [a["name"] for a in (await call(client, "agent_list"))["agents"]] == [name]  # still serving
        assert runtime.get_agent(name).head_snapshot == head.id

        filler.unlink()
        _resize(small_home.home, 2 * 1024 * MIB)
        assert (await runtime.exec(name, "cat /workspace/kept")).stdout == "kept\n"
        await runtime.create_agent(other)
        await runtime.restore(name, head.id)
        assert (await runtime.exec(name, "cat /workspace/kept")).stdout == "kept\n"
        with sqlite3.connect(small_home.db_path) as db:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        for agent in runtime.list_agents():
            await runtime.remove_agent(agent.name)
        await runtime.close()
