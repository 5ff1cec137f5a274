"""The per-machine file index: metadata of every entry in the upper directory at a snapshot.

Two scans of the same upper directory are compared entry by entry; an entry whose inode,
ctime, mtime, size, mode and owner are all unchanged has unchanged content (any write or
metadata change moves ctime), so no content is read to find what changed.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from typing import Literal, NamedTuple

import zstandard

Kind = Literal["file", "dir", "symlink", "whiteout", "other"]
INDEX_MEDIA_TYPE = "application/vnd.dev.spinup.index.v1+json+zstd"


class Entry(NamedTuple):
    """Metadata of one path (a tuple: cheap to build, compare and serialize for 10^5 entries)."""

    kind: Kind
    mode: int = 0
    uid: int = 0
    gid: int = 0
    size: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0
    ino: int = 0
    opaque: bool = False

    @classmethod
    def whiteout(cls) -> Entry:
        return cls("whiteout")

    @classmethod
    def of(cls, st: os.stat_result, opaque: bool = False) -> Entry:
        mode = st.st_mode
        if stat.S_ISREG(mode):
            kind: Kind = "file"
        elif stat.S_ISDIR(mode):
            kind = "dir"
        elif stat.S_ISLNK(mode):
            kind = "symlink"
        else:
            kind = "other"
        return cls(kind, mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, opaque)

    def same_as(self, other: Entry) -> bool:
        """Whether nothing about the entry changed between two scans."""
        return self == other


@dataclass(frozen=True)
class Index:
    """Every entry of an upper directory, by relative path."""

    entries: dict[str, Entry]
    # Directories holding at least one entry of the scan, excluded mount points included (an
    # overlay copy-up of a directory is caused by its children). Not stored: only a fresh scan has it.
    parents: frozenset[str] = frozenset()

    def dumps(self) -> bytes:
        """Serialized and zstd-compressed."""
        raw = json.dumps({"version": 1, "entries": self.entries})
        return zstandard.ZstdCompressor(level=3).compress(raw.encode("utf-8", errors="surrogateescape"))

    @classmethod
    def loads(cls, data: bytes) -> Index:
        raw = json.loads(zstandard.ZstdDecompressor().decompress(data).decode("utf-8", errors="surrogateescape"))
        make = Entry._make
        return cls({p: make(row) for p, row in raw["entries"].items()})
