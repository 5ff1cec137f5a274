"""Policies against the real daemon: non-root and capability-free by default, limits that bite in words."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import pytest

from conftest import docker_cli, unique_name
from spinup.runtime import Policy, Runtime
from spinup.runtime.errors import InvalidInput, LimitReached, PermissionDenied, SpinupError
from spinup.runtime.models import parse_size


def _inspect(runtime: Runtime, agent: str) -> dict[str, object]:
    machine = runtime.get_agent(agent).machine_id
    assert machine
    return json.loads(docker_cli("inspect", machine).stdout)[0]  # type: ignore[no-any-return]


def _status_field(status: str, key: str) -> str:
    return next(line.split(":", 1)[1].strip() for line in status.splitlines() if line.startswith(key + ":"))


async def test_by_default_commands_run_as_uid_1000_with_no_capabilities(runtime: Runtime, agent: str) -> None:
    result = await runtime.exec(agent, "id -u; id -g; echo $HOME; pwd; cat /proc/self/status")
    lines = result.stdout.splitlines()
    assert lines[:4] == ["1000", "1000", "/home/agent", "/workspace"]
    status = result.stdout
    for key in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(_status_field(status, key), 16) == 0, key
    assert _status_field(status, "NoNewPrivs") == "1"
    assert _status_field(status, "Seccomp") == "2"  # Docker's default profile filters syscalls
    denied = await runtime.exec(agent, "echo x > /etc/owned-by-agent")
    assert denied.exit_code != 0 and "Permission denied" in denied.stderr
    mine = await runtime.exec(agent, "echo x > /workspace/f && echo y > ~/g && cat /workspace/f ~/g")
    assert mine.stdout == "x\ny\n"


async def test_the_machine_mounts_only_the_read_only_toolbox_and_its_in_memory_directories(
    runtime: Runtime, agent: str
) -> None:
    info = _inspect(runtime, agent)
    host = info["HostConfig"]
    assert isinstance(host, dict)
    mounts = info["Mounts"]
    assert isinstance(mounts, list)
    assert sorted((m["Destination"], m["RW"]) for m in mounts) == [
        ("/.spinup/busybox", False),
        ("/spinup/sources", True),  # a read-only, nosuid,nodev view on the host: the kernel keeps it read-only
        ("/var/cache/spinup/npm", True),
        ("/var/cache/spinup/pip", True),
    ]
    refused = await runtime.exec(agent, "touch /spinup/sources/x")
    assert refused.exit_code != 0 and "Read-only file system" in refused.stderr, refused
    assert sorted(host["Tmpfs"]) == ["/run/spinup/proc", "/run/spinup/secrets"]
    assert "docker.sock" not in json.dumps(info)
    assert host["CapDrop"] == ["ALL"] and not host["CapAdd"]
    assert host["SecurityOpt"] == ["no-new-privileges"]
    assert host["Privileged"] is False and host["NetworkMode"] == "none"
    assert host["Memory"] == 4 << 30 and host["MemorySwap"] == 4 << 30
    assert host["PidsLimit"] == 1024
    assert host["Ulimits"] == [{"Name": "nofile", "Soft": 8192, "Hard": 8192}]
    nofile = await runtime.exec(agent, "ulimit -n")
    assert nofile.stdout.strip() == "8192"


async def test_a_root_policy_runs_as_root_with_a_small_capability_set(runtime: Runtime, root_agent: str) -> None:
    result = await runtime.exec(root_agent, "id -u; echo $HOME; echo ok > /etc/by-root && cat /etc/by-root")
    assert result.stdout.splitlines() == ["0", "/root", "ok"]
    caps = await runtime.exec(root_agent, "grep CapEff /proc/self/status")
    effective = int(caps.stdout.split()[1], 16)
    cap_net_raw, cap_chown, cap_sys_admin = 13, 0, 21
    assert effective & (1 << cap_chown)
    assert not effective & (1 << cap_net_raw) and not effective & (1 << cap_sys_admin)
    status = await runtime.status(root_agent)
    assert status.agent.policy.user == "root" and "user=root" in status.agent.policy.describe()


async def test_file_tools_act_as_the_agent_user(runtime: Runtime, agent: str) -> None:
    files = await runtime.files(agent)
    await files.write("/workspace/new/deep/file.txt", "hello")
    await files.mkdir("/workspace/made/here")
    owners = await runtime.exec(
        agent, "stat -c '%u:%g %n' /workspace/new /workspace/new/deep /workspace/new/deep/file.txt /workspace/made/here"
    )
    assert [line.split()[0] for line in owners.stdout.splitlines()] == ["1000:1000"] * 4
    assert (await runtime.exec(agent, "echo more >> /workspace/new/deep/file.txt")).exit_code == 0
    with pytest.raises(PermissionDenied, match="agent"):
        await files.write("/etc/evil", "x")
    with pytest.raises(PermissionDenied):
        await files.write("/usr/share/new-dir/evil", "x")
    with pytest.raises(PermissionDenied):
        await files.read("/etc/shadow")
    with pytest.raises(PermissionDenied):
        await files.list("/root")
    with pytest.raises(PermissionDenied):
        await files.mkdir("/opt/nope")
    with pytest.raises(SpinupError, match="Permission denied"):
        await files.delete("/etc/hostname")
    await runtime.exec(agent, "ln -s /etc/planted /workspace/to-etc && ln -s ../../etc /workspace/new/etc-dir")
    with pytest.raises(PermissionDenied):
        await files.write("/workspace/to-etc", "x")  # a dangling link is checked where it points
    with pytest.raises(PermissionDenied):
        await files.write("/workspace/new/etc-dir/planted", "x")
    absent = await runtime.exec(agent, "test -e /etc/evil || test -e /opt/nope || test -e /etc/planted || echo absent")
    assert absent.stdout == "absent\n"
    assert (await files.read("/etc/hostname")).content  # world-readable files stay readable


async def test_root_file_tools_write_anywhere(runtime: Runtime, root_agent: str) -> None:
    files = await runtime.files(root_agent)
    await files.write("/etc/by-tool", "x")
    owner = await runtime.exec(root_agent, "stat -c %u:%g /etc/by-tool")
    assert owner.stdout.strip() == "0:0"


async def test_memory_limit_kills_in_words_and_the_machine_answers_next(runtime: Runtime) -> None:
    name = unique_name("mem")
    await runtime.create_agent(name, policy=Policy(memory="64m"))
    result = await runtime.exec(name, ["python3", "-c", "b = bytearray(300 * 1024 * 1024); print('survived')"])
    assert result.exit_code == 137
    assert result.limit == "memory"
    assert "memory limit (64m)" in result.stderr and "survived" not in result.stdout
    assert (await runtime.exec(name, "echo alive")).stdout == "alive\n"


async def test_a_fork_bomb_is_contained_by_the_pids_limit(runtime: Runtime) -> None:
    name = unique_name("pids")
    await runtime.create_agent(name, policy=Policy(pids=64))
    bomb = await runtime.exec(name, "bomb() { bomb | bomb & }; bomb; sleep 30", timeout=6)
    # Killed at the timeout, or ended sooner when even its own `sleep` could not fork.
    assert bomb.timed_out or bomb.exit_code != 0, bomb
    assert bomb.limit == "pids" and "pids limit (64" in bomb.stderr
    started = time.monotonic()
    after = await runtime.exec(name, "echo alive; ls /proc | grep -c '^[0-9]'", timeout=20)
    assert after.stdout.startswith("alive\n")
    assert time.monotonic() - started < 10
    assert int(after.stdout.split()[1]) < 10  # the bomb's processes are gone


@pytest.fixture
async def loopback_server() -> AsyncIterator[int]:
    """A TCP server on the host's 127.0.0.1 that answers 'pong'; yields its port."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"pong")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1]


CONNECT = (
    "import socket, sys\n"
    "s = socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=3)\n"
    "print(s.recv(4).decode())\n"
)


async def test_network_none_has_only_loopback_and_cannot_reach_the_host(
    runtime: Runtime, agent: str, loopback_server: int
) -> None:
    interfaces = await runtime.exec(agent, "ls /sys/class/net")
    assert interfaces.stdout.split() == ["lo"]
    result = await runtime.exec(agent, ["python3", "-c", CONNECT, str(loopback_server)])
    assert result.exit_code != 0 and "pong" not in result.stdout


async def test_network_host_reaches_a_host_loopback_server(runtime: Runtime, loopback_server: int) -> None:
    name = unique_name("net")
    await runtime.create_agent(name, policy=Policy(network="host"))
    result = await runtime.exec(name, ["python3", "-c", CONNECT, str(loopback_server)], timeout=30)
    assert result.stdout == "pong\n", result.stderr


async def test_limits_change_live_and_other_changes_rebuild_the_machine_keeping_its_state(
    runtime: Runtime, agent: str
) -> None:
    await runtime.exec(agent, "echo kept > /workspace/kept && mkdir -p ~/.cache && echo c > ~/.cache/c")
    sleeper = await runtime.process_start(agent, "sleep 1000")
    before = runtime.get_agent(agent).machine_id

    limited = await runtime.set_policy(agent, Policy(memory="512m", pids=256, cpus=0.5, disk="5g"))
    assert limited.machine_id == before and limited.policy.memory == 512 << 20 and limited.policy.disk == 5 << 30
    host = _inspect(runtime, agent)["HostConfig"]
    assert isinstance(host, dict)
    assert host["Memory"] == 512 << 20 and host["PidsLimit"] == 256 and host["NanoCpus"] == 500_000_000
    (listed,) = [p for p in await runtime.process_list(agent) if p.id == sleeper.id]
    assert listed.state == "running"  # the same machine, still running

    # Docker keeps a CPU limit it is asked to drop, and the open-file limit is set at creation: a new machine.
    for policy in (Policy(memory="512m", pids=256), Policy(memory="512m", pids=256, nofile=1024)):
        previous = runtime.get_agent(agent).machine_id
        rebuilt = await runtime.set_policy(agent, policy)
        assert rebuilt.machine_id != previous
        host = _inspect(runtime, agent)["HostConfig"]
        assert isinstance(host, dict)
        assert host["Memory"] == 512 << 20 and host["NanoCpus"] == 0
    result = await runtime.exec(agent, "cat /workspace/kept ~/.cache/c; ulimit -n")
    assert result.stdout == "kept\nc\n1024\n"
    assert [e.kind for e in runtime.events(agent, limit=50)].count("policy-changed") == 3
    await runtime.drain()
    assert docker_cli("inspect", before or "", check=False).returncode != 0  # the old machine is gone


async def test_leaving_root_hands_the_workspace_to_the_agent_user(runtime: Runtime, root_agent: str) -> None:
    await runtime.exec(root_agent, "mkdir -p /workspace/proj && echo root-made > /workspace/proj/file")
    await runtime.set_policy(root_agent, Policy(user="agent"))
    result = await runtime.exec(root_agent, "id -u; echo appended >> /workspace/proj/file && cat /workspace/proj/file")
    assert result.stdout.splitlines() == ["1000", "root-made", "appended"]


async def test_a_stopped_agent_gets_the_new_policy_on_its_next_wake(runtime: Runtime, agent: str) -> None:
    await runtime.exec(agent, "echo s > /workspace/s")
    await runtime.stop_agent(agent)
    await runtime.set_policy(agent, Policy(nofile=1024))
    assert runtime.get_agent(agent).machine_id is None
    result = await runtime.exec(agent, "ulimit -n; cat /workspace/s")
    assert result.stdout == "1024\ns\n"


async def test_the_disk_quota_refuses_writes_until_the_agent_is_under_it(runtime: Runtime) -> None:
    name = unique_name("disk")
    await runtime.create_agent(name, policy=Policy(disk="20m"))
    await runtime.exec(name, "head -c 30000000 /dev/zero > /workspace/big")
    status = await runtime.status(name)
    assert status.disk_used is not None and status.disk_used > 20 << 20
    with pytest.raises(LimitReached, match="disk quota") as refused:
        await runtime.exec(name, "echo more > /workspace/more")
    assert "file_delete" in str(refused.value)
    files = await runtime.files(name)
    with pytest.raises(LimitReached):
        await files.write("/workspace/more", "x")
    await files.delete("/workspace/big")
    assert (await runtime.exec(name, "echo back")).stdout == "back\n"
    # Without asking for status: the background measurement after the command finds it over.
    await runtime.exec(name, "head -c 30000000 /dev/zero > /workspace/big-again")
    async with asyncio.timeout(15):
        while True:
            try:
                await runtime.exec(name, "true")
            except LimitReached:
                break
            await asyncio.sleep(0.25)


async def test_policies_the_host_cannot_give_are_refused(runtime: Runtime) -> None:
    with pytest.raises(InvalidInput, match="CPUs"):
        await runtime.create_agent(unique_name(), policy=Policy(cpus=512))
    with pytest.raises(ValueError, match="size"):
        Policy(memory="lots")
    with pytest.raises(ValueError):
        Policy(memory="1m")  # below 16m
    assert runtime.list_agents() == []


def test_sizes_parse_like_docker() -> None:
    assert parse_size("512m") == 512 << 20
    assert parse_size("2g") == 2 << 30
    assert parse_size("1.5GiB") == 3 << 29
    assert parse_size(4096) == 4096
    with pytest.raises(ValueError):
        parse_size(True)


async def test_reads_follow_permission_changes_made_between_them(runtime: Runtime, agent: str) -> None:
    files = await runtime.files(agent)
    await files.write("/workspace/d/f", "x")
    assert (await files.read("/workspace/d/f")).content == "x"
    assert (await files.read("/workspace/d/f")).content == "x"  # the directory is known reachable now
    await runtime.exec(agent, "chmod 000 /workspace/d/f")
    with pytest.raises(PermissionDenied):
        await files.read("/workspace/d/f")
    await runtime.exec(agent, "chmod 644 /workspace/d/f && chmod 000 /workspace/d")
    with pytest.raises(PermissionDenied):
        await files.read("/workspace/d/f")
    await runtime.exec(agent, "chmod 755 /workspace/d")
    assert (await files.read("/workspace/d/f")).content == "x"
    assert (await files.read("/etc/hostname")).content  # root's 0644 file in a known directory
    with pytest.raises(PermissionDenied):
        await files.read("/etc/shadow")  # root's 0640 file in the same directory


async def test_writes_follow_permission_changes_made_between_them(runtime: Runtime, agent: str) -> None:
    files = await runtime.files(agent)
    await files.write("/workspace/w/a", "1")
    await files.write("/workspace/w/a", "2")  # the directory is known reachable now
    await files.write("/workspace/w/b", "new")
    await runtime.exec(agent, "chmod 444 /workspace/w/a")
    with pytest.raises(PermissionDenied):
        await files.write("/workspace/w/a", "3")
    await runtime.exec(agent, "chmod 555 /workspace/w")
    with pytest.raises(PermissionDenied):
        await files.write("/workspace/w/c", "new")
    await runtime.exec(agent, "chmod 755 /workspace/w && chmod 644 /workspace/w/a")
    await files.write("/workspace/w/a", "4")
    assert (await runtime.exec(agent, "cat /workspace/w/a /workspace/w/b")).stdout == "4new"
    await runtime.exec(agent, "ln -s /etc/passwd /workspace/w/to-passwd")
    with pytest.raises(PermissionDenied):
        await files.write("/workspace/w/to-passwd", "x")  # root's file, through a link, in a known directory
