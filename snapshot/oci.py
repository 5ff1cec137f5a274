"""The names the store format is made of: media types, whiteout names, annotation keys.

Every module that reads or writes the store takes these from here; ``FORMAT.md`` says what
each one means.
"""

from __future__ import annotations

import os

# Media types
OCI_INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+zstd"
FILE_INDEX_MEDIA_TYPE = "application/vnd.dev.spinup.index.v1+json+zstd"  # the per-machine file index

# OCI annotations
REF_NAME = "org.opencontainers.image.ref.name"  # on a manifest's entry in index.json: the snapshot id
CREATED = "org.opencontainers.image.created"

# Spinup's annotations on a manifest (the snapshot's metadata)
ANNOTATION_PREFIX = "dev.spinup."
SNAPSHOT_ID = ANNOTATION_PREFIX + "snapshot.id"
AGENT = ANNOTATION_PREFIX + "agent"
PARENT = ANNOTATION_PREFIX + "parent"
LABEL = ANNOTATION_PREFIX + "label"
BASE = ANNOTATION_PREFIX + "base"
BASE_ID = ANNOTATION_PREFIX + "base.id"
INDEX = ANNOTATION_PREFIX + "index"
PACKAGES = ANNOTATION_PREFIX + "packages"
BASE_LAYERS = ANNOTATION_PREFIX + "base.layers"  # how many of the manifest's layers are the base image's

# On a base image's manifest (listed in index.json beside the snapshots): what it is
KIND = ANNOTATION_PREFIX + "kind"
KIND_BASE = "base"

# Spinup's annotations on a layer descriptor
DIFF_ID = ANNOTATION_PREFIX + "diff_id"
UNCOMPRESSED_SIZE = ANNOTATION_PREFIX + "uncompressed.size"

# Whiteouts: how a layer hides what the layers below hold (OCI), and how overlayfs marks them
WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"

# Extended attributes a layer may carry: the agent's own (user.*), file capabilities and ACLs.
# Never trusted.* (overlayfs keeps its bookkeeping there).
XATTR_NAMESPACES = ("user.*", "security.capability", "system.posix_acl_access", "system.posix_acl_default")


def whiteout_name(path: str) -> str:
    """The layer member that hides ``path`` (a relative path) from the layers below."""
    parent, name = os.path.split(path)
    return f"{parent}/{WHITEOUT_PREFIX}{name}" if parent else f"{WHITEOUT_PREFIX}{name}"
