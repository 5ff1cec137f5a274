"""What each agent uses now: CPU, memory, processes, disk, store, uptime, and when it last did anything.

CPU, memory and pids come from the machine's cgroup, read on the host when the daemon is local
(:mod:`.cgroups`: file reads, no Docker call), else from Docker's one-shot stats API (the daemon
answers a second reading at its next collection tick, up to a second later). CPU is a rate, so
usage is read twice: every machine asked about is read, then one shared pause of ``CPU_WINDOW``
seconds, then read again (one pause for 50 machines as for one). A reading taken in this
process between ``CPU_WINDOW`` and ``CPU_REUSE`` seconds before serves as the first sample
instead (a refreshing view then shows the CPU over its refresh interval, with no pause). A
percent is of one core: 100 is one core busy.

Disk is the writable layer as :class:`~.quota.DiskQuota` measures it: measured now for one
agent, while an overview reuses a measurement up to ``DISK_MAX_AGE`` seconds old. Store bytes
sum the layers the agent's snapshots added; the last activity is the time of the agent's newest
event. What cannot be read (a stopped machine's CPU and memory, a machine that stopped
meanwhile) is None.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from .cgroups import Cgroups, cpu_usage_ns, memory_use, pids_use
from .docker import DockerBackend, MachineInfo
from .errors import DockerFailure, NotFound
from .models import Agent, Event
from .quota import MEASURE_INTERVAL, DiskQuota
from .state import StateDB

CPU_WINDOW = 0.2  # seconds between the two readings of a CPU sample
CPU_REUSE = 10.0  # a reading at most this old (and at least CPU_WINDOW) is a CPU sample's first reading
DISK_MAX_AGE = MEASURE_INTERVAL  # seconds a writable-layer measurement is reused


@dataclass(frozen=True)
class ResourceUse:
    """What an agent's machine uses now (None where it cannot be read, e.g. CPU of a stopped machine)."""

    cpu_percent: float | None  # of one core (100 = one core busy), over a short window
    memory_bytes: int | None  # in use, page cache the kernel can drop at once not counted (as docker stats)
    memory_limit: int | None  # the policy's memory limit as the kernel holds it; None: no limit
    pids: int | None  # processes and threads
    pids_limit: int | None
    disk_used: int | None  # bytes the writable layer uses (None: no machine)
    store_bytes: int  # compressed bytes the agent's snapshots added to the store
    uptime_s: float | None  # since the machine last started; None unless it runs (or is paused)
    last_activity: datetime | None  # when the agent's newest event was recorded


@dataclass(frozen=True)
class AgentOverview:
    """One row of an overview of every agent: ``state`` is Docker's state of the machine (running, paused,
    exited, created, ...), ``absent`` when there is none, ``unknown`` when Docker did not answer in time."""

    agent: Agent
    state: str
    image: str
    usage: ResourceUse
    last_event: Event | None


@dataclass(frozen=True)
class _Reading:
    at_ns: int  # monotonic (cgroup files) or the daemon's clock (stats API)
    local: bool
    started_at: str  # of the machine: a restart resets its CPU counter
    cpu_ns: int | None
    memory: int | None
    memory_limit: int | None
    pids: int | None
    pids_limit: int | None


def _percent(before: _Reading | None, after: _Reading | None, min_gap: float, max_gap: float) -> float | None:
    """CPU between two readings of one machine, in percent of one core; None if they do not make a sample."""
    if before is None or after is None or before.cpu_ns is None or after.cpu_ns is None:
        return None
    if before.local != after.local or before.started_at != after.started_at:
        return None
    gap = after.at_ns - before.at_ns
    used = after.cpu_ns - before.cpu_ns
    if not min_gap * 1e9 <= gap <= max_gap * 1e9 or gap <= 0 or used < 0:
        return None
    return round(used / gap * 100, 1)


def _uptime(machine: MachineInfo | None, now: datetime) -> float | None:
    if machine is None or not (machine.running or machine.paused) or not machine.started_at:
        return None
    try:
        started = datetime.fromisoformat(machine.started_at)
    except ValueError:
        return None
    if started.year < 2:  # Docker's zero time: never started
        return None
    return round(max((now - started).total_seconds(), 0.0), 1)


def machine_state(machine: MachineInfo | None) -> str:
    """Docker's state of the machine, or ``absent``."""
    if machine is None:
        return "absent"
    return machine.status or ("paused" if machine.paused else "running" if machine.running else "exited")


class UsageMeter:
    """Reads agents' resource use, all machines' CPU over one shared window."""

    def __init__(self, docker: DockerBackend, db: StateDB, quota: DiskQuota, cgroups: Cgroups) -> None:
        self.docker = docker
        self.db = db
        self.quota = quota
        self.cgroups = cgroups
        self._last: dict[str, _Reading] = {}

    async def usage(self, agent: Agent, machine: MachineInfo | None) -> ResourceUse:
        """What ``agent`` uses now; ``machine`` is its machine as just inspected (None: absent)."""
        last = self.db.last_events([agent.id])
        return (await self._measure([(agent, machine)], last, disk_max_age=0.0))[0]

    async def overview(self, agents: Sequence[Agent]) -> list[AgentOverview]:
        """One row per agent: its machine's state (one inspect per agent, all at once) and what it uses."""
        inspected = await asyncio.gather(*(self._inspect(agent) for agent in agents))
        last = self.db.last_events([agent.id for agent in agents])
        uses = await self._measure(
            [(agent, machine) for agent, (machine, _) in zip(agents, inspected, strict=True)],
            last,
            disk_max_age=DISK_MAX_AGE,
        )
        return [
            AgentOverview(agent, state, agent.image, use, last.get(agent.id))
            for agent, (_, state), use in zip(agents, inspected, uses, strict=True)
        ]

    def forget(self, machine_id: str) -> None:
        """Drop the last reading of a removed machine."""
        self._last.pop(machine_id, None)

    async def _inspect(self, agent: Agent) -> tuple[MachineInfo | None, str]:
        if agent.machine_id is None:
            return None, "absent"
        try:
            machine = await self.docker.inspect(agent.machine_id)
        except DockerFailure:  # a wedged machine (or a slow daemon) costs its own row only
            return None, "unknown"
        return machine, machine_state(machine)

    async def _measure(
        self, rows: Sequence[tuple[Agent, MachineInfo | None]], last: dict[str, Event], disk_max_age: float
    ) -> list[ResourceUse]:
        machines = [machine for _, machine in rows if machine is not None]
        disks = {machine.id: asyncio.create_task(self._disk(machine, disk_max_age)) for machine in machines}
        try:
            readings = await self._sample([m for m in machines if m.running or m.paused])
            disk_used = {machine_id: await task for machine_id, task in disks.items()}
        finally:
            for task in disks.values():
                task.cancel()
        stored = self.db.store_bytes([agent.id for agent, _ in rows])
        now = datetime.now(UTC)
        uses = []
        for agent, machine in rows:
            reading, cpu = readings.get(machine.id, (None, None)) if machine is not None else (None, None)
            event = last.get(agent.id)
            uses.append(
                ResourceUse(
                    cpu_percent=cpu,
                    memory_bytes=reading.memory if reading else None,
                    memory_limit=reading.memory_limit if reading else None,
                    pids=reading.pids if reading else None,
                    pids_limit=reading.pids_limit if reading else None,
                    disk_used=disk_used.get(machine.id) if machine is not None else None,
                    store_bytes=stored.get(agent.id, 0),
                    uptime_s=_uptime(machine, now),
                    last_activity=event.at if event is not None else None,
                )
            )
        return uses

    async def _disk(self, machine: MachineInfo, max_age: float) -> int | None:
        try:
            return await self.quota.measure(machine.id, machine, max_age=max_age)
        except (NotFound, DockerFailure):
            return None

    async def _sample(self, machines: Sequence[MachineInfo]) -> dict[str, tuple[_Reading | None, float | None]]:
        """Each machine's reading and CPU percent: one shared window for those without a recent reading."""
        if not machines:
            return {}
        first = await self._read_all(machines)
        results: dict[str, tuple[_Reading | None, float | None]] = {}
        waiting: list[MachineInfo] = []
        for machine in machines:
            reading = first[machine.id]
            cpu = _percent(self._last.get(machine.id), reading, CPU_WINDOW, CPU_REUSE)
            if reading is None or cpu is not None or reading.cpu_ns is None:
                results[machine.id] = (reading, cpu)
            else:
                waiting.append(machine)
        if waiting:
            await asyncio.sleep(CPU_WINDOW)
            second = await self._read_all(waiting)
            for machine in waiting:
                later = second[machine.id]  # None: the machine stopped meanwhile
                results[machine.id] = (later, _percent(first[machine.id], later, 0.0, CPU_REUSE))
        for machine_id, (reading, _) in results.items():
            if reading is not None:
                self._last[machine_id] = reading
        return results

    async def _read_all(self, machines: Sequence[MachineInfo]) -> dict[str, _Reading | None]:
        readings: dict[str, _Reading | None] = {}
        remote: list[MachineInfo] = []
        for machine in machines:
            cgroup = self.cgroups.of(machine.id, machine.pid) if self.docker.of(machine.id).is_local else None
            if cgroup is None:
                remote.append(machine)  # a remote daemon, or a cgroup this process cannot see
                continue
            memory, memory_limit = memory_use(cgroup)
            pids, pids_limit = pids_use(cgroup)
            cpu = cpu_usage_ns(cgroup)
            vanished = cpu is None and memory is None and pids is None
            readings[machine.id] = (
                None
                if vanished
                else _Reading(
                    time.monotonic_ns(), True, machine.started_at, cpu, memory, memory_limit, pids, pids_limit
                )
            )
        if remote:
            answers = await asyncio.gather(*(self._read_stats(machine) for machine in remote))
            readings.update(zip((machine.id for machine in remote), answers, strict=True))
        return readings

    async def _read_stats(self, machine: MachineInfo) -> _Reading | None:
        try:
            stats = await self.docker.stats(machine.id)
        except (NotFound, DockerFailure):
            return None
        if stats.read_ns is None:  # Docker's zero time: the machine is not running
            return None
        return _Reading(
            stats.read_ns,
            False,
            machine.started_at,
            stats.cpu_ns,
            stats.memory,
            stats.memory_limit,
            stats.pids,
            stats.pids_limit,
        )
