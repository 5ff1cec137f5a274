"""Collecting the host-wide base cache: base images no store links to any more.

Each state directory's store gets a base image's blobs from the cache as hard links (see
:func:`~.base.adopt`), so a cached blob whose link count is 1 is held by no store on the cache's
filesystem (a store on another filesystem holds a copy of its own and loses nothing). A base
image all of whose layers and config are such blobs, untouched (no link added or removed, which
changes their ctime) for ``grace`` seconds, is dropped from the cache, then every cached blob no
listed image needs and no link holds. A base image being stored holds its lock: it is skipped.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

from . import oci
from .base import base_lock_path, is_base
from .maintenance import referenced_blobs
from .store import Store

DEFAULT_GRACE = 3600.0  # seconds a base image no store links to stays in the cache


@dataclass(frozen=True)
class CacheGcResult:
    """What collecting the base cache removed."""

    bases_removed: tuple[str, ...]  # image ids
    blobs_removed: int
    bytes_freed: int


@contextlib.contextmanager
def _unless_busy(store: Store, image_id: str) -> Iterator[bool]:
    """Hold the base image's storing lock if nobody does (True), else yield False at once."""
    path = base_lock_path(store, image_id)
    path.parent.mkdir(exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def _unlinked(store: Store, digest: str, before: float) -> bool:
    """Whether a cached blob is held by no other link and had none added or removed since ``before``."""
    try:
        info = store.blob_path(digest).lstat()
    except FileNotFoundError:
        return True
    return info.st_nlink == 1 and info.st_ctime < before


def collect_cache(cache: Store, grace: float = DEFAULT_GRACE) -> CacheGcResult:
    """Blocking: drop the base images no store links to (for ``grace`` seconds) and the blobs left unneeded."""
    before = time.time() - grace
    removed: list[str] = []
    for descriptor in cache.manifests():
        if not is_base(descriptor):
            continue
        image_id = (descriptor.annotations or {}).get(oci.BASE_ID, "")
        with _unless_busy(cache, image_id) as free:
            if not free or not cache.has_blob(descriptor.digest):
                continue
            needed = referenced_blobs(cache, descriptor)[1:]  # config and layers (stores list their own manifest)
            if all(_unlinked(cache, digest, before) for digest in needed):
                cache.remove_manifest_digest(descriptor.digest)
                removed.append(image_id)
    kept: set[str] = set()
    for descriptor in cache.manifests():
        if cache.has_blob(descriptor.digest):
            kept.update(referenced_blobs(cache, descriptor))
    blobs = freed = 0
    for digest in list(cache.blob_digests()):
        if digest in kept or not _unlinked(cache, digest, before):
            continue  # needed, linked into a store, or just written by a base image being stored
        with contextlib.suppress(FileNotFoundError):
            freed += cache.blob_path(digest).stat().st_size
            cache.delete_blob(digest)
            blobs += 1
    return CacheGcResult(tuple(removed), blobs, freed)
