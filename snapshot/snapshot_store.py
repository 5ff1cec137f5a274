"""The snapshot store: snapshots as OCI images in a :class:`Store`, written and read in the store format.

:meth:`SnapshotStore.commit` turns a captured layer into a snapshot (file index blob, config,
manifest, then ``index.json``, in that order: see ``FORMAT.md``); the readers get back what a
snapshot recorded (its file index, package manifest, listing, and the image to load for a
restore). Writers hold :meth:`SnapshotStore.writing` for the whole capture, so gc never sees half
a snapshot. Fault points (``faults.py``) fire at the steps of a commit and inside the layer blob.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import IO, Any

from . import oci
from .archive import SaveImage
from .base import BaseMissing, StoredBase, adopt, base_lock_path, find_base, import_save
from .cache_gc import CacheGcResult, collect_cache
from .capture import LayerWriter
from .faults import BEFORE_HEAD, BEFORE_INDEX, BEFORE_MANIFEST, FaultHook, no_faults
from .image import (
    SNAPSHOT_LABEL,
    SnapshotMeta,
    image_config,
    image_manifest,
    manifest_annotations,
    new_snapshot_id,
    split_layers,
)
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

    def __init__(self, store: Store, level: int = 3, fault: FaultHook = no_faults, cache: Store | None = None) -> None:
        self.store = store
        self.level = level
        self.cache = cache  # the host-wide base cache: base images stored once per host, linked into stores
        self.fault = fault
        self.layers = LayerWriter(store, level=level, fault=fault)
        # The file index of each agent's latest capture, by its blob digest: saves reloading it.
        self._indexes: dict[str, DeltaBase] = {}
        self._bases: dict[str, StoredBase] = {}  # base images found in the store, by image id

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
        base = self.base(meta.base.id)
        if base is None:
            raise BaseMissing(
                f"The snapshot store holds no layers of the base image {meta.base.id[:19]} ({meta.base_ref}); "
                f"they are stored before the first snapshot on it. Take the snapshot again."
            )
        layers: list[Descriptor] = []
        if parent is not None and not new.squashed:
            layers = split_layers(self.store.get_json(parent.manifest_digest))[1]
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
        created_at = datetime.now(UTC)
        labels = {SNAPSHOT_LABEL: snapshot_id, **meta.labels}
        config = image_config(base.config_json(self.store), layers, labels, created_at)
        config_descriptor = self.store.put_json(config, oci.CONFIG_MEDIA_TYPE)
        annotations = manifest_annotations(
            snapshot_id, meta, parent.id if parent else None, index_descriptor.digest, created_at, len(base.layers)
        )
        manifest = image_manifest(config_descriptor, [*base.layers, *layers], annotations)
        manifest_descriptor = self.store.put_json(manifest, oci.MANIFEST_MEDIA_TYPE, {oci.REF_NAME: snapshot_id})
        self.fault(BEFORE_INDEX)
        self.store.add_manifest(manifest_descriptor)
        self.fault(BEFORE_HEAD)
        return Committed(snapshot_id, manifest_descriptor.digest, created_at, len(layers))

    def base(self, image_id: str) -> StoredBase | None:
        """Blocking, under :meth:`writing`: the base image ``image_id`` if the store holds it whole, else
        linked in from the base cache when that has it, else None (its blobs are checked each time)."""
        known = self._bases.get(image_id)
        whole = known is not None and all(
            self.store.has_blob(d.digest) for d in (known.manifest, known.config, *known.layers)
        )
        if known is not None and whole:
            return known
        found = find_base(self.store, image_id)
        if found is None and self.cache is not None:
            found = adopt(self.cache, self.store, image_id)
        if found is not None:
            self._bases[image_id] = found
        return found

    @contextlib.contextmanager
    def importing_base(self, image_id: str) -> Iterator[None]:
        """Blocking: hold the lock that lets one process at a time store the base image ``image_id``."""
        path = base_lock_path(self.cache or self.store, image_id)
        path.parent.mkdir(exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def import_base(
        self, image_id: str, stream: IO[bytes], on_bytes: Callable[[int], None] | None = None
    ) -> StoredBase:
        """Blocking, under :meth:`importing_base`: store the base image from its ``docker save`` stream,
        into the base cache (then linked into the store) or, without a cache, into the store."""
        if self.cache is not None:
            import_save(self.cache, image_id, stream, self.level, on_bytes)
        else:
            with self.writing():
                import_save(self.store, image_id, stream, self.level, on_bytes)
        with self.writing():
            found = self.base(image_id)
        if found is None:
            raise BaseMissing(
                f"The base image {image_id[:19]} was stored but cannot be read back; run `spinup snapshot verify`."
            )
        return found

    def upgrade(self, snapshot_id: str, manifest_digest: str) -> str | None:
        """Blocking, under :meth:`writing`: a snapshot written before base images were stored, rewritten
        to list its base image's layers (which the store must hold) and a complete config.

        The new manifest is listed beside the old one; once the caller has recorded its digest,
        :meth:`drop_others` unlists the old. Returns None when the snapshot is up to date already.
        Deterministic: an interrupted upgrade run again writes the same manifest.
        """
        manifest = self.store.get_json(manifest_digest)
        annotations: dict[str, str] = dict(manifest.get("annotations") or {})
        if oci.BASE_LAYERS in annotations:
            return None
        base_id = annotations.get(oci.BASE_ID, "")
        base = self.base(base_id) if base_id else None
        if base is None:
            raise BaseMissing(f"Snapshot {snapshot_id}: the store holds no layers of its base image {base_id[:19]}.")
        layers = split_layers(manifest)[1]
        old_config = self.store.get_json(Descriptor.from_json(manifest["config"]))
        labels = dict((old_config.get("config") or {}).get("Labels") or {})
        created = datetime.fromisoformat(annotations[oci.CREATED]) if oci.CREATED in annotations else datetime.now(UTC)
        config = image_config(base.config_json(self.store), layers, labels, created)
        config_descriptor = self.store.put_json(config, oci.CONFIG_MEDIA_TYPE)
        annotations[oci.BASE_LAYERS] = str(len(base.layers))
        upgraded = image_manifest(config_descriptor, [*base.layers, *layers], annotations)
        descriptor = self.store.put_json(upgraded, oci.MANIFEST_MEDIA_TYPE, {oci.REF_NAME: snapshot_id})
        self.store.add_manifest(descriptor)
        return descriptor.digest

    def drop_others(self, snapshot_id: str, manifest_digest: str) -> None:
        """Unlist every manifest named ``snapshot_id`` but ``manifest_digest`` (the end of an upgrade)."""
        for descriptor in self.store.manifests():
            if (descriptor.annotations or {}).get(oci.REF_NAME) == snapshot_id and descriptor.digest != manifest_digest:
                self.store.remove_manifest_digest(descriptor.digest)

    def is_current(self, manifest_digest: str) -> bool:
        """Whether a snapshot's manifest lists its base image's layers (else :meth:`upgrade` rewrites it)."""
        return oci.BASE_LAYERS in self.annotations(manifest_digest)

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

    def save_image(self, manifest_digest: str, tag: str, name: str, with_base: bool = False) -> SaveImage:
        """Blocking: what ``docker load`` gets to make the snapshot ``name`` an image tagged ``tag``.

        ``with_base`` includes the base image's layers (for a daemon that lacks the base image).
        The snapshot's own layers are verified and unsafe entries refused before Docker sees a byte;
        every layer's digest is checked as it streams. The result says how many bytes each of the
        snapshot's own layers expands to, for the caller to weigh before loading.
        """
        manifest = self.store.get_json(manifest_digest)
        config_descriptor = Descriptor.from_json(manifest["config"])
        with self.store.open_blob(config_descriptor) as reader:
            config: bytes = reader.read()
        base_layers, layers = split_layers(manifest)
        base_id = manifest.get("annotations", {}).get(oci.BASE_ID, "")
        if with_base and not base_layers:
            stored = self.base(base_id) if base_id else None
            if stored is None:
                raise BaseMissing(
                    f"Snapshot {name} was taken before base images were stored in the snapshot store, and the store "
                    f"holds no layers of its base image {base_id[:19]}. Load that image into Docker again "
                    f"(docker load), then run `spinup snapshot migrate` so it is never needed again."
                )
            base_layers = list(stored.layers)
        # A base image's layers were checked on their way in (they are Docker's own ``docker save``, or passed
        # ``transfer.admit``), and their digests are checked again as they stream: no second full read here.
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
            base_id=base_id,
            base_layers=base_layers if with_base else [],
            expanded=expanded,
        )

    # maintenance

    def verify(self, known_manifests: dict[str, str]) -> VerifyReport:
        """Blocking: re-hash every blob and check every reference (snapshot id -> manifest digest known)."""
        return verify(self.store, known_manifests)

    def gc(self, known_manifests: Callable[[], dict[str, str]]) -> GcResult:
        """Blocking: relist recorded snapshots index.json lost; remove unrecorded manifests, unreferenced blobs
        and interrupted writes (``known_manifests``: snapshot id -> manifest digest, from the database)."""
        return gc(self.store, known_manifests)

    def collect_cache(self, grace: float) -> CacheGcResult | None:
        """Blocking: drop from the host-wide base cache what no store links to (None: no cache)."""
        if self.cache is None or not (self.cache.root / "index.json").exists():
            return None
        return collect_cache(self.cache, grace)
