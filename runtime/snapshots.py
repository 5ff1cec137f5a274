"""Snapshots of agents: the runtime's one surface for capture, loading, listing, diff and upkeep.

A snapshot is captured from the machine's overlay upper directory (local daemon), or through
the Docker API when that is not readable, into the zstd OCI store (``spinup.snapshot``, which
owns the store format). The layers of a snapshot are the layers of the snapshot its machine
started from, plus what the machine changed since. The work is done in three places:

- ``snapshot_capture``: the capture flow (pause, walk and store, record the head);
- ``snapshot_images``: a snapshot as a Docker image, loaded from the store when Docker lacks it;
- ``spinup.snapshot.snapshot_store``: the store format, read and written.

This module keeps the state database's view (get, list, delete) and the store's upkeep.
"""

from __future__ import annotations

import asyncio
import builtins
from dataclasses import replace
from pathlib import Path

from spinup.snapshot.listing import Diff, Meta, diff_trees, live_tree
from spinup.snapshot.maintenance import GcResult, VerifyReport
from spinup.snapshot.oci import MANIFEST_MEDIA_TYPE
from spinup.snapshot.oci_archive import write_archive
from spinup.snapshot.snapshot_store import SnapshotStore
from spinup.snapshot.store import Descriptor, Store

from .config import Settings
from .docker import DockerBackend, MachineInfo
from .errors import Conflict, ForeignSnapshot, InvalidInput, NotFound, SpinupError
from .models import Agent, PackageEntry, Snapshot
from .snapshot_bases import BaseImages
from .snapshot_capture import CaptureResult, SnapshotCapture, crash_hook
from .snapshot_images import ProgressFn, SnapshotImages, snapshot_tag
from .snapshot_migrate import MigrateResult, migrate
from .snapshot_transfer import SnapshotTransfer
from .state import StateDB

__all__ = ["CaptureResult", "MigrateResult", "ProgressFn", "SnapshotService", "snapshot_tag"]


class SnapshotService:
    """Captures, loads, lists, diffs and maintains snapshots."""

    def __init__(self, settings: Settings, db: StateDB, docker: DockerBackend) -> None:
        self.settings = settings
        self.db = db
        self.docker = docker
        self.store = Store(settings.home / "store")
        cache = Store(settings.base_cache) if settings.base_cache is not None else None
        self.snapshot_store = SnapshotStore(
            self.store, level=settings.zstd_level, fault=crash_hook(settings.crash_at), cache=cache
        )
        self.bases = BaseImages(docker, self.snapshot_store)
        self.capturer = SnapshotCapture(settings, db, docker, self.snapshot_store, self.bases)
        self._images = SnapshotImages(docker, self.snapshot_store)
        self.transfer = SnapshotTransfer(settings, self.snapshot_store)

    # materialize

    async def ensure_image(
        self, snapshot: Snapshot, progress: ProgressFn | None = None, disk: int | None = None, host: str | None = None
    ) -> str:
        """The Docker image of a snapshot, loading it from the store when Docker (the daemon at ``host``, default
        this process's) does not have it (no layer that expands past ``disk``, the disk limit of the agent it
        is for)."""
        return await self._images.ensure(snapshot, progress, disk, host)

    async def packages(self, snapshot: Snapshot) -> builtins.list[PackageEntry]:
        """The package manifest recorded in the snapshot (empty for snapshots that predate it)."""
        recorded = await asyncio.to_thread(self.snapshot_store.packages, snapshot.manifest_digest)
        return [PackageEntry.model_validate(item) for item in recorded]

    async def export(self, snapshot: Snapshot, destination: Path, format: str = "docker") -> int:
        """Write the snapshot, base image included, as a ``docker save`` archive (``docker``) loadable on any
        Docker host, or as an OCI archive (``oci``) any OCI tool reads; returns its size in bytes."""
        if format == "oci":
            digest = snapshot.manifest_digest
            manifest = Descriptor(MANIFEST_MEDIA_TYPE, digest, self.store.blob_size(digest))
            return await asyncio.to_thread(write_archive, self.store, manifest, snapshot.id, destination)
        if format != "docker":
            raise InvalidInput(f"Unknown export format {format!r}: use 'docker' (docker load) or 'oci' (OCI archive).")
        return await self._images.export(snapshot, destination)

    async def migrate(self, progress: ProgressFn | None = None) -> MigrateResult:
        """Make every snapshot of a store written before base images were stored list its base layers."""
        return await migrate(self.db, self.snapshot_store, self.bases, progress)

    # records

    def get(self, snapshot_id: str) -> Snapshot:
        """The snapshot with this id; a clear error if there is none."""
        if not snapshot_id or not isinstance(snapshot_id, str):
            raise InvalidInput("Give a snapshot id such as s-1a2b3c4d5e6f (see snapshot_list).")
        snapshot = self.db.get_snapshot(snapshot_id)
        if snapshot is None:
            raise NotFound(f"No snapshot {snapshot_id}. List snapshots with snapshot_list.")
        return snapshot

    def origins(self, agent: Agent) -> set[str]:
        """Snapshots of other agents that ``agent`` was made from: its fork source (its own snapshots' foreign
        parents, and its head when that is not its own)."""
        starts = {s.parent_id for s in self.db.list_snapshots(agent.id)} | {agent.head_snapshot}
        found = (self.db.get_snapshot(s) for s in starts if s is not None)
        return {s.id for s in found if s is not None and s.agent_id != agent.id}

    def check_of(self, agent: Agent, snapshot_id: str, *, own_only: bool = False) -> Snapshot:
        """The snapshot, if it is ``agent``'s own or (unless ``own_only``) the one it was forked from."""
        snapshot = self.get(snapshot_id)
        if snapshot.agent_id == agent.id or (not own_only and snapshot.id in self.origins(agent)):
            return snapshot
        owner = next((a.name for a in self.db.list_agents() if a.id == snapshot.agent_id), None)
        whose = f"agent '{owner}'" if owner else "an agent since removed"
        raise ForeignSnapshot(
            f"Snapshot {snapshot_id} belongs to {whose}, not to '{agent.name}'. An agent uses only its own "
            f"snapshots (see snapshot_list for '{agent.name}')"
            + ("" if own_only else " and the one it was forked from")
            + f". To start from {snapshot_id}, make a new agent with snapshot_fork (CLI: spinup snapshot fork)."
        )

    def list(self, agent: Agent | None = None) -> builtins.list[Snapshot]:
        """Snapshots (of one agent, or all), oldest first."""
        return self.db.list_snapshots(agent.id if agent else None)

    async def delete(self, snapshot_id: str) -> Snapshot:
        """Delete a snapshot nothing builds on; its blobs go at the next gc."""
        snapshot = self.get(snapshot_id)
        children = self.db.snapshot_children(snapshot_id)
        if children:
            raise Conflict(
                f"Snapshot {snapshot_id} is the parent of {', '.join(children)}; delete those first "
                f"(their layers build on it)."
            )
        heads = self.db.agents_with_head(snapshot_id)
        if heads:
            raise Conflict(
                f"Snapshot {snapshot_id} is the head of agent(s) {', '.join(heads)}; take a newer snapshot or "
                f"restore another one first."
            )
        await asyncio.to_thread(self.snapshot_store.remove, snapshot_id)
        self.db.delete_snapshot(snapshot_id)
        await self._images.remove(snapshot_id)
        return snapshot

    async def prune_orphans(self, agent_id: str) -> int:
        """Delete a removed agent's snapshots that nothing builds on (newest first), then collect garbage."""
        removed = 0
        for snapshot in reversed(self.db.list_snapshots(agent_id)):
            if self.db.snapshot_children(snapshot.id) or self.db.agents_with_head(snapshot.id):
                continue  # a fork builds on it: keep it and, through it, its ancestors
            await self.delete(snapshot.id)
            removed += 1
        if removed:
            await self.gc()
        return removed

    # listings and diffs

    async def tree(self, snapshot: Snapshot) -> dict[str, Meta]:
        """What the snapshot's layers hold, by path."""
        return await asyncio.to_thread(self.snapshot_store.tree, snapshot.manifest_digest)

    async def live_tree(self, agent: Agent, machine: MachineInfo) -> dict[str, Meta]:
        """The head's listing with the machine's unsnapshotted changes applied."""
        head = self.get(agent.head_snapshot) if agent.head_snapshot else None
        tree = await self.tree(head) if head is not None else {}
        upper = self.capturer.readable_upper(machine)
        if upper is None:
            raise SpinupError(
                "Diffing against the live machine needs its overlay upper directory (a local overlay2 daemon, "
                "Spinup running as root). Take a snapshot and diff two snapshots instead."
            )
        previous = await self.capturer.head_index(head, machine)
        try:
            return await asyncio.to_thread(live_tree, tree, upper, previous)
        except OSError as exc:  # the running machine moved a directory while it was walked
            raise SpinupError(
                f"The machine changed its files while they were listed ({exc.strerror or exc}); try the diff again, "
                f"or take a snapshot (it freezes the machine while reading) and diff two snapshots."
            ) from exc

    async def diff(self, before: dict[str, Meta], after: dict[str, Meta]) -> Diff:
        """Added, changed and removed paths between two listings."""
        return diff_trees(before, after)

    # upkeep

    async def verify(self) -> VerifyReport:
        """Re-hash every blob and check every snapshot's references."""
        known = {s.id: s.manifest_digest for s in self.db.list_snapshots()}
        return await asyncio.to_thread(self.snapshot_store.verify, known)

    async def gc(self) -> GcResult:
        """Remove unreferenced blobs and interrupted writes (safe while snapshots are taken), then the base images
        of the host-wide base cache no store has linked to for ``Settings.base_cache_grace`` seconds."""
        result = await asyncio.to_thread(
            self.snapshot_store.gc, lambda: {s.id: s.manifest_digest for s in self.db.list_snapshots()}
        )
        cache = await asyncio.to_thread(self.snapshot_store.collect_cache, self.settings.base_cache_grace)
        if cache is None:
            return result
        return replace(result, cache_bases_removed=cache.bases_removed, cache_bytes_freed=cache.bytes_freed)
