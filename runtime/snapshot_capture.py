"""Capture: a machine's changes since its agent's head made into a snapshot.

The flow reads top-down from :meth:`SnapshotCapture.capture`: it chooses the path (the overlay
upper directory when Spinup can read it, else the Docker API, see ``api_capture``), pauses a
running machine only while its files are read (:meth:`SnapshotCapture._capture_frozen`), and
hands the layer to the snapshot store (:meth:`SnapshotCapture._capture_upper`: the walk, tar
and zstd run in ``spinup.snapshot``, which also writes the config, manifest and ``index.json``).
What stays here is the runtime's: pause and unpause, progress, choosing a squash, and the
state database's row that moves the head. Callers hold the agent's lock.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Concatenate, ParamSpec, TypeVar

from spinup.snapshot.capture import LayerRequest
from spinup.snapshot.faults import FaultHook, no_faults
from spinup.snapshot.image import BaseImage, SnapshotMeta
from spinup.snapshot.index import Index
from spinup.snapshot.oci import BASE_ID
from spinup.snapshot.sink import ByteSink, LayerResult
from spinup.snapshot.snapshot_store import Committed, NewLayer, Parent, SnapshotStore
from spinup.snapshot.squash import union_plan
from spinup.snapshot.walk import LayerPlan, MemberSink, Planner, scan

from . import api_capture
from .config import Settings
from .docker import DockerBackend, MachineInfo
from .errors import DockerFailure, LimitReached
from .models import Agent, Snapshot, format_size, readable_size
from .policy import exec_user
from .snapshot_bases import BaseImages
from .snapshot_images import SNAP_REPO, ProgressFn, snapshot_tag
from .state import StateDB

log = logging.getLogger(__name__)

LayerContent = Callable[[ByteSink], None]
P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True)
class CaptureResult:
    """The outcome of a snapshot request."""

    snapshot: Snapshot
    created: bool  # False when nothing had changed and the head was returned
    duration_s: float


@dataclass(frozen=True)
class _CaptureJob:
    """One capture: whose, of which machine, on top of which head, and how to report progress."""

    agent: Agent
    machine: MachineInfo
    head: Snapshot | None
    previous: Index | None  # the head's file index, when the head was taken from this same machine
    label: str
    progress: ProgressFn | None
    base: BaseImage
    started: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class _Squash:
    """A machine's layer directories as Docker extracted them, for a squash."""

    layers: list[Path]  # the snapshot layers its image has above the base image, top first
    base: list[Path]  # the base image's layers


def crash_hook(point: str) -> FaultHook:
    """The fault hook of ``Settings.crash_at``: SIGKILL this process at that point (crash-safety tests only)."""
    if not point:
        return no_faults

    def crash(name: str) -> None:
        if name == point:
            os.kill(os.getpid(), signal.SIGKILL)

    return crash


def check_layer_size(agent: Agent, sizes: dict[str, int]) -> None:
    """Refuse a layer whose files (by path, apparent sizes) would expand past the agent's disk limit once loaded.

    Docker writes every hole of a sparse file out when it loads a layer, so a layer counts its
    files whole: a machine's ``truncate -s 16T`` must not become 16 TiB in Docker's data root.
    """
    limit = agent.policy.disk
    total = sum(sizes.values())
    if limit is None or total <= limit:
        return
    largest = sorted(sizes.items(), key=lambda item: item[1], reverse=True)[:3]
    named = ", ".join(f"{'' if path.startswith('(') else '/'}{path} ({readable_size(size)})" for path, size in largest)
    raise LimitReached(
        f"Agent '{agent.name}' cannot be snapshotted: the files it changed add up to {readable_size(total)} "
        f"(sparse files counted whole, as a restore writes them), past its disk limit of {format_size(limit)}. "
        f"Largest: {named}. Delete or shrink them (file_delete), or raise the limit "
        f"(CLI: spinup agent policy {agent.name} --disk <size>); the machine runs on unchanged."
    )


def base_image(config: dict[str, Any], image_id: str) -> BaseImage:
    """What a snapshot records of its base image, from the image's stored config."""
    return BaseImage(
        image_id,
        str(config.get("architecture") or "amd64"),
        str(config.get("os") or "linux"),
        dict(config.get("config") or {}),
        tuple((config.get("rootfs") or {}).get("diff_ids") or ()),
    )


def _holding_store_lock(
    method: Callable[Concatenate[SnapshotCapture, P], R],
) -> Callable[Concatenate[SnapshotCapture, P], R]:
    """Run a store-writing method under the store lock (shared), so gc never sees half a snapshot."""

    @functools.wraps(method)
    def locked(self: SnapshotCapture, *args: P.args, **kwargs: P.kwargs) -> R:
        with self.snapshot_store.writing():
            return method(self, *args, **kwargs)

    return locked


class SnapshotCapture:
    """Captures snapshots of agents' machines into the snapshot store and records them."""

    def __init__(
        self, settings: Settings, db: StateDB, docker: DockerBackend, snapshot_store: SnapshotStore, bases: BaseImages
    ) -> None:
        self.settings = settings
        self.db = db
        self.docker = docker
        self.snapshot_store = snapshot_store
        self.bases = bases
        self._base_images: dict[str, BaseImage] = {}

    async def capture(
        self,
        agent: Agent,
        machine: MachineInfo,
        label: str = "",
        progress: ProgressFn | None = None,
        keep_paused: bool = False,
    ) -> CaptureResult:
        """Capture what the machine changed since the agent's head (the caller holds the agent's lock).

        ``keep_paused`` leaves a running machine paused after a successful capture, so nothing
        changes between the snapshot and the machine's replacement (restore, policy change).
        """
        started = time.monotonic()
        base = await self.prepare_base(agent, machine, progress)
        upper = self.readable_upper(machine)
        head = self.db.get_snapshot(agent.head_snapshot) if agent.head_snapshot else None
        previous = await self.head_index(head, machine)
        job = _CaptureJob(agent, machine, head, previous, label, progress, base)
        if upper is None:
            snapshot = await self._capture_api(job)
            if keep_paused and machine.running and not machine.paused:
                await self.docker.pause(machine.id)
        else:
            snapshot = await self._capture_frozen(job, upper, keep_paused)
        if snapshot is None:
            assert head is not None
            return CaptureResult(head, False, round(time.monotonic() - started, 4))
        return CaptureResult(snapshot, True, round(time.monotonic() - started, 4))

    async def _thaw(self, machine_id: str) -> None:
        """Unpause after reading; a machine killed meanwhile (agent_kill) has nothing left to thaw."""
        try:
            await self.docker.unpause(machine_id)
        except DockerFailure:
            info = await self.docker.inspect(machine_id)
            if info is not None and info.running:
                raise
            log.info("machine %s was killed while its snapshot was read; the snapshot goes on", machine_id[:12])

    async def _capture_frozen(self, job: _CaptureJob, upper: Path, keep_paused: bool) -> Snapshot | None:
        """The fast path: a running machine is paused while its upper directory is read, no longer."""
        machine = job.machine
        if not (machine.running and not machine.paused):
            return await asyncio.to_thread(self._capture_upper, job, upper, None)
        loop = asyncio.get_running_loop()
        read: asyncio.Future[None] = loop.create_future()

        def mark_read() -> None:
            if not read.done():
                read.set_result(None)

        def on_read() -> None:  # from the capture thread
            loop.call_soon_threadsafe(mark_read)

        await self.docker.pause(machine.id)
        work: asyncio.Future[Snapshot | None] = asyncio.ensure_future(
            asyncio.to_thread(self._capture_upper, job, upper, on_read)
        )
        try:
            # The machine runs again as soon as its files are read, while the layer is being stored.
            waiting: list[asyncio.Future[Any]] = [work] if keep_paused else [work, read]
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not (work.done() or read.done()):  # cancelled: still never run while the files are read
                either: list[asyncio.Future[Any]] = [work, read]
                await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            succeeded = work.done() and not work.cancelled() and work.exception() is None
            try:
                if not (keep_paused and succeeded):
                    await self._thaw(machine.id)
            finally:
                read.cancel()
                if not work.done():
                    await asyncio.wait([work])
        return await work

    @_holding_store_lock
    def _capture_upper(self, job: _CaptureJob, upper: Path, on_read: Callable[[], None] | None) -> Snapshot | None:
        """Blocking: walk the upper directory while tar archives what changed; None if nothing did."""
        delta_base = self._delta_base(job)
        serialized: list[bytes] = []
        progress = job.progress
        expected: list[int] = []  # content bytes of the changed files, known once the walk is done

        def on_walked(index: Index, layer_plan: LayerPlan) -> None:
            if progress or job.agent.policy.disk is not None:
                entries = index.entries
                sizes = {p: e.size for p in layer_plan.archive if (e := entries.get(p)) and e.kind == "file"}
                expected.append(sum(sizes.values()))
                check_layer_size(job.agent, sizes)  # tar has read only the data of sparse files, not their holes
            if progress:
                progress(f"archiving {layer_plan.paths_changed} changed paths ({readable_size(expected[0])})", None)
            serialized.append(index.dumps(delta_base))  # while tar and zstd finish the layer

        def on_bytes(done: int) -> None:
            if progress:
                total = f" of about {readable_size(expected[0])}" if expected else ""
                progress(f"{readable_size(done)}{total} archived", float(done))

        squash = self._squash_layers(job)
        planner: Planner | None = None
        if squash is not None:
            # The head is as deep as a snapshot may be: this one is a single layer over the base image.
            index = scan(upper)
            if job.previous is not None and index.entries == job.previous.entries:
                return None  # nothing changed since the head

            def planner(on_member: MemberSink) -> tuple[Index, LayerPlan]:
                return index, union_plan([upper, *squash.layers], squash.base, on_member)

        request = LayerRequest(
            upper,
            job.previous,
            always=job.head is None or squash is not None,
            on_bytes=on_bytes,
            on_walked=on_walked,
            on_read=on_read,
            planner=planner,
            sources=squash.layers if squash is not None else (),
        )
        captured = self.snapshot_store.layers.capture(request)
        head = job.head
        if head is not None and captured.plan.empty and (job.previous or self._from_head(job.machine, head)):
            return None  # nothing changed since the head
        new = NewLayer(
            captured.index, captured.layer, squash is not None, delta_base, serialized[0] if serialized else None
        )
        committed = self.snapshot_store.commit(new, self._parent(job), self._meta(job))
        return self._record(job, committed, captured.layer, captured.plan.paths_changed)

    def _squash_layers(self, job: _CaptureJob) -> _Squash | None:
        """When the head has ``max_layers`` layers: the machine's snapshot layers as Docker extracted them.

        Docker lists a container's lower directories top first: its init layer, then its image's
        layers, the snapshot layers above the base image's. None when no squash is due, or when the
        directories do not add up (then the capture stays incremental, and says so in the log).
        """
        head, machine = job.head, job.machine
        if head is None or head.layers < self.settings.max_layers:
            return None
        own = 0
        if machine.image.startswith(SNAP_REPO + ":"):
            source = self.db.get_snapshot(machine.image.split(":", 1)[1])
            own = source.layers if source is not None else -1
        lowers = machine.lower_dirs
        if own < 0 or len(lowers) < 1 + own or not lowers[0].endswith("-init/diff"):
            log.warning(
                "snapshot %s of agent %s has %d layers but the layers of machine %s cannot be squashed "
                "(image %s, %d lower directories); the capture stays incremental",
                head.id, job.agent.name, head.layers, machine.id[:12], machine.image, len(lowers),
            )  # fmt: skip
            return None
        return _Squash([Path(d) for d in lowers[1 : 1 + own]], [Path(d) for d in lowers[1 + own :]])

    async def _capture_api(self, job: _CaptureJob) -> Snapshot | None:
        """Capture through the Docker API (see ``api_capture``); None if nothing changed."""
        if job.head is not None and job.head.layers >= self.settings.max_layers:
            log.warning(
                "agent %s: snapshot %s has %d layers; snapshots taken through the Docker API are not squashed, and "
                "Docker refuses images deeper than 125 layers. `spinup agent rebuild %s --image %s` starts afresh.",
                job.agent.name, job.head.id, job.head.layers, job.agent.name, job.agent.image,
            )  # fmt: skip
        disk = job.agent.policy.disk
        if disk is not None:
            # The toolbox's tar reads sparse files whole: weigh the layer first (Docker counts apparent sizes).
            used = await self.docker.writable_size(job.machine.id)
            if used > disk:
                check_layer_size(job.agent, {"(the machine's writable layer)": used})
        current = await api_capture.changed_paths(self.docker, job.machine.id)
        layer_plan = api_capture.plan_from_changes(job.previous, current)
        if job.head is not None and layer_plan.empty and job.previous is not None:
            return None
        if job.progress:
            job.progress(f"archiving {layer_plan.paths_changed} changed paths", None)
        user = exec_user(job.agent.policy)
        spool = await api_capture.spool_tar(self.docker, job.machine.id, layer_plan.archive, user)
        try:
            return await asyncio.to_thread(self._write_snapshot, job, current, layer_plan, self._spool_content(spool))
        finally:
            spool.close()

    @staticmethod
    def _spool_content(spool: IO[bytes]) -> LayerContent:
        def copy(sink: ByteSink) -> None:
            while chunk := spool.read(1024 * 1024):
                sink.write(chunk)

        return copy

    def readable_upper(self, machine: MachineInfo) -> Path | None:
        """The machine's overlay upper directory when the fast path can read it, else None."""
        if self.settings.capture_mode == "api" or not machine.upper_dir or not self.docker.of(machine.id).is_local:
            return None
        upper = Path(machine.upper_dir)
        return upper if os.access(upper, os.R_OK | os.X_OK) else None

    def _from_head(self, machine: MachineInfo, head: Snapshot) -> bool:
        return machine.image == snapshot_tag(head.id)

    async def head_index(self, head: Snapshot | None, machine: MachineInfo) -> Index | None:
        """The file index the head recorded, when it was taken from this same machine (cached per agent)."""
        if head is None or head.machine_id != machine.id:
            return None
        return await asyncio.to_thread(self.snapshot_store.index_of, head.manifest_digest, head.agent_id)

    @_holding_store_lock
    def _write_snapshot(
        self, job: _CaptureJob, current: Index, layer_plan: LayerPlan, content: LayerContent
    ) -> Snapshot:
        """Blocking: the layer from ``content`` (unless nothing changed), then the snapshot's records."""
        new_layer = None
        if not layer_plan.empty or job.head is None:
            new_layer = self.snapshot_store.layers.write_from(layer_plan, content)
        new = NewLayer(current, new_layer, delta_base=self._delta_base(job))
        committed = self.snapshot_store.commit(new, self._parent(job), self._meta(job))
        return self._record(job, committed, new_layer, layer_plan.paths_changed)

    def _delta_base(self, job: _CaptureJob) -> tuple[str, Index] | None:
        """The stored index a capture of this machine is a delta over: the head's, if taken from it."""
        cached = self.snapshot_store.latest_index(job.agent.id)
        head = job.head
        return cached if cached is not None and head is not None and head.machine_id == job.machine.id else None

    def _parent(self, job: _CaptureJob) -> Parent | None:
        return Parent(job.head.id, job.head.manifest_digest) if job.head is not None else None

    def _meta(self, job: _CaptureJob) -> SnapshotMeta:
        """What the snapshot records beside its layers: whose, which label, which base, which packages."""
        agent = job.agent
        return SnapshotMeta(
            agent_id=agent.id,
            label=job.label,
            base_ref=agent.image,
            base=job.base,
            packages=[entry.model_dump(mode="json") for entry in self.db.packages(agent.id)],
            labels=self.settings.label_extra,
        )

    def _record(
        self, job: _CaptureJob, committed: Committed, new_layer: LayerResult | None, paths_changed: int
    ) -> Snapshot:
        """The committed snapshot's row in the state database: the head may move to it now."""
        snapshot = Snapshot(
            id=committed.snapshot_id,
            agent_id=job.agent.id,
            parent_id=job.head.id if job.head else None,
            label=job.label,
            created_at=committed.created_at,
            manifest_digest=committed.manifest_digest,
            machine_id=job.machine.id,
            base_image=job.agent.image,
            layers=committed.layers,
            layer_size=new_layer.descriptor.size if new_layer else 0,
            layer_uncompressed=new_layer.uncompressed_size if new_layer else 0,
            paths_changed=paths_changed,
        )
        self.db.add_snapshot(snapshot, duration_s=round(time.monotonic() - job.started, 4))
        return snapshot

    async def machine_base(self, agent: Agent, machine: MachineInfo) -> str:
        """The id of the base image the machine's files build on: the image it was made from, or, for a
        machine made from a snapshot, that snapshot's base image (not whatever the agent's tag names now)."""
        if machine.image.startswith(SNAP_REPO + ":"):
            source = self.db.get_snapshot(machine.image.split(":", 1)[1])
            if source is not None:
                annotations = await asyncio.to_thread(self.snapshot_store.annotations, source.manifest_digest)
                if annotations.get(BASE_ID):
                    return annotations[BASE_ID]
        if machine.image_id and not machine.image.startswith(SNAP_REPO + ":"):
            return machine.image_id
        return (await self.docker.image_inspect(agent.image, host=agent.host)).id

    async def prepare_base(self, agent: Agent, machine: MachineInfo, progress: ProgressFn | None = None) -> BaseImage:
        """The machine's base image, its layers stored in the store first (once per host; see ``snapshot_bases``)."""
        base_id = await self.machine_base(agent, machine)
        stored = await self.bases.ensure(base_id, progress)  # found at once (a few stat calls) once stored
        if base_id not in self._base_images:
            config = await asyncio.to_thread(stored.config_json, self.snapshot_store.store)
            self._base_images[base_id] = base_image(config, base_id)
        return self._base_images[base_id]
