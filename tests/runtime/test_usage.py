"""Resource use per agent: cgroup files on the host, Docker's stats API, one CPU window for all machines."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import docker_cli, unique_name
from spinup.runtime import Policy, Runtime
from spinup.runtime import cgroups as cgroups_module
from spinup.runtime.cgroups import MachineCgroup, cpu_usage_ns, memory_use, parse_membership, pids_use, read_text
from spinup.runtime.docker import DockerBackend
from spinup.runtime.usage import CPU_WINDOW

# Two busy loops: above one core on an idle host, and above half of one on a host others load too.
BURN = "(while :; do :; done) & while :; do :; done"


def burn(machine_id: str) -> None:
    """Keep the machine's CPU busy (until the machine stops)."""
    docker_cli("exec", "-d", machine_id, "sh", "-c", BURN)


async def busy_agent(runtime: Runtime, policy: Policy) -> str:
    name = unique_name("use")
    agent = await runtime.create_agent(name, policy=policy)
    assert agent.machine_id is not None
    burn(agent.machine_id)
    return name


def count_readings(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many machines each pass of readings covered (one entry per pass)."""
    passes: list[int] = []
    read_all: Callable[[Any], Awaitable[Any]] = runtime._usage._read_all

    async def counted(machines: Any) -> Any:
        passes.append(len(machines))
        return await read_all(machines)

    monkeypatch.setattr(runtime._usage, "_read_all", counted)
    return passes


async def test_a_busy_machine_shows_its_cpu_memory_and_the_policy_limits(runtime: Runtime) -> None:
    policy = Policy(memory="256m", pids=200)
    name = await busy_agent(runtime, policy)
    use = await runtime.usage(name)
    # Two busy loops: well above an idle machine (~0%) even when the host is shared with other work.
    assert use.cpu_percent is not None and use.cpu_percent > 15, use
    assert use.memory_bytes is not None and 0 < use.memory_bytes < policy.memory
    assert use.memory_limit == policy.memory == 256 << 20
    assert use.pids_limit == policy.pids == 200
    assert use.pids is not None and use.pids >= 3  # the idle process and the two loops at least
    assert use.uptime_s is not None and 0 <= use.uptime_s < 120
    assert use.disk_used is not None and use.disk_used >= 0
    assert use.store_bytes == 0  # no snapshot yet
    assert use.last_activity == runtime.events(name, limit=1)[-1].at
    machine_id = runtime.get_agent(name).machine_id
    assert machine_id is not None
    # The same limits as Docker holds them.
    host = json.loads(docker_cli("inspect", machine_id).stdout)[0]["HostConfig"]
    assert (host["Memory"], host["PidsLimit"]) == (use.memory_limit, use.pids_limit)


async def test_a_remote_daemon_is_read_through_the_stats_api(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    name = await busy_agent(runtime, Policy(memory="128m", pids=64))
    monkeypatch.setattr(DockerBackend, "is_local", property(lambda self: False))
    stats = runtime._docker.stats
    asked: list[str] = []

    async def counted(machine_id: str) -> Any:
        asked.append(machine_id)
        return await stats(machine_id)

    monkeypatch.setattr(runtime._docker, "stats", counted)
    use = await runtime.usage(name)
    assert len(asked) == 2  # two readings: the CPU window
    # Two busy loops: well above an idle machine (~0%) even when the host is shared with other work.
    assert use.cpu_percent is not None and use.cpu_percent > 15, use
    assert use.memory_bytes is not None and use.memory_bytes > 0
    assert (use.memory_limit, use.pids_limit) == (128 << 20, 64)
    assert use.pids is not None and use.pids >= 3


async def test_a_stopped_machine_has_no_cpu_or_memory_but_keeps_its_disk_and_store(runtime: Runtime) -> None:
    name = unique_name("use")
    await runtime.create_agent(name)
    await runtime.exec(name, "head -c 300000 /dev/urandom > /workspace/blob")
    await runtime.stop_agent(name)  # snapshots the change first
    use = await runtime.usage(name)
    assert (use.cpu_percent, use.memory_bytes, use.memory_limit, use.pids, use.uptime_s) == (None,) * 5
    assert use.disk_used is not None and use.disk_used >= 300000
    snapshots = runtime.list_snapshots(name)
    assert snapshots and use.store_bytes == sum(s.layer_size for s in snapshots) > 250000
    assert use.last_activity == runtime.events(name, limit=1)[-1].at


async def test_a_machine_that_stopped_after_its_inspect_reads_as_none(runtime: Runtime, agent: str) -> None:
    record = runtime.get_agent(agent)
    machine = await runtime.machine(agent)
    assert machine is not None and machine.running
    assert (await runtime._usage.usage(record, machine)).memory_bytes  # its cgroup is found and cached
    docker_cli("stop", "-t", "0", machine.id)
    use = await runtime._usage.usage(record, machine)  # the inspect taken while it ran
    assert (use.cpu_percent, use.memory_bytes, use.pids) == (None, None, None)


async def test_overview_inspects_every_agent_and_shares_one_cpu_window(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    busy = [await busy_agent(runtime, Policy()) for _ in range(3)]
    stopped, gone = unique_name("use"), unique_name("use")
    for name in (stopped, gone):
        await runtime.create_agent(name)
    await runtime.stop_agent(stopped, snapshot=False)
    await runtime.stop_agent(gone, hibernate=True)
    passes = count_readings(runtime, monkeypatch)
    rows = {row.agent.name: row for row in await runtime.overview()}
    assert passes == [3, 3]  # the running machines read twice, around one shared pause
    assert set(rows) == {*busy, stopped, gone}
    for name in busy:
        assert rows[name].state == "running" and rows[name].image == "spinup/base:bookworm"
        cpu = rows[name].usage.cpu_percent
        assert cpu is not None and cpu > 10, rows[name]  # three burners share the host's cores
    assert rows[stopped].state == "exited" and rows[stopped].usage.cpu_percent is None
    assert rows[stopped].usage.disk_used is not None
    assert rows[gone].state == "absent" and rows[gone].usage.disk_used is None
    for name, row in rows.items():
        newest = runtime.events(name, limit=1)[-1]
        assert row.last_event == newest and row.usage.last_activity == newest.at


async def test_a_recent_reading_is_the_first_sample_of_the_next(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refreshing view reads each machine once per frame: CPU over the time since the last frame."""
    name = await busy_agent(runtime, Policy())
    await runtime.usage(name)
    passes = count_readings(runtime, monkeypatch)
    await asyncio.sleep(CPU_WINDOW + 0.1)
    use = await runtime.usage(name)
    assert passes == [1]
    # Two busy loops: well above an idle machine (~0%) even when the host is shared with other work.
    assert use.cpu_percent is not None and use.cpu_percent > 15, use


async def test_status_carries_the_usage(runtime: Runtime) -> None:
    name = await busy_agent(runtime, Policy(memory="192m"))
    status = await runtime.status(name)
    assert status.usage is not None and status.usage.memory_limit == 192 << 20
    assert status.usage.cpu_percent is not None and status.usage.cpu_percent > 50
    assert status.disk_used == status.usage.disk_used


# cgroup files, without Docker


def test_cgroup_reads_are_bounded_and_refuse_links_and_fifos(tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_text("7" * (cgroups_module.READ_LIMIT * 2))
    assert len(read_text(big) or "") == cgroups_module.READ_LIMIT
    link = tmp_path / "link"
    link.symlink_to(big)
    assert read_text(link) is None
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert read_text(fifo) is None  # returns at once: no writer is waited for
    assert read_text(tmp_path / "vanished") is None


def test_cgroup_v2_files_are_read(tmp_path: Path) -> None:
    (tmp_path / "cpu.stat").write_text("usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n")
    (tmp_path / "memory.current").write_text("10485760\n")
    (tmp_path / "memory.max").write_text("max\n")
    (tmp_path / "memory.stat").write_text("anon 4096\nfile 8192\ninactive_file 2097152\n")
    (tmp_path / "pids.current").write_text("7\n")
    (tmp_path / "pids.max").write_text("512\n")
    cgroup = MachineCgroup(True, tmp_path, tmp_path, tmp_path)
    assert cpu_usage_ns(cgroup) == 1_500_000
    assert memory_use(cgroup) == (10485760 - 2097152, None)
    assert pids_use(cgroup) == (7, 512)


def test_cgroup_v1_unlimited_memory_reads_as_no_limit(tmp_path: Path) -> None:
    (tmp_path / "memory.usage_in_bytes").write_text("4096\n")
    (tmp_path / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    (tmp_path / "pids.max").write_text("max\n")
    (tmp_path / "pids.current").write_text("1\n")
    cgroup = MachineCgroup(False, tmp_path, tmp_path, None)
    assert memory_use(cgroup) == (4096, None)
    assert pids_use(cgroup) == (1, None)
    assert cpu_usage_ns(cgroup) is None


def test_membership_is_found_in_the_unified_tree_and_never_outside_the_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "cgroup"
    machine = "c0ffee" * 10
    (root / "system.slice" / f"docker-{machine}.scope").mkdir(parents=True)
    (root / "cgroup.controllers").write_text("cpu memory pids\n")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (root / "escape").symlink_to(outside)
    monkeypatch.setattr(cgroups_module, "CGROUP_ROOT", root)
    found = parse_membership(f"0::/system.slice/docker-{machine}.scope\n", machine)
    expected = (root / "system.slice" / f"docker-{machine}.scope").resolve()
    assert found == MachineCgroup(True, expected, expected, expected)
    assert parse_membership(f"0::/escape/{machine}\n", machine) is None
    assert parse_membership("0::/system.slice/other.scope\n", machine) is None


def test_membership_of_cgroup_v1_with_comounted_controllers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "cgroup"
    machine = "ab" * 32
    for hierarchy in ("cpu,cpuacct", "memory", "pids"):
        (root / hierarchy / "docker" / machine).mkdir(parents=True)
    (root / "cpuacct").symlink_to("cpu,cpuacct")
    monkeypatch.setattr(cgroups_module, "CGROUP_ROOT", root)
    text = (
        f"12:pids:/docker/{machine}\n4:cpu,cpuacct:/docker/{machine}\n3:memory:/docker/{machine}\n"
        f"1:name=systemd:/docker/{machine}\n0::/docker/{machine}\n"
    )
    found = parse_membership(text, machine)
    assert found is not None and not found.unified
    assert found.cpu == (root / "cpu,cpuacct" / "docker" / machine).resolve()
    assert found.memory == (root / "memory" / "docker" / machine).resolve()
    assert found.pids == (root / "pids" / "docker" / machine).resolve()
