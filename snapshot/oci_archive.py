"""A snapshot as an OCI archive: a tar of an OCI image layout holding that one image.

What ``skopeo copy oci-archive:FILE ...`` and other OCI tools read. The blobs are the store's
own (zstd layers, the base image's first), each verified against its digest as it is copied.
"""

from __future__ import annotations

import json
import os
import secrets
import tarfile
from collections.abc import Iterator
from pathlib import Path

from .oci import OCI_INDEX_MEDIA_TYPE, REF_NAME
from .store import OCI_LAYOUT, Descriptor, Store, fsync_dir

_CHUNK = 1024 * 1024
_BLOCK = 512


def _member(name: str, size: int, directory: bool = False) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = 0 if directory else size
    info.mode = 0o755 if directory else 0o644
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    return info.tobuf(format=tarfile.PAX_FORMAT)


def _file(name: str, data: bytes) -> bytes:
    return _member(name, len(data)) + data + b"\0" * (-len(data) % _BLOCK)


def archive_stream(store: Store, manifest: Descriptor, ref_name: str) -> Iterator[bytes]:
    """Yield the OCI archive of the image ``manifest`` (listed under ``ref_name``) in chunks."""
    raw = store.get_json(manifest)
    blobs = [manifest, Descriptor.from_json(raw["config"]), *(Descriptor.from_json(d) for d in raw["layers"])]
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX_MEDIA_TYPE,
        "manifests": [Descriptor(manifest.media_type, manifest.digest, manifest.size, {REF_NAME: ref_name}).to_json()],
    }
    yield _file("oci-layout", json.dumps(OCI_LAYOUT).encode())
    yield _file("index.json", json.dumps(index).encode())
    for directory in ("blobs/", "blobs/sha256/"):
        yield _member(directory, 0, directory=True)
    seen: set[str] = set()
    for blob in blobs:
        if blob.digest in seen:
            continue
        seen.add(blob.digest)
        yield _member("blobs/sha256/" + blob.digest.removeprefix("sha256:"), blob.size)
        with store.open_blob(blob) as reader:
            while chunk := reader.read(_CHUNK):
                yield chunk
        yield b"\0" * (-blob.size % _BLOCK)
    yield b"\0" * (2 * _BLOCK)


def write_archive(store: Store, manifest: Descriptor, ref_name: str, destination: Path) -> int:
    """Write the OCI archive to ``destination`` atomically (temp file, fsync, rename); returns its size."""
    tmp = destination.with_name(f".{destination.name}.{secrets.token_hex(4)}.part")
    written = 0
    try:
        with open(tmp, "wb") as fh:
            for chunk in archive_stream(store, manifest, ref_name):
                fh.write(chunk)
                written += len(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, destination)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(destination.parent)
    return written
