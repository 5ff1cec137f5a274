"""Walking a tree that changes under the walk: never out through a symlink, never reading a FIFO."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from spinup.runtime.limits import directory_usage
from spinup.snapshot.beneath import Beneath, walk_fds


def _tree(root: Path, host: Path) -> None:
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "f").write_text("x")
    (host / "b").mkdir(parents=True)
    (host / "b" / "host-only").write_bytes(b"h" * 1_000_000)


def test_walk_never_follows_a_directory_swapped_for_a_symlink(tmp_path: Path) -> None:
    root, host = tmp_path / "upper", tmp_path / "host"
    _tree(root, host)
    names: list[str] = []

    def visit(rel: str, fd: int) -> list[str]:
        if rel == "a":  # listed: now the directory becomes a symlink to a host directory of the same shape
            os.rename(root / "a", root / "a.real")
            os.symlink(host, root / "a")
        with os.scandir(fd) as it:
            entries = [(f"{rel}/{e.name}" if rel else e.name, e.is_dir(follow_symlinks=False)) for e in it]
        names.extend(name for name, _ in entries)
        return [name for name, is_dir in entries if is_dir]

    walk_fds(root, visit)
    assert "a/b/f" in names and not any("host-only" in name for name in names)


def test_directory_usage_stays_in_its_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, host = tmp_path / "upper", tmp_path / "host"
    _tree(root, host)
    real = os.scandir

    def scandir(path: Any = ".") -> Iterator[os.DirEntry[Any]]:
        where = os.readlink(f"/proc/self/fd/{path}") if isinstance(path, int) else str(path)
        listing = real(path)
        if where == str(root / "a"):  # listed: now swapped for a symlink to a host directory of the same shape
            os.rename(root / "a", root / "a.real")
            os.symlink(host, root / "a")
        return listing

    monkeypatch.setattr(os, "scandir", scandir)
    assert directory_usage(str(root)) < 500_000


def test_hashing_refuses_a_fifo_a_symlink_and_a_changed_inode(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    regular = tmp_path / "d" / "f"
    regular.write_bytes(b"abc")
    os.mkfifo(tmp_path / "d" / "fifo")
    os.symlink("/dev/zero", tmp_path / "d" / "zero")
    started = time.monotonic()
    with Beneath(tmp_path) as opener:
        ino = regular.stat().st_ino
        assert (
            opener.sha256_regular("d/f", ino, 3) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        )
        assert opener.sha256_regular("d/f", ino, 1) != opener.sha256_regular("d/f", ino, 3)  # reads stop at the limit
        assert opener.sha256_regular("d/f", ino + 1, 3) is None
        fifo_ino = (tmp_path / "d" / "fifo").stat().st_ino
        assert opener.sha256_regular("d/fifo", fifo_ino, 3) is None
        assert opener.sha256_regular("d/zero", os.stat("/dev/zero").st_ino, 1 << 40) is None
        assert opener.readlink("d/zero") == "/dev/zero"
    assert time.monotonic() - started < 5


def test_walk_of_a_deep_tree_reopens_past_the_held_descriptors(tmp_path: Path) -> None:
    deep = tmp_path.joinpath(*(f"d{i}" for i in range(150)))
    deep.mkdir(parents=True)
    (deep.parent / "side").mkdir()
    (deep / "leaf").write_text("x")
    names: list[str] = []

    def visit(rel: str, fd: int) -> list[str]:
        with os.scandir(fd) as it:
            entries = [(f"{rel}/{e.name}" if rel else e.name, e.is_dir(follow_symlinks=False)) for e in it]
        names.extend(name for name, _ in entries)
        return [name for name, is_dir in entries if is_dir]

    before = len(os.listdir("/proc/self/fd"))
    walk_fds(tmp_path, visit)
    assert len(names) == 152 and any(n.endswith("d149/leaf") for n in names)
    assert any(n.endswith("d148/side") for n in names)
    assert len(os.listdir("/proc/self/fd")) == before
