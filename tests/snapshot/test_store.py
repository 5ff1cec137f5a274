"""The blob store on real files: atomic write-once blobs, verified reads, an atomic index.json."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest

from spinup.snapshot.errors import BlobCorrupt, BlobMissing, StoreError
from spinup.snapshot.oci import LAYER_MEDIA_TYPE, MANIFEST_MEDIA_TYPE, REF_NAME
from spinup.snapshot.store import Descriptor, Store

CONTENT = b"layer bytes " * 10_000


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store")


def _blobs(store: Store) -> list[str]:
    return sorted(path.name for path in (store.root / "blobs" / "sha256").iterdir())


def _temps(store: Store) -> list[str]:
    return sorted(path.name for path in (store.root / "tmp").iterdir())


def _put(store: Store, data: bytes) -> Descriptor:
    writer = store.writer()
    writer.write(data)
    return writer.commit(LAYER_MEDIA_TYPE)


def _manifest(store: Store, snapshot_id: str) -> Descriptor:
    return store.put_json({"schemaVersion": 2, "id": snapshot_id}, MANIFEST_MEDIA_TYPE, {REF_NAME: snapshot_id})


def test_a_blob_is_written_in_store_tmp_then_renamed_read_only_under_its_sha256(store: Store) -> None:
    writer = store.writer()
    writer.write(CONTENT[:5000])
    writer.write(memoryview(CONTENT)[5000:])
    (partial,) = _temps(store)
    assert _blobs(store) == [], "nothing is visible under blobs/ before the commit"
    assert (store.root / "tmp" / partial).read_bytes() == CONTENT
    descriptor = writer.commit(LAYER_MEDIA_TYPE)

    assert descriptor.digest == "sha256:" + hashlib.sha256(CONTENT).hexdigest()
    assert descriptor.size == len(CONTENT) and descriptor.media_type == LAYER_MEDIA_TYPE
    assert _temps(store) == []
    assert _blobs(store) == [hashlib.sha256(CONTENT).hexdigest()]
    path = store.blob_path(descriptor.digest)
    assert path.read_bytes() == CONTENT
    assert stat.S_IMODE(path.stat().st_mode) == 0o444
    assert store.has_blob(descriptor.digest)


def test_identical_content_is_stored_once_and_the_first_copy_is_kept(store: Store) -> None:
    first = _put(store, CONTENT)
    inode = store.blob_path(first.digest).stat().st_ino
    second = _put(store, CONTENT)
    assert second == first
    assert _blobs(store) == [first.digest.removeprefix("sha256:")]
    assert store.blob_path(first.digest).stat().st_ino == inode, "the existing blob is not rewritten"
    assert _temps(store) == []


def test_reading_a_sound_blob_in_chunks_returns_its_bytes(store: Store) -> None:
    descriptor = _put(store, CONTENT)
    chunks = []
    with store.open_blob(descriptor) as reader:
        while chunk := reader.read(4096):
            chunks.append(chunk)
    assert b"".join(chunks) == CONTENT
    store.verify_blob(descriptor.digest)


def test_a_reader_detects_one_flipped_byte(store: Store) -> None:
    descriptor = _put(store, CONTENT)
    path = store.blob_path(descriptor.digest)
    path.chmod(0o644)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))

    with pytest.raises(BlobCorrupt) as caught, store.open_blob(descriptor) as reader:
        while reader.read(4096):
            pass
    assert caught.value.digest == descriptor.digest
    with pytest.raises(BlobCorrupt):
        store.verify_blob(descriptor.digest)
    with pytest.raises(BlobCorrupt), store.open_blob(descriptor.digest) as reader:
        reader.read()


def test_a_reader_detects_a_truncated_blob(store: Store) -> None:
    descriptor = _put(store, CONTENT)
    path = store.blob_path(descriptor.digest)
    path.chmod(0o644)
    with open(path, "r+b") as fh:
        fh.truncate(len(CONTENT) - 1)

    with pytest.raises(BlobCorrupt), store.open_blob(descriptor) as reader:
        reader.read()
    with pytest.raises(BlobCorrupt):
        store.verify_blob(descriptor.digest)


def test_a_json_blob_with_a_flipped_byte_is_not_parsed(store: Store) -> None:
    descriptor = store.put_json({"key": "value"}, MANIFEST_MEDIA_TYPE)
    path = store.blob_path(descriptor.digest)
    path.chmod(0o644)
    path.write_bytes(path.read_bytes().replace(b"value", b"valuf"))
    with pytest.raises(BlobCorrupt):
        store.get_json(descriptor)


def test_a_missing_blob_raises_blob_missing(store: Store) -> None:
    digest = "sha256:" + hashlib.sha256(b"never stored").hexdigest()
    assert not store.has_blob(digest)
    with pytest.raises(BlobMissing) as caught:
        store.open_blob(digest)
    assert caught.value.digest == digest
    with pytest.raises(BlobMissing):
        store.verify_blob(digest)
    with pytest.raises(BlobMissing):
        store.get_json(Descriptor(MANIFEST_MEDIA_TYPE, digest, 12))


@pytest.mark.parametrize(
    "digest",
    [
        "",
        "sha256:",
        "sha256:" + "a" * 63,
        "sha256:" + "a" * 65,
        "sha256:" + "A" * 64,
        "sha256:" + "g" * 64,
        "sha512:" + "a" * 64,
        "a" * 64,
        "sha256:../../../../etc/passwd",
        "sha256:" + "a" * 62 + "/x",
    ],
)
def test_a_malformed_digest_is_rejected(store: Store, digest: str) -> None:
    with pytest.raises(StoreError, match="Malformed digest"):
        store.blob_path(digest)
    with pytest.raises(StoreError, match="Malformed digest"):
        store.has_blob(digest)
    with pytest.raises(StoreError, match="Malformed digest"):
        store.open_blob(digest)
    store.delete_blob("sha256:" + "0" * 64)  # a well-formed absent digest is fine to delete
    with pytest.raises(StoreError, match="Malformed digest"):
        store.delete_blob(digest)


def test_an_aborted_writer_leaves_nothing_in_blobs_or_tmp(store: Store) -> None:
    writer = store.writer()
    writer.write(CONTENT)
    writer.abort()
    writer.abort()  # idempotent
    assert _blobs(store) == [] and _temps(store) == []


def test_a_json_write_interrupted_by_an_error_leaves_nothing(store: Store) -> None:
    with pytest.raises(TypeError):
        store.put_json({"not json": object()}, MANIFEST_MEDIA_TYPE)
    assert _blobs(store) == [] and _temps(store) == []


def test_a_new_store_is_an_oci_layout_with_an_empty_index(store: Store) -> None:
    assert json.loads((store.root / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((store.root / "index.json").read_text())
    assert index == {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []}
    assert store.manifests() == []
    assert _temps(store) == []


def test_reopening_a_store_keeps_its_index(store: Store) -> None:
    manifest = _manifest(store, "s-000000000001")
    store.add_manifest(manifest)
    again = Store(store.root)
    assert again.manifests() == [manifest]


def test_index_json_add_and_remove_replace_the_file_atomically(store: Store) -> None:
    index_path = store.root / "index.json"
    one, two = _manifest(store, "s-000000000001"), _manifest(store, "s-000000000002")

    with open(index_path, "rb") as old_reader:
        old_inode = os.fstat(old_reader.fileno()).st_ino
        store.add_manifest(one)
        # Written to a new file and renamed over the old one: a reader of the old file still
        # sees the complete old document, never a half-written one.
        assert json.loads(old_reader.read())["manifests"] == []
    assert index_path.stat().st_ino != old_inode
    store.add_manifest(two)
    store.add_manifest(one)  # listing the same manifest again does not duplicate it

    raw = json.loads(index_path.read_text())
    assert raw["schemaVersion"] == 2
    assert [m["annotations"][REF_NAME] for m in raw["manifests"]] == ["s-000000000002", "s-000000000001"]
    assert [m["digest"] for m in raw["manifests"]] == [two.digest, one.digest]
    assert store.manifests() == [two, one]

    store.remove_manifest("s-000000000002")
    assert store.manifests() == [one]
    store.remove_manifest("s-does-not-exist")
    assert store.manifests() == [one]
    store.remove_manifest("s-000000000001")
    assert json.loads(index_path.read_text())["manifests"] == []
    assert (store.root / "oci-layout").exists()
    assert _temps(store) == [], "no temp file is left behind by the index writes"
    assert store.has_blob(one.digest) and store.has_blob(two.digest), "unlisting does not delete blobs"
