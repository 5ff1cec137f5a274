"""Base images in the store: stored once from ``docker save``, checked against their id, linked from
the host-wide cache, streamed back whole for a daemon that lacks them, kept and collected by gc."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest
import zstandard
from docker_save import docker_save, layer_tar

from spinup.snapshot import base as base_module
from spinup.snapshot.archive import save_stream
from spinup.snapshot.base import find_base, import_save, is_base
from spinup.snapshot.capture import LayerRequest
from spinup.snapshot.errors import BlobCorrupt, StoreError
from spinup.snapshot.image import BaseImage, SnapshotMeta, image_manifest
from spinup.snapshot.oci import BASE_LAYERS, CONFIG_MEDIA_TYPE, DIFF_ID, MANIFEST_MEDIA_TYPE, REF_NAME
from spinup.snapshot.snapshot_store import NewLayer, SnapshotStore
from spinup.snapshot.store import Descriptor, Store

LAYERS = [layer_tar({"etc/os-release": b"bottom\n", "bin/tool": b"x" * 5000}), layer_tar({"etc/motd": b"top\n"})]
IMAGE_ID, SAVED, CONFIG = docker_save(LAYERS)


def _base() -> BaseImage:
    return BaseImage(IMAGE_ID, diff_ids=tuple(json.loads(CONFIG)["rootfs"]["diff_ids"]))


def _snapshot(snapshots: SnapshotStore, tmp_path: Path) -> str:
    upper = tmp_path / "upper"
    (upper / "workspace").mkdir(parents=True, exist_ok=True)
    (upper / "workspace" / "file").write_bytes(b"agent's")
    with snapshots.writing():
        captured = snapshots.layers.capture(LayerRequest(upper, None))
        meta = SnapshotMeta("a-1", "", "t:1", _base())
        committed = snapshots.commit(NewLayer(captured.index, captured.layer), None, meta)
    return committed.manifest_digest


def test_a_docker_save_stream_is_stored_as_zstd_layers_under_a_config_whose_digest_is_the_image_id(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "store")
    stored = import_save(store, IMAGE_ID, io.BytesIO(SAVED))

    assert stored.config.digest == IMAGE_ID and store.get_json(stored.config)["rootfs"]["diff_ids"]
    for layer, original in zip(stored.layers, LAYERS, strict=True):
        with store.open_blob(layer) as blob:
            assert zstandard.ZstdDecompressor().decompressobj().decompress(blob.read()) == original
        assert (layer.annotations or {})[DIFF_ID] == "sha256:" + hashlib.sha256(original).hexdigest()
    (listed,) = store.manifests()
    assert is_base(listed) and (listed.annotations or {})[REF_NAME] == "base-" + IMAGE_ID.removeprefix("sha256:")
    assert find_base(store, IMAGE_ID) == stored


def test_a_save_whose_config_is_not_the_image_asked_for_is_refused_and_nothing_is_listed(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    _, other_save, _ = docker_save([layer_tar({"a": b"other"})])
    with pytest.raises(StoreError, match=r"manifest\.json names no config"):
        import_save(store, IMAGE_ID, io.BytesIO(other_save))
    assert store.manifests() == [] and find_base(store, IMAGE_ID) is None


def test_a_save_whose_layers_do_not_hash_to_the_configs_diff_ids_is_refused(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    forged = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(SAVED)) as original, tarfile.open(fileobj=forged, mode="w") as out:
        for member in original:
            data = original.extractfile(member)
            content = data.read() if data is not None else b""
            if member.name.endswith("layer.tar"):
                content = content.replace(b"bottom", b"forged")
            member.size = len(content)
            out.addfile(member, io.BytesIO(content))
    with pytest.raises(StoreError, match="but the config names"):
        import_save(store, IMAGE_ID, io.BytesIO(forged.getvalue()))
    assert store.manifests() == []


def test_a_cached_base_is_hard_linked_into_a_store_and_copied_with_its_digest_checked_across_filesystems(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = Store(tmp_path / "cache")
    import_save(cache, IMAGE_ID, io.BytesIO(SAVED))
    linked = SnapshotStore(Store(tmp_path / "one"), cache=cache)
    with linked.writing():
        stored = linked.base(IMAGE_ID)
    assert stored is not None
    for layer in stored.layers:
        assert linked.store.blob_path(layer.digest).stat().st_ino == cache.blob_path(layer.digest).stat().st_ino

    def no_link(source: object, target: object) -> None:
        raise OSError(errno.EXDEV, "cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    copied = SnapshotStore(Store(tmp_path / "two"), cache=cache)
    with copied.writing():
        assert copied.base(IMAGE_ID) is not None
    layer = stored.layers[0]
    assert copied.store.blob_path(layer.digest).stat().st_ino != cache.blob_path(layer.digest).stat().st_ino

    path = cache.blob_path(layer.digest)  # a cache blob gone bad is never copied into a store
    os.chmod(path, 0o644)
    path.write_bytes(b"\0" * layer.size)
    spoiled = SnapshotStore(Store(tmp_path / "three"), cache=cache)
    with pytest.raises(BlobCorrupt), spoiled.writing():
        spoiled.base(IMAGE_ID)
    assert not spoiled.store.has_blob(layer.digest)


def test_the_load_stream_of_a_snapshot_for_a_daemon_without_the_base_holds_every_layer_decompressed(
    tmp_path: Path,
) -> None:
    snapshots = SnapshotStore(Store(tmp_path / "store"))
    import_save(snapshots.store, IMAGE_ID, io.BytesIO(SAVED))
    digest = _snapshot(snapshots, tmp_path)
    image = snapshots.save_image(digest, "spinup/snap:x", "s-x", with_base=True)
    archive = b"".join(save_stream(snapshots.store, image))

    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        (manifest,) = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
        contents = [tar.extractfile(name).read() for name in manifest["Layers"]]  # type: ignore[union-attr]
    config = json.loads(image.config)
    assert contents[:2] == LAYERS
    assert ["sha256:" + hashlib.sha256(c).hexdigest() for c in contents] == config["rootfs"]["diff_ids"]


def test_gc_keeps_a_base_while_a_snapshot_uses_it_and_verify_and_gc_drop_it_after(tmp_path: Path) -> None:
    snapshots = SnapshotStore(Store(tmp_path / "store"))
    stored = import_save(snapshots.store, IMAGE_ID, io.BytesIO(SAVED))
    digest = _snapshot(snapshots, tmp_path)
    (snapshot_entry,) = [d for d in snapshots.store.manifests() if not is_base(d)]
    snapshot_id = (snapshot_entry.annotations or {})[REF_NAME]

    report = snapshots.verify({snapshot_id: digest})
    assert report.ok and report.garbage == []
    assert snapshots.gc(lambda: {snapshot_id: digest}).blobs_removed == 0
    assert find_base(snapshots.store, IMAGE_ID) is not None

    os.chmod(snapshots.store.blob_path(stored.layers[1].digest), 0o644)
    snapshots.store.blob_path(stored.layers[1].digest).unlink()
    assert any("is missing" in problem for problem in snapshots.verify({snapshot_id: digest}).problems)

    report = snapshots.verify({})
    assert any("used by no snapshot" in line for line in report.garbage)
    result = snapshots.gc(dict)
    assert snapshots.store.manifests() == [] and list(snapshots.store.blob_digests()) == []
    assert result.blobs_removed >= 3


def test_gc_lists_again_a_recorded_snapshot_that_index_json_lost_and_collects_none_of_it(tmp_path: Path) -> None:
    snapshots = SnapshotStore(Store(tmp_path / "store"))
    import_save(snapshots.store, IMAGE_ID, io.BytesIO(SAVED))
    digest = _snapshot(snapshots, tmp_path)
    (entry,) = [d for d in snapshots.store.manifests() if not is_base(d)]
    snapshot_id = (entry.annotations or {})[REF_NAME]
    blobs = set(snapshots.store.blob_digests())
    # Two writers rewrote index.json from what each had read: this snapshot's entry was lost.
    snapshots.store.remove_manifest(snapshot_id)
    assert any("not listed in index.json" in p for p in snapshots.verify({snapshot_id: digest}).problems)

    result = snapshots.gc(lambda: {snapshot_id: digest})

    assert result.relisted == (snapshot_id,) and result.blobs_removed == 0
    assert set(snapshots.store.blob_digests()) == blobs
    relisted = [d for d in snapshots.store.manifests() if not is_base(d)]
    assert relisted == [entry]
    assert snapshots.verify({snapshot_id: digest}).ok


def test_a_snapshot_from_before_base_images_were_stored_is_upgraded_to_list_them(tmp_path: Path) -> None:
    snapshots = SnapshotStore(Store(tmp_path / "store"))
    import_save(snapshots.store, IMAGE_ID, io.BytesIO(SAVED))
    current = snapshots.store.get_json(_snapshot(snapshots, tmp_path))
    # The manifest as it was written before: its own layers only, no base layer count.
    own = [Descriptor.from_json(d) for d in current["layers"][2:]]
    annotations = {k: v for k, v in current["annotations"].items() if k != BASE_LAYERS}
    config = snapshots.store.get_json(current["config"]["digest"])
    config_descriptor = snapshots.store.put_json(config, CONFIG_MEDIA_TYPE)
    legacy = snapshots.store.put_json(
        image_manifest(config_descriptor, own, annotations), MANIFEST_MEDIA_TYPE, {REF_NAME: "s-legacy"}
    )
    snapshots.store.add_manifest(legacy)
    assert not snapshots.is_current(legacy.digest)
    whole = snapshots.save_image(legacy.digest, "spinup/snap:legacy", "s-legacy", with_base=True)
    assert [d.digest for d in whole.base_layers] == [d["digest"] for d in current["layers"][:2]], (
        "an older snapshot loads on a daemon without its base once the store holds the base"
    )

    with snapshots.writing():
        upgraded = snapshots.upgrade("s-legacy", legacy.digest)
        again = snapshots.upgrade("s-legacy", legacy.digest)
        assert upgraded is not None and again == upgraded, "an interrupted upgrade writes the same manifest again"
        names = [(d.annotations or {}).get(REF_NAME) for d in snapshots.store.manifests()]
        assert names.count("s-legacy") == 2, "the old manifest stays listed until the new one is recorded"
        snapshots.drop_others("s-legacy", upgraded)
    listed = [d.digest for d in snapshots.store.manifests() if (d.annotations or {}).get(REF_NAME) == "s-legacy"]
    assert listed == [upgraded] and snapshots.is_current(upgraded)
    manifest = snapshots.store.get_json(upgraded)
    assert [d["digest"] for d in manifest["layers"]] == [d["digest"] for d in current["layers"]]
    assert snapshots.upgrade("s-legacy", upgraded) is None


def test_docker_saves_symlinked_duplicate_layer_is_followed(tmp_path: Path) -> None:
    same = layer_tar({"a": b"same"})
    image_id, saved, _ = docker_save([same, same])
    # docker save writes a layer that appears twice once, and the second as a symlink to the first.
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(saved)) as original, tarfile.open(fileobj=out, mode="w") as tar:
        manifest = json.loads(original.extractfile("manifest.json").read())  # type: ignore[union-attr]
        first = manifest[0]["Layers"][0]
        manifest[0]["Layers"][1] = "dup/layer.tar"
        for member in original:
            data = original.extractfile(member)
            content = data.read() if data is not None else b""
            if member.name == "manifest.json":
                content = json.dumps(manifest).encode()
                member.size = len(content)
            tar.addfile(member, io.BytesIO(content))
        link = tarfile.TarInfo("dup/layer.tar")
        link.type, link.linkname = tarfile.SYMTYPE, "../" + first
        tar.addfile(link)
    stored = import_save(Store(tmp_path / "store"), image_id, io.BytesIO(out.getvalue()))
    assert len(stored.layers) == 2 and stored.layers[0] == stored.layers[1]


def test_a_base_config_bigger_than_any_image_config_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base_module, "MAX_CONFIG", 100)
    with pytest.raises(StoreError, match="more than an image config may be"):
        import_save(Store(tmp_path / "store"), IMAGE_ID, io.BytesIO(SAVED))


def test_without_a_base_cache_a_store_keeps_its_own_base_and_with_one_links_the_caches(tmp_path: Path) -> None:
    alone = SnapshotStore(Store(tmp_path / "alone"))
    stored = alone.import_base(IMAGE_ID, io.BytesIO(SAVED))
    assert find_base(alone.store, IMAGE_ID) == stored and (alone.store.root / "locks").is_dir() is False

    cache = Store(tmp_path / "cache")
    shared = SnapshotStore(Store(tmp_path / "shared"), cache=cache)
    with shared.importing_base(IMAGE_ID):
        linked = shared.import_base(IMAGE_ID, io.BytesIO(SAVED))
    assert find_base(cache, IMAGE_ID) is not None, "the cache holds it for every store on the host"
    layer = linked.layers[0]
    assert shared.store.blob_path(layer.digest).stat().st_ino == cache.blob_path(layer.digest).stat().st_ino
    assert (cache.root / "locks").is_dir(), "the import lock lives in the cache"
