"""The Docker daemon going away and coming back, against a second daemon this module starts itself:
a command running meanwhile ends with an error that says so, calls while it is down fail fast
naming where Docker was looked for, and afterwards every agent answers with its files intact."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from docker_daemon import SecondDaemon, started_daemon

from conftest import unique_name
from spinup.runtime import Runtime, Settings
from spinup.runtime.config import DEFAULT_IMAGE
from spinup.runtime.docker import DockerBackend
from spinup.runtime.errors import DockerUnavailable

DOWN_CALL_LIMIT = 15.0  # seconds a call may take to fail while the daemon is down


@pytest.fixture(scope="module")
def second_daemon() -> Iterator[SecondDaemon]:
    with started_daemon(DEFAULT_IMAGE) as daemon:
        yield daemon


async def test_a_daemon_restart_ends_a_running_command_with_an_error_and_every_agent_comes_back(
    second_daemon: SecondDaemon, settings: Settings
) -> None:
    runtime = Runtime(settings, DockerBackend(url=second_daemon.host, call_timeout=20))
    busy, idle = unique_name("busy"), unique_name("idle")
    try:
        for name in (busy, idle):
            await runtime.create_agent(name)
            await runtime.exec(name, f"echo kept-{name} > /workspace/f")
        await runtime.snapshot(idle, "before the restart")
        running = asyncio.create_task(runtime.exec(busy, "sleep 120"))
        await asyncio.sleep(1.0)

        await asyncio.to_thread(second_daemon.stop)
        # The daemon stops its containers before it exits: the command ends with the machine, or with the
        # daemon when it went first; either way the caller is told, within a bounded time.
        try:
            ended = await asyncio.wait_for(running, 60)
        except DockerUnavailable as exc:
            assert "went away while the command ran" in str(exc)
        else:
            assert ended.exit_code != 0 and "the machine stopped while the command ran" in ended.stderr, ended

        started = time.monotonic()
        with pytest.raises(DockerUnavailable, match=f"Docker is not reachable at {second_daemon.host}"):
            await runtime.exec(idle, "true")
        assert time.monotonic() - started < DOWN_CALL_LIMIT
        assert {a.name for a in runtime.list_agents()} == {busy, idle}  # what needs no daemon still answers

        await asyncio.to_thread(second_daemon.start)
        for name in (busy, idle):
            assert (await asyncio.wait_for(runtime.exec(name, "cat /workspace/f"), 120)).stdout == f"kept-{name}\n"
        report = await runtime.verify_store()
        assert report.ok, report.problems
    finally:
        if not second_daemon.running:
            await asyncio.to_thread(second_daemon.start)
        for agent in runtime.list_agents():
            await runtime.remove_agent(agent.name)
        await runtime.close()
