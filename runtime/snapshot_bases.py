"""Base images in the snapshot store: stored once per host, before the first snapshot on them.

Every snapshot lists its base image's layers, so the store must hold them before a snapshot on
that base is committed. The first time a base image is needed on a host, ``docker save`` of it
streams into the host-wide base cache (``Settings.base_cache``), its layers compressed as they
come; every store on the host then links them from there (hard links: no copy, no time). A
capture waits for this; an agent's creation starts it in the background (:meth:`soon`), so by
the first snapshot it is usually done. One process at a time stores a base (a file lock);
others wait for it and link the result.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging

from spinup.snapshot.base import StoredBase
from spinup.snapshot.snapshot_store import SnapshotStore

from .docker import DockerBackend
from .errors import NotFound
from .models import readable_size
from .snapshot_images import ProgressFn
from .tarstream import ThreadReader

log = logging.getLogger(__name__)


class BaseImages:
    """Stores each base image's layers in the snapshot store once, and finds them again."""

    def __init__(self, docker: DockerBackend, snapshot_store: SnapshotStore) -> None:
        self.docker = docker
        self.snapshot_store = snapshot_store
        self._storing: dict[str, asyncio.Task[StoredBase]] = {}
        self._background: set[asyncio.Task[None]] = set()

    def _find(self, image_id: str) -> StoredBase | None:
        with self.snapshot_store.writing():
            return self.snapshot_store.base(image_id)

    async def stored(self, image_id: str) -> StoredBase | None:
        """The base image if the store (or the base cache) holds it, else None."""
        return await asyncio.to_thread(self._find, image_id)

    async def ensure(self, image_id: str, progress: ProgressFn | None = None) -> StoredBase:
        """The stored base image ``image_id`` (a Docker image id), storing it from Docker first if needed."""
        found = await self.stored(image_id)
        if found is not None:
            return found
        task = self._storing.get(image_id)
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            task = asyncio.create_task(self._store(image_id, progress))
            self._storing[image_id] = task
        elif progress:
            progress(f"waiting for the layers of base image {image_id[:19]} to be stored", None)
        return await asyncio.shield(task)

    def soon(self, image_id: str) -> None:
        """Start storing the base image in the background (a failure is logged; the capture tries again)."""

        async def run() -> None:
            try:
                await self.ensure(image_id)
            except Exception:  # the next capture retries and reports it
                log.exception("storing base image %s in the background failed", image_id[:19])

        task = asyncio.create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def drain(self) -> None:
        """Wait for base images being stored to finish (a thread reading Docker's stream cannot be cut short)."""
        for task in list(self._background) + list(self._storing.values()):
            with contextlib.suppress(asyncio.CancelledError, Exception):  # reported where it was awaited
                await task

    async def _store(self, image_id: str, progress: ProgressFn | None) -> StoredBase:
        lock = self.snapshot_store.importing_base(image_id)
        await asyncio.to_thread(lock.__enter__)
        try:
            found = await self.stored(image_id)  # another process stored it while we waited
            if found is not None:
                return found
            if not await self.docker.image_exists(image_id):
                raise NotFound(
                    f"The base image {image_id[:19]} is neither in the snapshot store nor in Docker: load it into "
                    f"Docker again (docker load) so its layers can be stored."
                )
            size = (await self.docker.image_inspect(image_id)).size
            if progress:
                progress(f"storing base image {image_id[:19]} in the snapshot store (once per host)", None)
            return await self._import(image_id, size, progress)
        finally:
            await asyncio.to_thread(lock.__exit__, None, None, None)

    async def _import(self, image_id: str, size: int, progress: ProgressFn | None) -> StoredBase:
        loop = asyncio.get_running_loop()

        def on_bytes(done: int) -> None:
            if progress and done % (64 * 1024 * 1024) < 1024 * 1024:
                message = f"base image: {readable_size(done)} of about {readable_size(size)} stored"
                loop.call_soon_threadsafe(progress, message, float(done))

        async with self.docker.export_image(image_id) as content:
            reader = io.BufferedReader(ThreadReader(content, loop), buffer_size=1024 * 1024)
            stored = await asyncio.to_thread(self.snapshot_store.import_base, image_id, reader, on_bytes)
        log.info("stored base image %s: %d layers", image_id[:19], len(stored.layers))
        return stored
