"""`agent move` between two Docker daemons on this host: the agent keeps its files, packages, snapshot
chain, name and history; the second daemon starts with no image at all, so everything it runs comes
from the snapshot store. A move killed halfway leaves the agent working where it was, and the next
move cleans up what the killed one left on the other daemon."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from docker_daemon import SecondDaemon, started_daemon

from conftest import docker_cli, sh
from package_sources import make_wheel
from spinup.runtime import Runtime, Settings
from spinup.runtime.agents import MOVE_CAPTURED, MOVE_STARTED
from spinup.runtime.errors import DockerUnavailable, InvalidInput

SPINUP = str(Path(sys.executable).with_name("spinup"))
CLI_DEADLINE = 240


@pytest.fixture(scope="module")
def other_daemon() -> Iterator[SecondDaemon]:
    """A second daemon with no image in it."""
    with started_daemon() as daemon:
        yield daemon


def _machines(agent_id: str, daemon: SecondDaemon | None = None) -> list[str]:
    """Ids of the agent's machines on the shared daemon, or on ``daemon``."""
    args = ("ps", "-aq", "--no-trunc", "--filter", f"label=spinup.agent={agent_id}")
    return (daemon.cli(*args) if daemon is not None else docker_cli(*args)).stdout.split()


async def _spinup(settings: Settings, *args: str, crash_at: str = "", hosts: str = "") -> int:
    env = {
        **os.environ,
        "SPINUP_HOME": str(settings.home),
        "SPINUP_CRASH_AT": crash_at,
        "SPINUP_DOCKER_HOSTS": hosts,
        "DOCKER_API_VERSION": "1.41",
    }
    proc = await asyncio.create_subprocess_exec(
        SPINUP, *args, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    async with asyncio.timeout(CLI_DEADLINE):
        return await proc.wait()


async def test_an_agent_moves_to_another_daemon_and_back_with_its_files_packages_and_snapshots(
    runtime: Runtime, agent: str, other_daemon: SecondDaemon
) -> None:
    make_wheel(runtime.settings.sources_dir / "pip", "spinup-move-demo", "1.0", value="moved-1.0")
    await runtime.install_packages(agent, "pip", ["spinup-move-demo"])
    await sh(runtime, agent, "echo first > /workspace/a && mkdir -p ~/.config/tool && echo conf > ~/.config/tool/rc")
    first = (await runtime.snapshot(agent, "first")).snapshot
    await sh(runtime, agent, "echo unsnapshotted > /workspace/b && rm /workspace/a")
    record = runtime.get_agent(agent)
    old_machine = record.machine_id

    moved = await runtime.move_agent(agent, other_daemon.host)

    assert moved.host == other_daemon.host and moved.name == agent and moved.id == record.id
    assert _machines(record.id, other_daemon) == [moved.machine_id]
    assert _machines(record.id) == [], "the old machine is removed"
    assert old_machine != moved.machine_id
    # The command runs on the other daemon, in the machine made there from the snapshot store.
    assert other_daemon.cli("inspect", "-f", "{{.State.Running}}", str(moved.machine_id)).stdout.strip() == "true"
    assert await sh(runtime, agent, "cat /workspace/b ~/.config/tool/rc; ls /workspace") == "unsnapshotted\nconf\nb\n"
    assert await sh(runtime, agent, "python -c 'import spinup_move_demo as m; print(m.VALUE)'") == "moved-1.0\n"
    assert [p.name for p in runtime.package_manifest(agent)] == ["spinup-move-demo"]
    saved = moved.head_snapshot
    assert saved is not None and runtime.get_snapshot(saved).parent_id == first.id, "the work was saved first"

    # Life goes on there: a snapshot, a restore, a background process, files through the file tools.
    await sh(runtime, agent, "echo there > /workspace/c")
    there = (await runtime.snapshot(agent, "there")).snapshot
    await runtime.restore(agent, first.id)
    assert await sh(runtime, agent, "ls /workspace") == "a\n"
    await runtime.restore(agent, there.id)
    await (await runtime.files(agent)).write("/workspace/d", "written\n")
    assert (await (await runtime.files(agent)).read("/workspace/d")).content == "written\n"
    process = await runtime.process_start(agent, "echo from-a-process; sleep 30")
    assert runtime.get_agent(agent).host == other_daemon.host

    back = await runtime.move_agent(agent, "local")
    assert back.host == docker_cli("context", "inspect", "-f", "{{.Endpoints.docker.Host}}").stdout.strip()
    assert _machines(record.id, other_daemon) == [], "nothing of it is left on the other daemon"
    assert _machines(record.id) == [back.machine_id]
    assert await sh(runtime, agent, "cat /workspace/b /workspace/c /workspace/d") == "unsnapshotted\nthere\nwritten\n"
    assert await sh(runtime, agent, "python -c 'import spinup_move_demo as m; print(m.VALUE)'") == "moved-1.0\n"
    chain = [s.id for s in runtime.list_snapshots(agent)]
    assert first.id in chain and saved in chain and there.id in chain
    moves = [e for e in runtime.events(agent, 200) if e.kind == "moved"]
    assert [(e.data["from"], e.data["to"]) for e in moves] == [
        (moves[0].data["from"], other_daemon.host),
        (other_daemon.host, back.host),
    ]
    assert process.id in {p.id for p in await runtime.process_list(agent)}, "its record is kept"


async def test_bad_move_targets_are_refused_and_the_agent_stays(runtime: Runtime, agent: str, tmp_path: Path) -> None:
    await sh(runtime, agent, "echo stays > /workspace/x")
    before = runtime.get_agent(agent)
    with pytest.raises(InvalidInput, match="not a Docker daemon Spinup knows"):
        await runtime.move_agent(agent, "elsewhere")
    with pytest.raises(InvalidInput, match="already lives on"):
        await runtime.move_agent(agent, "local")
    with pytest.raises(DockerUnavailable, match=str(tmp_path / "none.sock")):
        await runtime.move_agent(agent, f"unix://{tmp_path / 'none.sock'}")
    after = runtime.get_agent(agent)
    assert (after.machine_id, after.host, after.head_snapshot) == (before.machine_id, None, before.head_snapshot)
    assert await sh(runtime, agent, "cat /workspace/x") == "stays\n"


@pytest.mark.parametrize("point", [MOVE_CAPTURED, MOVE_STARTED])
async def test_a_move_killed_halfway_leaves_the_agent_working_where_it_was(
    runtime: Runtime, agent: str, other_daemon: SecondDaemon, point: str
) -> None:
    await sh(runtime, agent, "echo kept > /workspace/state")
    record = runtime.get_agent(agent)
    hosts = f"second={other_daemon.host}"

    killed = await _spinup(runtime.settings, "agent", "move", agent, "--to", "second", crash_at=point, hosts=hosts)

    assert killed == -signal.SIGKILL
    fresh = Runtime(runtime.settings)
    try:
        current = fresh.get_agent(agent)
        assert (current.host, current.machine_id) == (None, record.machine_id), "the record is where it was"
        # The old machine was left frozen by the capture; the next call thaws it and runs there.
        assert await sh(fresh, agent, "cat /workspace/state; echo more >> /workspace/state") == "kept\n"
        machine = await fresh.machine(agent)
        assert machine is not None and machine.running and not machine.paused
        left = _machines(record.id, other_daemon)
        assert len(left) == (1 if point == MOVE_STARTED else 0), "what the killed move made there"

        # Moved again (by name, through the CLI), the leftover is replaced and nothing is lost.
        assert await _spinup(runtime.settings, "agent", "move", agent, "--to", "second", hosts=hosts) == 0
        moved = fresh.get_agent(agent)
        assert moved.host == other_daemon.host
        assert _machines(record.id, other_daemon) == [moved.machine_id] and _machines(record.id) == []
        assert await sh(fresh, agent, "cat /workspace/state") == "kept\nmore\n"
    finally:
        await fresh.close()
