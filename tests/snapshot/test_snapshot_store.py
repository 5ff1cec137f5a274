"""The snapshot store writes a snapshot in the crash-safe order, fires its fault points on the way,
and reads back what it recorded."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from spinup.snapshot.capture import LayerRequest
from spinup.snapshot.faults import POINTS
from spinup.snapshot.image import COPIED_CONFIG_KEYS, BaseImage, SnapshotMeta
from spinup.snapshot.oci import BASE_ID, INDEX, PACKAGES, PARENT, REF_NAME
from spinup.snapshot.snapshot_store import NewLayer, Parent, SnapshotStore
from spinup.snapshot.store import Store

BASE = BaseImage(
    id="sha256:" + "b" * 64,
    config={"Env": ["LANG=C.UTF-8"], "Cmd": ["/bin/bash"], "Hostname": "not copied", "Labels": {"base": "1"}},
    diff_ids=("sha256:" + "d" * 64,),
)


def _meta(packages: list[dict[str, str]] | None = None) -> SnapshotMeta:
    return SnapshotMeta("a-1", "a label", "spinup/base:test", BASE, packages or [], {"extra": "x"})


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

    snapshots = SnapshotStore(Store(tmp_path / "store"), fault=record)
    upper = _upper(tmp_path, 3 * 1024 * 1024)
    with snapshots.writing():
        captured = snapshots.layers.capture(LayerRequest(upper, None))
        committed = snapshots.commit(NewLayer(captured.index, captured.layer), None, _meta())

    assert [point for point, _, _ in seen] == list(POINTS)
    assert seen[0][1] == 0, "the layer is half written: not stored yet"
    assert seen[1][1:] == (1, False), "before-manifest: only the layer"
    assert seen[2][1:] == (4, False), "before-index: layer, file index, config, manifest; index.json untouched"
    assert seen[3][1:] == (4, True), "before-head: index.json lists the snapshot"
    listed = snapshots.store.manifests()
    assert [(d.digest, (d.annotations or {})[REF_NAME]) for d in listed] == [
        (committed.manifest_digest, committed.snapshot_id)
    ]


def test_a_failing_fault_hook_leaves_no_snapshot_listed(tmp_path: Path) -> None:
    def fail(point: str) -> None:
        if point == "before-index":
            raise OSError("crash")

    snapshots = SnapshotStore(Store(tmp_path / "store"), fault=fail)
    upper = _upper(tmp_path, 1000)
    captured = snapshots.layers.capture(LayerRequest(upper, None))
    with pytest.raises(OSError, match="crash"):
        snapshots.commit(NewLayer(captured.index, captured.layer), None, _meta())
    assert snapshots.store.manifests() == []


def test_a_committed_snapshot_reads_back_its_config_annotations_packages_and_index(tmp_path: Path) -> None:
    snapshots = SnapshotStore(Store(tmp_path / "store"))
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
    assert set(config["config"]) <= set(COPIED_CONFIG_KEYS) and "Hostname" not in config["config"]
    assert config["config"]["Labels"] == {"base": "1", "spinup.snapshot": child.snapshot_id, "extra": "x"}
    assert config["rootfs"]["diff_ids"][0] == BASE.diff_ids[0] and len(config["rootfs"]["diff_ids"]) == 3
    fresh = SnapshotStore(snapshots.store)  # nothing cached: the delta chain is read from the store
    index = fresh.index_of(child.manifest_digest, "a-1")
    assert index is not None and index.entries == second.index.entries
    assert annotations[INDEX] == (fresh.latest_index("a-1") or ("", None))[0]
    image = snapshots.save_image(child.manifest_digest, "spinup/snap:test", child.snapshot_id)
    assert image.base_id == BASE.id and image.base_diff_ids == list(BASE.diff_ids) and len(image.layers) == 2
    assert "/workspace/more" in snapshots.tree(child.manifest_digest)
