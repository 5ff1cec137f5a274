"""The OCI documents of one snapshot: its image config, its manifest and the manifest's annotations.

Pure functions over plain data; :class:`~spinup.snapshot.snapshot_store.SnapshotStore` stores
what they build. ``FORMAT.md`` describes the result.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from . import oci
from .store import Descriptor

# What a base image's config says of the container it was built in, and nothing of a snapshot.
DROPPED_CONFIG_KEYS = ("container", "container_config", "id", "parent")
SNAPSHOT_LABEL = "spinup.snapshot"  # the config label naming the snapshot id


@dataclass(frozen=True)
class BaseImage:
    """The image an agent's snapshots build on, as its daemon describes it."""

    id: str  # the image id, sha256:...
    architecture: str = "amd64"
    os: str = "linux"
    config: dict[str, Any] = field(default_factory=dict)  # its runtime config (Env, Cmd, Labels, ...)
    diff_ids: tuple[str, ...] = ()  # its layers' diff ids, bottom first


@dataclass(frozen=True)
class SnapshotMeta:
    """What a snapshot records about itself beside its layers."""

    agent_id: str
    label: str
    base_ref: str  # the base image as the agent names it (a tag)
    base: BaseImage
    packages: list[dict[str, Any]] = field(default_factory=list)  # the package manifest, as JSON-able data
    labels: dict[str, str] = field(default_factory=dict)  # extra labels for the image config


def new_snapshot_id() -> str:
    """A fresh snapshot id: ``s-`` and 12 hex digits."""
    return "s-" + secrets.token_hex(6)


def image_config(
    base_config: dict[str, Any], layers: list[Descriptor], labels: dict[str, str], created_at: datetime
) -> dict[str, Any]:
    """The image config of a snapshot: the base image's config, whole, with the snapshot's layers on top.

    ``rootfs.diff_ids`` and ``history`` go on with one entry per snapshot layer; the runtime config
    keeps every key the base sets, its ``Labels`` gaining ``labels``.
    """
    config = {k: v for k, v in base_config.items() if k not in DROPPED_CONFIG_KEYS}
    runtime = dict(config.get("config") or {})
    runtime["Labels"] = {**(runtime.get("Labels") or {}), **labels}
    created = created_at.isoformat()
    rootfs = dict(config.get("rootfs") or {"type": "layers"})
    rootfs["diff_ids"] = list(rootfs.get("diff_ids") or []) + [(d.annotations or {})[oci.DIFF_ID] for d in layers]
    history = list(config.get("history") or [])
    history += [{"created": created, "created_by": "spinup snapshot layer"}] * len(layers)
    return {**config, "created": created, "config": runtime, "rootfs": rootfs, "history": history}


def manifest_annotations(
    snapshot_id: str,
    meta: SnapshotMeta,
    parent_id: str | None,
    index_digest: str,
    created_at: datetime,
    base_layers: int,
) -> dict[str, str]:
    """The snapshot's metadata as the manifest carries it."""
    return {
        oci.SNAPSHOT_ID: snapshot_id,
        oci.AGENT: meta.agent_id,
        oci.PARENT: parent_id or "",
        oci.LABEL: meta.label,
        oci.BASE: meta.base_ref,
        oci.BASE_ID: meta.base.id,
        oci.INDEX: index_digest,
        oci.BASE_LAYERS: str(base_layers),
        # The package manifest at capture time: a restore or fork gets the agent's manifest from here.
        oci.PACKAGES: json.dumps(meta.packages, separators=(",", ":")),
        oci.CREATED: created_at.isoformat(),
    }


def image_manifest(config: Descriptor, layers: list[Descriptor], annotations: dict[str, str]) -> dict[str, Any]:
    """An OCI image manifest."""
    return {
        "schemaVersion": 2,
        "mediaType": oci.MANIFEST_MEDIA_TYPE,
        "config": config.to_json(),
        "layers": [d.to_json() for d in layers],
        "annotations": annotations,
    }


def split_layers(manifest: dict[str, Any]) -> tuple[list[Descriptor], list[Descriptor]]:
    """A snapshot manifest's layers: the base image's, then the snapshot's own.

    A manifest written before base images were stored has no ``dev.spinup.base.layers``: all its
    layers are its own.
    """
    layers = [Descriptor.from_json(d) for d in manifest.get("layers", [])]
    count = int((manifest.get("annotations") or {}).get(oci.BASE_LAYERS) or 0)
    return layers[:count], layers[count:]
