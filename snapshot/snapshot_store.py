"""The snapshot store: snapshots as OCI images in a :class:`Store`, written and read in the store format.

:meth:`SnapshotStore.commit` turns a captured layer into a snapshot (file index blob, config,
manifest, then ``index.json``, in that order: see ``FORMAT.md``); the readers get back what a
snapshot recorded (its file index, package manifest, listing, and the image to load for a
restore). Writers hold :meth:`SnapshotStore.writing` for the whole capture, so gc never sees half
a snapshot. Fault points (``faults.py``) fire at the steps of a commit and inside the layer blob.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from . import oci
from .archive import SaveImage
from .capture import LayerWriter
from .faults import BEFORE_HEAD, BEFORE_INDEX, BEFORE_MANIFEST, FaultHook, no_faults
from .image import SNAPSHOT_LABEL, SnapshotMeta, image_config, image_manifest, manifest_annotations, new_snapshot_id
from .index import MAX_DELTA_DEPTH, Index
from .listing import Meta, layer_members, snapshot_tree
from .maintenance import GcResult, VerifyReport, gc, store_lock, verify
from .safety import check_members
from .sink import LayerResult
from .store import Descriptor, Store

DeltaBase = tuple[str, Index]  # a stored file index (its blob digest) another is a delta over


@dataclass(frozen=True)
class NewLayer:
    """What a capture hands to :meth:`SnapshotStore.commit`."""

    index: Index  # the machine's file index at the capture
    layer: LayerResult | None  # None when nothing changed and no layer was written
    squashed: bool = False  # the layer holds everything over the base image: it replaces the parent's layers
    delta_base: DeltaBase | None = None  # the index is stored as a delta over this one
    serialized_index: bytes | None = None  # ``index.dumps(delta_base)``, when made while tar ran


@dataclass(frozen=True)
class Parent:
    """The snapshot a new one follows."""

    id: str
    manifest_digest: str


@dataclass(frozen=True)
class Committed:
    """A snapshot made durable and listed in ``index.json``."""

    snapshot_id: str
    manifest_digest: str
    created_at: datetime
    layers: int  # Spinup layers on top of the base image


class SnapshotStore:
    """Snapshots in an OCI image layout: commit, read back, verify, collect garbage."""

    def __init__(self, store: Store, level: int = 3, fault: FaultHook = no_faults) -> None:
        self.store = store
        self.fault = fault
        self.layers = LayerWriter(store, level=level, fault=fault)
        # The file index of each agent's latest capture, by its blob digest: saves reloading it.
        self._indexes: dict[str, DeltaBase] = {}

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Hold the store lock shared while writing a snapshot, so gc never sees half of it."""
        with store_lock(self.store, exclusive=False):
            yield

    # writing

    def commit(self, new: NewLayer, parent: Parent | None, meta: SnapshotMeta) -> Committed:
        """Blocking, under :meth:`writing`: the file index blob, config, manifest, then ``index.json``.

        The snapshot's layers are the parent's and the new one (only the new one when it is
        ``squashed``); without a new layer they are the parent's. The caller moves the head after.
        """
        layers: list[Descriptor] = []
        if parent is not None and not new.squashed:
            layers = [Descriptor.from_json(d) for d in self.store.get_json(parent.manifest_digest).get("layers", [])]
        if new.layer is not None:
            layers.append(
                Descriptor(
                    new.layer.descriptor.media_type,
                    new.layer.descriptor.digest,
                    new.layer.descriptor.size,
                    {oci.DIFF_ID: new.layer.diff_id, oci.UNCOMPRESSED_SIZE: str(new.layer.uncompressed_size)},
                )
            )
        # A capture of the same machine as the head stores its index as a delta over the head's.
        delta_base = new.delta_base
        serialized_index = new.serialized_index if new.serialized_index is not None else new.index.dumps(delta_base)
        self.fault(BEFORE_MANIFEST)
        index_blob = self.store.writer()
        index_blob.write(serialized_index)
        index_descriptor = index_blob.commit(oci.FILE_INDEX_MEDIA_TYPE)
        stored_depth = 0 if delta_base is None or delta_base[1].depth >= MAX_DELTA_DEPTH else delta_base[1].depth + 1
        self._indexes[meta.agent_id] = (index_descriptor.digest, replace(new.index, depth=stored_depth))
        snapshot_id = new_snapshot_id()
        config = image_config(meta.base, layers, {SNAPSHOT_LABEL: snapshot_id, **meta.labels})
        config_descriptor = self.store.put_json(config, oci.CONFIG_MEDIA_TYPE)
        created_at = datetime.now(UTC)
        annotations = manifest_annotations(
            snapshot_id, meta, parent.id if parent else None, index_descriptor.digest, created_at
        )
        manifest = image_manifest(config_descriptor, layers, annotations)
        manifest_descriptor = self.store.put_json(manifest, oci.MANIFEST_MEDIA_TYPE, {oci.REF_NAME: snapshot_id})
        self.fault(BEFORE_INDEX)
        self.store.add_manifest(manifest_descriptor)
        self.fault(BEFORE_HEAD)
        return Committed(snapshot_id, manifest_descriptor.digest, created_at, len(layers))

    def remove(self, snapshot_id: str) -> None:
        """Unlist a snapshot from ``index.json``; its blobs go at the next gc."""
        with self.writing():
            self.store.remove_manifest(snapshot_id)

    # reading

    def annotations(self, manifest_digest: str) -> dict[str, str]:
        """The snapshot metadata its manifest carries (``dev.spinup.*``; see FORMAT.md)."""
        annotations: dict[str, str] = self.store.get_json(manifest_digest).get("annotations", {})
        return annotations

    def index_of(self, manifest_digest: str, agent_id: str) -> Index | None:
        """Blocking: the file index a snapshot of ``agent_id`` recorded (None for snapshots without one)."""
        digest = self.annotations(manifest_digest).get(oci.INDEX)
        if not digest:
            return None
        cached = self._indexes.get(agent_id)
        if cached is not None and cached[0] == digest:
            return cached[1]

        def load(blob_digest: str) -> Index:
            with self.store.open_blob(blob_digest) as reader:
                return Index.loads(reader.read(), resolve=load)

        index = load(digest)
        self._indexes[agent_id] = (digest, index)
        return index

    def latest_index(self, agent_id: str) -> DeltaBase | None:
        """The stored file index last committed or read for ``agent_id``, with its blob digest."""
        return self._indexes.get(agent_id)

    def packages(self, manifest_digest: str) -> list[dict[str, Any]]:
        """Blocking: the package manifest a snapshot recorded (empty for snapshots that predate it)."""
        recorded = self.annotations(manifest_digest).get(oci.PACKAGES)
        packages: list[dict[str, Any]] = json.loads(recorded) if recorded else []
        return packages

    def tree(self, manifest_digest: str) -> dict[str, Meta]:
        """Blocking: what the snapshot's layers hold, by path."""
        return snapshot_tree(self.store, manifest_digest)

    def save_image(self, manifest_digest: str, tag: str, name: str) -> SaveImage:
        """Blocking: what ``docker load`` gets to make the snapshot ``name`` an image tagged ``tag``.

        Every layer's digest is verified and unsafe entries refused before Docker sees a byte; the
        result says how many bytes each layer expands to, for the caller to weigh before loading.
        """
        manifest = self.store.get_json(manifest_digest)
        config_descriptor = Descriptor.from_json(manifest["config"])
        with self.store.open_blob(config_descriptor) as reader:
            config: bytes = reader.read()
        layers = [Descriptor.from_json(d) for d in manifest["layers"]]
        expanded = tuple(
            check_members(layer_members(self.store, layer), f"layer {layer.digest[:19]} of {name}") for layer in layers
        )
        diff_ids = json.loads(config)["rootfs"]["diff_ids"]
        return SaveImage(
            tag=tag,
            config=config,
            config_digest=config_descriptor.digest,
            base_diff_ids=diff_ids[: len(diff_ids) - len(layers)],
            layers=layers,
            base_id=manifest.get("annotations", {}).get(oci.BASE_ID, ""),
            expanded=expanded,
        )

    # maintenance

    def verify(self, known_manifests: dict[str, str]) -> VerifyReport:
        """Blocking: re-hash every blob and check every reference (snapshot id -> manifest digest known)."""
        return verify(self.store, known_manifests)

    def gc(self, known_snapshots: Callable[[], set[str]]) -> GcResult:
        """Blocking: remove unlisted manifests, unreferenced blobs and interrupted writes."""
        return gc(self.store, known_snapshots)
