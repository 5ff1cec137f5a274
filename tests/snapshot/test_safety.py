"""Crafted layers are refused from their headers, before anything is extracted anywhere."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
import zstandard

from spinup.snapshot.errors import UnsafeLayer
from spinup.snapshot.listing import layer_members
from spinup.snapshot.oci import LAYER_MEDIA_TYPE
from spinup.snapshot.safety import check_members
from spinup.snapshot.store import Store

Entry = tuple[tarfile.TarInfo, bytes]


def _entry(name: str, kind: bytes = tarfile.REGTYPE, link: str = "", data: bytes = b"") -> Entry:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, data


def _layer(*entries: tuple[tarfile.TarInfo, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if info.size else None)
    return buffer.getvalue()


def _members(raw: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r|") as tar:
        return list(tar)


@pytest.mark.parametrize(
    ("entries", "words"),
    [
        ([_entry("../escape.txt", data=b"x")], "escapes"),
        ([_entry("workspace/../../etc/passwd", data=b"x")], "escapes"),
        ([_entry("/etc/passwd", data=b"x")], "escapes"),
        ([_entry("dev/evil", tarfile.CHRTYPE)], "device"),
        ([_entry("dev/disk", tarfile.BLKTYPE)], "device"),
        ([_entry("workspace/out", tarfile.SYMTYPE, "/etc"), _entry("workspace/out/passwd", data=b"x")], "symlink"),
        ([_entry("a", tarfile.SYMTYPE, "../../.."), _entry("a/b/c", data=b"x")], "symlink"),
        ([_entry("workspace/h", tarfile.LNKTYPE, "../../etc/shadow")], "outside"),
        ([_entry("workspace/.wh.gone", data=b"payload")], "whiteout"),
    ],
)
def test_a_crafted_layer_is_refused(entries: list[tuple[tarfile.TarInfo, bytes]], words: str) -> None:
    with pytest.raises(UnsafeLayer, match=words):
        check_members(_members(_layer(*entries)))


def test_an_ordinary_layer_passes() -> None:
    check_members(
        _members(
            _layer(
                _entry("workspace", tarfile.DIRTYPE),
                _entry("workspace/a.txt", data=b"a"),
                _entry("workspace/link", tarfile.SYMTYPE, "/etc/passwd"),
                _entry("workspace/hard", tarfile.LNKTYPE, "workspace/a.txt"),
                _entry("etc/.wh.motd"),
                _entry("usr/share/doc/.wh..wh..opq"),
                _entry("workspace/pipe", tarfile.FIFOTYPE),
            )
        )
    )


def test_a_crafted_blob_in_the_store_is_refused_from_its_headers(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    writer = store.writer()
    writer.write(zstandard.ZstdCompressor().compress(_layer(_entry("../../outside", data=b"pwned"))))
    descriptor = writer.commit(LAYER_MEDIA_TYPE)
    with pytest.raises(UnsafeLayer):
        check_members(layer_members(store, descriptor))
    assert not (tmp_path / "outside").exists()


def _pax_layer(name: str, xattrs: dict[str, str]) -> bytes:
    info = tarfile.TarInfo(name)
    info.pax_headers = {f"SCHILY.xattr.{key}": value for key, value in xattrs.items()}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(info)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "attribute", ["trusted.overlay.redirect", "trusted.overlay.opaque", "security.selinux", "security.ima"]
)
def test_a_layer_setting_an_overlay_or_security_attribute_is_refused(attribute: str) -> None:
    with pytest.raises(UnsafeLayer, match=f"extended attribute '{attribute}'"):
        check_members(_members(_pax_layer("workspace/dir", {attribute: "/etc"})))


def test_the_attributes_capture_records_pass() -> None:
    recorded = {
        "user.origin": "notes",
        "security.capability": "\x01\x00\x00\x02",
        "system.posix_acl_access": "\x02\x00\x00\x00",
        "system.posix_acl_default": "\x02\x00\x00\x00",
    }
    check_members(_members(_pax_layer("workspace/file", recorded)))
