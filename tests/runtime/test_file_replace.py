"""A non-root agent's ``file_write`` over an existing file replaces it whole: old content or new, never
a mix, even when the Spinup process writing it is killed halfway; and what a rename would change (a
hard link, another owner, a directory the agent cannot write) is written in place as before."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
from pathlib import Path

from mcp import Client
from mcp.client.stdio import StdioServerParameters

from conftest import docker_cli, server_env, sh
from spinup.runtime import Runtime
from spinup.runtime.files.as_agent import FILE_REPLACING

SPINUP = str(Path(sys.executable).with_name("spinup"))


def _plant_root_file(path: Path) -> None:
    """A file of root's, writable by anyone, made from the host (root in the machine has no capabilities)."""
    path.write_text("x")
    os.chown(path, 0, 0)
    path.chmod(0o666)


async def test_an_overwrite_replaces_the_file_keeping_its_mode_and_leaving_nothing_beside_it(
    runtime: Runtime, agent: str
) -> None:
    files = await runtime.files(agent)
    await files.write("/workspace/notes.txt", "first")
    await sh(runtime, agent, "chmod 640 /workspace/notes.txt")
    before = await sh(runtime, agent, "stat -c %i /workspace/notes.txt")
    reader = await runtime.process_start(agent, "exec 3</workspace/notes.txt; touch /tmp/opened; sleep 2; cat <&3")
    await sh(runtime, agent, "for i in $(seq 100); do test -e /tmp/opened && break; sleep 0.05; done")

    info = await files.write("/workspace/notes.txt", "second, longer")

    assert info.mode == "0640" and info.size == len("second, longer")
    assert await sh(runtime, agent, "stat -c %i /workspace/notes.txt") != before  # a new file took its name
    assert (await files.read("/workspace/notes.txt")).content == "second, longer"
    assert await sh(runtime, agent, "ls -A /workspace") == "notes.txt\n"
    async with asyncio.timeout(30):
        done, running = await runtime.process_wait(agent, reader.id, 30)
    assert not running and done.exit_code == 0
    assert (await runtime.process_output(agent, reader.id)).data == "first"  # an open reader kept the old one


async def test_a_write_through_a_symlink_replaces_the_target_and_keeps_the_link(runtime: Runtime, agent: str) -> None:
    files = await runtime.files(agent)
    await sh(runtime, agent, "mkdir -p /workspace/real && echo old > /workspace/real/f && ln -s real/f /workspace/l")
    await files.write("/workspace/l", "new")
    assert await sh(runtime, agent, "readlink /workspace/l; cat /workspace/real/f; ls -A /workspace/real") == (
        "real/f\nnewf\n"
    )


async def test_what_a_rename_would_change_is_written_in_place(runtime: Runtime, agent: str) -> None:
    files = await runtime.files(agent)
    await sh(runtime, agent, "echo a > /workspace/a && ln /workspace/a /workspace/b")
    await files.write("/workspace/a", "linked")
    assert await sh(runtime, agent, "cat /workspace/b") == "linked"  # the hard link still shares the content

    machine = runtime.get_agent(agent).machine_id
    assert machine is not None
    pid = docker_cli("inspect", "-f", "{{.State.Pid}}", machine).stdout.strip()
    _plant_root_file(Path(f"/proc/{pid}/root/workspace/roots"))
    await files.write("/workspace/roots", "by the agent")
    assert await sh(runtime, agent, "stat -c %U /workspace/roots; cat /workspace/roots") == "root\nby the agent"

    await sh(runtime, agent, "mkdir /workspace/shut && echo x > /workspace/shut/f && chmod 555 /workspace/shut")
    await files.write("/workspace/shut/f", "still writable")
    assert await sh(runtime, agent, "cat /workspace/shut/f") == "still writable"


async def test_a_server_killed_in_the_middle_of_a_write_leaves_the_old_content_whole(
    runtime: Runtime, agent: str
) -> None:
    files = await runtime.files(agent)
    old = "old line\n" * 100_000
    await files.write("/workspace/big.txt", old)
    env = {**server_env(runtime.settings), "SPINUP_CRASH_AT": FILE_REPLACING}

    with_crash = Client(StdioServerParameters(command=SPINUP, args=["mcp"], env=env), mode="legacy")
    try:
        async with asyncio.timeout(120), with_crash as client:
            await client.call_tool("file_write", {"agent": agent, "path": "/workspace/big.txt", "content": "n" * 10**6})
    except Exception as exc:  # the server died under the call (after it answered initialize)
        assert "Connection closed" in repr(exc), repr(exc)
    else:
        raise AssertionError("the server was to die before the write was renamed in")

    fresh = Runtime(runtime.settings)
    try:
        assert await sh(fresh, agent, "ls -A /workspace") == "big.txt\n"  # nothing half-written beside it
        digest = (await sh(fresh, agent, "sha256sum < /workspace/big.txt")).split()[0]
        assert digest == hashlib.sha256(old.encode()).hexdigest()
        await (await fresh.files(agent)).write("/workspace/big.txt", "after")
        assert (await (await fresh.files(agent)).read("/workspace/big.txt")).content == "after"
    finally:
        await fresh.close()
