"""Snapshots to and from OCI registries: push one as it is stored, fetch one into the store.

A snapshot in the store is already a complete OCI image (its base image's layers included), so
a push hands skopeo the store itself. A fetch reads the manifest first and refuses anything not
a Spinup snapshot, links the blobs the store already has into a staging layout (so skopeo does
not fetch them), lets skopeo fetch the rest, and admits the result into the store only once all
of it checks out (``spinup.snapshot.transfer``).
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime

from spinup.snapshot import oci
from spinup.snapshot.snapshot_store import SnapshotStore
from spinup.snapshot.store import Descriptor, Store
from spinup.snapshot.transfer import Pulled, admit, check_manifest

from .config import Settings
from .errors import SpinupError
from .models import Snapshot
from .registry import ImageRef, Skopeo
from .snapshot_images import ProgressFn


@dataclass(frozen=True)
class Pushed:
    """A snapshot in a registry."""

    snapshot_id: str
    ref: str
    digest: str  # the manifest's digest: ``ref``'s repository @ this names it for good


def pulled_record(pulled: Pulled, manifest: Descriptor, ref: str) -> Snapshot:
    """The state database's record of a snapshot admitted from a registry, from its annotations."""
    annotations = pulled.manifest["annotations"]
    own = pulled.layers[pulled.base_layers :]
    created = annotations.get(oci.CREATED)
    return Snapshot(
        id=pulled.snapshot_id,
        agent_id="",
        parent_id=None,
        label=annotations.get(oci.LABEL, ""),
        created_at=datetime.fromisoformat(created) if created else datetime.now(UTC),
        manifest_digest=manifest.digest,
        machine_id="",
        base_image=annotations.get(oci.BASE, "") or ref,
        layers=len(own),
        layer_size=own[-1].size if own else 0,
        layer_uncompressed=int((own[-1].annotations or {}).get(oci.UNCOMPRESSED_SIZE, 0)) if own else 0,
        paths_changed=0,
    )


class SnapshotTransfer:
    """Pushes and fetches snapshots through skopeo."""

    def __init__(self, settings: Settings, snapshot_store: SnapshotStore, skopeo: Skopeo | None = None) -> None:
        self.settings = settings
        self.snapshot_store = snapshot_store
        self.skopeo = skopeo or Skopeo()

    async def push(
        self, snapshot: Snapshot, ref: ImageRef, credential: str | None = None, progress: ProgressFn | None = None
    ) -> Pushed:
        """Push the snapshot (base image's layers included) to ``ref``; blobs the registry has are not sent."""
        if not await asyncio.to_thread(self.snapshot_store.is_current, snapshot.manifest_digest):
            raise SpinupError(
                f"Snapshot {snapshot.id} was taken before base images were stored: run `spinup snapshot migrate` "
                f"first, so that it carries its base image's layers."
            )
        if progress:
            progress(f"pushing {snapshot.id} to {ref}", None)
        digest = await self.skopeo.push(self.snapshot_store.store.root, snapshot.id, ref, credential)
        if digest != snapshot.manifest_digest:
            raise SpinupError(f"The registry stored {snapshot.id} as {digest}, not as {snapshot.manifest_digest}.")
        return Pushed(snapshot.id, str(ref), digest)

    async def fetch(self, ref: ImageRef, credential: str | None = None, progress: ProgressFn | None = None) -> Snapshot:
        """Fetch the snapshot ``ref`` names into the store (checked whole first); returns its record, for an
        agent to own (``agent_id`` is left empty, ``parent_id`` None: its ancestors stay in the registry)."""
        pulled = check_manifest(await self.skopeo.manifest(ref, credential))
        store = self.snapshot_store.store
        staging = Store(self.settings.home / "pulls" / secrets.token_hex(6))
        try:
            have = [d for d in (pulled.config, *pulled.layers) if store.has_blob(d.digest)]
            await asyncio.to_thread(self._seed, staging, have)
            if progress:
                progress(f"pulling {ref}: {len(pulled.layers) + 1 - len(have)} blobs the store lacks", None)
            await self.skopeo.pull(ref, pulled.digest, staging.root, "pulled", credential)
            descriptor = await asyncio.to_thread(self._admit, staging, pulled)
        finally:
            await asyncio.to_thread(shutil.rmtree, staging.root, True)
        return pulled_record(pulled, descriptor, str(ref))

    def _seed(self, staging: Store, have: list[Descriptor]) -> None:
        for descriptor in have:
            staging.adopt_blob(self.snapshot_store.store.blob_path(descriptor.digest), descriptor)

    def _admit(self, staging: Store, pulled: Pulled) -> Descriptor:
        with self.snapshot_store.writing():
            return admit(self.snapshot_store.store, staging, pulled)
