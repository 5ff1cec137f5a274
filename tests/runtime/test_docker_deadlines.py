"""Every Docker call has a deadline: a daemon that never answers gives DockerTimeout, not a hang; a silent
command is not cut by the stream deadline (its own timeout bounds it)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import unique_name
from spinup.runtime import Runtime, Settings
from spinup.runtime.docker import DockerBackend
from spinup.runtime.errors import DockerFailure, DockerTimeout


@pytest.fixture
def hung_daemon(tmp_path: Path) -> Iterator[str]:
    """A unix socket that accepts connections and reads requests but never answers (a hung daemon)."""
    path = tmp_path / "hung.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(16)
    try:
        yield f"unix://{path}"
    finally:
        server.close()


async def test_a_call_to_a_hung_daemon_fails_within_its_deadline(hung_daemon: str) -> None:
    backend = DockerBackend(url=hung_daemon, call_timeout=0.5, stream_idle=0.5)
    try:
        started = time.monotonic()
        with pytest.raises(DockerTimeout, match=r"did not answer in 0.5 s \(Inspect machine abc\)") as caught:
            await backend.inspect("abc")
        assert time.monotonic() - started < 5
        assert hung_daemon in str(caught.value) and "docker info" in str(caught.value)
        started = time.monotonic()
        with pytest.raises(DockerTimeout, match=r"did not answer in 0.5 s \(Read /etc\)"):
            async with backend.get_archive("abc", "/etc"):
                pass
        assert time.monotonic() - started < 5
    finally:
        await backend.close()


async def test_the_deadlines_come_from_the_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SPINUP_DOCKER_TIMEOUT", "7")
    monkeypatch.setenv("SPINUP_DOCKER_STREAM_IDLE", "9")
    settings = Settings(home=tmp_path / "spinup")
    assert (settings.docker_timeout, settings.docker_stream_idle) == (7, 9)
    runtime = Runtime(settings)
    try:
        backend = runtime._docker
        assert (backend.call_timeout, backend.stream_idle) == (7, 9)
    finally:
        await runtime.close()


async def test_a_silent_command_outlives_the_stream_deadline(settings: Settings) -> None:
    runtime = Runtime(settings, DockerBackend(call_timeout=30, stream_idle=1))
    name = unique_name()
    try:
        await runtime.create_agent(name)
        result = await runtime.exec(name, "sleep 3; echo done", timeout=30)
        assert (result.exit_code, result.stdout, result.timed_out) == (0, "done\n", False)
        # A snapshot and a file read (streams) still work under the short idle deadline.
        await runtime.snapshot(name)
        files = await runtime.files(name)
        await files.write("/workspace/x.txt", "x")
        assert (await files.read("/workspace/x.txt")).content == "x"
    finally:
        await runtime.remove_agent(name)
        await runtime.close()


async def test_the_event_loop_is_free_while_a_call_waits(hung_daemon: str) -> None:
    backend = DockerBackend(url=hung_daemon, call_timeout=1, stream_idle=1)
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.05)
            ticks += 1

    ticker = asyncio.create_task(tick())
    try:
        with pytest.raises(DockerTimeout):
            await backend.image_inspect("spinup/base:bookworm")
    finally:
        ticker.cancel()
        await backend.close()
    assert ticks >= 10


async def test_an_exec_waits_out_a_pause_but_not_a_stopped_machine(runtime: Runtime, agent: str) -> None:
    machine_id = runtime.get_agent(agent).machine_id
    assert machine_id is not None
    docker = runtime._docker
    await docker.pause(machine_id)  # as a snapshot does (a wake would unpause it: go to the backend)
    command = asyncio.create_task(
        docker.exec_create(machine_id, ["true"], env={}, workdir=None, user="", stdin=False)
    )
    await asyncio.sleep(0.5)
    assert not command.done(), "a paused machine takes no exec: the command waits"
    await docker.unpause(machine_id)
    assert (await command).id
    await docker.stop(machine_id)
    started = time.monotonic()
    with pytest.raises(DockerFailure) as refused:
        await docker.exec_create(machine_id, ["true"], env={}, workdir=None, user="", stdin=False)
    assert refused.value.status == 409 and time.monotonic() - started < 5, "a stopped machine is refused at once"
