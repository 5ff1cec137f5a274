"""The disk quota on a machine's writable layer, where the storage driver cannot enforce one.

overlay2 on ext4 (the common case) has no per-container size limit, so the writable layer is
measured instead: after commands and file writes a measurement runs in the background, at most
every ``MEASURE_INTERVAL`` seconds per machine (the overlay upper directory walked from the host,
or Docker's ``SizeRw`` for a remote daemon; both count a sparse file at its apparent size). While
the last measurement is over the quota, commands and file writes through Spinup are refused with
a message that says how to get back under it; a refusal re-measures first, so deleting files
unblocks the agent at once. A command can overshoot the quota, and so can others within the
interval; after that they are refused.
"""

from __future__ import annotations

import asyncio
import logging
import time

from .docker import DockerBackend, MachineInfo
from .errors import LimitReached, NotFound
from .limits import directory_usage
from .models import Agent, format_size

log = logging.getLogger(__name__)

MEASURE_INTERVAL = 2.0  # at most one background measurement per machine this often


class DiskQuota:
    """Measures machines' writable layers and refuses writes past an agent's ``disk`` policy."""

    def __init__(self, docker: DockerBackend) -> None:
        self.docker = docker
        self._used: dict[str, int] = {}
        self._upper: dict[str, str | None] = {}
        self._pending: dict[str, asyncio.Task[int]] = {}
        self._measured_at: dict[str, float] = {}

    async def measure(self, machine_id: str, machine: MachineInfo | None = None, max_age: float = 0.0) -> int:
        """Bytes the machine's writable layer uses now, or as measured at most ``max_age`` seconds ago.

        ``machine`` (its inspect, when the caller has it) saves asking Docker where the layer is.
        """
        measured_at = self._measured_at.get(machine_id)
        if max_age > 0 and measured_at is not None and time.monotonic() - measured_at <= max_age:
            return self._used[machine_id]
        if machine_id not in self._upper:
            info = (
                machine if machine is not None and machine.id == machine_id else await self.docker.inspect(machine_id)
            )
            upper = info.upper_dir if info is not None else None
            self._upper[machine_id] = upper if upper and self.docker.of(machine_id).is_local else None
        upper = self._upper[machine_id]
        if upper is not None:
            try:
                used = await asyncio.to_thread(directory_usage, upper)
            except OSError:
                used = await self.docker.writable_size(machine_id)
        else:
            used = await self.docker.writable_size(machine_id)
        self._used[machine_id] = used
        self._measured_at[machine_id] = time.monotonic()
        return used

    def used(self, machine_id: str) -> int | None:
        """The last measurement, if any."""
        return self._used.get(machine_id)

    def changed(self, agent: Agent) -> None:
        """The machine may have written: measure it again in the background."""
        machine_id = agent.machine_id
        if agent.policy.disk is None or machine_id is None or machine_id in self._pending:
            return
        wait = self._measured_at.get(machine_id, 0.0) + MEASURE_INTERVAL - time.monotonic()
        task = asyncio.create_task(self._measure_after(machine_id, max(wait, 0.0)))
        self._pending[machine_id] = task
        task.add_done_callback(lambda done: self._measured(machine_id, done))

    async def _measure_after(self, machine_id: str, delay: float) -> int:
        if delay:
            await asyncio.sleep(delay)  # a burst of commands is measured once, after it
        return await self.measure(machine_id)

    def _measured(self, machine_id: str, task: asyncio.Task[int]) -> None:
        self._pending.pop(machine_id, None)
        if task.cancelled() or task.exception() is None:
            return
        error = task.exception()
        if isinstance(error, NotFound):
            # Removed meanwhile (by this process or another sharing the state directory): nothing to measure.
            log.debug("machine %s was removed before its disk use was measured", machine_id[:12])
            self.forget(machine_id)
            return
        log.warning("measuring the disk use of machine %s failed: %s", machine_id[:12], error)

    async def check(self, agent: Agent) -> None:
        """Raise :class:`LimitReached` when the agent's machine is over its disk quota."""
        quota, machine_id = agent.policy.disk, agent.machine_id
        if quota is None or machine_id is None:
            return
        last = self._used.get(machine_id)
        if last is None or last < quota:
            return
        used = await self.measure(machine_id)
        if used >= quota:
            raise LimitReached(
                f"Agent '{agent.name}' is over its disk quota: its machine has written {format_size(used)} of "
                f"{format_size(quota)}. Commands and file writes are refused until it is under: delete files "
                f"with file_delete (for example caches or build output), or raise the quota "
                f"(CLI: spinup agent policy {agent.name} --disk <size>)."
            )

    def forget(self, machine_id: str) -> None:
        """Drop what is known of a removed machine, and a measurement of it still waiting its turn."""
        pending = self._pending.pop(machine_id, None)
        if pending is not None:
            pending.cancel()
        self._used.pop(machine_id, None)
        self._upper.pop(machine_id, None)
        self._measured_at.pop(machine_id, None)

    async def drain(self) -> None:
        """Stop measurements still waiting their turn."""
        for task in list(self._pending.values()):
            task.cancel()
        if self._pending:
            await asyncio.gather(*self._pending.values(), return_exceptions=True)
