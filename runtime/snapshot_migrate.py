"""Migrating a store written before base images were stored: every snapshot made self-contained.

Each snapshot whose manifest lists only its own layers gets its base image stored (from Docker,
once per base image) and its manifest rewritten to list the base image's layers first, with a
complete config. The order keeps every step safe to interrupt: the new manifest is listed
beside the old, then the state database records it, then the old is unlisted. Running the
migration again finishes what an interrupted run began; snapshots already migrated are skipped.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from spinup.snapshot.oci import BASE_ID
from spinup.snapshot.snapshot_store import SnapshotStore

from .errors import SpinupError
from .snapshot_bases import BaseImages
from .snapshot_images import ProgressFn
from .state import StateDB

log = logging.getLogger(__name__)


@dataclass
class MigrateResult:
    """What a migration did."""

    migrated: list[str] = field(default_factory=list)  # snapshot ids rewritten to list their base layers
    current: int = 0  # snapshots that needed nothing
    skipped: dict[str, str] = field(default_factory=dict)  # snapshot id -> why it could not be migrated


async def migrate(
    db: StateDB, snapshot_store: SnapshotStore, bases: BaseImages, progress: ProgressFn | None = None
) -> MigrateResult:
    """Make every snapshot list its base image's layers (resumable; see the module docstring)."""
    result = MigrateResult()
    snapshots = db.list_snapshots()
    for number, snapshot in enumerate(snapshots, 1):
        if progress:
            progress(f"snapshot {number} of {len(snapshots)}: {snapshot.id}", float(number))
        if await asyncio.to_thread(snapshot_store.is_current, snapshot.manifest_digest):
            await asyncio.to_thread(_drop_others, snapshot_store, snapshot.id, snapshot.manifest_digest)
            result.current += 1
            continue
        base_id = (await asyncio.to_thread(snapshot_store.annotations, snapshot.manifest_digest)).get(BASE_ID, "")
        try:
            await bases.ensure(base_id, progress)
            upgraded = await asyncio.to_thread(_upgrade, snapshot_store, snapshot.id, snapshot.manifest_digest)
        except SpinupError as exc:
            log.warning("snapshot %s not migrated: %s", snapshot.id, exc)
            result.skipped[snapshot.id] = str(exc)
            continue
        if upgraded is not None:
            db.set_snapshot_manifest(snapshot.id, upgraded)
            await asyncio.to_thread(_drop_others, snapshot_store, snapshot.id, upgraded)
            result.migrated.append(snapshot.id)
    return result


def _upgrade(snapshot_store: SnapshotStore, snapshot_id: str, manifest_digest: str) -> str | None:
    with snapshot_store.writing():
        return snapshot_store.upgrade(snapshot_id, manifest_digest)


def _drop_others(snapshot_store: SnapshotStore, snapshot_id: str, manifest_digest: str) -> None:
    with snapshot_store.writing():
        snapshot_store.drop_others(snapshot_id, manifest_digest)
