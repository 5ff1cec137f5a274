"""Base images in the store: their layers stored once (zstd), shared by every snapshot on them.

A base image is kept as an OCI image of its own, listed in ``index.json`` beside the snapshots
under the name ``base-<hex of its id>``: its config is the image's config exactly as Docker
holds it (so its digest is the image id) and its layers are Docker's layer tars, compressed.
:func:`import_save` makes one from a ``docker save`` stream; :func:`adopt` gives a store a base
another store already holds (the host-wide base cache), by hard link when it can.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from . import oci
from .errors import StoreError
from .sink import LayerSink
from .store import Descriptor, Store

MAX_CONFIG = 16 * 1024 * 1024  # bytes of an image config or of docker save's manifest.json, at most


class BaseMissing(StoreError):
    """The store does not hold a base image a snapshot needs."""


@dataclass(frozen=True)
class StoredBase:
    """A base image held by a store."""

    image_id: str  # sha256:..., the digest of its config
    manifest: Descriptor  # as listed in index.json
    config: Descriptor
    layers: tuple[Descriptor, ...]  # bottom first, each with its diff id and uncompressed size

    def config_json(self, store: Store) -> dict[str, Any]:
        """The image config, read and verified."""
        return store.get_json(self.config)


def base_ref(image_id: str) -> str:
    """The name of a base image's manifest in ``index.json``."""
    return "base-" + image_id.removeprefix("sha256:")


def base_lock_path(store: Store, image_id: str) -> Path:
    """The lock file a process holds while it stores the base image ``image_id`` into ``store``."""
    return store.root / "locks" / (base_ref(image_id) + ".lock")


def is_base(descriptor: Descriptor) -> bool:
    """Whether an ``index.json`` entry is a base image (not a snapshot)."""
    return (descriptor.annotations or {}).get(oci.KIND) == oci.KIND_BASE


def find_base(store: Store, image_id: str) -> StoredBase | None:
    """The base image ``image_id`` if the store lists it and holds all its blobs, else None."""
    ref = base_ref(image_id)
    for descriptor in reversed(store.manifests()):
        if (descriptor.annotations or {}).get(oci.REF_NAME) != ref or not store.has_blob(descriptor.digest):
            continue
        manifest = store.get_json(descriptor)
        stored = StoredBase(
            image_id,
            descriptor,
            Descriptor.from_json(manifest["config"]),
            tuple(Descriptor.from_json(d) for d in manifest["layers"]),
        )
        if all(store.has_blob(d.digest) for d in (stored.config, *stored.layers)):
            return stored
    return None


def list_base(store: Store, image_id: str, config: Descriptor, layers: list[Descriptor]) -> StoredBase:
    """Write the base image's manifest and list it in ``index.json`` (its blobs are stored already)."""
    manifest = {
        "schemaVersion": 2,
        "mediaType": oci.MANIFEST_MEDIA_TYPE,
        "config": config.to_json(),
        "layers": [d.to_json() for d in layers],
        "annotations": {oci.KIND: oci.KIND_BASE, oci.BASE_ID: image_id},
    }
    annotations = {oci.REF_NAME: base_ref(image_id), oci.KIND: oci.KIND_BASE, oci.BASE_ID: image_id}
    descriptor = store.put_json(manifest, oci.MANIFEST_MEDIA_TYPE, annotations)
    store.add_manifest(descriptor)
    return StoredBase(image_id, descriptor, config, tuple(layers))


def adopt(source: Store, target: Store, image_id: str) -> StoredBase | None:
    """Give ``target`` the base image ``source`` holds (hard links, or verified copies); None if it has none."""
    found = find_base(source, image_id)
    if found is None:
        return None
    for descriptor in (*found.layers, found.config):
        target.adopt_blob(source.blob_path(descriptor.digest), descriptor)
    return list_base(target, image_id, found.config, list(found.layers))


def _bounded(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    if member.size > MAX_CONFIG:
        raise StoreError(f"docker save: {member.name} is {member.size} bytes, more than an image config may be.")
    content = tar.extractfile(member)
    assert content is not None
    return content.read()


def import_save(
    store: Store,
    image_id: str,
    stream: IO[bytes],
    level: int = 3,
    on_bytes: Callable[[int], None] | None = None,
) -> StoredBase:
    """Store the base image ``image_id`` from its ``docker save`` tar stream (blocking) and list it.

    Every layer tar is compressed into a blob as it streams by; the config must hash to
    ``image_id`` and its ``rootfs.diff_ids`` must be the layers' own, or nothing is listed.
    """
    layers: dict[str, tuple[Descriptor, str]] = {}  # layer.tar member name -> blob, diff id
    links: dict[str, str] = {}  # a layer.tar that docker save made a symlink -> its target
    configs: dict[str, bytes] = {}
    manifest_raw = b""
    done = 0
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            name = member.name.removeprefix("./")
            if name.endswith("/layer.tar") and member.issym():
                links[name] = posixpath.normpath(posixpath.join(posixpath.dirname(name), member.linkname))
            elif name.endswith("/layer.tar") and member.isreg():
                content = tar.extractfile(member)
                assert content is not None
                sink = LayerSink(store, level, -1)
                try:
                    while chunk := content.read(1024 * 1024):
                        sink.write(chunk)
                        done += len(chunk)
                        if on_bytes is not None:
                            on_bytes(done)
                    result = sink.commit()
                except BaseException:
                    sink.abort()
                    raise
                annotations = {oci.DIFF_ID: result.diff_id, oci.UNCOMPRESSED_SIZE: str(result.uncompressed_size)}
                descriptor = Descriptor(oci.LAYER_MEDIA_TYPE, result.descriptor.digest, result.descriptor.size)
                layers[name] = (Descriptor(descriptor.media_type, descriptor.digest, descriptor.size, annotations),
                                result.diff_id)  # fmt: skip
            elif name == "manifest.json" and member.isreg():
                manifest_raw = _bounded(tar, member)
            elif "/" not in name and name.endswith(".json") and member.isreg():
                configs[name] = _bounded(tar, member)
    return _list_saved(store, image_id, layers, links, configs, manifest_raw)


def _list_saved(
    store: Store,
    image_id: str,
    layers: dict[str, tuple[Descriptor, str]],
    links: dict[str, str],
    configs: dict[str, bytes],
    manifest_raw: bytes,
) -> StoredBase:
    what = f"docker save of {image_id[:19]}"
    try:
        entries = json.loads(manifest_raw)
        entry = next(e for e in entries if e["Config"] == image_id.removeprefix("sha256:") + ".json")
        config_raw = configs[entry["Config"]]
    except (ValueError, KeyError, TypeError, StopIteration) as exc:
        raise StoreError(f"{what}: its manifest.json names no config of that image ({exc!r}).") from exc
    if "sha256:" + hashlib.sha256(config_raw).hexdigest() != image_id:
        raise StoreError(f"{what}: the image config does not hash to the image id; nothing was stored.")
    ordered: list[Descriptor] = []
    diff_ids: list[str] = []
    for path in entry["Layers"]:
        found = layers.get(path) or layers.get(links.get(path, ""))
        if found is None:
            raise StoreError(f"{what}: layer {path} is named in manifest.json but not in the archive.")
        ordered.append(found[0])
        diff_ids.append(found[1])
    expected = json.loads(config_raw).get("rootfs", {}).get("diff_ids", [])
    if diff_ids != expected:
        raise StoreError(f"{what}: its layers hash to {diff_ids}, but the config names {expected}.")
    writer = store.writer()
    try:
        writer.write(config_raw)
        config = writer.commit(oci.CONFIG_MEDIA_TYPE)
    except BaseException:
        writer.abort()
        raise
    return list_base(store, image_id, config, ordered)
