"""The sparse-file bomb, against the real daemon (issue 16).

``truncate -s 16T`` allocates nothing, so a quota counting blocks never sees it; a capture that
reads it whole reads terabytes of zeros while the machine is paused; and Docker writes every hole
of a restored layer out as zeros. Here the apparent sizes are a few GiB: nothing real is written
once these attacks are refused.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import pytest

from conftest import docker_cli, unique_name
from spinup.runtime import Policy, Runtime, Settings
from spinup.runtime.errors import LimitReached
from spinup.runtime.snapshots import snapshot_tag

GiB = 1 << 30


async def test_a_sparse_file_costs_its_apparent_size_in_the_disk_quota(runtime: Runtime) -> None:
    name = unique_name("sparse")
    await runtime.create_agent(name, policy=Policy(disk="1g"))
    assert (await runtime.exec(name, "truncate -s 3G /workspace/x")).exit_code == 0
    status = await runtime.status(name)
    assert status.disk_used is not None and status.disk_used >= 3 * GiB
    with pytest.raises(LimitReached, match="disk quota"):
        await runtime.exec(name, "true")


async def test_a_snapshot_past_the_disk_limit_is_refused_quickly_and_the_machine_runs_on(runtime: Runtime) -> None:
    name = unique_name("sparse")
    await runtime.create_agent(name, policy=Policy(disk="1g"))
    assert (await runtime.exec(name, "truncate -s 3G /workspace/bomb")).exit_code == 0
    started = time.monotonic()
    with pytest.raises(LimitReached, match="/workspace/bomb") as refused:
        await asyncio.wait_for(runtime.snapshot(name), 30)
    assert time.monotonic() - started < 10
    assert "spinup agent policy" in str(refused.value)
    machine = await runtime.machine(name)
    assert machine is not None and machine.running and not machine.paused
    assert runtime.get_agent(name).head_snapshot is None


async def test_sparse_files_are_captured_sparse_and_restored_whole(runtime: Runtime) -> None:
    name = unique_name("sparse")
    await runtime.create_agent(name, policy=Policy(disk="1g"))
    script = "truncate -s 200M /workspace/holes && printf tail >> /workspace/holes"
    assert (await runtime.exec(name, script)).exit_code == 0
    captured = await runtime.snapshot(name)
    assert captured.snapshot.layer_uncompressed < 1 << 20  # the holes are not in the layer
    docker_cli("rm", "-f", (await runtime.machine(name)).id)  # type: ignore[union-attr]
    docker_cli("rmi", "-f", snapshot_tag(captured.snapshot.id))
    result = await runtime.exec(name, "stat -c %s /workspace/holes; tail -c 4 /workspace/holes")
    assert result.stdout == f"{200 * (1 << 20) + 4}\ntail"


async def test_a_restore_is_refused_before_loading_a_layer_that_expands_past_the_disk_limit(
    runtime: Runtime,
) -> None:
    source = unique_name("sparse")
    await runtime.create_agent(source, policy=Policy(disk="8g"))
    assert (await runtime.exec(source, "truncate -s 3G /workspace/bomb")).exit_code == 0
    captured = (await asyncio.wait_for(runtime.snapshot(source), 30)).snapshot
    docker_cli("rmi", "-f", snapshot_tag(captured.id))  # the fork must load it from the store
    started = time.monotonic()
    with pytest.raises(LimitReached, match="disk") as refused:
        await runtime.fork(captured.id, unique_name("fork"), policy=Policy(disk="1g"))
    assert time.monotonic() - started < 10
    assert "3.0 GiB" in str(refused.value) or "3 GiB" in str(refused.value), str(refused.value)
    assert docker_cli("image", "inspect", snapshot_tag(captured.id), check=False).returncode != 0


async def test_a_capture_through_the_docker_api_refuses_a_sparse_bomb_before_reading_it(settings: Settings) -> None:
    runtime = Runtime(replace(settings, capture_mode="api"))
    try:
        name = unique_name("sparse")
        await runtime.create_agent(name, policy=Policy(disk="1g"))
        assert (await runtime.exec(name, "truncate -s 3G /workspace/bomb")).exit_code == 0
        started = time.monotonic()
        with pytest.raises(LimitReached, match="disk limit"):
            await asyncio.wait_for(runtime.snapshot(name), 30)
        assert time.monotonic() - started < 10
    finally:
        for agent in runtime.list_agents():
            await runtime.remove_agent(agent.name)
        await runtime.close()
