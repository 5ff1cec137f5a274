"""Errors of the snapshot store and layer handling, and the root of every Spinup error.

    SpinupError              the root (re-exported by ``spinup.runtime``, whose errors derive from it)
    └── StoreError
        ├── StoreFull        the store's filesystem is out of space (or quota)
        ├── BlobMissing      a referenced blob is not in the store
        ├── BlobCorrupt      a blob's bytes do not match its digest
        └── UnsafeLayer      a layer tries to escape its root or create a device

The root lives here, in the lowest layer, so that ``snapshot`` (which imports nothing from
``runtime``) and ``runtime`` share one tree: a store error reaches a tool as it is.
``snapshot`` knows nothing of MCP or Docker.
"""

from __future__ import annotations


class SpinupError(Exception):
    """Base of every error Spinup raises on purpose; the message says what was wrong and what to do."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class StoreError(SpinupError):
    """Base of snapshot store errors; the message says what to do."""


class StoreFull(StoreError):
    """The store's filesystem ran out of space (or of the user's quota) during a write."""

    def __init__(self, root: str, free: int | None) -> None:
        left = f", {free} bytes free" if free is not None else ""
        super().__init__(
            f"The snapshot store's disk is full ({root}{left}): nothing was stored and no partial file was kept, "
            f"the previous snapshot is intact and the agent keeps running. Free space (spinup snapshot rm OLD_ID, "
            f"then spinup snapshot gc) or move SPINUP_HOME to a bigger disk, then take the snapshot again."
        )
        self.root = root


class BlobMissing(StoreError):
    """A referenced blob is absent."""

    def __init__(self, digest: str) -> None:
        super().__init__(
            f"Blob {digest} is missing from the snapshot store. Run `spinup snapshot verify` to see what "
            f"is affected; restore an earlier snapshot that does not use it."
        )
        self.digest = digest


class BlobCorrupt(StoreError):
    """A blob does not hash to its name."""

    def __init__(self, digest: str, detail: str) -> None:
        super().__init__(
            f"Blob {digest} is corrupt ({detail}). The snapshot using it cannot be restored; run "
            f"`spinup snapshot verify` and restore an earlier snapshot."
        )
        self.digest = digest


class UnsafeLayer(StoreError):
    """A layer entry would write outside the root, or is a device node."""
