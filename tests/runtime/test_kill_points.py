"""kill -9 of a Spinup process in the middle of an exec, a package install, a restore, a policy change,
a fork and a rebuild (a rebuild cancelled or failing in process is rolled back the same way).

Each case runs the CLI in a subprocess that SIGKILLs itself at a named point
(``SPINUP_CRASH_AT``), then checks from a fresh runtime: the agent answers with the state the
point implies, no machine is left frozen, the store verifies (``gc`` removes what the crash left),
the head restores exactly, and the state database passes ``PRAGMA integrity_check``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
from pathlib import Path

import pytest

from conftest import docker_cli, unique_name
from package_sources import make_wheel
from spinup.runtime import Runtime, Settings
from spinup.runtime.agents import (
    FORK_RECORDED,
    POLICY_CAPTURED,
    POLICY_RECORDED,
    REBUILD_MOVED,
    RESTORE_CAPTURED,
    RESTORE_HEAD_MOVED,
)
from spinup.runtime.config import DEFAULT_IMAGE
from spinup.runtime.packages import PACKAGES_INSTALLED
from spinup.runtime.runtime import EXEC_RUNNING

SPINUP = str(Path(sys.executable).with_name("spinup"))
CLI_DEADLINE = 180


async def _killed_at(settings: Settings, point: str, *args: str) -> int:
    env = {**os.environ, "SPINUP_HOME": str(settings.home), "SPINUP_CRASH_AT": point, "DOCKER_API_VERSION": "1.41"}
    proc = await asyncio.create_subprocess_exec(
        SPINUP, *args, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    async with asyncio.timeout(CLI_DEADLINE):
        return await proc.wait()


async def _healthy(runtime: Runtime, name: str) -> None:
    """No machine of the agent frozen, the store clean after gc, the head restoring, the database sound."""
    machine = await runtime.machine(name)
    assert machine is not None and machine.running and not machine.paused
    record = runtime.get_agent(name)
    machines = docker_cli("ps", "-aq", "--no-trunc", "--filter", f"label=spinup.agent={record.id}").stdout.split()
    assert machines == [record.machine_id]  # no stray machine of an interrupted change is left
    await runtime.collect_garbage()
    report = await runtime.verify_store()
    assert report.ok and report.garbage == [], report
    head = runtime.get_agent(name).head_snapshot
    assert head is not None
    before = (await runtime.exec(name, "cat /workspace/state")).stdout
    await runtime.restore(name, head)
    assert (await runtime.exec(name, "cat /workspace/state")).stdout == before
    with sqlite3.connect(runtime.settings.db_path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)


@pytest.mark.parametrize("point", [RESTORE_CAPTURED, RESTORE_HEAD_MOVED])
async def test_a_kill_during_a_restore_leaves_the_agent_before_or_after_it(
    runtime: Runtime, agent: str, point: str
) -> None:
    await runtime.exec(agent, "echo v1 > /workspace/state")
    first = (await runtime.snapshot(agent, "v1")).snapshot
    await runtime.exec(agent, "echo v2 > /workspace/state")

    assert await _killed_at(runtime.settings, point, "snapshot", "restore", agent, first.id) == -signal.SIGKILL

    fresh = Runtime(runtime.settings)
    try:
        # Before the head moved the agent is as it was (its work captured first); after, it is the target.
        wanted = "v2\n" if point == RESTORE_CAPTURED else "v1\n"
        assert (await fresh.exec(agent, "cat /workspace/state")).stdout == wanted
        if point == RESTORE_HEAD_MOVED:
            assert fresh.get_agent(agent).head_snapshot == first.id
        await _healthy(fresh, agent)
        await fresh.restore(agent, first.id)
        assert (await fresh.exec(agent, "cat /workspace/state")).stdout == "v1\n"
    finally:
        await fresh.close()


@pytest.mark.parametrize("point", [POLICY_CAPTURED, POLICY_RECORDED])
async def test_a_kill_during_a_policy_change_leaves_the_old_policy_or_the_new_one_whole(
    runtime: Runtime, agent: str, point: str
) -> None:
    await runtime.exec(agent, "echo kept > /workspace/state")
    old_nofile = runtime.get_agent(agent).policy.nofile  # set at creation: a change of it rebuilds the machine

    code = await _killed_at(runtime.settings, point, "agent", "policy", agent, "--nofile", "4096")
    assert code == -signal.SIGKILL

    fresh = Runtime(runtime.settings)
    try:
        assert (await fresh.exec(agent, "cat /workspace/state")).stdout == "kept\n"
        assert fresh.get_agent(agent).policy.nofile == (4096 if point == POLICY_RECORDED else old_nofile)
        expected = 4096 if point == POLICY_RECORDED else old_nofile
        assert (await fresh.exec(agent, "ulimit -n")).stdout == f"{expected}\n"
        await _healthy(fresh, agent)
    finally:
        await fresh.close()


async def test_a_kill_during_a_fork_leaves_a_fork_that_wakes_from_its_snapshot(runtime: Runtime, agent: str) -> None:
    await runtime.exec(agent, "echo forked > /workspace/state")
    source = (await runtime.snapshot(agent, "to fork")).snapshot
    fork = unique_name("fork")

    assert await _killed_at(runtime.settings, FORK_RECORDED, "snapshot", "fork", source.id, fork) == -signal.SIGKILL

    fresh = Runtime(runtime.settings)
    try:
        assert fresh.get_agent(fork).head_snapshot == source.id
        assert (await fresh.exec(fork, "cat /workspace/state")).stdout == "forked\n"
        await _healthy(fresh, fork)
    finally:
        await fresh.close()


async def test_a_kill_during_an_exec_leaves_the_agent_answering(runtime: Runtime, agent: str) -> None:
    await runtime.exec(agent, "echo still > /workspace/state")
    await runtime.snapshot(agent, "before")

    code = await _killed_at(
        runtime.settings, EXEC_RUNNING, "exec", agent, "--", "sh", "-c", "sleep 2; echo late > /workspace/late"
    )
    assert code == -signal.SIGKILL

    fresh = Runtime(runtime.settings)
    try:
        assert (await fresh.exec(agent, "cat /workspace/state")).stdout == "still\n"
        # The command itself ran on in the machine: Docker's exec does not end with the caller.
        late = await fresh.exec(
            agent, "for i in $(seq 50); do test -e /workspace/late && break; sleep 0.1; done; cat /workspace/late"
        )
        assert late.stdout == "late\n"
        await _healthy(fresh, agent)
    finally:
        await fresh.close()


def _demo_wheel(settings: Settings) -> None:
    make_wheel(settings.sources_dir / "pip", "spinup-kill-demo", "1.0", value="kill-1.0")


async def test_a_kill_after_a_package_install_leaves_the_manifest_unchanged_until_installed_again(
    runtime: Runtime, agent: str
) -> None:
    _demo_wheel(runtime.settings)
    await runtime.exec(agent, "echo kept > /workspace/state")
    await runtime.snapshot(agent, "before")

    args = ("package", "install", agent, "pip", "spinup-kill-demo")
    code = await _killed_at(runtime.settings, PACKAGES_INSTALLED, *args)
    assert code == -signal.SIGKILL

    fresh = Runtime(runtime.settings)
    try:
        assert fresh.package_manifest(agent) == []  # nothing recorded that the process did not finish
        again = await fresh.install_packages(agent, "pip", ["spinup-kill-demo"])
        assert [(e.name, e.version) for e in again.manifest] == [("spinup-kill-demo", "1.0")]
        await _healthy(fresh, agent)
    finally:
        await fresh.close()


async def _before_a_rebuild(runtime: Runtime, agent: str) -> None:
    """The agent has a package in its manifest and a file of its own."""
    _demo_wheel(runtime.settings)
    await runtime.install_packages(agent, "pip", ["spinup-kill-demo"])
    await runtime.exec(agent, "echo mine > /workspace/state")


async def _back_on_the_old_base(runtime: Runtime, agent: str) -> None:
    """The agent is as :func:`_before_a_rebuild` left it: its file, its package, the old base."""
    check = await runtime.exec(agent, "cat /workspace/state; test -e /etc/other-base && echo moved || echo old")
    assert check.stdout == "mine\nold\n", check.stderr
    assert runtime.get_agent(agent).image == DEFAULT_IMAGE
    assert [(e.name, e.version) for e in runtime.package_manifest(agent)] == [("spinup-kill-demo", "1.0")]


async def test_a_kill_during_a_rebuild_puts_the_agent_back_on_its_old_base_with_everything(
    runtime: Runtime, agent: str, other_base: str
) -> None:
    await _before_a_rebuild(runtime, agent)

    assert await _killed_at(runtime.settings, REBUILD_MOVED, "agent", "rebuild", agent, "--image", other_base) == (
        -signal.SIGKILL
    )

    fresh = Runtime(runtime.settings)
    try:
        await _back_on_the_old_base(fresh, agent)
        assert "rebuild-rolled-back" in [e.kind for e in fresh.events(agent, limit=50)]
        await _healthy(fresh, agent)
        rebuilt = await fresh.rebuild(agent, other_base)  # and the rebuild can be done again
        assert [o.version for o in rebuilt.packages] == ["1.0"]
        assert (await fresh.exec(agent, "cat /workspace/state /etc/other-base")).stdout == "mine\nother\n"
    finally:
        await fresh.close()


async def test_a_rebuild_cancelled_halfway_is_rolled_back_at_once(
    runtime: Runtime, agent: str, other_base: str
) -> None:
    await _before_a_rebuild(runtime, agent)
    record = runtime.get_agent(agent)

    moved = asyncio.Event()
    stop_listening = runtime.on_event(lambda e: moved.set() if e.kind == "machine-created" else None)
    rebuild = asyncio.create_task(runtime.rebuild(agent, other_base))
    async with asyncio.timeout(120):
        await moved.wait()  # the new machine runs; files and packages are still to come
    stop_listening()
    assert runtime.get_agent(agent).image == other_base
    rebuild.cancel()
    with pytest.raises(asyncio.CancelledError):
        await rebuild

    after = runtime.get_agent(agent)
    assert after.image == DEFAULT_IMAGE and after.head_snapshot is not None
    assert after.head_snapshot != record.head_snapshot  # the snapshot taken before the rebuild
    await _back_on_the_old_base(runtime, agent)
    await _healthy(runtime, agent)
