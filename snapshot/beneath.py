"""Reading a directory tree another party may change meanwhile (a running machine's upper directory).

Every path is opened one component at a time from a descriptor of the root, with ``O_NOFOLLOW``:
a directory swapped for a symlink (``ln -s / dir``) mid-walk fails the open instead of leading
the host's walk out of the tree. Files are opened with ``O_PATH`` first and checked to be the
regular file that was listed before anything reads them, so a FIFO, a device node or a symlink
to ``/dev/zero`` put in a listed file's place is never opened for reading.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable
from pathlib import Path

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_HELD = 64  # directory descriptors kept along the walk's current path; deeper ones are reopened
_CHUNK = 1024 * 1024

Visit = Callable[[str, int], list[str]]


def _within(ancestor: str, rel: str) -> bool:
    return not ancestor or rel.startswith(ancestor + "/")


def _descend(base_fd: int, parts: list[str]) -> int:
    """Open ``parts`` below ``base_fd`` one component at a time (never through a symlink)."""
    fd = base_fd
    try:
        for part in parts:
            child = os.open(part, DIR_FLAGS, dir_fd=fd)
            if fd != base_fd:
                os.close(fd)
            fd = child
    except BaseException:
        if fd != base_fd:
            os.close(fd)
        raise
    return fd


def walk_fds(root: Path | str, visit: Visit, skip_missing: bool = False) -> None:
    """Depth-first walk of ``root``: ``visit(rel_dir, fd)`` lists the directory open at ``fd`` and
    returns the relative paths of its subdirectories to walk (the last one is walked first).

    A subdirectory that is no longer a directory raises :class:`OSError`, or with ``skip_missing``
    is left out.
    """
    root_fd = os.open(root, DIR_FLAGS)
    held: list[tuple[str, int]] = [("", root_fd)]  # open directories from the root down the current path
    try:
        stack = visit("", root_fd)
        while stack:
            rel = stack.pop()
            while not _within(held[-1][0], rel):
                os.close(held.pop()[1])
            base_rel, base_fd = held[-1]
            parts = (rel[len(base_rel) + 1 :] if base_rel else rel).split("/")
            try:
                fd = _descend(base_fd, parts)
            except OSError:
                if skip_missing:
                    continue
                raise
            if len(held) < _MAX_HELD:
                held.append((rel, fd))
                stack.extend(visit(rel, fd))
            else:
                try:
                    stack.extend(visit(rel, fd))
                finally:
                    os.close(fd)
    finally:
        for _, fd in held:
            os.close(fd)


class Beneath:
    """Opens entries below a root without following symlinks on the way (the last directory is cached)."""

    def __init__(self, root: Path | str) -> None:
        self.root_fd = os.open(root, DIR_FLAGS)
        self._dir: tuple[str, int] | None = None

    def directory(self, rel: str) -> int:
        """A descriptor of the directory ``rel`` (borrowed: valid until the next call or close)."""
        if not rel:
            return self.root_fd
        if self._dir is not None and self._dir[0] == rel:
            return self._dir[1]
        fd = _descend(self.root_fd, rel.split("/"))
        self._forget()
        self._dir = (rel, fd)
        return fd

    def readlink(self, rel: str) -> str:
        """The target of the symlink ``rel``."""
        parent, _, name = rel.rpartition("/")
        return os.readlink(name, dir_fd=self.directory(parent))

    def sha256_regular(self, rel: str, ino: int, limit: int) -> str | None:
        """The sha256 of the first ``limit`` bytes of ``rel`` if it is still the regular file ``ino``, else None."""
        parent, _, name = rel.rpartition("/")
        try:
            path_fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.directory(parent))
        except OSError:
            return None
        try:
            st = os.fstat(path_fd)
            if not stat.S_ISREG(st.st_mode) or st.st_ino != ino:
                return None
            # Reopened through the O_PATH descriptor: the same inode, checked regular, for reading.
            fd = os.open(f"/proc/self/fd/{path_fd}", os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        except OSError:
            return None
        finally:
            os.close(path_fd)
        digest = hashlib.sha256()
        try:
            left = limit
            while left > 0:
                chunk = os.read(fd, min(_CHUNK, left))
                if not chunk:
                    break
                digest.update(chunk)
                left -= len(chunk)
        except OSError:
            return None
        finally:
            os.close(fd)
        return digest.hexdigest()

    def _forget(self) -> None:
        if self._dir is not None:
            os.close(self._dir[1])
            self._dir = None

    def close(self) -> None:
        """Close every descriptor."""
        self._forget()
        os.close(self.root_fd)

    def __enter__(self) -> Beneath:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
