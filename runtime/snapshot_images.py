"""Snapshots as Docker images: each snapshot's tag, loaded from the store when Docker lacks it.

A snapshot becomes a machine through the image ``spinup/snap:<id>``. When Docker does not have
it, the store's layers are streamed into ``docker load`` (zstd decompressed on the fly: Docker
20.10 rejects zstd layers) on top of the exact base image the snapshot was taken on, and the base
image's layers with them when Docker lacks that image.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

from spinup.snapshot.archive import save_stream
from spinup.snapshot.oci import BASE_ID
from spinup.snapshot.snapshot_store import SnapshotStore

from .docker import DockerBackend
from .errors import LimitReached
from .models import Snapshot, format_size, readable_size

SNAP_REPO = "spinup/snap"
ProgressFn = Callable[[str, float | None], None]  # a progress message, and how far (None: unknown)


def snapshot_tag(snapshot_id: str) -> str:
    """The Docker image tag of a snapshot."""
    return f"{SNAP_REPO}:{snapshot_id}"


async def _aiter(iterator: Iterator[bytes]) -> AsyncIterator[bytes]:
    """Drive a blocking iterator from a worker thread, one chunk per hop."""
    done = object()
    while True:
        chunk = await asyncio.to_thread(next, iterator, done)
        if chunk is done:
            return
        assert isinstance(chunk, bytes)
        yield chunk


class SnapshotImages:
    """The Docker images of snapshots: load, export, remove."""

    def __init__(self, docker: DockerBackend, snapshot_store: SnapshotStore) -> None:
        self.docker = docker
        self.snapshot_store = snapshot_store

    async def ensure(
        self, snapshot: Snapshot, progress: ProgressFn | None = None, disk: int | None = None, host: str | None = None
    ) -> str:
        """The Docker image of a snapshot, loading it from the store when Docker (the daemon at ``host``, default
        this process's) does not have it.

        ``disk`` (the disk limit of the agent it is for) refuses, before Docker sees a byte, a layer
        that would expand past it: Docker writes sparse files' holes out in full.
        """
        tag = snapshot_tag(snapshot.id)
        if await self.docker.image_exists(tag, host=host):
            return tag
        # A missing or corrupt blob raises a StoreError, itself a SpinupError that says what to do.
        annotations = await asyncio.to_thread(self.snapshot_store.annotations, snapshot.manifest_digest)
        # The snapshot builds on the exact base image it was taken on (by id, not by tag): when Docker
        # lacks it (removed, pruned, its tag rebuilt), its layers come from the store too.
        base_id = annotations.get(BASE_ID, "")
        with_base = not base_id or not await self.docker.image_exists(base_id, host=host)
        if with_base and progress:
            progress(f"Docker lacks base image {base_id[:19]}: loading it from the snapshot store", None)
        image = await asyncio.to_thread(
            self.snapshot_store.save_image, snapshot.manifest_digest, tag, snapshot.id, with_base
        )
        largest = max(image.expanded, default=0)
        if disk is not None and largest > disk:
            raise LimitReached(
                f"Snapshot {snapshot.id} has a layer whose files expand to {readable_size(largest)} once loaded "
                f"(sparse files count whole: Docker writes their holes out), past the disk limit of "
                f"{format_size(disk)} of the agent it is for. Nothing was loaded. Raise the limit "
                f"(CLI: spinup agent policy NAME --disk <size>, or fork with a larger disk), or use another snapshot."
            )
        if progress:
            progress(f"loading {len(image.base_layers) + len(image.layers)} layers of {snapshot.id} into Docker", None)
        await self.docker.load_image(_aiter(save_stream(self.snapshot_store.store, image)), host=host)
        return tag

    async def export(self, snapshot: Snapshot, destination: Path) -> int:
        """Write a ``docker save`` archive (base image included) loadable on any Docker host."""
        tag = await self.ensure(snapshot)
        return await self.docker.save_image(tag, destination)

    async def remove(self, snapshot_id: str) -> None:
        """Remove the snapshot's image from Docker, if it has it."""
        await self.docker.remove_image(snapshot_tag(snapshot_id))
