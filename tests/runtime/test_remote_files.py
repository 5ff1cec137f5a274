"""A non-root agent's file tools on a remote Docker daemon (a second daemon this module starts, reached over
TCP on loopback, so Spinup cannot use the host's /proc for its machines): each operation is one command
inside the machine as the agent's user, so a directory swapped for a symlink by a process Spinup does not
know of (the race a check made before a root-side archive call would lose) reaches nothing its user cannot."""

from __future__ import annotations

import asyncio
import base64
import secrets
import socket
from collections.abc import AsyncIterator, Iterator

import pytest
from docker_daemon import SecondDaemon, started_daemon
from file_attacks import expect_swapped_links_refused

from conftest import opened, unique_name
from spinup.runtime import Runtime, Settings
from spinup.runtime.config import DEFAULT_IMAGE
from spinup.runtime.docker import DockerBackend
from spinup.runtime.errors import NotADirectory, PathNotFound, SpinupError


@pytest.fixture(scope="module")
def remote() -> Iterator[SecondDaemon]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with started_daemon(DEFAULT_IMAGE, tcp_port=port) as daemon:
        yield daemon


@pytest.fixture
async def remote_runtime(settings: Settings, remote: SecondDaemon) -> AsyncIterator[Runtime]:
    assert remote.tcp is not None
    async with opened(Runtime(settings, DockerBackend(url=remote.tcp))) as runtime:
        yield runtime


def _in_machine(remote: SecondDaemon, machine_id: str, script: str, user: str = "1000") -> None:
    """Run ``script`` in the machine behind Spinup's back (as a job the agent started would)."""
    remote.cli("exec", "-u", user, machine_id, "sh", "-c", script)


async def test_file_tools_on_a_remote_daemon_never_reach_past_a_directory_swapped_for_a_symlink(
    remote_runtime: Runtime, remote: SecondDaemon
) -> None:
    runtime, agent = remote_runtime, unique_name("remote")
    await runtime.create_agent(agent)
    machine = await runtime.machine(agent)
    assert machine is not None
    marker = f"ROOT-ONLY-{secrets.token_hex(6)}"
    _in_machine(remote, machine.id, f"echo {marker} > /root/secret && chmod 644 /root/secret", user="0")
    files = await runtime.files(agent)
    await files.write("/workspace/r/own", "mine\n")
    assert (await files.read("/workspace/r/own")).content == "mine\n"
    await files.write("/workspace/w/own", "mine\n")
    _in_machine(
        remote, machine.id, "mv /workspace/r /workspace/r.real && ln -s /root /workspace/r && "
        "mv /workspace/w /workspace/w.real && ln -s /etc /workspace/w",
    )  # fmt: skip

    await expect_swapped_links_refused(files, machine.id, remote.cli)

    # What its user may do keeps working, links included; a FIFO neither hangs a read nor a write.
    _in_machine(remote, machine.id, "ln -s /workspace/r.real /workspace/mine && mkfifo /workspace/fifo")
    written = await files.write("/workspace/mine/own", "through\n")
    assert (written.path, written.size) == ("/workspace/r.real/own", 8)
    new = await files.write("/workspace/mine/deeper/new", "x", mode="0750")
    assert new.mode == "0750"
    with pytest.raises(SpinupError, match="not a regular file"):
        await asyncio.wait_for(files.read("/workspace/fifo"), 30)
    with pytest.raises(SpinupError, match="not a regular file"):
        await asyncio.wait_for(files.write("/workspace/fifo", "x"), 30)


async def test_file_tools_on_a_remote_daemon_read_write_list_and_stat_as_the_agent(
    remote_runtime: Runtime,
) -> None:
    runtime, agent = remote_runtime, unique_name("remote")
    await runtime.create_agent(agent)
    files = await runtime.files(agent)
    blob = bytes(range(256)) * 40
    await files.write("/workspace/data/blob.bin", base64.b64encode(blob).decode(), encoding="base64")
    await files.write("/workspace/data/notes.txt", "one\ntwo\nthree\n")
    await files.mkdir("/workspace/data/sub", mode="0700")
    await runtime.exec(agent, "ln -s notes.txt /workspace/data/link")

    read = await files.read("/workspace/data/blob.bin", encoding="base64")
    assert base64.b64decode(read.content) == blob and read.size == len(blob) and read.eof
    part = await files.read("/workspace/data/blob.bin", offset=256, limit=10, unit="bytes", encoding="base64")
    assert base64.b64decode(part.content) == blob[256:266] and not part.eof
    lines = await files.read("/workspace/data/notes.txt", offset=1, limit=1)
    assert (lines.content, lines.returned, lines.eof) == ("two\n", 1, False)
    assert (await files.read("/workspace/data/link")).content == "one\ntwo\nthree\n"

    entries, cut = await files.list("/workspace/data")
    assert not cut
    by_path = {e.path: e for e in entries}
    assert set(by_path) == {f"/workspace/data/{n}" for n in ("blob.bin", "notes.txt", "sub", "link")}
    assert by_path["/workspace/data/sub"].type == "directory" and by_path["/workspace/data/sub"].mode == "0700"
    assert by_path["/workspace/data/link"].link_target == "notes.txt"
    assert [e.path for e in (await files.list("/workspace", recursive=True, pattern="*.txt"))[0]] == [
        "/workspace/data/notes.txt"
    ]
    link = await files.stat("/workspace/data/link")
    assert (link.type, link.link_target) == ("symlink", "notes.txt")
    assert await files.exists("/workspace/data/notes.txt") and not await files.exists("/workspace/none")
    with pytest.raises(PathNotFound):
        await files.read("/workspace/none")
    with pytest.raises(NotADirectory):
        await files.list("/workspace/data/notes.txt")
    owned = (await runtime.exec(agent, "stat -c '%u %a' /workspace/data/notes.txt")).stdout
    assert owned == "1000 644\n"
