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

# The keys of the base image's runtime config a snapshot's config copies (Labels gains Spinup's own).
COPIED_CONFIG_KEYS = (
    "Env", "Entrypoint", "Cmd", "WorkingDir", "User", "Labels", "ExposedPorts", "Volumes", "StopSignal",
)  # fmt: skip
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


def image_config(base: BaseImage, layers: list[Descriptor], labels: dict[str, str]) -> dict[str, Any]:
    """The image config of a snapshot: the base image's runtime config, its diff ids and the snapshot's."""
    base_config = dict(base.config)
    base_config["Labels"] = {**(base_config.get("Labels") or {}), **labels}
    diff_ids = list(base.diff_ids)
    diff_ids += [(d.annotations or {})[oci.DIFF_ID] for d in layers]
    history = [{"created_by": "spinup base image " + base.id}] * len(base.diff_ids)
    history += [{"created_by": "spinup snapshot layer"}] * len(layers)
    return {
        "architecture": base.architecture,
        "os": base.os,
        "config": {k: base_config[k] for k in COPIED_CONFIG_KEYS if base_config.get(k) is not None},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": history,
    }


def manifest_annotations(
    snapshot_id: str, meta: SnapshotMeta, parent_id: str | None, index_digest: str, created_at: datetime
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
