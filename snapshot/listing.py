"""File listings of snapshots (what their layers add on top of the base image), and diffs.

A listing maps absolute paths to their :class:`Meta`. A snapshot's listing applies its layers
in order with the OCI whiteout rules (:func:`apply_layer`); the live machine's is its head's
listing with the changes of its upper directory applied the same way (:func:`live_tree`).
"""

from __future__ import annotations

import contextlib
import hashlib
import posixpath
import tarfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import zstandard

from .beneath import Beneath
from .errors import BlobCorrupt
from .image import split_layers
from .index import Entry, Index
from .oci import OPAQUE_MARKER, WHITEOUT_PREFIX
from .store import Descriptor, Store
from .walk import LayerPlan, scan_and_plan


@dataclass(frozen=True, slots=True)
class Meta:
    """What a diff compares for one path."""

    type: str
    size: int
    mode: int
    uid: int
    gid: int
    mtime: int
    link: str
    sha256: str = ""  # content digest of regular files


@dataclass(frozen=True)
class Diff:
    """Paths added, changed and removed going from one state to another."""

    added: list[str]
    changed: list[str]
    removed: list[str]


LayerEntry = tuple[tarfile.TarInfo, str]  # a header and, for regular files, the content's sha256


def _meta(member: tarfile.TarInfo, digest: str = "") -> Meta:
    if member.isdir():
        kind = "directory"
    elif member.issym():
        kind = "symlink"
    elif member.isfile() or member.islnk():
        kind = "file"
    else:
        kind = "other"
    return Meta(kind, member.size, member.mode, member.uid, member.gid, int(member.mtime), member.linkname, digest)


def apply_layer(tree: dict[str, Meta], entries: Iterable[LayerEntry]) -> None:
    """Apply one layer's entries (with OCI whiteouts) to a listing, in place."""
    added: set[str] = set()
    for member, digest in entries:
        path = "/" + member.name.strip("/").removeprefix("./")
        parent, name = posixpath.split(path)
        if name == OPAQUE_MARKER:
            prefix = parent.rstrip("/") + "/"
            for existing in [p for p in tree if p.startswith(prefix) and p not in added]:
                del tree[existing]
            continue
        if name.startswith(WHITEOUT_PREFIX):
            target = posixpath.join(parent, name[len(WHITEOUT_PREFIX) :])
            prefix = target + "/"
            # A whiteout hides what lower layers hold, never an entry of its own layer (OCI).
            for existing in [p for p in tree if (p == target or p.startswith(prefix)) and p not in added]:
                del tree[existing]
            continue
        if member.islnk():
            source = tree.get("/" + member.linkname.strip("/"))
            tree[path] = source if source is not None else _meta(member)
        else:
            tree[path] = _meta(member, digest)
        added.add(path)


def layer_members(store: Store, layer: Descriptor) -> list[tarfile.TarInfo]:
    """The tar headers of a layer blob (its digest is checked as it is read)."""
    return [member for member, _ in layer_entries(store, layer, with_digests=False)]


def layer_entries(store: Store, layer: Descriptor, with_digests: bool = True) -> list[LayerEntry]:
    """The tar headers of a layer blob with each regular file's content digest (if asked)."""
    entries: list[LayerEntry] = []
    with store.open_blob(layer) as blob:
        try:
            reader = zstandard.ZstdDecompressor().stream_reader(blob, read_across_frames=True)  # type: ignore[arg-type]
            with tarfile.open(fileobj=reader, mode="r|") as tar:
                for member in tar:
                    digest = ""
                    if with_digests and member.isreg():
                        content = tar.extractfile(member)
                        assert content is not None
                        digest = hashlib.file_digest(content, "sha256").hexdigest()  # type: ignore[arg-type]
                    entries.append((member, digest))
        except (zstandard.ZstdError, tarfile.TarError, EOFError) as exc:
            raise BlobCorrupt(layer.digest, f"it does not decompress to a tar: {exc}") from exc
        blob.read()
    return entries


def snapshot_tree(store: Store, manifest_digest: str) -> dict[str, Meta]:
    """Everything a snapshot's own layers hold (what it adds to its base image), by absolute path."""
    manifest = store.get_json(manifest_digest)
    tree: dict[str, Meta] = {}
    for layer in split_layers(manifest)[1]:
        apply_layer(tree, layer_entries(store, layer))
    return tree


def apply_plan(tree: dict[str, Meta], changes: LayerPlan, meta_of: Callable[[str], Meta]) -> None:
    """Apply a planned layer to a listing, in place: whiteouts hide a path and what is below it,
    an opaque directory hides what is below it, then every archived path gets ``meta_of(path)``."""
    hidden = [("/" + path, True) for path in changes.whiteouts] + [("/" + p, False) for p in changes.opaque]
    for root, itself in hidden:
        for existing in [p for p in tree if p.startswith(root + "/") or (itself and p == root)]:
            del tree[existing]
    for path in changes.archive:
        tree["/" + path] = meta_of(path)


def live_meta(opener: Beneath, path: str, entry: Entry) -> Meta:
    """Diff metadata of a changed entry of an upper directory (files are hashed, at most as far as listed).

    A running machine may change the entry after it was listed: a file that is no longer the regular
    file listed (a FIFO, a device node, a symlink now) or has gone is reported unhashed, never read.
    """
    kind = {"dir": "directory", "file": "file", "symlink": "symlink"}.get(entry.kind, "other")
    link = digest = ""
    if kind == "symlink":
        with contextlib.suppress(OSError):
            link = opener.readlink(path)
    elif kind == "file":
        digest = opener.sha256_regular(path, entry.ino, entry.size) or ""
    size = entry.size if kind == "file" else 0
    return Meta(kind, size, entry.mode & 0o7777, entry.uid, entry.gid, entry.mtime_ns // 1_000_000_000, link, digest)


def live_tree(head_tree: dict[str, Meta], upper: Path, previous: Index | None) -> dict[str, Meta]:
    """Blocking: ``head_tree`` (changed in place) with what ``upper`` changed since the ``previous`` capture.

    Safe on a running machine: nothing outside ``upper`` is listed or read (see ``beneath``). A
    directory swapped for something else while it is walked raises :class:`OSError`.
    """
    current, changes = scan_and_plan(upper, previous)
    with Beneath(upper) as opener:
        apply_plan(head_tree, changes, lambda path: live_meta(opener, path, current.entries[path]))
    return head_tree


def diff_trees(before: dict[str, Meta], after: dict[str, Meta]) -> Diff:
    """Compare two listings (directories' own changes are left out: their files tell the story)."""
    added = sorted(p for p in after if p not in before and after[p].type != "directory")
    removed = sorted(p for p in before if p not in after)
    changed = sorted(p for p in after if p in before and before[p] != after[p] and after[p].type != "directory")
    return Diff(added, changed, removed)
