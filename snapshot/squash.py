"""Squash a machine's stacked layers into one layer relative to its base image.

Every incremental snapshot adds a layer, and Docker refuses images deeper than 125 layers. A
squash walks the overlay union of the machine's upper directory and the extracted snapshot
layers below it (Docker's own layer directories, top first, base image excluded), with
overlayfs's rules: the topmost layer holding a name provides it, a whiteout hides what is
below, and a directory merges the layers below it until one makes it opaque or holds a
non-directory there. The result is what a first snapshot of the same files on the bare base
image would hold: every entry, a whiteout for every name hidden from the layers below, and an
opaque marker for every directory that hides the base image's content.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from .beneath import Beneath
from .oci import OPAQUE_MARKER, OPAQUE_XATTR, whiteout_name
from .walk import EXCLUDED, LayerPlan, LayerPlanner, Member, MemberSink


def union_plan(
    stack: list[Path],
    base: list[Path],
    on_member: MemberSink | None = None,
    excluded: frozenset[str] = EXCLUDED,
) -> LayerPlan:
    """Plan one layer holding the union of ``stack`` (top first); members name the layer they come from.

    ``base`` are the base image's layer directories: a whiteout goes in only for a name one of
    them holds. (A whiteout with nothing below is not just useless: in a directory no lower layer
    has, overlayfs lists it as a name that cannot be opened.)
    """
    return _UnionWalk(stack, base, on_member, excluded).run()


def _kind(st: os.stat_result) -> str:
    mode = st.st_mode
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISCHR(mode) and st.st_rdev == 0:
        return "whiteout"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return "entry"


def _opaque(path: str) -> bool:
    with contextlib.suppress(OSError):
        return os.getxattr(path, OPAQUE_XATTR, follow_symlinks=False) == b"y"
    return False


class _UnionWalk(LayerPlanner):
    def __init__(
        self, stack: list[Path], base: list[Path], on_member: MemberSink | None, excluded: frozenset[str]
    ) -> None:
        super().__init__(on_member)
        self.stack = stack
        self.base = base
        self.excluded = excluded
        self.provider: dict[str, int] = {}  # directory -> the layer its metadata comes from

    def run(self) -> LayerPlan:
        pending: list[tuple[str, list[int]]] = [("", list(range(len(self.stack))))]
        while pending:
            pending.extend(self._list(*pending.pop()))
        self.plan.archive.sort()
        self.plan.whiteouts.sort()
        self.plan.opaque.sort()
        return self.plan

    def _list(self, rel_dir: str, layers: list[int]) -> list[tuple[str, list[int]]]:
        """Merge one directory over ``layers`` (top first) and decide on its entries."""
        prefix = rel_dir + "/" if rel_dir else ""
        top: dict[str, tuple[int, str]] = {}  # name -> (providing layer, kind)
        merged: dict[str, list[int]] = {}  # directory -> the layers it merges, top first
        hides_base: set[str] = set()  # directories whose merge stopped above the base image
        mounts = False  # an excluded entry (a Docker mount point) or a device node is here
        for layer in layers:
            directory = str(self.stack[layer] / rel_dir) if rel_dir else str(self.stack[layer])
            try:
                fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
            except (FileNotFoundError, NotADirectoryError):
                continue
            try:
                with os.scandir(fd) as it:
                    for dirent in it:
                        rel = prefix + dirent.name
                        if rel in self.excluded:
                            mounts = True
                            continue
                        kind = _kind(dirent.stat(follow_symlinks=False))
                        if kind == "device":
                            mounts = True
                            continue  # device nodes are the machine's, made by Docker; layers never carry them
                        if rel in top:
                            # Shadowed by a higher layer; it only extends (or ends) a directory's merge.
                            if rel in merged and rel not in hides_base:
                                if kind == "dir":
                                    merged[rel].append(layer)
                                    if _opaque(f"{directory}/{dirent.name}"):
                                        hides_base.add(rel)
                                else:
                                    hides_base.add(rel)  # a non-directory below hides the base's entry too
                            continue
                        top[rel] = (layer, kind)
                        if kind == "dir":
                            merged[rel] = [layer]
                            self.provider[rel] = layer
                            if _opaque(f"{directory}/{dirent.name}"):
                                hides_base.add(rel)
            finally:
                os.close(fd)
        if rel_dir and not mounts and all(kind == "whiteout" for _, kind in top.values()):
            # Empty in the union (whiteouts are not entries): nothing else brings it into the layer.
            # A directory holding only Docker's mount points is a copy-up of theirs, not the agent's.
            self._archive_dir(rel_dir)
        # Inside a directory with an opaque marker, whiteouts are redundant (and would show up in
        # listings of the restored machine as names that cannot be opened).
        hidden = (
            []
            if rel_dir in self.opaque_dirs
            else sorted(r for r, (_, kind) in top.items() if kind == "whiteout" and self._in_base(r))
        )
        dirs = [rel for rel, (_, kind) in top.items() if kind == "dir"]
        entries = [(rel, layer) for rel, (layer, kind) in top.items() if kind == "entry"]
        if not (hidden or entries or hides_base):
            return [(rel, merged[rel]) for rel in dirs]
        if rel_dir:
            self._archive_dir(rel_dir)
        for rel in hidden:
            self.plan.whiteouts.append(rel)
            self._emit(Member(whiteout_name(rel), marker=True))
        for rel in dirs:
            if rel in hides_base:
                self._archive_dir(rel)
                self.opaque_dirs.add(rel)
                self.plan.opaque.append(rel)
                self._emit(Member(f"{rel}/{OPAQUE_MARKER}", marker=True))
        for rel, layer in entries:
            self.plan.archive.append(rel)
            self._emit(Member(rel, source=self._source(layer)))
        return [(rel, merged[rel]) for rel in dirs]

    def _in_base(self, rel: str) -> bool:
        # Looked up one component at a time: a symlink of the base image (``var/run -> /run``) never
        # leads the lookup to the host's files.
        parent, _, name = rel.rpartition("/")
        for layer in self.base:
            try:
                with Beneath(layer) as opener:
                    os.lstat(name, dir_fd=opener.directory(parent))
                return True
            except OSError:
                continue
        return False

    def _source(self, layer: int) -> str:
        return str(self.stack[layer]) if layer else ""

    def _dir_source(self, path: str) -> str:
        return self._source(self.provider.get(path, 0))
