"""Walk an overlayfs upper directory and plan the layer that takes it on from the previous capture.

The upper directory of a machine holds everything it changed relative to its image. One walk
records each entry's metadata in an :class:`Index` and, comparing with the index of the previous
snapshot of the same machine, decides what the next layer holds without reading file contents.
Overlayfs whiteouts (0/0 character devices) become ``.wh.<name>`` members, opaque directories
(``trusted.overlay.opaque=y``) get a ``.wh..wh..opq`` member right after the directory, and paths
gone since the previous snapshot get whiteouts. A directory's whiteouts come before its other
members, as the OCI layer spec asks. Members are handed on as soon as they are decided, so the
tar feed can archive them while the walk goes on.

:class:`LayerPlanner` is what this walk and the squash's union walk (``squash.py``) share.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from .beneath import walk_fds
from .index import Entry, Index
from .oci import OPAQUE_MARKER, OPAQUE_XATTR, whiteout_name

# Mount points Docker creates inside the upper directory (the toolbox, the credentials tmpfs at
# /run/spinup/secrets, docker-init); they are not the agent's data.
EXCLUDED = frozenset({".spinup", "run/spinup", "usr/sbin/docker-init", "sbin/docker-init"})
_FILE_TYPE = 0o170000  # the file-type bits of st_mode


class Member(NamedTuple):
    """One entry of a layer, in layer order."""

    name: str  # the path inside the layer (relative, no leading '/')
    marker: bool = False  # an empty whiteout or opaque marker, not a path of the upper directory
    source: str = ""  # the layer directory it is read from, when not the upper directory (a squash)


@dataclass
class LayerPlan:
    """What the next layer holds."""

    archive: list[str] = field(default_factory=list)  # paths whose content/metadata go in the layer
    whiteouts: list[str] = field(default_factory=list)  # paths to hide
    opaque: list[str] = field(default_factory=list)  # directories whose lower content is hidden
    members: list[Member] = field(default_factory=list)  # all of the above, in layer order

    @property
    def empty(self) -> bool:
        return not (self.archive or self.whiteouts or self.opaque)

    @property
    def paths_changed(self) -> int:
        return len(self.archive) + len(self.whiteouts)


MemberSink = Callable[[Member], None]
Planner = Callable[[MemberSink], "tuple[Index, LayerPlan]"]


def scan(upper: Path, excluded: frozenset[str] = EXCLUDED) -> Index:
    """Record every entry of an upper directory (paths relative, without leading '/')."""
    return scan_and_plan(upper, None, excluded=excluded)[0]


def scan_and_plan(
    upper: Path,
    previous: Index | None,
    on_member: MemberSink | None = None,
    excluded: frozenset[str] = EXCLUDED,
) -> tuple[Index, LayerPlan]:
    """Walk an upper directory once: its index, and the layer that takes it on from ``previous``.

    ``previous`` is the index of the last capture of the same upper directory (None captures
    everything). ``on_member`` hears each layer member as soon as it is decided, parents first.
    """
    return _Walk(upper, previous, on_member, excluded).run()


class LayerPlanner:
    """What a walk that plans a layer shares: the plan, and members handed on in layer order."""

    def __init__(self, on_member: MemberSink | None) -> None:
        self.on_member = on_member
        self.plan = LayerPlan()
        self.archived_dirs: set[str] = set()
        self.opaque_dirs: set[str] = set()  # directories given an opaque marker in this layer

    def _dir_source(self, path: str) -> str:
        """Where a directory's entry is read from (see ``Member.source``)."""
        return ""

    def _archive_dir(self, path: str) -> None:
        """Archive a directory and those of its parents not archived yet, outermost first."""
        missing: list[str] = []
        while path and path not in self.archived_dirs:
            missing.append(path)
            path = os.path.dirname(path)
        for directory in reversed(missing):
            self.archived_dirs.add(directory)
            self.plan.archive.append(directory)
            self._emit(Member(directory, source=self._dir_source(directory)))

    def _emit(self, member: Member) -> None:
        self.plan.members.append(member)
        if self.on_member is not None:
            self.on_member(member)


class _Walk(LayerPlanner):
    """One depth-first walk deciding, directory by directory, what the next layer holds.

    A directory is archived when its metadata changed since the previous index, when it is new
    and empty in the upper directory (an overlay copy-up of a parent always has a child there),
    when it becomes opaque, or as the parent of something archived.
    """

    def __init__(
        self, upper: Path, previous: Index | None, on_member: MemberSink | None, excluded: frozenset[str]
    ) -> None:
        super().__init__(on_member)
        self.upper = upper
        self.prior = previous.entries if previous is not None else {}
        self.prior_children = previous.children_by_parent() if previous is not None else {}
        self.excluded = excluded
        self.entries: dict[str, Entry] = {}
        self.children: dict[str, list[str]] = {}
        # Directories holding at least one entry (excluded ones and device nodes count).
        self.parents: set[str] = set()

    def run(self) -> tuple[Index, LayerPlan]:
        walk_fds(self.upper, self._list)
        self.plan.archive.sort()
        self.plan.whiteouts.sort()
        self.plan.opaque.sort()
        return Index(self.entries, frozenset(self.parents), children=self.children), self.plan

    def _list(self, rel_dir: str, fd: int) -> list[str]:
        """Record one directory's entries (open at ``fd``) and decide on them; returns its subdirectories."""
        prefix = rel_dir + "/" if rel_dir else ""
        entries, prior, excluded = self.entries, self.prior, self.excluded
        new_entry = tuple.__new__  # Entry's fields in order, without the per-call overhead of Entry()
        whiteout = Entry.whiteout()
        subdirs: list[str] = []
        listed: list[str] = []
        hidden: list[str] = []  # whiteouts, new or for paths gone since the previous index
        opaque: list[str] = []
        changed: list[str] = []  # files, symlinks and others
        changed_dirs: list[str] = []
        seen = 0
        # Entries are stat'ed relative to the directory's descriptor: no path walk per entry (~25%
        # faster), and the walk opens each directory from its parent's descriptor (``beneath``), so a
        # running machine that swaps a directory for a symlink cannot lead it out of the upper directory.
        directory = f"/proc/self/fd/{fd}"  # the open directory itself, for its subdirectories' xattrs
        with os.scandir(fd) as it:
            for dirent in it:
                seen += 1
                rel = prefix + dirent.name
                if rel in excluded:
                    continue
                st = dirent.stat(follow_symlinks=False)
                mode = st.st_mode
                file_type = mode & _FILE_TYPE
                is_opaque = False
                if file_type == stat.S_IFREG:
                    kind = "file"
                elif file_type == stat.S_IFDIR:
                    kind = "dir"
                    with contextlib.suppress(OSError):
                        marker = os.getxattr(f"{directory}/{dirent.name}", OPAQUE_XATTR, follow_symlinks=False)
                        is_opaque = marker == b"y"
                    subdirs.append(rel)
                elif file_type == stat.S_IFLNK:
                    kind = "symlink"
                elif file_type == stat.S_IFCHR and st.st_rdev == 0:
                    kind = "whiteout"
                elif file_type == stat.S_IFCHR or file_type == stat.S_IFBLK:
                    continue  # device nodes are the machine's, made by Docker; layers never carry them
                else:
                    kind = "other"
                if kind == "whiteout":
                    entry = whiteout
                else:
                    entry = new_entry(
                        Entry,
                        (kind, mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino,
                         is_opaque),
                    )  # fmt: skip
                entries[rel] = entry
                listed.append(rel)
                before = prior.get(rel)
                if before == entry:
                    continue
                if kind == "whiteout":
                    hidden.append(rel)
                elif kind != "dir":
                    changed.append(rel)
                elif is_opaque and not (before is not None and before.opaque and before.ino == entry.ino):
                    opaque.append(rel)
                elif before is not None:
                    changed_dirs.append(rel)  # a directory seen before whose metadata moved (chmod, chown, touch)
        if seen:
            self.parents.add(rel_dir)
        elif rel_dir and rel_dir not in prior:
            self._archive_dir(rel_dir)  # new and empty: nothing else would bring it into the layer
        self.children[rel_dir] = listed
        if rel_dir in self.opaque_dirs:
            # Its opaque marker hides everything below already; a whiteout inside an opaque directory
            # would even show up in listings of the restored machine (as a name that cannot be opened).
            hidden = []
        elif self.prior_children:
            hidden += [path for path in self.prior_children.get(rel_dir, ()) if path not in entries]
        if not (hidden or opaque or changed or changed_dirs):
            return subdirs
        if rel_dir:
            self._archive_dir(rel_dir)  # with its parents: a layer applies on its own
        for path in hidden:
            self._emit(Member(whiteout_name(path), marker=True))
        for path in opaque:
            self._archive_dir(path)
            self._emit(Member(f"{path}/{OPAQUE_MARKER}", marker=True))
            self.opaque_dirs.add(path)
        for path in changed_dirs:
            self._archive_dir(path)
        plan = self.plan
        plan.whiteouts += hidden
        plan.opaque += opaque
        plan.archive += changed
        members = [new_entry(Member, (path, False, "")) for path in changed]
        plan.members += members
        if self.on_member is not None:
            for member in members:
                self.on_member(member)
        return subdirs
