"""Read (and trim) files inside a running machine from the host, never trusting the machine.

A running machine's files are reachable from the host through ``/proc/<pid>/root``. Everything
there is the agent's to change, so each path component is opened relative to its parent's
descriptor with ``O_NOFOLLOW`` (a symlink anywhere ends the walk instead of leading out of the
machine), the last one with ``O_NONBLOCK`` (a FIFO never blocks), and only a regular file is read,
at most the bytes asked for.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


class UnsafeFile(OSError):
    """A path in the machine is not a plain regular file (a symlink, FIFO, device, or missing)."""


@dataclass(frozen=True)
class FileSlice:
    """Bytes read from a file, where they start, and the file's size when it was read."""

    data: bytes
    offset: int
    size: int


@contextlib.contextmanager
def open_in_machine(pid: int, path: str, *, write: bool = False) -> Iterator[int]:
    """A descriptor of the regular file ``path`` inside the machine whose init is host pid ``pid``."""
    parts = [part for part in path.split("/") if part]
    if not parts or any(part in (".", "..") for part in parts):
        raise UnsafeFile(errno.EINVAL, f"not a plain absolute path: {path!r}")
    directory = os.open(f"/proc/{pid}/root", os.O_PATH | os.O_DIRECTORY)
    try:
        for part in parts[:-1]:
            try:
                inner = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=directory)
            except OSError as exc:
                raise UnsafeFile(exc.errno, f"{path}: {exc.strerror}") from exc
            os.close(directory)
            directory = inner
        flags = (os.O_RDWR if write else os.O_RDONLY) | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
        try:
            fd = os.open(parts[-1], flags, dir_fd=directory)
        except OSError as exc:
            raise UnsafeFile(exc.errno, f"{path}: {exc.strerror}") from exc
    finally:
        os.close(directory)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UnsafeFile(errno.EINVAL, f"{path} is not a regular file")
        yield fd
    finally:
        os.close(fd)


def read_slice(pid: int, path: str, offset: int, limit: int) -> FileSlice:
    """At most ``limit`` bytes of the file from ``offset`` (fewer at its end)."""
    with open_in_machine(pid, path) as fd:
        size = os.fstat(fd).st_size
        data = os.pread(fd, max(0, min(limit, size - offset)), offset) if offset < size else b""
        return FileSlice(data, offset, size)


def read_small(pid: int, path: str, limit: int = 4096) -> bytes | None:
    """A small file's content (at most ``limit`` bytes), or None when it is not there (or not plain)."""
    try:
        return read_slice(pid, path, 0, limit).data
    except UnsafeFile:
        return None


def file_size(pid: int, path: str) -> int | None:
    """The file's size, or None when it is not there (or not plain)."""
    try:
        with open_in_machine(pid, path) as fd:
            return os.fstat(fd).st_size
    except UnsafeFile:
        return None


def drop_before(pid: int, path: str, keep_from: int) -> int:
    """Free the file's bytes before about ``keep_from`` (whole pages: a hole, so offsets and size stay);
    returns the offset up to which bytes are gone (0 when nothing could be freed)."""
    length = keep_from - keep_from % 4096
    if length <= 0:
        return 0
    try:
        with open_in_machine(pid, path, write=True) as fd:
            done = _libc.fallocate(
                fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, ctypes.c_long(0), ctypes.c_long(length)
            )
            return length if done == 0 else 0
    except UnsafeFile:
        return 0
