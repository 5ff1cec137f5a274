"""What file operations return: an entry's info and a read's content, and an entry's info from Docker's stat."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from ..docker import PathStat

FileType = Literal["file", "directory", "symlink", "other"]
Encoding = Literal["auto", "text", "base64"]


@dataclass(frozen=True)
class FileInfo:
    """One entry of a machine's filesystem."""

    path: str
    type: FileType
    size: int
    mode: str  # octal permission bits, e.g. "0644"
    mtime: str  # ISO 8601, UTC
    link_target: str | None = None


@dataclass(frozen=True)
class FileContent:
    """What a read returned."""

    path: str
    content: str
    encoding: Literal["text", "base64"]
    size: int  # size of the whole file in bytes
    offset: int
    returned: int  # bytes (byte ranges) or lines (line ranges) returned
    unit: Literal["bytes", "lines"]
    eof: bool  # the read reached the end of the file


def _docker_time(value: str) -> str:
    """Docker's RFC 3339 time (nanoseconds, 'Z') as ISO 8601 like the rest of our results."""
    head = value.rstrip("Z").partition(".")[0]
    try:
        return datetime.fromisoformat(head).replace(tzinfo=UTC).isoformat()
    except ValueError:
        return value


def info_from_stat(path: str, st: PathStat) -> FileInfo:
    """The entry Docker's stat of ``path`` describes (a symlink's target as Docker resolved it)."""
    if st.is_dir:
        kind: FileType = "directory"
    elif st.is_symlink:
        kind = "symlink"
    elif st.mode & ((1 << 26) | (1 << 25) | (1 << 24) | (1 << 21)):
        kind = "other"
    else:
        kind = "file"
    return FileInfo(
        path=path,
        type=kind,
        size=st.size,
        mode=f"{st.permissions:04o}",
        mtime=_docker_time(st.mtime),
        link_target=st.link_target or None,
    )
