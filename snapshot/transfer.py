"""A snapshot that arrives from a registry: checked whole before any of it enters the store.

A pull lands in a staging OCI layout beside the store (blobs the store already holds are linked
into it first, so they are not fetched again). :func:`check_manifest` refuses a manifest that is
not a Spinup snapshot or declares impossible sizes; :func:`admit` then checks every blob the
store lacks (its digest; for a layer, that it decompresses to exactly its declared size and diff
id and holds no unsafe entry; for the config, that it names those diff ids) and only then links
them into the store, writes the manifest and lists it. The base image's layers come along; a
base image entry is made for them (its config rebuilt from the snapshot's) so the agent can go
on snapshotting where Docker never had its base image.
"""

from __future__ import annotations

import hashlib
import json
import re
import tarfile
from dataclasses import dataclass
from typing import Any

import zstandard

from . import oci
from .base import find_base, list_base
from .errors import StoreError, UnsafeLayer
from .image import SNAPSHOT_LABEL, split_layers
from .safety import check_members
from .store import Descriptor, Store, VerifiedReader, digest_hex

MAX_MANIFEST = 4 * 1024 * 1024  # bytes of a manifest
MAX_CONFIG = 16 * 1024 * 1024  # bytes of an image config
MAX_LAYER = 64 * 1024**3  # bytes of one layer, compressed or not
_SNAPSHOT_ID = re.compile(r"^s-[0-9a-f]{12}$")
_CHUNK = 1024 * 1024


class RefusedImage(StoreError):
    """A pulled image is not a snapshot Spinup can take in; nothing of it was stored."""


@dataclass(frozen=True)
class Pulled:
    """A checked snapshot manifest."""

    raw: bytes
    digest: str
    manifest: dict[str, Any]
    snapshot_id: str
    config: Descriptor
    layers: list[Descriptor]
    base_layers: int


def _refuse(what: str) -> RefusedImage:
    return RefusedImage(f"The pulled image was refused before anything was stored: {what}.")


def _descriptor(raw: Any, media_type: str, limit: int, what: str) -> Descriptor:
    if not isinstance(raw, dict) or raw.get("mediaType") != media_type:
        raise _refuse(f"{what} is not a {media_type}")
    try:
        digest_hex(str(raw.get("digest")))
    except StoreError as exc:
        raise _refuse(f"{what} has a malformed digest") from exc
    size = raw.get("size")
    if not isinstance(size, int) or not 0 <= size <= limit:
        raise _refuse(f"{what} declares a size of {size!r} bytes")
    annotations = raw.get("annotations")
    if annotations is not None and not (
        isinstance(annotations, dict) and all(isinstance(v, str) for v in annotations.values())
    ):
        raise _refuse(f"{what} has malformed annotations")
    return Descriptor.from_json(raw)


def check_manifest(raw: bytes) -> Pulled:
    """Parse and check a pulled manifest; raise :class:`RefusedImage` for anything not a Spinup snapshot."""
    if len(raw) > MAX_MANIFEST:
        raise _refuse(f"its manifest is {len(raw)} bytes")
    try:
        manifest = json.loads(raw)
    except ValueError as exc:
        raise _refuse("its manifest is not JSON") from exc
    if not isinstance(manifest, dict) or manifest.get("schemaVersion") != 2:
        raise _refuse("its manifest is not an OCI image manifest")
    if manifest.get("mediaType") != oci.MANIFEST_MEDIA_TYPE:
        raise _refuse(f"its manifest is a {manifest.get('mediaType')!r}, not a Spinup snapshot")
    config = _descriptor(manifest.get("config"), oci.CONFIG_MEDIA_TYPE, MAX_CONFIG, "the config")
    raw_layers = manifest.get("layers")
    if not isinstance(raw_layers, list) or not raw_layers:
        raise _refuse("it lists no layers")
    layers = [_descriptor(d, oci.LAYER_MEDIA_TYPE, MAX_LAYER, f"layer {i}") for i, d in enumerate(raw_layers)]
    for i, layer in enumerate(layers):
        annotations = layer.annotations or {}
        size = annotations.get(oci.UNCOMPRESSED_SIZE, "")
        if not size.isdigit() or int(size) > MAX_LAYER:
            raise _refuse(f"layer {i} declares an uncompressed size of {size!r} bytes")
        try:
            digest_hex(annotations.get(oci.DIFF_ID, ""))
        except StoreError as exc:
            raise _refuse(f"layer {i} has no diff id") from exc
    annotations = manifest.get("annotations") or {}
    snapshot_id = annotations.get(oci.SNAPSHOT_ID, "") if isinstance(annotations, dict) else ""
    if not _SNAPSHOT_ID.match(snapshot_id):
        raise _refuse("it is not a Spinup snapshot (no snapshot id)")
    count = annotations.get(oci.BASE_LAYERS, "")
    if not count.isdigit() or int(count) > len(layers):
        raise _refuse("it does not say which of its layers are its base image's")
    try:
        digest_hex(annotations.get(oci.BASE_ID, ""))
    except StoreError as exc:
        raise _refuse("it names no base image") from exc
    digest = "sha256:" + hashlib.sha256(raw).hexdigest()
    return Pulled(raw, digest, manifest, snapshot_id, config, layers, int(count))


def _check_layer(staging: Store, layer: Descriptor, what: str, base: bool) -> None:
    """Digest, exact uncompressed size and diff id, and safe entries, of one staged layer blob."""
    annotations = layer.annotations or {}
    declared = int(annotations[oci.UNCOMPRESSED_SIZE])
    with VerifiedReader(staging.blob_path(layer.digest), layer.digest, layer.size) as blob:
        reader = zstandard.ZstdDecompressor().stream_reader(blob, read_across_frames=True)  # type: ignore[arg-type]
        hashed = _Counted(reader, declared, what)
        try:
            with tarfile.open(fileobj=hashed, mode="r|") as tar:  # type: ignore[call-overload]
                check_members(tar, what, allow_devices=base)
            while hashed.read(_CHUNK):  # the tar's padding, to the end of the stream
                pass
        except (zstandard.ZstdError, tarfile.TarError, EOFError) as exc:
            raise _refuse(f"{what} is not a zstd tar ({exc})") from exc
        blob.read()
    if hashed.count != declared or "sha256:" + hashed.sha.hexdigest() != annotations[oci.DIFF_ID]:
        raise _refuse(f"{what} does not decompress to its declared size and diff id")


class _Counted:
    """A reader that hashes and counts what passes, and stops past ``limit`` bytes."""

    def __init__(self, reader: Any, limit: int, what: str) -> None:
        self._reader = reader
        self._limit = limit
        self._what = what
        self.count = 0
        self.sha = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data: bytes = self._reader.read(n if n >= 0 else _CHUNK)
        self.count += len(data)
        if self.count > self._limit:
            raise _refuse(f"{self._what} decompresses to more than the {self._limit} bytes it declares")
        self.sha.update(data)
        return data


def admit(store: Store, staging: Store, pulled: Pulled) -> Descriptor:
    """Check every staged blob the store lacks, then link them in and list the snapshot (blocking,
    under the store's writing lock). Raises :class:`RefusedImage` before writing anything if one fails."""
    missing = [d for d in (pulled.config, *pulled.layers) if not store.has_blob(d.digest)]
    for descriptor in missing:
        if not staging.has_blob(descriptor.digest):
            raise _refuse(f"blob {descriptor.digest} did not arrive")
    config_raw = _read(staging if pulled.config in missing else store, pulled.config)
    try:
        config = json.loads(config_raw)
        diff_ids = list(config["rootfs"]["diff_ids"])
    except (ValueError, KeyError, TypeError) as exc:
        raise _refuse("its config has no rootfs.diff_ids") from exc
    if diff_ids != [(d.annotations or {})[oci.DIFF_ID] for d in pulled.layers]:
        raise _refuse("its layers are not the ones its config names")
    for i, layer in enumerate(pulled.layers):
        if layer in missing:
            try:
                _check_layer(staging, layer, f"layer {i} ({layer.digest[:19]})", i < pulled.base_layers)
            except UnsafeLayer as exc:
                raise _refuse(str(exc)) from exc
    for descriptor in missing:
        store.adopt_blob(staging.blob_path(descriptor.digest), descriptor)
    base_id = pulled.manifest["annotations"][oci.BASE_ID]
    if find_base(store, base_id) is None:
        _list_base_of(store, base_id, config, pulled)
    writer = store.writer()
    try:
        writer.write(pulled.raw)
        descriptor = writer.commit(oci.MANIFEST_MEDIA_TYPE, {oci.REF_NAME: pulled.snapshot_id})
    except BaseException:
        writer.abort()
        raise
    store.add_manifest(descriptor)
    return descriptor


def _read(store: Store, descriptor: Descriptor) -> bytes:
    with VerifiedReader(store.blob_path(descriptor.digest), descriptor.digest, descriptor.size) as reader:
        data: bytes = reader.read()
    return data


def _list_base_of(store: Store, base_id: str, config: dict[str, Any], pulled: Pulled) -> None:
    """A base image entry for the base layers a snapshot brought: its config is the snapshot's, cut back."""
    base_layers, own = split_layers(pulled.manifest)
    base_config = dict(config)
    base_config["rootfs"] = {"type": "layers", "diff_ids": config["rootfs"]["diff_ids"][: len(base_layers)]}
    history = list(config.get("history") or [])
    base_config["history"] = history[: max(0, len(history) - len(own))]
    runtime = dict(config.get("config") or {})
    runtime["Labels"] = {k: v for k, v in (runtime.get("Labels") or {}).items() if k != SNAPSHOT_LABEL}
    base_config["config"] = runtime
    descriptor = store.put_json(base_config, oci.CONFIG_MEDIA_TYPE)
    list_base(store, base_id, descriptor, base_layers)
