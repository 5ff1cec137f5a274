"""The snapshot store writes a snapshot in the crash-safe order, fires its fault points on the way,
and reads back what it recorded."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
from docker_save import docker_save, layer_tar

from spinup.snapshot.base import import_save
from spinup.snapshot.capture import LayerRequest
from spinup.snapshot.faults import POINTS
from spinup.snapshot.image import BaseImage, SnapshotMeta
from spinup.snapshot.oci import BASE_ID, BASE_LAYERS, INDEX, PACKAGES, PARENT, REF_NAME
from spinup.snapshot.snapshot_store import NewLayer, Parent, SnapshotStore
from spinup.snapshot.store import Store

RUNTIME_CONFIG = {"Env": ["LANG=C.UTF-8"], "Cmd": ["/bin/bash"], "Hostname": "kept", "Labels": {"base": "1"}}
BASE_ID_, SAVED, BASE_CONFIG = docker_save([layer_tar({"etc/os-release": b"test\n"})], RUNTIME_CONFIG)
BASE = BaseImage(id=BASE_ID_, config=RUNTIME_CONFIG, diff_ids=tuple(json.loads(BASE_CONFIG)["rootfs"]["diff_ids"]))


def _meta(packages: list[dict[str, str]] | None = None) -> SnapshotMeta:
    return SnapshotMeta("a-1", "a label", "spinup/base:test", BASE, packages or [], {"extra": "x"})


def _with_base(store: Store) -> Store:
    """The store, holding the base image (config, one layer, its manifest: three blobs)."""
    import_save(store, BASE.id, io.BytesIO(SAVED))
    return store


def _upper(tmp_path: Path, size: int) -> Path:
    upper = tmp_path / "upper"
    (upper / "workspace").mkdir(parents=True)
    (upper / "workspace" / "data").write_bytes(os.urandom(size))
    return upper


def test_a_commit_fires_each_fault_point_after_the_step_before_it_is_durable(tmp_path: Path) -> None:
    seen: list[tuple[str, int, bool]] = []  # point, blobs stored, whether index.json lists a manifest

    def record(point: str) -> None:
        listed = bool(json.loads((tmp_path / "store" / "index.json").read_text())["manifests"])
        seen.append((point, len(list(snapshots.store.blob_digests())), listed))

    snapshots = SnapshotStore(_with_base(Store(tmp_path / "store")), fault=record)
    upper = _upper(tmp_path, 3 * 1024 * 1024)
    with snapshots.writing():
        captured = snapshots.layers.capture(LayerRequest(upper, None))
        committed = snapshots.commit(NewLayer(captured.index, captured.layer), None, _meta())

    assert [point for point, _, _ in seen] == list(POINTS)
    assert seen[0][1] == 3, "the layer is half written: not stored yet (the base image's three blobs are)"
    assert seen[1][1:] == (4, True), "before-manifest: only the layer (index.json lists the base image alone)"
    assert seen[2][1] == 7, "before-index: layer, file index, config, manifest"
    listed = snapshots.store.manifests()
    assert [(d.digest, (d.annotations or {})[REF_NAME]) for d in listed][1:] == [
        (committed.manifest_digest, committed.snapshot_id)
    ]


def test_a_failing_fault_hook_leaves_no_snapshot_listed(tmp_path: Path) -> None:
    def fail(point: str) -> None:
        if point == "before-index":
            raise OSError("crash")

    snapshots = SnapshotStore(_with_base(Store(tmp_path / "store")), fault=fail)
    upper = _upper(tmp_path, 1000)
    captured = snapshots.layers.capture(LayerRequest(upper, None))
    before = snapshots.store.manifests()
    with pytest.raises(OSError, match="crash"):
        snapshots.commit(NewLayer(captured.index, captured.layer), None, _meta())
    assert snapshots.store.manifests() == before


def test_a_committed_snapshot_reads_back_its_config_annotations_packages_and_index(tmp_path: Path) -> None:
    snapshots = SnapshotStore(_with_base(Store(tmp_path / "store")))
    upper = _upper(tmp_path, 1000)
    packages = [{"manager": "pip", "name": "requests"}]
    first = snapshots.layers.capture(LayerRequest(upper, None))
    parent = snapshots.commit(NewLayer(first.index, first.layer), None, _meta(packages))
    (upper / "workspace" / "more").write_bytes(b"more")
    second = snapshots.layers.capture(LayerRequest(upper, first.index))
    delta_base = snapshots.latest_index("a-1")
    on_parent = Parent(parent.snapshot_id, parent.manifest_digest)
    child = snapshots.commit(NewLayer(second.index, second.layer, delta_base=delta_base), on_parent, _meta())

    assert child.layers == 2
    annotations = snapshots.annotations(child.manifest_digest)
    assert annotations[PARENT] == parent.snapshot_id and annotations[BASE_ID] == BASE.id
    assert json.loads(annotations[PACKAGES]) == [] and snapshots.packages(parent.manifest_digest) == packages
    manifest = snapshots.store.get_json(child.manifest_digest)
    config = snapshots.store.get_json(manifest["config"]["digest"])
    labels = {"base": "1", "spinup.snapshot": child.snapshot_id, "extra": "x"}
    assert config["config"] == {**RUNTIME_CONFIG, "Labels": labels}, "the base image's runtime config, whole"
    assert "container_config" not in config and config["architecture"] == "amd64"
    assert config["rootfs"]["diff_ids"][0] == BASE.diff_ids[0] and len(config["rootfs"]["diff_ids"]) == 3
    assert [h["created_by"] for h in config["history"]] == ["layer 0", "spinup snapshot layer", "spinup snapshot layer"]
    assert annotations[BASE_LAYERS] == "1" and len(manifest["layers"]) == 3, "every manifest lists its base first"
    diff_ids = [layer["annotations"]["dev.spinup.diff_id"] for layer in manifest["layers"]]
    assert diff_ids == config["rootfs"]["diff_ids"]
    fresh = SnapshotStore(snapshots.store)  # nothing cached: the delta chain is read from the store
    index = fresh.index_of(child.manifest_digest, "a-1")
    assert index is not None and index.entries == second.index.entries
    assert annotations[INDEX] == (fresh.latest_index("a-1") or ("", None))[0]
    image = snapshots.save_image(child.manifest_digest, "spinup/snap:test", child.snapshot_id)
    assert image.base_id == BASE.id and image.base_diff_ids == list(BASE.diff_ids) and len(image.layers) == 2
    assert image.base_layers == [], "the daemon has the base image: its layers stay out of the load"
    whole = snapshots.save_image(child.manifest_digest, "spinup/snap:test", child.snapshot_id, with_base=True)
    assert [d.digest for d in whole.base_layers] == [manifest["layers"][0]["digest"]]
    assert "/workspace/more" in snapshots.tree(child.manifest_digest)
