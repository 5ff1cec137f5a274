"""Turn a snapshot into a ``docker save``-format tar stream, decompressing layers on the fly.

Docker 20.10 loads only uncompressed (or gzip) layers, so the zstd layers of the store are
decompressed while the tar is produced. The base image's layers are named in manifest.json but
not included: the daemon skips loading layers it already has, so the base image must be present.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass

import zstandard

from .oci import DIFF_ID, UNCOMPRESSED_SIZE
from .store import Descriptor, Store

_CHUNK = 1024 * 1024
_BLOCK = 512


@dataclass(frozen=True)
class SaveImage:
    """What goes into one ``docker save`` archive."""

    tag: str
    config: bytes  # the image config JSON, exactly as stored
    config_digest: str
    base_diff_ids: list[str]
    layers: list[Descriptor]  # Spinup's own layers, bottom first
    base_id: str = ""  # the base image (by id) the daemon must already have: its layers are not included
    expanded: tuple[int, ...] = ()  # bytes each of ``layers`` writes once loaded (sparse files whole)


def _header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    return info.tobuf(format=tarfile.GNU_FORMAT)


def _padding(size: int) -> bytes:
    return b"\0" * (-size % _BLOCK)


def save_stream(store: Store, image: SaveImage) -> Iterator[bytes]:
    """Yield the archive in chunks; every layer blob is verified against its digest as it is read."""
    config_name = image.config_digest.split(":", 1)[1] + ".json"
    yield _header(config_name, len(image.config)) + image.config + _padding(len(image.config))
    names = [f"base-{index}/layer.tar" for index in range(len(image.base_diff_ids))]
    for layer in image.layers:
        annotations = layer.annotations or {}
        size = int(annotations[UNCOMPRESSED_SIZE])
        name = annotations[DIFF_ID].split(":", 1)[1] + "/layer.tar"
        names.append(name)
        yield _header(name, size)
        written = 0
        with store.open_blob(layer) as blob:
            reader = zstandard.ZstdDecompressor().stream_reader(blob, read_across_frames=True)  # type: ignore[arg-type]
            while chunk := reader.read(_CHUNK):
                written += len(chunk)
                yield chunk
            blob.read()  # reach the end so the digest is checked
        if written != size:
            raise ValueError(f"layer {layer.digest} decompressed to {written} bytes, expected {size}")
        yield _padding(size)
    manifest = json.dumps([{"Config": config_name, "RepoTags": [image.tag], "Layers": names}]).encode()
    yield _header("manifest.json", len(manifest)) + manifest + _padding(len(manifest))
    yield b"\0" * (2 * _BLOCK)
