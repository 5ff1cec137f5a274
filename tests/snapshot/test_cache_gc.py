"""Collecting the host-wide base cache: a base image goes once no store links to it (for the grace
period), never while one does or while it is being stored."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

from docker_save import docker_save, layer_tar

from spinup.snapshot.base import find_base, import_save
from spinup.snapshot.cache_gc import collect_cache
from spinup.snapshot.snapshot_store import SnapshotStore
from spinup.snapshot.store import Store

IMAGE_ID, SAVED, _ = docker_save([layer_tar({"etc/os-release": b"cached\n", "bin/tool": b"y" * 4000})])


def _linked(tmp_path: Path, name: str, cache: Store) -> SnapshotStore:
    store = SnapshotStore(Store(tmp_path / name), cache=cache)
    with store.writing():
        assert store.base(IMAGE_ID) is not None
    return store


def test_a_cached_base_stays_while_a_store_links_it_and_goes_after_the_grace_once_none_does(tmp_path: Path) -> None:
    cache = Store(tmp_path / "cache")
    import_save(cache, IMAGE_ID, io.BytesIO(SAVED))
    _linked(tmp_path, "one", cache)
    _linked(tmp_path, "two", cache)
    blobs = set(cache.blob_digests())

    assert collect_cache(cache, grace=0).bases_removed == (), "two stores link it"
    shutil.rmtree(tmp_path / "one")
    assert collect_cache(cache, grace=0).bases_removed == (), "one store still does"
    shutil.rmtree(tmp_path / "two")
    assert collect_cache(cache, grace=3600).bases_removed == (), "the last link went a moment ago"

    result = collect_cache(cache, grace=0)
    assert result.bases_removed == (IMAGE_ID,) and result.blobs_removed == len(blobs) and result.bytes_freed > 0
    assert find_base(cache, IMAGE_ID) is None and set(cache.blob_digests()) == set()
    later = SnapshotStore(Store(tmp_path / "three"), cache=cache)
    with later.writing():
        assert later.base(IMAGE_ID) is None, "a later store stores it again"


def test_a_base_being_stored_and_fresh_unlisted_blobs_are_left_alone(tmp_path: Path) -> None:
    cache = Store(tmp_path / "cache")
    storing = SnapshotStore(Store(tmp_path / "store"), cache=cache)
    import_save(cache, IMAGE_ID, io.BytesIO(SAVED))
    with storing.importing_base(IMAGE_ID):
        assert collect_cache(cache, grace=0).bases_removed == (), "its storing lock is held"
    assert find_base(cache, IMAGE_ID) is not None

    writer = cache.writer()  # a blob of a base image still being stored: not listed yet
    writer.write(b"half of a base image")
    fresh = writer.commit("application/octet-stream")
    result = collect_cache(cache, grace=3600)
    assert result.blobs_removed == 0 and cache.has_blob(fresh.digest)
    assert collect_cache(cache, grace=0).bases_removed == (IMAGE_ID,)
    assert not cache.has_blob(fresh.digest)
