"""The union of stacked overlay layer directories, as a squash plans it (whiteouts made as overlayfs makes them)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from spinup.snapshot.squash import union_plan
from spinup.snapshot.walk import Member


def _file(path: Path, data: bytes = b"x") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _whiteout(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))


def test_the_union_takes_the_topmost_entry_and_keeps_only_whiteouts_the_base_needs(tmp_path: Path) -> None:
    upper, lower, base = tmp_path / "upper", tmp_path / "lower", tmp_path / "base"
    for path in ("etc/motd", "etc/issue", "usr/doc/gz/README", "usr/doc/keep/README"):
        _file(base / path)
    _file(lower / "workspace/a", b"old a")
    _file(lower / "workspace/old")
    _file(lower / "usr/doc/gz/only-this")
    os.setxattr(lower / "usr/doc/gz", "trusted.overlay.opaque", b"y")
    _whiteout(lower / "etc/motd")
    _file(lower / "usr/doc/keep/added")
    _file(upper / "workspace/a", b"new a")
    _whiteout(upper / "workspace/old")  # deleted after the lower layer was made: nothing in the base
    _whiteout(upper / "etc/issue")
    _whiteout(upper / "usr/doc/gz/only-this")  # inside a directory that hides the base anyway
    _file(upper / ".spinup/busybox")  # Docker's mount point: never captured
    _file(lower / "workspace/emptied/only")
    _whiteout(upper / "workspace/emptied/only")  # the directory stays, empty
    _file(upper / "usr/sbin/docker-init")  # a mount point's copied-up parents are not the agent's

    plan = union_plan([upper, lower], [base])

    assert plan.whiteouts == ["etc/issue", "etc/motd"]
    assert plan.opaque == ["usr/doc/gz"]
    by_name = {m.name: m for m in plan.members}
    assert by_name["workspace/a"] == Member("workspace/a", source="")
    assert by_name["usr/doc/keep/added"] == Member("usr/doc/keep/added", source=str(lower))
    assert by_name["usr/doc/gz"].source == "" and "usr/doc/gz/.wh..wh..opq" in by_name  # upper is topmost
    assert not {"workspace/old", "workspace/.wh.old", "usr/doc/gz/only-this", "usr/doc/gz/.wh.only-this"} & set(by_name)
    assert not [name for name in by_name if name.startswith((".spinup", "usr/sbin"))]
    assert "workspace/emptied" in plan.archive and "workspace/emptied/.wh.only" not in by_name
    names = [m.name for m in plan.members]
    for name in names:  # parents first
        parent = os.path.dirname(name)
        assert not parent or names.index(parent) < names.index(name)


def test_a_non_directory_below_ends_a_directorys_merge_and_hides_the_base(tmp_path: Path) -> None:
    upper, lower, base = tmp_path / "upper", tmp_path / "lower", tmp_path / "base"
    _file(base / "opt/tool/bin")
    _file(lower / "opt/tool")  # the base's directory became a file ...
    _file(upper / "opt/tool/new")  # ... and a directory again (overlayfs did not mark it opaque here)
    plan = union_plan([upper, lower], [base])
    assert plan.opaque == ["opt/tool"] and "opt/tool/new" in plan.archive
    assert [m for m in plan.members if m.source == str(lower)] == []
