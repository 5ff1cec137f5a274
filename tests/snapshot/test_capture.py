"""Capture from a real overlay-style upper directory: scan, plan, the layer tar, the file index.

Whiteouts are made the way overlayfs makes them (0/0 character devices, so these tests run as
root) and opaque directories carry ``trusted.overlay.opaque=y``.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import socket
import stat
import tarfile
from pathlib import Path

import pytest
import zstandard

from spinup.snapshot.capture import LayerRequest, LayerWriter
from spinup.snapshot.index import MAX_DELTA_DEPTH, Entry, Index, parse
from spinup.snapshot.oci import LAYER_MEDIA_TYPE
from spinup.snapshot.sink import ByteSink
from spinup.snapshot.store import Store
from spinup.snapshot.walk import LayerPlan, Member, scan, scan_and_plan

PAST_NS = 1_000_000_000 * 1_000_000_000  # 2001-09-09: files start old, so any write moves their mtime
FIRST_ARCHIVE = [
    "etc",
    "opt",
    "opt/app",
    "opt/app/new.txt",
    "workspace",
    "workspace/.spinup",
    "workspace/.spinup/notes",
    "workspace/a.txt",
    "workspace/abs",
    "workspace/empty",
    "workspace/gone",
    "workspace/gone/x",
    "workspace/gone/y",
    "workspace/gone/y/z",
    "workspace/link",
    "workspace/old.txt",
    "workspace/sub",
    "workspace/sub/deep.txt",
    "workspace/ünï cödé.txt",
]


def _whiteout(path: Path) -> None:
    os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))


def _file(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, ns=(PAST_NS, PAST_NS))


@pytest.fixture
def upper(tmp_path: Path) -> Path:
    """An upper directory as a machine leaves it after its first session."""
    root = tmp_path / "upper"
    root.mkdir()
    # Docker's mount points, not the agent's data
    _file(root / ".spinup" / "busybox", b"toolbox")
    _file(root / "usr" / "sbin" / "docker-init", b"init")
    # a base file deleted: overlay leaves a whiteout in a copied-up /etc
    (root / "etc").mkdir()
    _whiteout(root / "etc" / "motd")
    # a base directory removed and made again: opaque
    _file(root / "opt" / "app" / "new.txt", b"fresh")
    os.setxattr(root / "opt" / "app", "trusted.overlay.opaque", b"y")
    ws = root / "workspace"
    _file(ws / "a.txt", b"alpha\n")
    _file(ws / "sub" / "deep.txt", b"0123456789")
    _file(ws / "old.txt", b"old")
    _file(ws / "gone" / "x", b"x")
    _file(ws / "gone" / "y" / "z", b"z")
    _file(ws / ".spinup" / "notes", b"a nested .spinup is the agent's own")
    _file(ws / "ünï cödé.txt", b"unicode")
    (ws / "empty").mkdir()
    os.symlink("a.txt", ws / "link")
    os.symlink("/etc/hostname", ws / "abs")
    return root


def _plan(upper: Path, previous: Index | None = None) -> LayerPlan:
    return scan_and_plan(upper, previous)[1]


def _stored(index: Index) -> Index:
    """The index as the next capture reads it back from the store."""
    return Index.loads(index.dumps())


def test_a_first_capture_plans_files_links_empty_dirs_whiteouts_and_opaque_dirs(upper: Path) -> None:
    index = scan(upper)
    assert index.entries["etc/motd"].kind == "whiteout"
    assert index.entries["opt/app"].opaque and not index.entries["opt"].opaque
    assert index.entries["workspace/link"].kind == "symlink"

    layer = _plan(upper)
    assert layer.archive == FIRST_ARCHIVE
    assert layer.whiteouts == ["etc/motd"]
    assert layer.opaque == ["opt/app"]
    assert layer.paths_changed == len(FIRST_ARCHIVE) + 1


def test_docker_mount_points_and_their_copied_up_parents_are_not_captured(upper: Path) -> None:
    index = scan(upper)
    assert not any(p == ".spinup" or p.startswith(".spinup/") for p in index.entries)
    assert "usr/sbin/docker-init" not in index.entries
    layer = _plan(upper)
    # usr and usr/sbin exist only because Docker mounted docker-init there: nothing of them is archived.
    assert not [p for p in layer.archive if p == "usr" or p.startswith("usr/") or p.startswith(".spinup")]


def test_an_unchanged_second_scan_plans_nothing(upper: Path) -> None:
    previous = _stored(scan(upper))
    layer = _plan(upper, previous)
    assert layer.empty and layer.paths_changed == 0
    assert layer == LayerPlan()


def test_a_one_byte_change_plans_only_that_file_and_its_parent_directories(upper: Path) -> None:
    previous = _stored(scan(upper))
    with open(upper / "workspace" / "sub" / "deep.txt", "r+b") as fh:
        fh.write(b"9")  # same size, one byte different
    layer = _plan(upper, previous)
    assert layer.archive == ["workspace", "workspace/sub", "workspace/sub/deep.txt"]
    assert layer.whiteouts == [] and layer.opaque == []


def test_a_new_file_plans_it_and_its_parents_only(upper: Path) -> None:
    previous = _stored(scan(upper))
    _file(upper / "workspace" / "sub" / "new.txt", b"new")
    layer = _plan(upper, previous)
    assert layer.archive == ["workspace", "workspace/sub", "workspace/sub/new.txt"]
    assert layer.whiteouts == []


def test_deleting_a_file_captured_earlier_plans_a_whiteout_for_it(upper: Path) -> None:
    previous = _stored(scan(upper))
    (upper / "workspace" / "old.txt").unlink()
    layer = _plan(upper, previous)
    assert layer.whiteouts == ["workspace/old.txt"]
    assert layer.archive == ["workspace"]
    assert layer.opaque == []


def test_deleting_a_whole_directory_plans_one_whiteout_for_the_directory_only(upper: Path) -> None:
    previous = _stored(scan(upper))
    shutil.rmtree(upper / "workspace" / "gone")
    layer = _plan(upper, previous)
    assert layer.whiteouts == ["workspace/gone"]
    assert layer.archive == ["workspace"]


def test_a_base_file_deleted_later_plans_the_overlay_whiteout(upper: Path) -> None:
    previous = _stored(scan(upper))
    (upper / "usr" / "share").mkdir(parents=True)
    _whiteout(upper / "usr" / "share" / "base-file")
    layer = _plan(upper, previous)
    assert layer.whiteouts == ["usr/share/base-file"]
    assert layer.archive == ["usr", "usr/share"]


def test_a_directory_replaced_by_a_file_is_archived_as_the_file(upper: Path) -> None:
    previous = _stored(scan(upper))
    shutil.rmtree(upper / "workspace" / "gone")
    _file(upper / "workspace" / "gone", b"now a file")
    layer = _plan(upper, previous)
    assert "workspace/gone" in layer.archive
    assert "workspace/gone" not in layer.whiteouts
    # Everything that was under the directory is hidden (the file shadows it in the overlay too).
    hidden = {f"workspace/gone/{name}" for name in ("x", "y", "y/z")}
    assert hidden & set(layer.archive) == set()


def test_a_mode_change_on_a_non_empty_directory_plans_the_directory(upper: Path) -> None:
    previous = _stored(scan(upper))
    os.chmod(upper / "workspace" / "sub", 0o700)
    layer = _plan(upper, previous)
    assert "workspace/sub" in layer.archive


def _tar_members(store: Store, digest: str) -> tuple[bytes, list[tarfile.TarInfo]]:
    compressed = store.blob_path(digest).read_bytes()
    with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(compressed), read_across_frames=True) as reader:
        raw = reader.read()
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
        return raw, tar.getmembers()


def test_write_layer_makes_a_zstd_tar_with_oci_whiteouts_and_an_exact_diff_id(upper: Path, tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    layer = _plan(upper)
    result = LayerWriter(store).write(upper, layer)

    blob = store.blob_path(result.descriptor.digest).read_bytes()
    assert blob[:4] == b"\x28\xb5\x2f\xfd", "a zstd frame"
    assert result.descriptor.digest == "sha256:" + hashlib.sha256(blob).hexdigest()
    assert result.descriptor.media_type == LAYER_MEDIA_TYPE and result.descriptor.size == len(blob)
    raw, members = _tar_members(store, result.descriptor.digest)
    assert result.diff_id == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert result.uncompressed_size == len(raw)

    by_name = {m.name.rstrip("/"): m for m in members}
    assert sorted(by_name) == sorted([*FIRST_ARCHIVE, "etc/.wh.motd", "opt/app/.wh..wh..opq"])
    for marker in ("etc/.wh.motd", "opt/app/.wh..wh..opq"):
        assert by_name[marker].isfile() and by_name[marker].size == 0
    names = [m.name.rstrip("/") for m in members]
    assert names.index("opt/app/.wh..wh..opq") < names.index("opt/app/new.txt"), "opaque first, then new content"
    assert by_name["workspace/link"].issym() and by_name["workspace/link"].linkname == "a.txt"
    assert by_name["workspace/abs"].linkname == "/etc/hostname"
    assert by_name["workspace/empty"].isdir()
    assert by_name["workspace/sub/deep.txt"].mtime == PAST_NS // 1_000_000_000
    assert store.has_blob(result.descriptor.digest)
    assert list((store.root / "tmp").iterdir()) == []


def test_an_incremental_layer_holds_whiteouts_for_deleted_paths(upper: Path, tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    previous = _stored(scan(upper))
    shutil.rmtree(upper / "workspace" / "gone")
    (upper / "workspace" / "old.txt").unlink()
    odd = os.fsencode(upper / "workspace") + b"/caf\xe9"  # not UTF-8
    with open(odd, "wb") as fh:
        fh.write(b"latin-1 name")
    layer = _plan(upper, previous)
    result = LayerWriter(store).write(upper, layer)
    _, members = _tar_members(store, result.descriptor.digest)
    names = sorted(m.name.rstrip("/") for m in members)
    assert names == sorted(
        ["workspace", "workspace/.wh.gone", "workspace/.wh.old.txt", os.fsdecode(b"workspace/caf\xe9")]
    )


def test_an_index_round_trips_through_dumps_and_loads(upper: Path) -> None:
    with open(os.fsencode(upper / "workspace") + b"/caf\xe9", "wb"):
        pass
    index = scan(upper)
    loaded = Index.loads(index.dumps())
    assert loaded.entries == index.entries
    assert all(isinstance(e, Entry) for e in loaded.entries.values())
    assert loaded.entries["opt/app"].opaque is True
    assert loaded.entries["etc/motd"] == Entry.whiteout()
    assert os.fsdecode(b"workspace/caf\xe9") in loaded.entries
    assert loaded.depth == 0


def test_a_delta_index_round_trips_over_its_base_and_needs_a_resolver(upper: Path) -> None:
    base = scan(upper)
    base_blob = base.dumps()
    (upper / "workspace" / "old.txt").unlink()
    _file(upper / "workspace" / "added.txt", b"added")
    current = scan(upper)
    delta_blob = current.dumps(("sha256:" + "b" * 64, base))

    body = parse(delta_blob)
    assert body["base"] == "sha256:" + "b" * 64 and body["depth"] == 1
    assert body["removed"] == ["workspace/old.txt"]
    assert "workspace/added.txt" in body["entries"] and "workspace/a.txt" not in body["entries"]
    with pytest.raises(ValueError, match="resolver"):
        Index.loads(delta_blob)

    def resolve(digest: str) -> Index:
        assert digest == "sha256:" + "b" * 64
        return Index.loads(base_blob)

    loaded = Index.loads(delta_blob, resolve=resolve)
    assert loaded.entries == current.entries and loaded.depth == 1


def test_a_full_index_is_written_again_after_the_maximum_delta_depth(upper: Path) -> None:
    index = scan(upper)
    deep = Index(index.entries, depth=MAX_DELTA_DEPTH)
    assert "base" not in parse(index.dumps(("sha256:" + "c" * 64, deep)))
    shallow = Index(index.entries, depth=MAX_DELTA_DEPTH - 1)
    assert parse(index.dumps(("sha256:" + "c" * 64, shallow)))["depth"] == MAX_DELTA_DEPTH


def _check_layer_order(members: list[tarfile.TarInfo]) -> None:
    """Parents come before their entries, a directory's whiteouts before its other entries (OCI)."""
    names = [m.name.rstrip("/") for m in members]
    position = {name: i for i, name in enumerate(names)}
    for i, name in enumerate(names):
        parent = os.path.dirname(name)
        if parent:
            assert position.get(parent, -1) < i, f"{name} comes before its parent directory"
        if os.path.basename(name).startswith(".wh.") and not name.endswith(".wh..wh..opq"):
            earlier = [n for n in names[:i] if os.path.dirname(n) == parent]
            siblings = [n for n in earlier if not os.path.basename(n).startswith(".wh.")]
            assert not siblings, f"whiteout {name} comes after {siblings}"


def test_a_streamed_capture_writes_the_same_layer_as_the_plan_in_oci_order(upper: Path, tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    walked: list[tuple[int, int]] = []
    captured = LayerWriter(store).capture(
        LayerRequest(
            upper, None, on_walked=lambda index, layer: walked.append((len(index.entries), len(layer.members)))
        )
    )
    assert captured.layer is not None
    assert walked == [(len(captured.index.entries), len(captured.plan.members))]
    assert captured.plan.archive == FIRST_ARCHIVE
    raw, members = _tar_members(store, captured.layer.descriptor.digest)
    assert captured.layer.diff_id == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert [m.name.rstrip("/") for m in members] == [m.name for m in captured.plan.members]
    _check_layer_order(members)
    names = [m.name.rstrip("/") for m in members]
    assert names.index("opt/app/.wh..wh..opq") == names.index("opt/app") + 1
    planned = LayerWriter(store).write(upper, _plan(upper))
    assert sorted(m.name for m in _tar_members(store, planned.descriptor.digest)[1]) == sorted(m.name for m in members)
    assert list((store.root / "tmp").iterdir()) == []


def test_an_incremental_streamed_capture_puts_each_directorys_whiteouts_first(upper: Path, tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    previous = _stored(scan(upper))
    (upper / "workspace" / "old.txt").unlink()
    shutil.rmtree(upper / "workspace" / "gone")
    _file(upper / "workspace" / "zz-new.txt", b"new")
    _file(upper / "workspace" / "sub" / "deep.txt", b"changed!!!")
    (upper / "usr" / "share").mkdir(parents=True)
    _whiteout(upper / "usr" / "share" / "base-file")
    captured = LayerWriter(store).capture(LayerRequest(upper, previous))
    assert captured.layer is not None
    _, members = _tar_members(store, captured.layer.descriptor.digest)
    _check_layer_order(members)
    assert sorted(m.name.rstrip("/") for m in members) == sorted(
        [
            "usr", "usr/share", "usr/share/.wh.base-file", "workspace", "workspace/.wh.gone",
            "workspace/.wh.old.txt", "workspace/zz-new.txt", "workspace/sub", "workspace/sub/deep.txt",
        ]
    )  # fmt: skip
    assert captured.plan.whiteouts == ["usr/share/base-file", "workspace/gone", "workspace/old.txt"]


def test_nothing_changed_starts_no_tar_and_writes_no_blob_unless_a_layer_is_required(
    upper: Path, tmp_path: Path
) -> None:
    store = Store(tmp_path / "store")
    previous = _stored(scan(upper))
    captured = LayerWriter(store).capture(LayerRequest(upper, previous))
    assert captured.layer is None and captured.plan.empty
    assert list(store.blob_digests()) == [] and list((store.root / "tmp").iterdir()) == []
    forced = LayerWriter(store).capture(LayerRequest(upper, previous, always=True))
    assert forced.layer is not None
    raw, members = _tar_members(store, forced.layer.descriptor.digest)
    assert members == [] and set(raw) == {0}


def test_odd_names_reach_the_layer_verbatim(upper: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Scratch markers live under a temp dir whose path is full of regex and sed syntax.
    odd_tmp = tmp_path / "t.[m]p*^$\\, /x"
    odd_tmp.mkdir(parents=True)
    monkeypatch.setattr("tempfile.tempdir", str(odd_tmp))
    store = Store(tmp_path / "store")
    previous = _stored(scan(upper))
    long_dir = "workspace/" + "/".join(["d" * 60] * 4)
    _file(upper / long_dir / ("f" * 120), b"long")
    _file(upper / "--remove-files", b"an option? no, a name")
    _file(upper / "-C", b"a name too")
    _whiteout(upper / "workspace" / ("w" * 150))
    captured = LayerWriter(store).capture(LayerRequest(upper, previous))
    assert captured.layer is not None
    _, members = _tar_members(store, captured.layer.descriptor.digest)
    names = {m.name.rstrip("/") for m in members}
    assert {"--remove-files", "-C", f"{long_dir}/{'f' * 120}", "workspace/.wh." + "w" * 150} <= names
    assert not [n for n in names if "t.[m]p" in n or n.startswith(("tmp", "/"))]
    assert (upper / "--remove-files").read_bytes() == b"an option? no, a name"
    assert list(odd_tmp.iterdir()) == [], "the scratch directory is removed"


def test_a_chatty_tar_does_not_block_and_a_failing_one_leaves_nothing(upper: Path, tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    sockets = upper / "workspace" / "sockets"
    sockets.mkdir()
    for number in range(2500):  # tar warns "socket ignored" for each: ~150 KB of stderr
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(str(sockets / f"socket-{number:04}"))
    captured = LayerWriter(store).capture(LayerRequest(upper, None))
    assert captured.layer is not None and "workspace/sockets" in captured.plan.archive

    missing = LayerPlan(archive=["nope"], members=[Member("workspace"), Member("nope")])
    with pytest.raises(OSError, match="tar failed with exit code 2"):
        LayerWriter(store).write(upper, missing)
    assert list((store.root / "tmp").iterdir()) == []


def test_a_failing_sink_stops_tar_and_discards_the_partial_blob(upper: Path, tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    _file(upper / "workspace" / "big.bin", os.urandom(4 * 1024 * 1024))

    class Failing:
        def __init__(self, sink: ByteSink) -> None:
            self.sink = sink

        @property
        def size(self) -> int:
            return self.sink.size

        def write(self, data: bytes) -> None:
            self.sink.write(data)
            if self.sink.size > 1024 * 1024:
                raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        LayerWriter(store).capture(LayerRequest(upper, None, wrap_sink=Failing))
    assert list((store.root / "tmp").iterdir()) == []
    assert list(store.blob_digests()) == []


def test_a_sink_failing_while_the_walk_still_names_members_reports_the_sinks_error(
    upper: Path, tmp_path: Path
) -> None:
    store = Store(tmp_path / "store")
    for number in range(6000):  # more names (1.3 MB) than tar's pipe holds
        _file(upper / "workspace" / "many" / f"file-{number:04}-{'x' * 200}", b"x")
    _file(upper / "aaa" / "big.bin", os.urandom(2 * 1024 * 1024))

    def failing(sink: ByteSink) -> ByteSink:
        class Failing:
            size = 0

            def write(self, data: bytes) -> None:
                raise OSError("disk gone")

        return Failing()

    with pytest.raises(OSError, match="disk gone"):
        LayerWriter(store).capture(LayerRequest(upper, None, wrap_sink=failing))
    assert list((store.root / "tmp").iterdir()) == []


def test_a_replaced_directory_gets_its_opaque_marker_and_no_whiteouts_inside(upper: Path, tmp_path: Path) -> None:
    # A directory captured before (with children), then removed and made again over a lower layer:
    # overlayfs marks it opaque. Whiteouts for its old children would be redundant, and in a
    # directory no lower layer has, overlayfs would list them as names that cannot be opened.
    previous = _stored(scan(upper))
    shutil.rmtree(upper / "workspace" / "gone")
    (upper / "workspace" / "gone").mkdir()
    os.setxattr(upper / "workspace" / "gone", "trusted.overlay.opaque", b"y")
    _file(upper / "workspace" / "gone" / "fresh", b"fresh")
    layer = _plan(upper, previous)
    assert layer.opaque == ["workspace/gone"]
    assert layer.whiteouts == []
    assert [m.name for m in layer.members if m.name.startswith("workspace/gone")] == [
        "workspace/gone", "workspace/gone/.wh..wh..opq", "workspace/gone/fresh",
    ]  # fmt: skip
