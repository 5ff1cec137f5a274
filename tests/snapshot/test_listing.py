"""Applying layers to listings: OCI whiteouts hide lower layers only, wherever they sit in the layer."""

from __future__ import annotations

import tarfile

from spinup.snapshot.listing import Meta, apply_layer, diff_trees


def _file(name: str) -> tuple[tarfile.TarInfo, str]:
    info = tarfile.TarInfo(name)
    info.size = 1
    return info, "digest-of-" + name


def _dir(name: str) -> tuple[tarfile.TarInfo, str]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    return info, ""


def _lower() -> dict[str, Meta]:
    tree: dict[str, Meta] = {}
    apply_layer(tree, [_dir("a"), _file("a/x"), _file("a/y"), _dir("b"), _file("b/old")])
    return tree


def test_whiteouts_before_or_after_the_new_entries_give_the_same_tree() -> None:
    whiteouts_first = _lower()
    apply_layer(whiteouts_first, [_dir("a"), _file("a/.wh.x"), _dir("b"), _file("b/.wh..wh..opq"), _file("b/new")])
    whiteouts_last = _lower()
    apply_layer(whiteouts_last, [_dir("a"), _dir("b"), _file("b/new"), _file("a/.wh.x"), _file("b/.wh..wh..opq")])
    assert whiteouts_first == whiteouts_last
    assert sorted(whiteouts_last) == ["/a", "/a/y", "/b", "/b/new"]


def test_a_whiteout_never_hides_an_entry_of_its_own_layer() -> None:
    tree = _lower()
    apply_layer(tree, [_dir("c"), _file("c/kept"), _file(".wh.c"), _file("a/.wh.y")])
    assert "/c/kept" in tree and "/c" in tree
    assert "/a/y" not in tree
    diff = diff_trees(_lower(), tree)
    assert diff.added == ["/c/kept"] and diff.removed == ["/a/y"]
