"""Tar through Docker's archive API: building what ``put_archive`` extracts, reading what ``get_archive`` sends.

Both ways stream: a write's payload goes out in chunks from memory, and a read takes from
the archive only the members (and bytes) it needs.
"""

from __future__ import annotations

import fnmatch
import posixpath
import stat as statmod
import tarfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Literal

from ..docker import DockerBackend
from ..errors import InvalidInput, PathNotFound
from ..tarstream import with_tar_stream
from .results import FileInfo, FileType

_CHUNK = 1024 * 1024


def new_member(path: str, kind: bytes, mode: int, owner: tuple[int, int]) -> tarfile.TarInfo:
    """A tar entry for ``path`` owned by ``owner`` (uid, gid), stamped now."""
    member = tarfile.TarInfo(path.lstrip("/"))
    member.type = kind
    member.mode = mode
    member.mtime = int(time.time())
    member.uid, member.gid = owner
    return member


async def tar_stream(members: list[tarfile.TarInfo], payload: bytes = b"") -> AsyncIterator[bytes]:
    """The tar of ``members`` (the last may carry ``payload``): streamed from memory, never copied whole."""
    for member in members:
        yield member.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="surrogateescape")
    view = memoryview(payload)
    for start in range(0, len(view), _CHUNK):
        yield bytes(view[start : start + _CHUNK])
    yield b"\0" * (-len(payload) % tarfile.BLOCKSIZE) + b"\0" * (2 * tarfile.BLOCKSIZE)


def _skip(fh: IO[bytes], count: int) -> None:
    while count > 0:
        chunk = fh.read(min(count, _CHUNK))
        if not chunk:
            return
        count -= len(chunk)


def _type_of_tar(member: tarfile.TarInfo) -> FileType:
    if member.isdir():
        return "directory"
    if member.issym():
        return "symlink"
    if member.isfile() or member.islnk():
        return "file"
    return "other"


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def read_part(
    fh: IO[bytes],
    size: int,
    offset: int,
    limit: int | None,
    unit: Literal["bytes", "lines"],
    check_size: Callable[[int, bool], None],
) -> tuple[bytes, int, bool]:
    """The bytes (or lines) asked for from a file of ``size`` bytes open at its start, how many, and
    whether its end was reached. ``check_size(bytes, limited)`` raises before more than the ceiling is held."""
    if unit == "bytes":
        rest = max(size - offset, 0)
        check_size(rest if limit is None else min(limit, rest), limit is not None)
        _skip(fh, offset)
        data = fh.read(rest) if limit is None else fh.read(min(limit, rest))
        return data, len(data), offset + len(data) >= size
    for _ in range(offset):  # skipped lines are read in chunks: a line may be any length
        while (chunk := fh.readline(_CHUNK)) and not chunk.endswith(b"\n"):
            pass
        if not chunk:
            return b"", 0, True
    lines: list[bytes] = []
    held = 0
    while limit is None or len(lines) < limit:
        line = fh.readline(_CHUNK)
        while line and not line.endswith(b"\n"):
            more = fh.readline(_CHUNK)
            if not more:
                break
            line += more
            check_size(held + len(line), limit is not None)  # a line without end is held no further
        if not line:
            return b"".join(lines), len(lines), True
        held += len(line)
        check_size(held, limit is not None)
        lines.append(line)
    return b"".join(lines), len(lines), fh.read(1) == b""


@dataclass(frozen=True)
class MachineArchive:
    """One machine's files as tar: what its archives hold, and entries extracted at '/'."""

    docker: DockerBackend
    machine_id: str

    async def put(self, members: list[tarfile.TarInfo], payload: bytes = b"") -> None:
        """Extract ``members`` at '/' (the last may carry ``payload``)."""
        await self.docker.put_archive(self.machine_id, "/", tar_stream(members, payload))

    async def owner_of(self, path: str) -> tuple[int, int, int]:
        """Owner, group and mode of ``path``, from its archive's first header (the rest is not read)."""

        def first(tar: tarfile.TarFile) -> tuple[int, int, int]:
            member = tar.next()
            if member is None:
                raise PathNotFound(path)
            return member.uid, member.gid, member.mode

        async with self.docker.get_archive(self.machine_id, path) as (_, content):
            return await with_tar_stream(content, first)

    async def link_text(self, path: str) -> str | None:
        """The target a symlink's own entry names (as written, not resolved), or ``None``."""

        def linkname(tar: tarfile.TarFile) -> str | None:
            member = tar.next()
            return member.linkname if member is not None and member.issym() else None

        async with self.docker.get_archive(self.machine_id, path) as (_, content):
            return await with_tar_stream(content, linkname)

    async def read_range(
        self,
        path: str,
        real: str,
        offset: int,
        limit: int | None,
        unit: Literal["bytes", "lines"],
        check_size: Callable[[int, bool], None],
    ) -> tuple[bytes, int, bool, int, tuple[int, int, int]]:
        """The bytes (or lines) asked for, how many, whether the end was reached, the file's size, and its
        owner, group and mode. ``check_size(bytes, limited)`` raises before more than the ceiling is held."""
        owner: list[tuple[int, int, int]] = []

        def extract(tar: tarfile.TarFile) -> tuple[bytes, int, bool, int]:
            member = tar.next()
            if member is None or not member.isfile():
                raise InvalidInput(f"{path} is not a regular file; it cannot be read as content.")
            owner.append((member.uid, member.gid, member.mode))
            fh = tar.extractfile(member)
            assert fh is not None
            return (*read_part(fh, member.size, offset, limit, unit, check_size), member.size)

        async with self.docker.get_archive(self.machine_id, real) as (_, content):
            data, returned, eof, size = await with_tar_stream(content, extract)
        return data, returned, eof, size, owner[0]

    async def entries(
        self,
        path: str,
        real: str,
        recursive: bool,
        pattern: str | None,
        max_entries: int,
        max_bytes: int,
        too_big: Callable[[str], Exception],
    ) -> tuple[list[FileInfo], bool]:
        """The entries under the directory ``real`` (named under ``path``), sorted by path, and whether
        ``max_entries`` cut the list. Docker streams the whole subtree, contents included: past ``max_bytes``
        of it, ``too_big(path)`` is raised (before that content is read)."""

        def collect(tar: tarfile.TarFile) -> tuple[list[FileInfo], bool]:
            entries: list[FileInfo] = []
            sizes: dict[str, int] = {}  # Docker sends a file's second hard link with size 0
            root: str | None = None
            for member in tar:
                if member.offset_data + member.size > max_bytes:
                    raise too_big(path)
                if member.isfile():
                    sizes[member.name] = member.size
                name = member.name.rstrip("/")
                if root is None:
                    root = name  # the first member is the directory itself
                    continue
                rel = name[len(root) + 1 :] if name.startswith(root + "/") else name
                if not rel or (not recursive and "/" in rel):
                    continue
                target = rel if pattern and "/" in pattern else posixpath.basename(rel)
                if pattern and not fnmatch.fnmatchcase(target, pattern):
                    continue
                if len(entries) >= max_entries:
                    return entries, True
                entries.append(
                    FileInfo(
                        path=posixpath.join(path, rel),
                        type=_type_of_tar(member),
                        size=sizes.get(member.linkname, 0) if member.islnk() else member.size,
                        mode=f"{statmod.S_IMODE(member.mode):04o}",
                        mtime=_iso(member.mtime),
                        link_target=(member.linkname or None) if member.issym() else None,
                    )
                )
            return entries, False

        async with self.docker.get_archive(self.machine_id, real) as (_, content):
            entries, cut = await with_tar_stream(content, collect)
        entries.sort(key=lambda entry: entry.path)
        return entries, cut
