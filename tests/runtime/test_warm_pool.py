"""The warm pool against the real daemon: spares made ahead, claimed by agent_create with the agent's
name, limits and hostname, the cold path for what a spare cannot become, one claim per spare across
processes, spares of another state directory left alone, and reaping by a server's shutdown and by
``spinup doctor --fix``."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from mcp import Client

from conftest import call, docker_cli, server_env, unique_name
from spinup.runtime import Policy, Runtime, Settings
from spinup.runtime.config import parse_warm_pool
from spinup.runtime.errors import InvalidInput
from spinup.runtime.pool import SPARE_LABEL, claimable, home_key
from spinup.server.app import build_server

SPINUP = str(Path(sys.executable).with_name("spinup"))


def pooled(settings: Settings, spares: int = 2) -> Settings:
    return replace(settings, warm_pool={"": spares})


@pytest.fixture
async def pool_runtime(settings: Settings) -> AsyncIterator[Runtime]:
    runtime = Runtime(pooled(settings))
    try:
        yield runtime
    finally:
        for agent in runtime.list_agents():
            await runtime.remove_agent(agent.name)
        await runtime.reap_spares()
        await runtime.close()


def spares_on_daemon(settings: Settings) -> list[str]:
    return docker_cli("ps", "-aq", "--filter", f"label={SPARE_LABEL}={home_key(settings)}").stdout.split()


async def machines_labelled_spare(settings: Settings, count: int) -> None:
    """Wait (up to a minute) until ``count`` machines carry this state directory's spare label."""
    for _ in range(600):
        if len(spares_on_daemon(settings)) >= count:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"fewer than {count} spare machines after a minute: {spares_on_daemon(settings)}")


async def test_a_new_agent_takes_a_spare_with_its_own_name_hostname_and_user(pool_runtime: Runtime) -> None:
    assert await pool_runtime.fill_pool() == 2
    assert await pool_runtime.spare_count() == 2 and pool_runtime.list_agents() == []
    name = unique_name("warm")

    agent = await pool_runtime.create_agent(name)

    created = [e for e in pool_runtime.events(name, limit=20) if e.kind == "machine-created"]
    assert [e.detail.endswith("from the warm pool") for e in created] == [True]
    check = await pool_runtime.exec(name, 'hostname; cat /etc/hostname; echo "$SPINUP_AGENT"; id -u; pwd')
    assert check.stdout == f"{name}\n{name}\n{name}\n1000\n/workspace\n", check.stderr
    assert agent.machine_id is not None
    assert docker_cli("inspect", "-f", "{{.Name}}", agent.machine_id).stdout.strip().startswith(f"/spinup-{name}-")
    assert await pool_runtime.spare_count() == 1  # the claimed one is the agent's now
    await pool_runtime.exec(name, "echo kept > /workspace/f")
    await pool_runtime.stop_agent(name, hibernate=True)  # and it snapshots and rehydrates as any machine
    assert (await pool_runtime.exec(name, "cat /workspace/f; hostname")).stdout == f"kept\n{name}\n"


async def test_limits_are_applied_live_and_other_policies_start_cold(pool_runtime: Runtime) -> None:
    await pool_runtime.fill_pool()
    limited = unique_name("lim")
    agent = await pool_runtime.create_agent(limited, policy=Policy(memory=512 * 1024 * 1024, pids=300, cpus=1))
    assert agent.machine_id is not None
    limits = docker_cli(
        "inspect", "-f", "{{.HostConfig.Memory}} {{.HostConfig.PidsLimit}} {{.HostConfig.NanoCpus}}", agent.machine_id
    ).stdout.split()
    assert limits == [str(512 * 1024 * 1024), "300", "1000000000"]
    assert any(e.detail.endswith("from the warm pool") for e in pool_runtime.events(limited, limit=20))
    cold = unique_name("cold")
    await pool_runtime.create_agent(cold, policy=Policy(package_cache=False))
    assert not any("warm pool" in e.detail for e in pool_runtime.events(cold, limit=20))
    assert await pool_runtime.spare_count() == 1  # the cold agent took none


async def test_two_processes_creating_at_once_never_share_a_spare(settings: Settings) -> None:
    first, second = Runtime(pooled(settings, 1)), Runtime(pooled(settings, 1))
    names = [unique_name("race") for _ in range(4)]
    try:
        assert await first.fill_pool() == 1
        await asyncio.gather(*(rt.create_agent(n) for rt, n in zip([first, second] * 2, names, strict=True)))
        machines = {first.get_agent(n).machine_id for n in names}
        assert len(machines) == 4
        for name in names:
            assert (await second.exec(name, "hostname")).stdout == f"{name}\n"
        warm = [n for n in names if any("warm pool" in e.detail for e in first.events(n, limit=20))]
        assert len(warm) == 1
    finally:
        for name in names:
            await first.remove_agent(name)
        await first.reap_spares()
        await first.close()
        await second.close()


async def test_spares_of_another_state_directory_are_left_alone(settings: Settings, tmp_path: Path) -> None:
    mine, theirs = Runtime(pooled(settings, 1)), Runtime(pooled(replace(settings, home=tmp_path / "other"), 1))
    try:
        await theirs.fill_pool()
        assert await mine.spare_count() == 0
        name = unique_name("own")
        await mine.create_agent(name)
        assert not any("warm pool" in e.detail for e in mine.events(name, limit=20))
        assert await theirs.spare_count() == 1
        await mine.remove_agent(name)
    finally:
        await theirs.reap_spares()
        await mine.close()
        await theirs.close()


async def test_a_server_keeps_the_pool_filled_and_removes_its_spares_when_it_stops(settings: Settings) -> None:
    pool = pooled(settings)
    name = unique_name("srv")
    async with Client(build_server(pool)) as client:
        await machines_labelled_spare(pool, 2)
        await call(client, "agent_create", name=name)
        assert (await call(client, "exec", agent=name, command="hostname"))["stdout"] == f"{name}\n"
        await machines_labelled_spare(pool, 3)  # refilled after the claim (the claimed one keeps its label)
        await call(client, "agent_remove", agent=name)
    assert spares_on_daemon(pool) == []
    assert not pool.cache_dir.exists() or list(pool.cache_dir.iterdir()) == []  # no spare's caches left


async def test_doctor_fix_removes_the_spares(pool_runtime: Runtime) -> None:
    await pool_runtime.fill_pool()
    env = {**server_env(pool_runtime.settings), "SPINUP_WARM_POOL": "2"}
    report = await asyncio.to_thread(
        subprocess.run, [SPINUP, "doctor"], env=env, capture_output=True, text=True, timeout=120
    )
    assert "warm pool: 2 spare machine(s) ready" in report.stdout, report.stdout + report.stderr
    fixed = await asyncio.to_thread(
        subprocess.run, [SPINUP, "doctor", "--fix"], env=env, capture_output=True, text=True, timeout=120
    )
    assert "removed 2 spare machine(s)" in fixed.stdout, fixed.stdout + fixed.stderr
    assert await pool_runtime.spare_count() == 0 and spares_on_daemon(pool_runtime.settings) == []
    assert os.environ["SPINUP_WARM_POOL"] == "0"  # the rest of the suite runs without spares


def test_the_pool_setting_takes_a_count_or_image_counts_and_refuses_anything_else() -> None:
    assert parse_warm_pool("2") == {"": 2}
    assert parse_warm_pool("0") == {"": 0}
    assert parse_warm_pool("spinup/base:bookworm=3, localhost:5000/team/img:1=1") == {
        "spinup/base:bookworm": 3,
        "localhost:5000/team/img:1": 1,
    }
    for bad in ("-1", "many", "img=", "img=65", "=x"):
        with pytest.raises(InvalidInput, match="SPINUP_WARM_POOL"):
            parse_warm_pool(bad)


def test_only_the_default_policy_with_other_limits_or_self_control_can_take_a_spare() -> None:
    assert claimable(Policy()) and claimable(Policy(cpus=1, memory=256 * 1024 * 1024, pids=64, disk=None))
    assert claimable(Policy(self_control=True))
    for other in (Policy(user="root"), Policy(network="host"), Policy(package_cache=False), Policy(nofile=1024)):
        assert not claimable(other), other


async def test_a_spare_that_stopped_is_replaced_with_its_caches(pool_runtime: Runtime) -> None:
    assert await pool_runtime.fill_pool() == 2
    stopped = spares_on_daemon(pool_runtime.settings)[0]
    drawn = docker_cli("inspect", "-f", '{{index .Config.Labels "spinup.agent"}}', stopped).stdout.strip()
    assert (pool_runtime.settings.cache_dir / drawn).is_dir()
    docker_cli("stop", "-t", "0", stopped)  # as after a daemon restart

    assert await pool_runtime.fill_pool() == 1
    assert stopped not in " ".join(spares_on_daemon(pool_runtime.settings))
    assert len(spares_on_daemon(pool_runtime.settings)) == 2
    assert not (pool_runtime.settings.cache_dir / drawn).exists()
