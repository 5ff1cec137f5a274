"""Refuse layers that could write outside their root or create devices, before anything uses them."""

from __future__ import annotations

import fnmatch
import posixpath
import tarfile
from collections.abc import Iterable

from .errors import UnsafeLayer
from .oci import OPAQUE_MARKER, WHITEOUT_PREFIX, XATTR_NAMESPACES

XATTR_RECORD = "SCHILY.xattr."  # how pax headers carry extended attributes (Docker applies these)


def _normal(name: str) -> str:
    return posixpath.normpath("/" + name.removeprefix("./")).lstrip("/")


def check_members(members: Iterable[tarfile.TarInfo], layer: str = "layer") -> int:
    """Raise :class:`UnsafeLayer` for the first dangerous entry; return the bytes the layer's files expand to.

    The size counts a sparse file whole (its apparent size): Docker writes its holes out as zeros.

    Refused: absolute names, names with '..', device nodes (FIFOs are fine), hard links that leave the
    layer root, any entry whose path goes through a symlink the same layer created (the
    classic "symlink, then write through it" escape), and extended attributes outside the
    namespaces capture records (``trusted.overlay.*`` would steer the overlay filesystem).
    """
    symlinks: set[str] = set()
    expanded = 0
    for member in members:
        raw = member.name
        if member.isreg():
            expanded += member.size
        for key in member.pax_headers:
            if key.startswith(XATTR_RECORD):
                attribute = key[len(XATTR_RECORD) :]
                if not any(fnmatch.fnmatchcase(attribute, pattern) for pattern in XATTR_NAMESPACES):
                    raise UnsafeLayer(
                        f"{layer}: entry {raw!r} sets the extended attribute {attribute!r}; layers may carry "
                        f"only {', '.join(XATTR_NAMESPACES)}."
                    )
        if raw.startswith("/") or any(part == ".." for part in raw.split("/")):
            raise UnsafeLayer(f"{layer}: entry {raw!r} escapes the layer root (absolute path or '..').")
        if member.ischr() or member.isblk():
            raise UnsafeLayer(f"{layer}: entry {raw!r} is a device node; layers may not create devices.")
        name = _normal(raw)
        base = posixpath.basename(name)
        if base.startswith(WHITEOUT_PREFIX) and base != OPAQUE_MARKER and member.size:
            raise UnsafeLayer(f"{layer}: whiteout {raw!r} has content.")
        parent = posixpath.dirname(name)
        while parent:
            if parent in symlinks:
                raise UnsafeLayer(f"{layer}: entry {raw!r} is written through the symlink /{parent} of this layer.")
            parent = posixpath.dirname(parent)
        if member.islnk():
            target = member.linkname
            if target.startswith("/") or any(part == ".." for part in target.split("/")):
                raise UnsafeLayer(f"{layer}: hard link {raw!r} points outside the layer ({target!r}).")
        if member.issym():
            symlinks.add(name)
        else:
            symlinks.discard(name)
    return expanded
