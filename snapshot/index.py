"""The per-machine file index: metadata of every entry in the upper directory at a snapshot.

Two scans of the same upper directory are compared entry by entry; an entry whose inode,
ctime, mtime, size, mode and owner are all unchanged has unchanged content (any write or
metadata change moves ctime), so no content is read to find what changed.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import zstandard

Kind = Literal["file", "dir", "symlink", "whiteout", "other"]


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

    depth: int = 0  # how many deltas sit on top of a full index in its stored form
    # Paths by their parent directory ("" for the top); a scan fills it, a loaded index computes it.
    children: dict[str, list[str]] | None = field(default=None, compare=False, repr=False)

    def children_by_parent(self) -> dict[str, list[str]]:
        """Every path under its parent directory's path (computed once per index)."""
        if self.children is None:
            grouped: dict[str, list[str]] = {}
            for path in self.entries:
                grouped.setdefault(os.path.dirname(path), []).append(path)
            object.__setattr__(self, "children", grouped)
        assert self.children is not None
        return self.children

    def dumps(self, base: tuple[str, Index] | None = None) -> bytes:
        """Serialized and zstd-compressed: in full, or as a delta over ``base`` (its digest and index).

        A delta holds only entries that changed or appeared, and the paths that went away; a full
        index is written again once :data:`MAX_DELTA_DEPTH` deltas are stacked.
        """
        if base is None or base[1].depth >= MAX_DELTA_DEPTH:
            body: dict[str, object] = {"version": 1, "entries": self.entries}
        else:
            digest, previous = base
            before = previous.entries
            body = {
                "version": 1,
                "base": digest,
                "depth": previous.depth + 1,
                "entries": {p: e for p, e in self.entries.items() if before.get(p) != e},
                "removed": [p for p in before if p not in self.entries],
            }
        raw = json.dumps(body).encode("utf-8", errors="surrogateescape")
        return zstandard.ZstdCompressor(level=3).compress(raw)

    @classmethod
    def loads(cls, data: bytes, resolve: Callable[[str], Index] | None = None) -> Index:
        """Parse a stored index; ``resolve`` loads the base of a delta by digest."""
        raw = parse(data)
        make = Entry._make
        changed = {p: make(row) for p, row in raw["entries"].items()}
        base_digest = raw.get("base")
        if not base_digest:
            return cls(changed)
        if resolve is None:
            raise ValueError("this index is a delta: a resolver for its base is needed")
        entries = dict(resolve(base_digest).entries)
        for path in raw.get("removed", []):
            entries.pop(path, None)
        entries.update(changed)
        return cls(entries, depth=int(raw.get("depth", 1)))


def parse(data: bytes) -> dict[str, Any]:
    """The JSON body of a stored index blob."""
    body: dict[str, Any] = json.loads(
        zstandard.ZstdDecompressor().decompress(data).decode("utf-8", errors="surrogateescape")
    )
    return body


MAX_DELTA_DEPTH = 16
