"""Attacks on the host side of Spinup by a running machine, against the real daemon (issue 16).

A live ``snapshot_diff`` walks the machine's overlay upper directory on the host while the
machine runs. The machine's changes are timed to the walk: the host's ``os.scandir`` is wrapped
so that, when the walk reaches a chosen directory, the machine makes its move (``docker exec``)
before the walk goes on. The interleaving is the attacker's best case, made deterministic.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from file_attacks import expect_swapped_links_refused

from conftest import docker_cli, unique_name
from spinup.runtime import PackageEntry, Policy, Runtime
from spinup.runtime.errors import PermissionDenied, SpinupError


def _in_live_diff() -> bool:
    """Whether the calling thread runs the live diff's walk (not, say, the quota walk an exec started)."""
    frame = sys._getframe()
    while frame is not None:
        if frame.f_code.co_name == "live_tree":
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False


def _on_scandir(monkeypatch: pytest.MonkeyPatch, prefix: str, move: Callable[[], None]) -> threading.Event:
    """Run ``move`` once, the first time the live diff lists a directory under ``prefix`` by descriptor."""
    done = threading.Event()
    real = os.scandir

    def scandir(path: Any = ".") -> Iterator[os.DirEntry[Any]]:
        if isinstance(path, int) and not done.is_set() and _in_live_diff():
            try:
                where = os.readlink(f"/proc/self/fd/{path}")
            except OSError:
                where = ""
            if where.startswith(prefix):
                done.set()
                move()
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    return done


async def test_live_diff_never_walks_into_a_directory_swapped_for_a_symlink(
    runtime: Runtime, root_agent: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    count = 40
    marker = f"HOST-ONLY-{secrets.token_hex(6)}"
    host = tmp_path / "hostside"  # a host directory shaped like the machine's, holding a host-only name
    for i in range(count):
        (host / f"d{i}" / "sub").mkdir(parents=True)
        (host / f"d{i}" / "sub" / marker).write_text("host data\n")
    result = await runtime.exec(
        root_agent,
        f"mkdir -p /w && cd /w && for i in $(seq 0 {count - 1}); do mkdir -p d$i/sub; echo x > d$i/sub/f; done",
    )
    assert result.exit_code == 0, result.stderr
    machine = await runtime.machine(root_agent)
    assert machine is not None and machine.upper_dir

    def swap() -> None:
        docker_cli("exec", machine.id, "sh", "-c", f"mv /w /w.real && ln -s {host} /w")

    swapped = _on_scandir(monkeypatch, f"{machine.upper_dir}/w/d", swap)
    try:
        diff = await runtime.diff(root_agent)
        seen = repr(diff)
    except SpinupError as exc:
        seen = str(exc)
    assert swapped.is_set()
    assert marker not in seen
    assert str(host) not in seen.replace("/w -> ", "")


async def test_live_diff_returns_when_files_become_a_fifo_and_dev_zero(
    runtime: Runtime, root_agent: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = await runtime.exec(root_agent, "mkdir -p /w/sub && echo a > /w/f && echo b > /w/g && echo c > /w/sub/h")
    assert result.exit_code == 0, result.stderr
    machine = await runtime.machine(root_agent)
    assert machine is not None and machine.upper_dir

    def swap() -> None:  # after /w was listed (f and g as regular files), before they are hashed
        docker_cli("exec", machine.id, "sh", "-c", "rm /w/f && mkfifo /w/f && rm /w/g && ln -s /dev/zero /w/g")

    swapped = _on_scandir(monkeypatch, f"{machine.upper_dir}/w/sub", swap)
    started = time.monotonic()
    diff = await asyncio.wait_for(runtime.diff(root_agent), 10)
    assert swapped.is_set()
    assert time.monotonic() - started < 10
    assert "/w/f" in diff.added and "/w/g" in diff.added and "/w/sub/h" in diff.added
    monkeypatch.undo()
    # The server keeps serving: several diffs at once, and a command.
    diffs = await asyncio.wait_for(
        asyncio.gather(*(runtime.diff(root_agent) for _ in range(6)), runtime.exec(root_agent, "true")), 20
    )
    assert all("/w/f" in d.added for d in diffs[:-1]), [d.added for d in diffs[:-1]]


async def test_one_agent_cannot_plant_files_in_another_agents_package_caches(runtime: Runtime) -> None:
    attacker, victim = unique_name("plant"), unique_name("victim")
    await runtime.create_agent(attacker, policy=Policy(user="root"))
    await runtime.create_agent(victim)
    plant = (
        "for d in /var/cache/spinup/pip /var/cache/spinup/npm /var/cache/apt/archives; do "
        "mkdir -p $d && echo poison > $d/planted-wheel; done; ls /var/cache/spinup/pip/planted-wheel"
    )
    assert (await runtime.exec(attacker, plant)).exit_code == 0
    await runtime.set_policy(victim, Policy(user="root"))  # so it mounts apt's archives too
    look = "cat /var/cache/spinup/pip/planted-wheel /var/cache/spinup/npm/planted-wheel"
    seen = await runtime.exec(victim, f"{look} /var/cache/apt/archives/planted-wheel")
    assert "poison" not in seen.stdout, seen.stdout
    # The attacker's own cache still holds what it wrote (it is its cache, across its machines).
    await runtime.stop_agent(attacker, hibernate=True)
    assert (await runtime.exec(attacker, "cat /var/cache/spinup/pip/planted-wheel")).stdout == "poison\n"


async def test_a_root_agent_cannot_make_a_device_node_not_even_in_its_host_mounted_caches(
    runtime: Runtime, root_agent: str
) -> None:
    for where in ("/tmp/disk", "/var/cache/spinup/pip/disk", "/var/cache/apt/archives/disk"):
        made = await runtime.exec(root_agent, f"mknod {where} b 8 0 && ls -l {where}")
        assert made.exit_code != 0 and "Operation not permitted" in made.stderr, (where, made)
    # Deleting a file of the image (an overlay whiteout, a device node the kernel makes) still works.
    assert (await runtime.exec(root_agent, "rm /etc/motd && test ! -e /etc/motd")).exit_code == 0


def _run_as_nobody(path: Path, *args: str) -> str:
    """Run ``path`` on the host as uid 65534 (through a descriptor: the state directory is root's alone)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return subprocess.run(
            [f"/proc/self/fd/{fd}", *args], user=65534, group=65534, extra_groups=[], pass_fds=(fd,),
            capture_output=True, text=True, check=True, timeout=10,
        ).stdout  # fmt: skip
    finally:
        os.close(fd)


async def test_a_setuid_file_planted_in_a_host_mounted_cache_is_not_setuid_on_the_host(
    runtime: Runtime, root_agent: str
) -> None:
    plant = "cp /usr/bin/id /var/cache/spinup/pip/id && chmod 4755 /var/cache/spinup/pip/id"
    assert (await runtime.exec(root_agent, plant)).exit_code == 0
    planted = runtime.settings.cache_dir / runtime.get_agent(root_agent).id / "pip" / "id"
    assert planted.stat().st_mode & 0o4000 and planted.stat().st_uid == 0
    assert _run_as_nobody(planted, "-u") == "65534\n"  # euid: the setuid bit is ignored
    mounts = (await runtime.exec(root_agent, "cat /proc/self/mountinfo")).stdout.splitlines()
    for point in ("/var/cache/spinup/pip", "/var/cache/spinup/npm", "/var/cache/apt/archives", "/spinup/sources"):
        (line,) = [m for m in mounts if m.split()[4] == point]
        assert {"nosuid", "nodev"} <= set(line.split()[5].split(",")), line
    sources = next(m for m in mounts if m.split()[4] == "/spinup/sources")
    assert "ro" in sources.split()[5].split(","), sources


async def test_file_stat_tells_a_non_root_agent_nothing_its_user_cannot_see(runtime: Runtime, agent: str) -> None:
    assert (await runtime.exec(agent, "stat /root/.bashrc")).exit_code != 0  # /root is root's alone
    files = await runtime.files(agent)
    with pytest.raises(PermissionDenied):
        await files.stat("/root/.bashrc")
    with pytest.raises(PermissionDenied):
        await files.exists("/root/.bashrc")
    assert (await files.stat("/etc/passwd")).type == "file"
    assert await files.exists("/workspace")


async def _swap_in_background(runtime: Runtime, agent: str, script: str) -> None:
    """Run ``script`` as a background job of the agent and wait for it (background jobs clear no memo)."""
    process = await runtime.process_start(agent, script)
    info, running = await runtime.process_wait(agent, process.id, 30)
    assert not running and info.exit_code == 0, info


async def test_file_tools_never_reach_past_a_directory_swapped_for_a_symlink_by_a_background_job(
    runtime: Runtime, agent: str
) -> None:
    marker = f"ROOT-ONLY-{secrets.token_hex(6)}"
    machine = await runtime.machine(agent)
    assert machine is not None
    docker_cli("exec", "-u", "0", machine.id, "sh", "-c", f"echo {marker} > /root/secret && chmod 644 /root/secret")
    files = await runtime.files(agent)
    # The file tools use two directories of the agent's: they are checked and remembered.
    await files.write("/workspace/r/own", "mine\n")
    assert (await files.read("/workspace/r/own")).content == "mine\n"
    await files.write("/workspace/w/own", "mine\n")
    await files.write("/workspace/w/again", "mine\n")
    await _swap_in_background(
        runtime, agent, "mv /workspace/r /workspace/r.real && ln -s /root /workspace/r && "
        "mv /workspace/w /workspace/w.real && ln -s /etc /workspace/w",
    )  # fmt: skip
    files = await runtime.files(agent)
    await expect_swapped_links_refused(files, machine.id, docker_cli)
    # Links that stay where the agent may go keep working, both ways.
    await _swap_in_background(
        runtime, agent, "ln -s /workspace/r.real /workspace/mine && ln -s own /workspace/r.real/link && "
        "ln -s /etc/shadow /workspace/shadow && mkfifo /workspace/fifo",
    )  # fmt: skip
    assert (await files.read("/workspace/mine/link")).content == "mine\n"
    written = await files.write("/workspace/mine/link", "through\n")
    assert (written.path, written.size) == ("/workspace/r.real/own", 8)
    assert (await files.read("/workspace/r.real/own")).content == "through\n"
    new = await files.write("/workspace/mine/deeper/new", "x", mode="0750")
    assert new.mode == "0750"
    owned = docker_cli("exec", machine.id, "stat", "-c", "%u:%g %a", "/workspace/r.real/deeper", new.path).stdout
    assert owned.split("\n")[:2] == ["1000:1000 755", "1000:1000 750"]
    # A link to a file its user cannot read, and a FIFO (no hang), in a file's place.
    with pytest.raises(PermissionDenied):
        await files.read("/workspace/shadow")
    with pytest.raises(SpinupError, match="not a regular file"):
        await asyncio.wait_for(files.read("/workspace/fifo"), 10)
    with pytest.raises(SpinupError, match="not a regular file"):
        await asyncio.wait_for(files.write("/workspace/fifo", "x"), 10)


async def test_a_credential_value_used_as_a_file_name_link_target_or_package_spec_is_redacted(
    runtime: Runtime, agent: str
) -> None:
    value = "tok-" + secrets.token_hex(8)
    runtime.set_secret("api_token", value)
    await runtime.exec(
        agent, f"mkdir -p /workspace/{value} && touch /workspace/{value}/f && ln -s /tmp/{value} /workspace/link"
    )
    record = runtime.get_agent(agent)
    entry = PackageEntry(
        manager="pip", name="private", spec=f"private @ git+https://u:{value}@git.example/p.git",
        version="1.0", installed_at=datetime.now(UTC),
    )  # fmt: skip
    runtime._db.set_packages(record.id, [entry])
    files = await runtime.files(agent)

    entries, _ = await files.list("/workspace", recursive=True)
    link = await files.stat("/workspace/link")
    diff = await runtime.diff(agent)
    shown = [
        repr(entries),
        repr(link),
        repr(diff),
        repr(runtime.package_manifest(agent)),
    ]
    for text in shown:
        assert value not in text and "[REDACTED:api_token]" in text, text
    assert value not in runtime.export_packages(agent, "pip")
    assert link.link_target == "/tmp/[REDACTED:api_token]"
