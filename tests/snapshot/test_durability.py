"""Power-loss durability of the store's writes, as far as a test can show it without dropping the page
cache: every file is fsynced before it is renamed into place, every rename is made durable by an
fsync of its directory before anything that points at it is written, and stopping the process
before any one fsync leaves a store whose ``index.json`` references only whole, verified blobs."""

from __future__ import annotations

import io
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from test_base import IMAGE_ID, SAVED, _base

from spinup.snapshot.base import import_save, is_base
from spinup.snapshot.capture import LayerRequest
from spinup.snapshot.image import SnapshotMeta
from spinup.snapshot.maintenance import verify
from spinup.snapshot.oci import REF_NAME
from spinup.snapshot.snapshot_store import NewLayer, SnapshotStore
from spinup.snapshot.store import Store

Event = tuple[str, str, str]  # ("fsync", path, "") or ("rename", source, destination)


class Stopped(BaseException):
    """The process "stops" here: nothing after this point of the write runs."""


def _journal(monkeypatch: pytest.MonkeyPatch, stop_before: int | None = None) -> list[Event]:
    """Record every fsync and rename from now on; with ``stop_before``, raise :class:`Stopped` instead of the
    fsync of that number (0-based)."""
    events: list[Event] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        done = sum(1 for e in events if e[0] == "fsync")
        if done == stop_before:
            raise Stopped
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"), ""))
        real_fsync(fd)

    def replace(source: str | os.PathLike[str], destination: str | os.PathLike[str]) -> None:
        events.append(("rename", str(source), str(destination)))
        real_replace(source, destination)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


def _store_with_base(root: Path) -> SnapshotStore:
    snapshots = SnapshotStore(Store(root))
    import_save(snapshots.store, IMAGE_ID, io.BytesIO(SAVED))
    return snapshots


def _take_snapshot(snapshots: SnapshotStore, upper: Path) -> str:
    with snapshots.writing():
        captured = snapshots.layers.capture(LayerRequest(upper, None))
        committed = snapshots.commit(
            NewLayer(captured.index, captured.layer), None, SnapshotMeta("a-1", "", "t:1", _base())
        )
    return committed.manifest_digest


def _upper(tmp_path: Path) -> Path:
    upper = tmp_path / "upper"
    (upper / "workspace").mkdir(parents=True, exist_ok=True)
    (upper / "workspace" / "file").write_bytes(b"the agent's work " * 1000)
    return upper


def _index_of(events: list[Event], predicate: Callable[[Event], bool], after: int = -1) -> int:
    return next(i for i, e in enumerate(events) if i > after and predicate(e))


def test_every_file_is_fsynced_before_its_rename_and_every_rename_before_what_points_at_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    snapshots = _store_with_base(tmp_path / "store")
    upper = _upper(tmp_path)
    events = _journal(monkeypatch)
    _take_snapshot(snapshots, upper)

    renames = [i for i, e in enumerate(events) if e[0] == "rename"]
    assert renames, events
    for i in renames:
        _, source, destination = events[i]
        # The file's own fsync comes before its rename (its bytes are on disk before its name is).
        assert any(e == ("fsync", source, "") for e in events[:i]), (source, events[:i])
        # The directory's fsync comes after (the new name is on disk) and before the next rename.
        parent = str(Path(destination).parent)
        fsynced = _index_of(events, lambda e, parent=parent: e == ("fsync", parent, ""), after=i)
        later = [r for r in renames if r > i]
        assert not later or fsynced < later[0], (destination, events[i:])
    index_json = str(snapshots.store.root / "index.json")
    listed = _index_of(events, lambda e: e[0] == "rename" and e[2] == index_json)
    blob_renames = [i for i in renames if "/blobs/sha256/" in events[i][2]]
    assert blob_renames and max(blob_renames) < listed  # every blob, the manifest last, before index.json


def test_stopping_before_any_fsync_of_a_snapshot_leaves_index_json_pointing_only_at_whole_blobs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pristine = tmp_path / "pristine"
    before = {d.digest for d in _store_with_base(pristine).store.manifests()}
    upper = _upper(tmp_path)
    with monkeypatch.context() as counting:
        probe = _journal(counting)
        _take_snapshot(SnapshotStore(Store(shutil.copytree(pristine, tmp_path / "probe"))), upper)
    fsyncs = sum(1 for e in probe if e[0] == "fsync")
    assert fsyncs >= 8  # layer, index, config, manifest and index.json, each with its directory

    for stop in range(fsyncs):
        root = shutil.copytree(pristine, tmp_path / f"stop-{stop}")
        snapshots = SnapshotStore(Store(root))
        with monkeypatch.context() as stopping:
            _journal(stopping, stop_before=stop)
            with pytest.raises(Stopped):
                _take_snapshot(snapshots, upper)
        reopened = Store(root)
        listed = reopened.manifests()
        raw = json.loads((root / "index.json").read_text())
        assert [d["digest"] for d in raw["manifests"]] == [d.digest for d in listed]
        assert before <= {d.digest for d in listed}, f"stopped before fsync {stop}: a listed manifest was lost"
        known = {(d.annotations or {})[REF_NAME]: d.digest for d in listed if not is_base(d)}
        report = verify(reopened, known)
        assert report.problems == [], f"stopped before fsync {stop}: {report.problems}"
