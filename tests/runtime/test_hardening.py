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
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import docker_cli, unique_name
from spinup.runtime import Policy, Runtime
from spinup.runtime.errors import SpinupError


def _on_scandir(monkeypatch: pytest.MonkeyPatch, prefix: str, move: Callable[[], None]) -> threading.Event:
    """Run ``move`` once, the first time a directory under ``prefix`` is listed by descriptor."""
    done = threading.Event()
    real = os.scandir

    def scandir(path: Any = ".") -> Iterator[os.DirEntry[Any]]:
        if isinstance(path, int) and not done.is_set():
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
