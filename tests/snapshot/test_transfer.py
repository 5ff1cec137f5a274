"""A snapshot arriving from a registry is checked whole before any of it enters the store: a crafted
manifest or blob (wrong digest, an entry escaping the root, a decompression bomb) leaves the store as it was."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest
import zstandard
from docker_save import layer_tar

from spinup.snapshot import oci, transfer
from spinup.snapshot.base import find_base
from spinup.snapshot.errors import StoreError
from spinup.snapshot.store import Descriptor, Store
from spinup.snapshot.transfer import RefusedImage, admit, check_manifest

BASE_ID = "sha256:" + "b" * 64


def _blob(store: Store, data: bytes, media_type: str, annotations: dict[str, str] | None = None) -> Descriptor:
    writer = store.writer()
    writer.write(data)
    return writer.commit(media_type, annotations)


def _image(staging: Store, tars: list[bytes], declared: list[int] | None = None) -> bytes:
    """A snapshot manifest (one base layer, then the snapshot's) with its blobs staged; returns the manifest."""
    layers = []
    for i, tar in enumerate(tars):
        annotations = {
            oci.DIFF_ID: "sha256:" + hashlib.sha256(tar).hexdigest(),
            oci.UNCOMPRESSED_SIZE: str(declared[i] if declared else len(tar)),
        }
        compressed = zstandard.ZstdCompressor().compress(tar)
        layers.append(_blob(staging, compressed, oci.LAYER_MEDIA_TYPE, annotations))
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Labels": {"spinup.snapshot": "s-0123456789ab"}},
        "rootfs": {"type": "layers", "diff_ids": [(d.annotations or {})[oci.DIFF_ID] for d in layers]},
        "history": [{"created_by": "x"}] * len(layers),
    }
    config_descriptor = staging.put_json(config, oci.CONFIG_MEDIA_TYPE)
    manifest = {
        "schemaVersion": 2,
        "mediaType": oci.MANIFEST_MEDIA_TYPE,
        "config": config_descriptor.to_json(),
        "layers": [d.to_json() for d in layers],
        "annotations": {oci.SNAPSHOT_ID: "s-0123456789ab", oci.BASE_ID: BASE_ID, oci.BASE_LAYERS: "1"},
    }
    return json.dumps(manifest).encode()


def _untouched(store: Store) -> bool:
    return store.manifests() == [] and list(store.blob_digests()) == []


def _tar(name: str, data: bytes) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


GOOD = [layer_tar({"etc/os-release": b"base\n"}), layer_tar({"workspace/note": b"hello\n"})]


def test_a_checked_snapshot_is_admitted_with_a_base_image_entry_for_its_base_layers(tmp_path: Path) -> None:
    staging, store = Store(tmp_path / "staging"), Store(tmp_path / "store")
    pulled = check_manifest(_image(staging, GOOD))
    descriptor = admit(store, staging, pulled)

    assert descriptor.digest == pulled.digest and store.get_json(descriptor)["layers"] == pulled.manifest["layers"]
    base = find_base(store, BASE_ID)
    assert base is not None and [d.digest for d in base.layers] == [pulled.layers[0].digest]
    assert "spinup.snapshot" not in store.get_json(base.config)["config"]["Labels"]


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda m: m.update(mediaType="application/vnd.docker.distribution.manifest.v2+json"), "not a Spinup"),
        (lambda m: m["annotations"].pop(oci.SNAPSHOT_ID), "no snapshot id"),
        (lambda m: m["annotations"].update({oci.BASE_LAYERS: "9"}), "which of its layers"),
        (lambda m: m["layers"][1].update(digest="sha256:../../etc"), "malformed digest"),
        (lambda m: m["layers"][1]["annotations"].update({oci.UNCOMPRESSED_SIZE: str(2**70)}), "uncompressed size"),
        (lambda m: m["layers"][1].update(size=-1), "declares a size"),
    ],
)
def test_a_crafted_manifest_is_refused(tmp_path: Path, change: object, words: str) -> None:
    staging = Store(tmp_path / "staging")
    manifest = json.loads(_image(staging, GOOD))
    change(manifest)  # type: ignore[operator]
    with pytest.raises(RefusedImage, match=words):
        check_manifest(json.dumps(manifest).encode())


def test_a_blob_that_is_not_what_its_digest_says_leaves_the_store_untouched(tmp_path: Path) -> None:
    staging, store = Store(tmp_path / "staging"), Store(tmp_path / "store")
    pulled = check_manifest(_image(staging, GOOD))
    path = staging.blob_path(pulled.layers[1].digest)
    os.chmod(path, 0o644)
    path.write_bytes(zstandard.ZstdCompressor().compress(layer_tar({"workspace/note": b"forged"})))
    with pytest.raises(StoreError):
        admit(store, staging, pulled)
    assert _untouched(store)


def test_a_layer_escaping_its_root_is_refused_before_anything_is_stored(tmp_path: Path) -> None:
    staging, store = Store(tmp_path / "staging"), Store(tmp_path / "store")
    pulled = check_manifest(_image(staging, [GOOD[0], _tar("../../etc/cron.d/evil", b"* * * * * root boom\n")]))
    with pytest.raises(RefusedImage, match="escapes the layer root"):
        admit(store, staging, pulled)
    assert _untouched(store)


def test_a_layer_decompressing_past_its_declared_size_is_refused(tmp_path: Path) -> None:
    bomb = _tar("workspace/zeros", b"\0" * (4 * 1024 * 1024))
    staging, store = Store(tmp_path / "staging"), Store(tmp_path / "store")
    pulled = check_manifest(_image(staging, [GOOD[0], bomb], declared=[len(GOOD[0]), 10_240]))
    with pytest.raises(RefusedImage, match="decompresses to more"):
        admit(store, staging, pulled)
    assert _untouched(store)


def test_layers_other_than_those_the_config_names_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    staging, store = Store(tmp_path / "staging"), Store(tmp_path / "store")
    manifest = json.loads(_image(staging, GOOD))
    other = _image(staging, [GOOD[0], layer_tar({"x": b"y"})])  # its blobs are staged too
    manifest["layers"][1] = json.loads(other)["layers"][1]
    with pytest.raises(RefusedImage, match="not the ones its config names"):
        admit(store, staging, check_manifest(json.dumps(manifest).encode()))
    assert _untouched(store)
    monkeypatch.setattr(transfer, "MAX_MANIFEST", 10)
    with pytest.raises(RefusedImage, match="its manifest is"):
        check_manifest(_image(staging, GOOD))
