"""The warm pool: spare machines created and started ahead of need, so a new agent answers at once.

A spare is a machine of one policy shape (the default policy, or root, the host network or an
allowlist, see :data:`~.config.POOL_SHAPES`) on a pooled base image (``Settings.warm_pool``), made
for an agent id drawn in advance: Docker cannot relabel a container, so a spare carries its future
agent's id label (and ``spinup.spare`` naming the state directory it belongs to) from the start,
and its own download-cache directories under that id. It holds no agent state and no credential
(credentials reach a machine only per exec and in its in-memory secrets directory, once an agent
binds them), is in no agent list and counts against no quota.

``agent_create`` with a pooled shape (limits aside: CPUs, memory and pids are changed live with
``docker update``, the disk limit is Spinup's own; allowlist rules and ``self_control`` are
served from the host) on a pooled image claims one: the agent record is made with the spare's id
and machine in one transaction, the container is renamed, its limits updated and its hostname set
to the agent's name (an allowlist machine gets its egress listener then). Any other policy (no
package cache, other open-file limits, a shape with no spares kept) takes the cold path. Claims,
refills and reaping take one lock file (``<home>/locks/pool``), so no two processes claim one
spare and none reaps a spare another is claiming. Servers refill in the background; ``spinup
doctor --fix`` and a server's shutdown reap the spares.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import os
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from .config import POOL_SHAPES, Settings, pool_key, split_pool_key
from .docker import AGENT_LABEL, DockerBackend
from .locks import lock_file
from .models import Agent, AgentState, Policy
from .policy import is_root
from .state import StateDB

log = logging.getLogger(__name__)

SPARE_LABEL = "spinup.spare"  # value: the state directory's key (see :func:`home_key`)
SPARE_IMAGE_LABEL = "spinup.spare.image"  # the base image the spare was made from, as configured
SPARE_SHAPE_LABEL = "spinup.spare.shape"  # the policy shape it was made with ("root+allowlist"; "" or none: default)
# What a claim may change on a running spare: limits (`docker update`, the disk quota is Spinup's own), an endpoint
# served from the host (self_control) and the rules the egress proxy reads for each connection.
LIVE_FIELDS = ("cpus", "memory", "pids", "disk", "self_control", "allow", "intercept")
# A server that lives only a moment (a harness probing it with `mcp list`) makes no machine.
START_DELAY = 3.0
REFILL_INTERVAL = 30.0  # seconds between two looks at the pool by a server (a claim refills soon)
# A refill asked for by a claim waits this long: its create and start would slow the new agent's first commands.
REFILL_QUIET = 1.0
CLAIM_WAIT = 2.0  # seconds a claim waits for another process's claim or reaping before it starts cold


def home_key(settings: Settings) -> str:
    """A short stable name of the state directory, so spares of another one on this daemon are never claimed."""
    return hashlib.sha256(str(settings.home.resolve()).encode()).hexdigest()[:16]


def shape_policy(shape: str) -> Policy:
    """The policy a spare of ``shape`` (tags of :data:`POOL_SHAPES` joined by ``+``) is made with."""
    tags = set(shape.split("+")) if shape else set()
    network: Literal["none", "allowlist", "host"] = (
        "host" if "host" in tags else "allowlist" if "allowlist" in tags else "none"
    )
    return Policy(user="root" if "root" in tags else "agent", network=network)


def shape_of(policy: Policy) -> str | None:
    """The shape of spare that can become an agent of ``policy`` without a new machine; None when none can
    (another open-file limit, no package cache)."""
    wanted = {"root": is_root(policy), "host": policy.network == "host", "allowlist": policy.network == "allowlist"}
    shape = "+".join(tag for tag in POOL_SHAPES if wanted[tag])
    made = shape_policy(shape)
    return shape if policy.model_copy(update={name: getattr(made, name) for name in LIVE_FIELDS}) == made else None


def live_limits(policy: Policy) -> dict[str, Any]:
    """The ``docker update`` body giving a machine ``policy``'s CPU, memory and pids limits."""
    return {
        "Memory": policy.memory,
        "MemorySwap": policy.memory,
        "PidsLimit": policy.pids,
        "NanoCpus": int(policy.cpus * 1_000_000_000) if policy.cpus is not None else 0,
    }


@dataclass(frozen=True)
class Spare:
    """A machine of the pool not claimed by any agent."""

    machine_id: str
    agent_id: str
    image: str
    shape: str
    running: bool

    def ready_as(self, image: str, shape: str) -> bool:
        """Whether this spare runs and can become an agent on ``image`` of ``shape``."""
        return self.running and self.image == image and self.shape == shape


MakeSpare = Callable[[Agent], Coroutine[Any, Any, str]]  # makes and starts a spare machine for the drawn agent; its id


class WarmPool:
    """Keeps ``Settings.warm_pool`` spares per pooled image and hands them to new agents."""

    def __init__(
        self, settings: Settings, db: StateDB, docker: DockerBackend, make: MakeSpare, forget: Callable[[str], None]
    ) -> None:
        self.settings = settings
        self.db = db
        self.docker = docker
        self._make = make
        self._forget = forget  # removes a removed spare's host directories (its download caches), by agent id
        self._key = home_key(settings)
        self._claims = settings.home / "locks" / "pool"  # claims and reaping
        self._fills = settings.home / "locks" / "pool.fill"  # one process refills at a time
        self._refill = asyncio.Event()
        self._making: set[asyncio.Task[str]] = set()  # spares being made (finished even if a fill is cancelled)

    def size(self, image: str, shape: str = "") -> int:
        """How many spares of ``image`` and ``shape`` the pool keeps."""
        pool = self.settings.warm_pool
        if pool_key(image, shape) in pool:
            return pool[pool_key(image, shape)]
        return pool.get(pool_key("", shape), 0) if image == self.settings.default_image else 0

    @property
    def usable(self) -> bool:
        """Whether this process can name a claimed spare: a local daemon, and root (``setns`` into its UTS
        namespace needs CAP_SYS_ADMIN)."""
        return self.docker.is_local and os.geteuid() == 0

    def kinds(self) -> list[tuple[str, str]]:
        """The pooled base images and shapes."""
        split = (split_pool_key(key) for key, n in self.settings.warm_pool.items() if n > 0)
        return sorted({(image or self.settings.default_image, shape) for image, shape in split})

    @contextlib.asynccontextmanager
    async def _locked(self, path: Path, wait: float) -> AsyncIterator[bool]:
        """Hold the lock file ``path``; yields False when ``wait`` seconds ran out first."""
        fd = await lock_file(path, wait)
        if fd is None:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    async def spares(self) -> list[Spare]:
        """The unclaimed spares of this state directory."""
        found = await self.docker.list_machines(f"{SPARE_LABEL}={self._key}")
        return [
            Spare(
                machine_id,
                labels.get(AGENT_LABEL, ""),
                labels.get(SPARE_IMAGE_LABEL, ""),
                labels.get(SPARE_SHAPE_LABEL, ""),
                running,
            )
            for machine_id, labels, running in found
            if self.db.agent_by_id(labels.get(AGENT_LABEL, "")) is None
        ]

    async def levels(self) -> list[tuple[str, int, int]]:
        """Per pooled image and shape (``IMAGE`` or ``IMAGE+root``): the spares running and how many are kept."""
        found = await self.spares()
        return [
            (pool_key(image, shape), sum(s.ready_as(image, shape) for s in found), n)
            for image, shape in self.kinds()
            if (n := self.size(image, shape)) > 0
        ]

    async def claim(self, name: str, image: str, policy: Policy) -> Agent | None:
        """Make agent ``name`` on a running spare of ``image`` and ``policy``'s shape; None when the pool has none."""
        shape = shape_of(policy)
        if shape is None or self.size(image, shape) == 0 or not self.usable:
            return None
        async with self._locked(self._claims, CLAIM_WAIT) as held:
            if not held:
                return None  # another process holds the pool longer than a cold start takes
            found = await self.spares()
            spare = next((s for s in found if s.ready_as(image, shape)), None)
            if spare is None:
                self._refill.set()
                return None
            # The record takes the spare's id and machine in one transaction: from here the machine is the agent's.
            agent = self.db.create_agent(name, image, policy, agent_id=spare.agent_id, machine_id=spare.machine_id)
        self._refill.set()
        return agent

    async def fill(self) -> int:
        """Make the spares missing from every pooled image (skipped while another process does); how many."""
        made = 0
        async with self._locked(self._fills, 0) as held:
            if not held:
                return 0
            current = await self.spares()
            for stopped in (s for s in current if not s.running):
                await self.docker.remove(stopped.machine_id)  # a spare that stopped (a daemon restart) is of no use
                self._forget(stopped.agent_id)
            for image, shape in self.kinds():
                have = sum(s.ready_as(image, shape) for s in current)
                for _ in range(max(0, self.size(image, shape) - have)):
                    # Shielded: a cancelled fill never leaves a machine Docker made after reap looked.
                    making: asyncio.Task[str] = asyncio.create_task(self._make(self._drawn(image, shape)))
                    self._making.add(making)
                    making.add_done_callback(self._making.discard)
                    await asyncio.shield(making)
                    made += 1
        return made

    def _drawn(self, image: str, shape: str) -> Agent:
        """The agent a new spare is made for: its id is drawn now, its name is given at the claim."""
        return Agent(
            id=uuid.uuid4().hex[:16],
            name="spare",
            image=image,
            policy=shape_policy(shape),
            created_at=datetime.now(UTC),
            machine_id=None,
            state=AgentState.CREATED,
        )

    def spare_labels(self, image: str, policy: Policy) -> dict[str, str]:
        """The labels that make a machine of ``policy`` (a shape's) a spare of this state directory's pool."""
        return {SPARE_LABEL: self._key, SPARE_IMAGE_LABEL: image, SPARE_SHAPE_LABEL: shape_of(policy) or ""}

    async def reap(self) -> int:
        """Remove every unclaimed spare and its cache directories."""
        if self._making:
            await asyncio.gather(*self._making, return_exceptions=True)
        async with self._locked(self._claims, self.settings.lock_wait) as held:
            if not held:
                return 0
            spares = await self.spares()
            for spare in spares:
                await self.docker.remove(spare.machine_id)
                self._forget(spare.agent_id)
        return len(spares)

    async def keep_filled(self) -> None:
        """Background loop of a server: refill :data:`REFILL_QUIET` seconds after each claim and every
        :data:`REFILL_INTERVAL` seconds, from :data:`START_DELAY` seconds on (or a first claim)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(START_DELAY):
                await self._refill.wait()
        while True:
            if self._refill.is_set():
                await asyncio.sleep(REFILL_QUIET)
            try:
                await self.fill()
            except Exception:  # the top of a background task: a dead loop would never refill again
                log.exception("filling the warm pool failed; retrying in %.0f s", REFILL_INTERVAL)
            self._refill.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(REFILL_INTERVAL):
                    await self._refill.wait()
