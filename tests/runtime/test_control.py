"""Pause, resume and kill against the real daemon: the states around them and what they leave behind."""

from __future__ import annotations

import asyncio
import stat
import time
from dataclasses import replace

import pytest

from conftest import docker_cli, lifecycle_kinds, store_of, unique_name
from spinup.runtime import Policy, Runtime, Settings
from spinup.runtime.errors import AgentBusy, AgentPaused, ExecNotFound, WrongState


def _docker_state(machine_id: str) -> str:
    return docker_cli("inspect", "-f", "{{.State.Status}}", machine_id).stdout.strip()


async def test_a_paused_agent_can_be_stopped_snapshotted_killed_and_removed(runtime: Runtime, agent: str) -> None:
    await runtime.exec(agent, "echo before > /workspace/f")
    await runtime.pause(agent)
    snapshot = await runtime.snapshot(agent, "while paused")
    assert snapshot.created
    stopped = await runtime.stop_agent(agent)
    assert stopped.paused_at is None and stopped.machine_id is not None
    assert _docker_state(stopped.machine_id) == "exited"
    assert (await runtime.exec(agent, "cat /workspace/f")).stdout == "before\n"

    await runtime.pause(agent)
    killed = await runtime.kill(agent)
    assert killed.paused_at is None and killed.machine_id is not None
    assert _docker_state(killed.machine_id) == "exited"
    await runtime.wake(agent)
    await runtime.pause(agent)
    removed = await runtime.remove_agent(agent)
    assert docker_cli("inspect", removed.machine_id or "", check=False).returncode != 0
    kinds = lifecycle_kinds(runtime.events(agent, 100))
    assert kinds[-1] == "removed" and kinds.count("paused") == 3 and "killed" in kinds


async def test_pausing_twice_resuming_a_running_agent_and_killing_a_stopped_one_are_refused(
    runtime: Runtime, agent: str
) -> None:
    with pytest.raises(WrongState, match="is not paused"):
        await runtime.resume(agent)
    await runtime.pause(agent)
    with pytest.raises(WrongState, match="already paused"):
        await runtime.pause(agent)
    with pytest.raises(AgentPaused, match="is paused"):
        await runtime.files(agent)
    await runtime.resume(agent)
    await runtime.stop_agent(agent, snapshot=False)
    with pytest.raises(WrongState, match="only a running agent can be paused"):
        await runtime.pause(agent)
    with pytest.raises(WrongState, match="nothing to kill"):
        await runtime.kill(agent)
    assert (await runtime.exec(agent, "echo ok")).stdout == "ok\n"


async def test_a_call_waits_for_a_freeze_held_elsewhere_and_thaws_one_left_behind_at_once(
    runtime: Runtime, settings: Settings, agent: str
) -> None:
    machine = runtime.get_agent(agent).machine_id
    assert machine is not None
    record = runtime.get_agent(agent)
    # Another Spinup process on the same state directory freezes the machine for its snapshot.
    other = Runtime(settings)
    frozen, thaw = asyncio.Event(), asyncio.Event()

    async def snapshot_elsewhere() -> None:
        async with other._agents.locks.exclusive(record):
            docker_cli("pause", machine)
            frozen.set()
            await thaw.wait()
            docker_cli("unpause", machine)

    try:
        holder = asyncio.create_task(snapshot_elsewhere())
        await frozen.wait()
        waiting = asyncio.create_task(runtime.exec(agent, "echo thawed"))
        files = asyncio.create_task(runtime.files(agent))
        await asyncio.sleep(0.5)
        assert not waiting.done() and not files.done()  # neither reached the frozen machine
        thaw.set()
        await holder
        assert (await asyncio.wait_for(waiting, 10)).stdout == "thawed\n"
        assert (await (await asyncio.wait_for(files, 10)).stat("/workspace")).type == "directory"
    finally:
        await other.close()
    # A freeze whose process died (no lock held, no pause recorded) is thawed by the next call at once.
    docker_cli("pause", machine)
    started = time.monotonic()
    assert (await asyncio.wait_for(runtime.exec(agent, "echo again"), 10)).stdout == "again\n"
    assert time.monotonic() - started < 5
    assert lifecycle_kinds(runtime.events(agent))[-1] == "machine-unpaused"


async def test_a_call_gives_up_with_agent_busy_when_another_holds_the_agent_past_the_wait(
    settings: Settings, agent: str
) -> None:
    impatient = Runtime(replace(settings, lock_wait=0.3))
    holder = Runtime(settings)
    try:
        record = impatient.get_agent(agent)
        held, done = asyncio.Event(), asyncio.Event()

        async def hold() -> None:
            async with holder._agents.locks.exclusive(record):
                held.set()
                await done.wait()

        holding = asyncio.create_task(hold())
        await held.wait()
        with pytest.raises(AgentBusy, match=f"Agent '{agent}' is busy"):
            await impatient.exec(agent, "true")
        with pytest.raises(AgentBusy):
            await impatient.snapshot(agent)
        done.set()
        await holding
        assert (await impatient.exec(agent, "echo free")).stdout == "free\n"
    finally:
        await impatient.close()
        await holder.close()


async def test_a_kill_during_a_snapshot_lets_the_snapshot_complete(runtime: Runtime, agent: str) -> None:
    made = await runtime.exec(agent, "head -c 150000000 /dev/urandom > /workspace/big && echo small > /workspace/s")
    assert made.exit_code == 0
    machine = runtime.get_agent(agent).machine_id
    assert machine is not None
    capture = asyncio.create_task(runtime.snapshot(agent, "killed meanwhile"))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        info = await runtime.machine(agent)
        if info is not None and info.paused:
            break
        await asyncio.sleep(0.01)
    else:
        pytest.fail("the snapshot never froze the machine")
    killed = await runtime.kill(agent)
    assert killed.paused_at is None
    result = await asyncio.wait_for(capture, 120)
    assert result.created and result.snapshot.paths_changed >= 2
    assert runtime.get_agent(agent).head_snapshot == result.snapshot.id
    assert _docker_state(machine) == "exited"
    report = await runtime.verify_store()
    assert report.ok, report
    back = await runtime.exec(agent, "cat /workspace/s; stat -c %s /workspace/big")
    assert back.stdout == "small\n150000000\n"


async def test_exec_outputs_are_bounded_per_agent_and_orphaned_commands_are_marked_lost(
    settings: Settings, agent: str
) -> None:
    bounded = Runtime(replace(settings, exec_logs_keep=2))
    try:
        ids = [(await bounded.exec(agent, f"echo {i}")).id for i in range(3)]
        with pytest.raises(ExecNotFound):
            bounded.exec_log(agent, ids[0])
        assert [bounded.exec_log(agent, i).stdout for i in ids[1:]] == ["1\n", "2\n"]
        assert stat.S_IMODE(settings.exec_logs_dir.stat().st_mode) == 0o700
        assert stat.S_IMODE(store_of(bounded).root.stat().st_mode) == 0o700
        kept = list((settings.exec_logs_dir / bounded.get_agent(agent).id).iterdir())
        assert sorted(p.name for p in kept) == sorted(f"{i}.json.zst" for i in ids[1:])
        # A command whose server died while waiting on it: no longer listed as running.
        with bounded._db.transaction() as conn:
            conn.execute("UPDATE execs SET state = 'running', owner_pid = 999999999 WHERE id = ?", (ids[2],))
        assert (await bounded.status(agent)).running_execs == []
        assert bounded.exec_log(agent, ids[2]).record.state == "lost"
    finally:
        await bounded.close()


async def test_a_timed_out_command_at_the_pids_limit_loses_its_daemons_too(settings: Settings) -> None:
    runtime = Runtime(settings)
    name = unique_name("pl")
    try:
        await runtime.create_agent(name, policy=Policy(pids=32))
        # A daemon that leaves the command's group and takes every process slot left.
        fill = (
            "import os, time\n"
            "while True:\n"
            "    try:\n"
            "        os.fork() or time.sleep(1000)\n"
            "    except OSError:\n"
            "        time.sleep(0.1)"
        )
        command = f"setsid python3 -c '{fill}' & sleep 1000"
        result = await runtime.exec(name, command, timeout=3)
        assert result.timed_out
        left = await runtime.exec(name, "cat /proc/[0-9]*/cmdline | tr '\\0' ' '")
        assert left.exit_code == 0 and "sleep 1000" not in left.stdout and "python3" not in left.stdout
        assert (await runtime.exec(name, "echo room")).stdout == "room\n"
    finally:
        await runtime.remove_agent(name)
        await runtime.close()
