"""Verify and garbage-collect the store.

Writers of new snapshots hold the store lock shared; gc holds it exclusive, so a blob written
for a snapshot whose manifest is not yet listed is never collected under it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from .base import is_base
from .errors import StoreError
from .index import parse
from .oci import BASE_ID, INDEX, MANIFEST_MEDIA_TYPE, REF_NAME
from .store import Descriptor, Store


@contextlib.contextmanager
def store_lock(store: Store, exclusive: bool) -> Iterator[None]:
    """Hold the store's advisory lock (shared for writers, exclusive for gc)."""
    path = store.root / "lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


@dataclass
class VerifyReport:
    """What ``verify`` found."""

    blobs_checked: int = 0
    snapshots_checked: int = 0
    problems: list[str] = field(default_factory=list)  # things that break a snapshot
    garbage: list[str] = field(default_factory=list)  # unreferenced blobs and stale temp files

    @property
    def ok(self) -> bool:
        return not self.problems


def referenced_blobs(store: Store, manifest: Descriptor) -> list[str]:
    """Every blob a manifest needs: itself, its config, its layers (the base image's too), and its file index
    chain as far as the store holds it (a snapshot pulled from a registry comes without one: the index only
    speeds up the next capture of the machine it was taken from)."""
    raw = store.get_json(manifest)
    digests = [manifest.digest, raw["config"]["digest"]]
    digests += [layer["digest"] for layer in raw.get("layers", [])]
    index_digest = raw.get("annotations", {}).get(INDEX)
    while index_digest and store.has_blob(index_digest):  # a delta index needs the chain of indexes below it
        digests.append(index_digest)
        with store.open_blob(index_digest) as reader:
            index_digest = parse(reader.read()).get("base")
    return digests


def verify(store: Store, known_manifests: dict[str, str]) -> VerifyReport:
    """Re-hash every blob and check every reference.

    ``known_manifests`` maps snapshot id -> manifest digest as the state database records them.
    """
    report = VerifyReport()
    referenced: set[str] = set()
    everything = store.manifests()
    listed = {(d.annotations or {}).get(REF_NAME, ""): d for d in everything if not is_base(d)}
    bases = [d for d in everything if is_base(d)]
    used_bases: set[str] = set()
    for snapshot_id, digest in sorted(known_manifests.items()):
        if snapshot_id not in listed:
            report.problems.append(f"snapshot {snapshot_id}: not listed in index.json (manifest {digest})")
    for snapshot_id, descriptor in sorted(listed.items()):
        if snapshot_id not in known_manifests:
            report.garbage.append(
                f"snapshot {snapshot_id} is listed in index.json but was never recorded (an interrupted "
                f"snapshot; gc removes it)"
            )
            continue
        report.snapshots_checked += 1
        try:
            needed = referenced_blobs(store, descriptor)
        except StoreError as exc:
            report.problems.append(f"snapshot {snapshot_id}: manifest unreadable: {exc}")
            referenced.add(descriptor.digest)
            continue
        used_bases.add((store.get_json(descriptor).get("annotations") or {}).get(BASE_ID, ""))
        for digest in needed:
            referenced.add(digest)
            if not store.has_blob(digest):
                report.problems.append(f"snapshot {snapshot_id}: blob {digest} is missing")
    for descriptor in bases:
        image_id = (descriptor.annotations or {}).get(BASE_ID, "")
        if image_id not in used_bases:
            report.garbage.append(f"base image {image_id[:19]} is used by no snapshot (gc removes it)")
            continue
        try:
            needed = referenced_blobs(store, descriptor)
        except StoreError as exc:
            report.problems.append(f"base image {image_id[:19]}: manifest unreadable: {exc}")
            referenced.add(descriptor.digest)
            continue
        for digest in needed:
            referenced.add(digest)
            if not store.has_blob(digest):
                report.problems.append(f"base image {image_id[:19]}: blob {digest} is missing")
    for digest in sorted(store.blob_digests()):
        report.blobs_checked += 1
        try:
            store.verify_blob(digest)
        except StoreError:
            owner = "referenced" if digest in referenced else "unreferenced"
            report.problems.append(f"blob {digest} ({owner}) is corrupt: its content does not match its name")
            continue
        if digest not in referenced:
            report.garbage.append(f"blob {digest} is not referenced by any snapshot (gc removes it)")
    for tmp in sorted((store.root / "tmp").iterdir()):
        report.garbage.append(f"temporary file {tmp.name} left by an interrupted write (gc removes it)")
    return report


@dataclass(frozen=True)
class GcResult:
    """What gc removed."""

    blobs_removed: int
    bytes_freed: int
    temp_files_removed: int
    relisted: tuple[str, ...] = ()  # snapshots the database records that index.json had lost, listed again
    cache_bases_removed: tuple[str, ...] = ()  # base images dropped from the host-wide base cache (image ids)
    cache_bytes_freed: int = 0


def relist_lost(store: Store, known: dict[str, str], listed: set[str]) -> list[str]:
    """List again in index.json every recorded snapshot it lacks whose manifest blob is still stored (an
    entry lost to a writer that rewrote index.json from an older read); returns their ids."""
    relisted = []
    for snapshot_id, digest in sorted(known.items()):
        if snapshot_id in listed or not store.has_blob(digest):
            continue
        size = store.blob_path(digest).stat().st_size
        store.add_manifest(Descriptor(MANIFEST_MEDIA_TYPE, digest, size, {REF_NAME: snapshot_id}))
        relisted.append(snapshot_id)
    return relisted


def gc(store: Store, known_manifests: Callable[[], dict[str, str]]) -> GcResult:
    """Remove manifests of interrupted snapshots, blobs nothing references, and temp files.

    ``known_manifests`` returns snapshot id -> manifest digest as the state database records them; it is
    called under the lock. The database, not index.json, says what is kept: a recorded snapshot missing
    from index.json is listed again, never collected.
    """
    with store_lock(store, exclusive=True):
        known = known_manifests()
        listed = {(d.annotations or {}).get(REF_NAME, "") for d in store.manifests() if not is_base(d)}
        relisted = relist_lost(store, known, listed)
        referenced: set[str] = set()
        used_bases: set[str] = set()
        everything = store.manifests()
        for descriptor in everything:
            ref = (descriptor.annotations or {}).get(REF_NAME, "")
            if is_base(descriptor):
                continue
            if ref not in known:
                store.remove_manifest(ref)
                continue
            referenced.update(referenced_blobs(store, descriptor))
            used_bases.add((store.get_json(descriptor).get("annotations") or {}).get(BASE_ID, ""))
        for descriptor in everything:  # a base image goes with the last snapshot on it
            if not is_base(descriptor):
                continue
            if (descriptor.annotations or {}).get(BASE_ID, "") not in used_bases:
                store.remove_manifest_digest(descriptor.digest)
                continue
            referenced.update(referenced_blobs(store, descriptor))
        removed = freed = 0
        for digest in list(store.blob_digests()):
            if digest not in referenced:
                freed += store.blob_path(digest).stat().st_size
                store.delete_blob(digest)
                removed += 1
        # Writers hold the lock shared while they write, and we hold it exclusively: any temp
        # file left now belongs to a write that was interrupted.
        temps = 0
        for tmp in (store.root / "tmp").iterdir():
            tmp.unlink(missing_ok=True)
            temps += 1
        return GcResult(removed, freed, temps, tuple(relisted))
