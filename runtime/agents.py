"""Agents and their lifecycle: create, wake, stop, hibernate, snapshot, restore, fork, remove.

Wake runs before every operation on an agent: a running machine is used as is, a stopped one
is started, a missing one is rebuilt from the agent's head snapshot (or from its base image
when it has none). Each step is recorded as an event.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import shutil
import tarfile
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

from .actors import current_actor
from .config import TOOLBOX_MOUNT, Settings
from .docker import AGENT_LABEL, DockerBackend, ImageInfo, MachineInfo
from .egress import EgressClient, EgressUnavailable
from .errors import (
    AgentExists,
    AgentPaused,
    Conflict,
    DockerFailure,
    ImageNotFound,
    InvalidInput,
    MachineReplaced,
    NotFound,
    NotGranted,
    SpinupError,
    WrongState,
)
from .exec import run_command
from .hostname import set_machine_hostname
from .locks import Hold, Locks
from .machines import agent_cache_dir, machine_config, machine_name, prepare_host_dirs
from .models import Agent, AgentState, Event, PackageEntry, Policy, Snapshot, validate_agent_name
from .policy import (
    AGENT_DIRS_LABEL,
    AGENT_HOME,
    AGENT_UID,
    EGRESS_CA_FILE,
    SYSTEM_CA_BUNDLE,
    WORKSPACE,
    check_fits_host,
    check_granted,
    is_root,
)
from .pool import LIVE_FIELDS, WarmPool, live_limits
from .snapshot_capture import crash_hook
from .snapshots import CaptureResult, ProgressFn, SnapshotService
from .state import StateDB

log = logging.getLogger(__name__)

# Crash-test points of the agent operations (SPINUP_CRASH_AT, as the snapshot store has its own), in order.
RESTORE_CAPTURED = "restore-captured"  # the old machine is captured and left frozen; nothing else changed
RESTORE_HEAD_MOVED = "restore-head-moved"  # the record names the target as head and no machine; none made yet
POLICY_CAPTURED = "policy-captured"  # the old machine is captured and frozen; the new policy is not recorded
POLICY_RECORDED = "policy-recorded"  # the new policy is recorded with no machine; the old one is still frozen
FORK_RECORDED = "fork-recorded"  # the new agent is recorded with its head; it has no machine yet
REBUILD_MOVED = "rebuild-moved"  # a rebuild's new machine runs on the new base; nothing is copied into it yet
MOVE_CAPTURED = "move-captured"  # the old machine is captured and frozen; nothing exists on the new daemon yet
MOVE_STARTED = "move-started"  # the new machine runs on the new daemon; the record still names the old one


def _remove_caches(directory: Path) -> None:
    """Remove an agent's package caches (rmtree never follows a symlink the agent left in them)."""

    def failed(_function: object, path: str, exc_info: tuple[type[BaseException], BaseException, object]) -> None:
        if not isinstance(exc_info[1], FileNotFoundError):
            log.warning("could not remove %s of a removed agent's package caches: %s", path, exc_info[1])

    shutil.rmtree(directory, onerror=failed)


class AgentService:
    """Owns agent records and keeps each agent's machine in the state callers expect."""

    def __init__(self, settings: Settings, db: StateDB, docker: DockerBackend, snapshots: SnapshotService) -> None:
        self.settings = settings
        self.db = db
        self.docker = docker
        self.snapshots = snapshots
        self._capturer = snapshots.capturer  # the snapshot flow starts at SnapshotCapture.capture
        self._fault = crash_hook(settings.crash_at)
        # Held across every Spinup process on this state directory (see locks.py).
        self.locks = Locks(settings.home / "locks", settings.lock_wait)
        self._last_used: dict[str, float] = {}
        self._removals: set[asyncio.Task[None]] = set()
        self._image_configs: dict[tuple[str | None, str], ImageInfo] = {}  # (daemon, image) -> its config
        self.egress = EgressClient(settings)
        self._trusted: dict[str, str] = {}  # machine id -> the egress CA added to its trust store
        self._rebuilding: set[str] = set()  # agents this process is rebuilding (any other's is interrupted)
        self.pool = WarmPool(
            settings, db, docker, self._make_spare, lambda agent_id: _remove_caches(settings.cache_dir / agent_id)
        )
        # Called with the id of every machine removed, so caches keyed by machine (quota, limits,
        # file access) forget it.
        self.machine_removed: list[Callable[[str], None]] = []

    async def create(
        self, name: str, image: str | None = None, policy: Policy | None = None, grants: frozenset[str] | None = None
    ) -> Agent:
        """Create an agent and start its machine. The image must already be in Docker. With ``grants`` (an MCP
        client's) a policy beyond them or past the operator's ceilings is refused."""
        validate_agent_name(name)
        image = image or self.settings.default_image
        policy = policy or Policy()
        if grants is not None:
            check_granted(policy, grants)
            self.settings.ceilings.check_policy(policy, len(self.db.list_agents()))
        check_fits_host(policy, await self.docker.cpu_count())
        self._check_egress_possible(policy)
        # A spare was made from the image, so it is there; the first snapshot wants the image's layers stored.
        claimed = await self.pool.claim(name, image, policy)
        if claimed is None:
            await self._require_image(image)
        agent = claimed or self.db.create_agent(name, image, policy)
        self.snapshots.bases.soon((await self._image_info(image)).id)
        try:
            if claimed is not None:
                await self._adopt_spare(claimed)
                self._last_used[agent.id] = time.monotonic()
                return self.get(name)
            return await self.wake(name)
        except BaseException:
            log.warning("machine for new agent %s failed to start; removing the record", name)
            await self._remove_machines(agent)
            self.db.delete_agent(agent.id)
            raise

    async def _adopt_spare(self, agent: Agent) -> None:
        """Make the claimed spare the agent's machine: its name, its policy's limits, its hostname."""
        assert agent.machine_id is not None
        machine_id = agent.machine_id

        async def named() -> None:
            info = await self.docker.inspect(machine_id)
            if info is None or not info.running or info.paused:
                raise SpinupError(f"The spare machine {machine_id[:12]} claimed for agent '{agent.name}' stopped.")
            await set_machine_hostname(info.pid, info.hostname_path, agent.name)
            if agent.policy.network == "allowlist":
                await self._attach_egress(agent, info)  # the listener for its rules, before its first command

        # Docker's rename holds the container's lock, which an exec would wait for: done here, alongside.
        steps = [named(), self._rename(machine_id, machine_name(agent))]
        if live_limits(agent.policy) != live_limits(Policy()):
            steps.append(self.docker.update_limits(machine_id, live_limits(agent.policy)))
        for outcome in await asyncio.gather(*steps, return_exceptions=True):  # every step ends before a failure
            if isinstance(outcome, BaseException):
                raise outcome
        self.db.record_event(agent.id, "machine-created", f"machine {machine_id[:12]} from the warm pool")

    def get(self, name: str) -> Agent:
        """The agent record (no Docker call)."""
        validate_agent_name(name)
        return self.db.get_agent(name)

    def list(self) -> builtins.list[Agent]:
        """All agents, oldest first."""
        return self.db.list_agents()

    def events(self, agent: Agent, limit: int = 20) -> builtins.list[Event]:
        """The agent's recent events."""
        return self.db.events(agent.id, limit)

    async def ensure(self, name: str, image: str | None = None) -> Agent:
        """Wake ``name``, creating the agent first if it does not exist (for servers bound to one agent)."""
        validate_agent_name(name)
        if self.db.find_agent(name) is None:
            try:
                return await self.create(name, image)
            except AgentExists:
                log.info("agent %s was created concurrently; waking it", name)
        return await self.wake(name)

    async def machine(self, agent: Agent) -> MachineInfo | None:
        """The agent's machine as Docker sees it now, or None."""
        if agent.machine_id is None:
            return None
        return await self.docker.inspect(agent.machine_id)

    async def wake(self, name: str) -> Agent:
        """Make sure the agent's machine is running and return the fresh record.

        A paused agent is refused at once (:class:`AgentPaused`); a snapshot or restore in progress
        (in any Spinup process) is waited for, since it holds the agent's operation lock. A machine
        found frozen with no pause recorded was left so by a process that died mid-snapshot: it is
        thawed.
        """
        agent = self.get(name)
        self._last_used[agent.id] = time.monotonic()
        async with self.locks.operating(agent):
            agent = self.get(name)
            if agent.id not in self._rebuilding and self.db.rebuild_in_progress(agent.id) is not None:
                agent = await self._roll_back_rebuild(agent, "the process rebuilding it ended before it finished")
            info = await self.machine(agent)
            if info is not None and info.paused:
                if agent.paused_at is not None:
                    raise AgentPaused(name, agent.paused_at.isoformat(timespec="seconds"), agent.paused_by)
                info = await self._thaw_left_frozen(agent, info)
            elif agent.paused_at is not None:
                self.db.set_paused(agent.id, None, "resumed", "the machine is no longer frozen (thawed outside Spinup)")
            if info is None:
                if agent.machine_id is not None:
                    self.db.record_event(agent.id, "machine-missing", f"machine {agent.machine_id[:12]} is gone")
                await self._create_machine(agent, recreated=agent.machine_id is not None)
                await self._remove_strays(self.get(name))
            elif not info.running:
                await asyncio.to_thread(prepare_host_dirs, agent, self.settings)
                await self.docker.start(info.id)
                self.db.set_machine(agent.id, info.id, AgentState.RUNNING)
                self.db.record_event(agent.id, "machine-started", info.id[:12])
            elif agent.state is not AgentState.RUNNING:
                self.db.set_machine(agent.id, info.id, AgentState.RUNNING)
            agent = self.get(name)
            if agent.policy.network == "allowlist":
                await self._attach_egress(agent, info if info is not None and info.running else None)
            return agent

    async def wake_and_hold(self, name: str) -> tuple[Agent, Hold]:
        """Wake the agent and take its machine lock shared before anything else can freeze, stop or replace
        the machine; the caller releases the hold once its Docker calls into the machine are made."""
        agent = self.get(name)
        async with self.locks.operating(agent):
            agent = await self.wake(name)
            return agent, await self.locks.share(agent)

    @contextlib.asynccontextmanager
    async def using_machine(self, agent: Agent, machine_id: str) -> AsyncIterator[None]:
        """Hold the agent's machine lock shared, and check the machine is still ``machine_id`` and not
        paused: nothing freezes, stops or replaces it until the block ends."""
        async with self.locks.using(agent):
            current = self.db.find_agent(agent.name)
            if current is None or current.id != agent.id:
                raise NotFound(f"Agent '{agent.name}' was removed during this call.")
            if current.paused_at is not None:
                raise AgentPaused(agent.name, current.paused_at.isoformat(timespec="seconds"), current.paused_by)
            if current.machine_id != machine_id:
                raise MachineReplaced(agent.name)
            yield

    async def _attach_egress(self, agent: Agent, info: MachineInfo | None) -> None:
        """Make sure the egress proxy listens inside the agent's (running) machine."""
        if info is None or info.pid <= 0:
            assert agent.machine_id is not None
            info = await self.docker.inspect(agent.machine_id)
        if info is None or not info.running or info.pid <= 0:
            raise EgressUnavailable(f"The machine of agent '{agent.name}' is not running, so it has no way out.")
        ca_pem = await self.egress.attach(agent.id, info.pid)
        if ca_pem is not None and self._trusted.get(info.id) != ca_pem:
            await self._trust_egress_ca(agent, info, ca_pem)
            self._trusted[info.id] = ca_pem

    async def _trust_egress_ca(self, agent: Agent, info: MachineInfo, ca_pem: str) -> None:
        """Add the agent's egress CA to the machine's trust store (once; it is public, so a snapshot may keep it)."""
        script = (
            'set -e; pem="$(cat)"; mkdir -p "$(dirname "$1")"; printf "%s\\n" "$pem" > "$1"; '
            'grep -qF "$(printf "%s" "$pem" | sed -n 2p)" "$2" 2>/dev/null || printf "%s\\n" "$pem" >> "$2"'
        )
        result = await run_command(
            self.docker,
            info.id,
            [TOOLBOX_MOUNT, "sh", "-c", script, "trust", EGRESS_CA_FILE, SYSTEM_CA_BUNDLE],
            stdin=ca_pem.encode(),
            user="0:0",
            timeout=30,
            output_cap=8192,
        )
        if result.exit_code != 0:
            raise EgressUnavailable(
                f"Could not add the egress CA of agent '{agent.name}' to its machine's trust store: "
                f"{result.stderr.strip() or result.stdout.strip()}"
            )

    def _check_egress_possible(self, policy: Policy, host: str | None = None) -> None:
        """Refuse an allowlist policy where the proxy cannot listen in machines (a remote Docker daemon)."""
        if policy.network == "allowlist" and not self.docker.at(host).is_local:
            raise EgressUnavailable(
                "Network 'allowlist' needs a local Docker daemon: Spinup's egress proxy listens inside each machine's "
                "network namespace on this host. Use network 'none' or 'host' with a remote daemon."
            )

    async def _thaw_left_frozen(self, agent: Agent, info: MachineInfo) -> MachineInfo | None:
        """Thaw a machine frozen with no pause recorded, under the operation lock: whoever froze it held that
        lock, so it died before thawing (a crash mid-snapshot, or a `docker pause` outside Spinup)."""
        await self._thaw(info.id)
        self.db.record_event(
            agent.id, "machine-unpaused", f"{info.id[:12]} was left frozen (by a process that ended mid-snapshot)"
        )
        return await self.docker.inspect(info.id)

    async def _thaw(self, machine_id: str) -> None:
        """Unpause a machine; one that is no longer paused (thawed meanwhile) is fine."""
        try:
            await self.docker.unpause(machine_id)
        except DockerFailure:
            current = await self.docker.inspect(machine_id)
            if current is not None and current.paused:
                raise
            log.info("machine %s was already thawed", machine_id[:12])

    async def pause(self, name: str) -> Agent:
        """Freeze every process of the agent's machine (the cgroup freezer, through Docker).

        Until :meth:`resume`, calls that need the machine fail at once saying who paused it; stop,
        kill, snapshot and remove still work.
        """
        agent = self.get(name)
        async with self.locks.exclusive(agent):
            agent = self.get(name)
            info = await self.machine(agent)
            if info is None or not info.running:
                raise WrongState(
                    f"Agent '{name}' is {agent.state.value}: only a running agent can be paused "
                    f"(nothing of it is running now)."
                )
            if info.paused and agent.paused_at is not None:
                raise WrongState(
                    f"Agent '{name}' is already paused (since {agent.paused_at.isoformat(timespec='seconds')}"
                    f" by {agent.paused_by}); resume it with agent_resume (CLI: spinup resume {name})."
                )
            if not info.paused:
                await self.docker.pause(info.id)
            actor = current_actor()
            by = actor.describe() if actor is not None else "spinup"
            self.db.set_paused(agent.id, by, "paused", f"machine {info.id[:12]} frozen by {by}")
            return self.get(name)

    async def resume(self, name: str) -> Agent:
        """Thaw a paused agent: its processes go on where they stopped."""
        agent = self.get(name)
        async with self.locks.operating(agent):
            agent = self.get(name)
            info = await self.machine(agent)
            if info is None or not info.paused or agent.paused_at is None:
                state = (
                    "frozen for a moment by a snapshot"
                    if info is not None and info.paused
                    else ("running" if info is not None and info.running else agent.state.value)
                )
                raise WrongState(f"Agent '{name}' is not paused (it is {state}); there is nothing to resume.")
            await self.docker.unpause(info.id)
            paused_for = (datetime.now(UTC) - agent.paused_at).total_seconds()
            self.db.set_paused(agent.id, None, "resumed", f"machine {info.id[:12]} thawed after {paused_for:.1f}s")
            return self.get(name)

    async def kill(self, name: str) -> Agent:
        """SIGKILL every process of the agent's machine now: no snapshot, its files stay, the next call
        starts it again. Does not wait for a snapshot in progress (which still completes)."""
        agent = self.get(name)
        info = await self.machine(agent)
        if info is None or not info.running:
            raise WrongState(
                f"Agent '{name}' is {agent.state.value}: nothing of it is running, so there is nothing to kill."
            )
        await self.docker.kill(info.id)
        self.db.set_machine(agent.id, info.id, AgentState.STOPPED)
        was = " (it was paused)" if info.paused else ""
        self.db.set_paused(agent.id, None, "killed", f"every process of machine {info.id[:12]} killed{was}")
        return self.get(name)

    async def stop(self, name: str, *, snapshot: bool = True, hibernate: bool = False) -> Agent:
        """Stop the agent's machine, first capturing a snapshot when anything changed.

        ``hibernate`` also removes the machine to free disk; the next wake rebuilds it from the
        snapshot. ``snapshot=False`` only stops (the machine keeps its writable layer).
        """
        if hibernate and not snapshot:
            raise InvalidInput("hibernate needs snapshot: a removed machine can only come back from a snapshot.")
        agent = self.get(name)
        async with self.locks.exclusive(agent):
            info = await self.machine(agent)
            if info is None:
                state = AgentState.HIBERNATED if agent.head_snapshot else AgentState.MISSING
                self.db.set_machine(agent.id, None, state)
                return self.get(name)
            if snapshot:
                await self._capturer.capture(agent, info, "stop")
            if agent.paused_at is not None:
                self.db.set_paused(agent.id, None, "resumed", "stopped while paused")
            if hibernate:
                await self._remove_machine(info.id)
                self.db.set_machine(agent.id, None, AgentState.HIBERNATED)
                self.db.record_event(agent.id, "machine-hibernated", info.id[:12])
            elif info.running:
                if info.paused:  # thawed first, so its processes get SIGTERM and their grace period
                    await self._thaw(info.id)
                await self.docker.stop(info.id)
                self.db.set_machine(agent.id, info.id, AgentState.STOPPED)
                self.db.record_event(agent.id, "machine-stopped", info.id[:12])
            else:
                self.db.set_machine(agent.id, info.id, AgentState.STOPPED)
            return self.get(name)

    async def snapshot(self, name: str, label: str = "", progress: ProgressFn | None = None) -> CaptureResult:
        """Capture what the agent's machine changed since its head; returns the head if nothing did."""
        agent = self.get(name)
        async with self.locks.exclusive(agent):
            info = await self.machine(agent)
            if info is None:
                await self._create_machine(agent, recreated=True)
                agent = self.get(name)
                info = await self.machine(agent)
                assert info is not None
            return await self._capturer.capture(self.get(name), info, label, progress)

    async def restore(
        self, name: str, snapshot_id: str, progress: ProgressFn | None = None
    ) -> tuple[Agent, str | None]:
        """Replace the agent's machine with one made from ``snapshot_id``.

        Unsnapshotted work is captured first, so the restore can be undone by restoring that
        snapshot; its id is returned alongside the agent (None when nothing had changed). Only the
        agent's own snapshots and the one it was forked from are accepted (:class:`ForeignSnapshot`).
        """
        agent = self.get(name)
        # Snapshots belong to their agent: another agent's state comes in only through an explicit fork.
        target = self.snapshots.check_of(agent, snapshot_id)
        started = time.monotonic()
        async with self.locks.exclusive(agent):
            saved: str | None = None
            info = await self.machine(agent)
            if info is not None:
                # Captured and left paused: the old machine stops changing at once.
                label = f"before restore to {snapshot_id}"
                result = await self._capturer.capture(agent, info, label, progress, keep_paused=True)
                saved = result.snapshot.id if result.created else None
            self._fault(RESTORE_CAPTURED)
            try:
                image = await self.snapshots.ensure_image(target, progress, agent.policy.disk, agent.host)
                packages = await self.snapshots.packages(target)
            except BaseException:
                if info is not None and info.running and not info.paused:
                    await self.docker.unpause(info.id)  # no restore: the machine goes on
                raise
            # From here a process that dies leaves an agent whose next wake makes the machine from the target.
            self.db.detach_machine(agent.id, head=(target.id, packages))
            self._fault(RESTORE_HEAD_MOVED)
            await self._start_from(self.get(name), image, "machine-restored", f"from snapshot {target.id}")
            if info is not None:
                self._remove_later(info.id)
            took = round(time.monotonic() - started, 4)
            self.db.record_event(
                agent.id,
                "snapshot-restored",
                f"{target.id} in {took:.2f}s" + (f" (work saved first as {saved})" if saved else ""),
                {"id": target.id, "saved_before_restore": saved, "duration_s": took},
            )
            return self.get(name), saved

    async def move(self, name: str, host: str, progress: ProgressFn | None = None) -> Agent:
        """Move the agent to the Docker daemon at ``host``: its machine is captured, made again there from the
        snapshot (the store's layers, base included, loaded into that daemon when it lacks them) and started;
        then the old machine is removed. The agent keeps its name, history, head and packages.

        Until the record names the new machine, the agent is where it was: a move that fails (or whose
        process dies) leaves the old machine, which is thawed (at once, or by the next wake).
        """
        agent = self.get(name)
        target = self.docker.at(host)
        current = self.docker.at(agent.host)
        if target is current:
            raise InvalidInput(f"Agent '{name}' already lives on the Docker daemon at {target.host}.")
        await target.version()  # unreachable: DockerUnavailable, naming the address
        check_fits_host(agent.policy, await target.cpu_count())
        self._check_egress_possible(agent.policy, host)
        started = time.monotonic()
        async with self.locks.exclusive(agent):
            agent = self.get(name)
            if agent.paused_at is not None:
                raise AgentPaused(name, agent.paused_at.isoformat(timespec="seconds"), agent.paused_by)
            # Machines of this agent there are left by a move that died before it was recorded.
            await self._remove_machines(agent.model_copy(update={"host": host, "machine_id": None}))
            info = await self.machine(agent)
            if info is None and agent.head_snapshot is None:
                await self._create_machine(agent, recreated=True)  # a base-image agent has nothing to carry yet
                agent = self.get(name)
                info = await self.machine(agent)
            if info is not None:
                # Captured and left paused: the old machine stops changing at once.
                await self._capturer.capture(agent, info, f"before move to {host}", progress, keep_paused=True)
                agent = self.get(name)
            self._fault(MOVE_CAPTURED)
            machine_id: str | None = None
            try:
                assert agent.head_snapshot is not None
                head = self.snapshots.get(agent.head_snapshot)
                image = await self.snapshots.ensure_image(head, progress, agent.policy.disk, host)
                if progress:
                    progress(f"starting the machine of {name} on {host}", None)
                machine_id = await self._new_machine(agent.model_copy(update={"host": host}), image, prepare=False)
                self._fault(MOVE_STARTED)
            except BaseException:
                if machine_id is not None:
                    await asyncio.shield(self._remove_machine(machine_id))
                if info is not None and info.running and not info.paused:
                    await asyncio.shield(self._thaw(info.id))  # no move: the machine goes on where it was
                raise
            took = round(time.monotonic() - started, 4)
            source = current.host
            self.db.move_machine(
                agent.id,
                host,
                machine_id,
                f"from {source} to {host} in {took:.2f}s, machine {machine_id[:12]} from snapshot {head.id}",
                {"from": source, "to": host, "snapshot": head.id, "duration_s": took},
            )
            if info is not None:
                await self._remove_machine(info.id)
            return self.get(name)

    async def set_policy(self, name: str, policy: Policy, progress: ProgressFn | None = None) -> Agent:
        """Give the agent a new policy. Limits, allowlist rules and ``self_control`` apply live (see
        :func:`only_live_changes`); for anything else its machine is rebuilt under it from a snapshot of its state.

        A running agent runs again at once; a stopped or hibernated one gets the new machine on its
        next wake. Leaving root hands /workspace and the agent's home to the agent user first.
        """
        agent = self.get(name)
        check_fits_host(policy, await self.docker.cpu_count(agent.host))
        self._check_egress_possible(policy, agent.host)
        if policy == agent.policy:
            return agent
        if only_live_changes(agent.policy, policy) and await self._limits_applied_live(agent, policy):
            return self.get(name)
        async with self.locks.exclusive(agent):
            info = await self.machine(agent)
            if info is not None:
                if is_root(agent.policy) and not is_root(policy):
                    await self._hand_over_to_agent_user(info)
                    info = await self.machine(agent) or info  # the hand-over may have started it
                # Captured and left paused: the old machine stops changing at once.
                await self._capturer.capture(agent, info, "before policy change", progress, keep_paused=True)
                self._fault(POLICY_CAPTURED)
                # One transaction: a process that dies after it leaves the agent to be woken under the new policy.
                self.db.detach_machine(agent.id, policy=policy)
                self._fault(POLICY_RECORDED)
                self._remove_later(info.id)
            else:
                self.db.set_policy(agent.id, policy)
            if info is not None and info.running:
                await self._create_machine(self.get(name), recreated=True)
            return self.get(name)

    async def _limits_applied_live(self, agent: Agent, policy: Policy) -> bool:
        """Record ``policy`` (which differs from the agent's only in what applies live) and give the machine its
        CPU, memory and pids limits with ``docker update``; False, with nothing changed, when Docker refuses them
        (a memory limit below what the machine uses) or cannot change them (Docker keeps a CPU limit it is asked
        to drop), so the caller rebuilds the machine under them."""
        if agent.policy.cpus is not None and policy.cpus is None:
            return False
        async with self.locks.operating(agent):
            info = await self.machine(self.get(agent.name))
            if info is not None and live_limits(policy) != live_limits(agent.policy):
                try:
                    await self.docker.update_limits(info.id, live_limits(policy))
                except DockerFailure as exc:
                    log.info("docker update refused agent %s's limits (%s); rebuilding its machine", agent.name, exc)
                    return False
            # The proxy reads the rules for every new connection, self_control is served from the host and the
            # disk quota is Spinup's own: nothing else in the machine changes.
            self.db.set_policy(agent.id, policy)
            return True

    @contextlib.asynccontextmanager
    async def rebuilding(self, name: str, image: str, saved: str) -> AsyncIterator[tuple[Agent, MachineInfo | None]]:
        """Give the agent a fresh machine from another base image for the block, which carries its files and
        packages over and calls :meth:`finish_rebuild`; the old machine is yielded (the block removes it with
        :meth:`discard_machine`).

        Until then the rebuild is recorded as in progress with ``saved`` (a snapshot of the agent on its
        old image): a block that fails puts the agent back on that snapshot, and so does the next wake in
        any process if this one dies first. Nothing is lost either way.
        """
        agent = self.get(name)
        await self._require_image(image, agent.host)
        self._rebuilding.add(agent.id)
        try:
            try:
                async with self.locks.exclusive(agent):
                    old = await self.machine(agent)
                    self.db.set_image(agent.id, image, rebuild_from=(agent.image, saved))
                    await self._create_machine(self.get(name), recreated=False)
                    self._fault(REBUILD_MOVED)
                yield self.get(name), old
            except BaseException as exc:
                if self.db.rebuild_in_progress(agent.id) is not None:
                    reason = "cancelled" if isinstance(exc, asyncio.CancelledError) else f"failed: {exc}"
                    await asyncio.shield(self._roll_back_rebuild(self.get(name), reason))
                raise
        finally:
            self._rebuilding.discard(agent.id)

    def finish_rebuild(self, agent: Agent, packages: builtins.list[PackageEntry]) -> None:
        """The rebuilt agent's files and packages are in place: record its manifest and end the rebuild."""
        self.db.finish_rebuild(agent.id, packages)

    async def _roll_back_rebuild(self, agent: Agent, reason: str) -> Agent:
        """Put an agent whose rebuild did not finish back on its old image and the snapshot taken before it."""
        pending = self.db.rebuild_in_progress(agent.id)
        assert pending is not None
        async with self.locks.exclusive(agent):
            packages = await self.snapshots.packages(self.snapshots.get(pending[1]))
            self.db.roll_back_rebuild(agent.id, packages, reason)
            log.warning("rebuild of agent %s rolled back to snapshot %s: %s", agent.name, pending[1], reason)
            current = self.get(agent.name)
            await self._remove_machines(current)  # the old machine and the half-made new one
            return current

    def discard_machine(self, machine_id: str) -> None:
        """Remove a machine no agent uses any more (in the background; see :meth:`drain`)."""
        self._remove_later(machine_id)

    async def _hand_over_to_agent_user(self, info: MachineInfo) -> None:
        """Give the agent user what a root policy left in its workspace and home."""
        if not info.running:
            await self.docker.start(info.id)
        result = await run_command(
            self.docker,
            info.id,
            [
                TOOLBOX_MOUNT,
                "sh",
                "-c",
                f'mkdir -p {WORKSPACE} {AGENT_HOME} && chown -R {AGENT_UID}:{AGENT_UID} "$@"',
                "chown",
                WORKSPACE,
                AGENT_HOME,
            ],
            user="0:0",
            timeout=300,
            output_cap=8192,
        )
        if result.exit_code != 0:
            raise SpinupError(f"Could not give {WORKSPACE} and {AGENT_HOME} to the agent user: {result.stderr.strip()}")

    async def fork(
        self,
        snapshot_id: str,
        name: str,
        policy: Policy | None = None,
        grants: frozenset[str] | None = None,
        *,
        network: str | None = None,
        user: str | None = None,
    ) -> Agent:
        """Create a new agent whose machine starts from ``snapshot_id``, under ``policy`` (default: its source
        agent's) with ``network``/``user`` changed when given. With ``grants`` (an MCP client's), a policy beyond
        them is refused (:class:`NotGranted`)."""
        validate_agent_name(name)
        started = time.monotonic()
        source = self.snapshots.get(snapshot_id)
        parent = next((a for a in self.db.list_agents() if a.id == source.agent_id), None)
        policy = (policy or (parent.policy if parent else Policy())).updated(network=network, user=user)
        if grants is not None:
            self.settings.ceilings.check_policy(policy, len(self.db.list_agents()))
            try:
                check_granted(policy, grants)
            except NotGranted as exc:
                whose = f"agent '{parent.name}'" if parent and policy == parent.policy else "the fork"
                raise NotGranted(
                    f"A fork of snapshot {snapshot_id} would run under the policy of {whose}. {exc} Or fork it "
                    f"with a policy this server grants (network='none', user='agent')."
                ) from exc
        image = await self.snapshots.ensure_image(source, disk=policy.disk)
        # Recorded with its head in one transaction: a process that dies after it leaves an agent whose next
        # wake makes its machine from the snapshot.
        agent = self.db.create_agent(
            name, source.base_image, policy, head=(source.id, await self.snapshots.packages(source))
        )
        try:
            self._fault(FORK_RECORDED)
            async with self.locks.operating(agent):
                await self._start_from(self.get(name), image, "machine-created", f"forked from snapshot {source.id}")
        except BaseException:
            await self._remove_machines(agent)
            self.db.delete_agent(agent.id)
            raise
        took = round(time.monotonic() - started, 4)
        self.db.record_event(
            agent.id, "forked", f"from snapshot {source.id} in {took:.2f}s", {"id": source.id, "duration_s": took}
        )
        return self.get(name)

    async def from_pulled(self, name: str, snapshot: Snapshot, packages: builtins.list[PackageEntry]) -> Agent:
        """Create agent ``name`` whose head is ``snapshot`` (just admitted into the store from a registry, its
        record not yet made: ``snapshot.agent_id`` is replaced), under the default policy, and wake it."""
        validate_agent_name(name)
        existing = self.db.get_snapshot(snapshot.id)
        if existing is not None and existing.manifest_digest != snapshot.manifest_digest:
            raise Conflict(
                f"This state directory already has a different snapshot {snapshot.id}; pull into another "
                f"SPINUP_HOME, or fork the local one."
            )
        agent = self.db.create_agent(name, snapshot.base_image, Policy())
        try:
            if existing is None:
                self.db.add_snapshot(snapshot.model_copy(update={"agent_id": agent.id}), move_head=True)
            else:
                self.db.set_head(agent.id, existing.id)
            self.db.set_packages(agent.id, packages)
            self.db.record_event(agent.id, "pulled", f"head {snapshot.id} from a registry", {"id": snapshot.id})
            return await self.wake(name)
        except BaseException:
            await self._remove_machines(agent)
            if existing is None:
                self.db.set_head(agent.id, None)
                self.db.delete_snapshot(snapshot.id)
            self.db.delete_agent(agent.id)
            raise

    async def hibernate_idle(self, idle_seconds: float) -> builtins.list[str]:
        """Hibernate running agents not woken for ``idle_seconds``; returns their names."""
        now = time.monotonic()
        hibernated = []
        for agent in self.db.list_agents():
            if agent.state is not AgentState.RUNNING:
                continue
            last = self._last_used.setdefault(agent.id, now)
            if now - last < idle_seconds:
                continue
            log.info("hibernating idle agent %s", agent.name)
            self.db.record_event(agent.id, "idle", f"unused for {now - last:.0f}s")
            await self.stop(agent.name, hibernate=True)
            hibernated.append(agent.name)
        return hibernated

    async def remove(self, name: str) -> Agent:
        """Remove the agent: its machine, its record, its package caches, and its snapshots that no other agent
        builds on."""
        agent = self.get(name)
        async with self.locks.exclusive(agent):
            await self._remove_machines(agent)
            self.db.delete_agent(agent.id, ("removed", f"agent {agent.name} and its machine removed"))
            await asyncio.to_thread(_remove_caches, agent_cache_dir(self.settings, agent))
        self.locks.forget(agent.id)
        self._last_used.pop(agent.id, None)
        await self.snapshots.prune_orphans(agent.id)
        return agent

    async def _require_image(self, image: str, host: str | None = None) -> None:
        if not await self.docker.image_exists(image, host=host):
            raise ImageNotFound(image, self.settings.default_image)

    async def _create_machine(self, agent: Agent, recreated: bool) -> None:
        """Make the agent's machine: from its head snapshot if it has one, else from its base image."""
        head: Snapshot | None = self.snapshots.get(agent.head_snapshot) if agent.head_snapshot else None
        if head is not None:
            image = await self.snapshots.ensure_image(head, disk=agent.policy.disk, host=agent.host)
            await self._start_from(agent, image, "machine-rehydrated", f"from head snapshot {head.id}")
            return
        await self._require_image(agent.image, agent.host)
        kind = "machine-recreated" if recreated else "machine-created"
        await self._start_from(agent, agent.image, kind, f"from base image {agent.image}", prepare=True)

    async def _start_from(self, agent: Agent, image: str, kind: str, detail: str, prepare: bool = False) -> None:
        machine_id = await self._new_machine(agent, image, prepare)
        self.db.set_machine(agent.id, machine_id, AgentState.RUNNING)
        self.db.record_event(agent.id, kind, f"machine {machine_id[:12]} {detail}")

    async def _make_spare(self, drawn: Agent) -> str:
        """Make and start a warm-pool spare for the drawn (not yet recorded) agent; its machine id."""
        return await self._new_machine(drawn, drawn.image, prepare=True, spare=True)

    async def _new_machine(self, agent: Agent, image: str, prepare: bool, spare: bool = False) -> str:
        """Create and start a machine of ``agent`` from ``image``; its id."""
        image_info = await self._image_info(image, agent.host)
        config = machine_config(agent, self.settings, image, image_info.env)
        name = machine_name(agent)
        if spare:
            # Named, and given its hostname, when claimed; SPINUP_AGENT reaches each command with its exec.
            config["Labels"] = {**config["Labels"], **self.pool.spare_labels(image, agent.policy)}
            del config["Labels"]["spinup.name"]
            config["Env"] = [e for e in config["Env"] if not e.startswith("SPINUP_AGENT=")]
            name = f"spinup-spare-{agent.id[:12]}"
        try:
            machine_id = await self.docker.create_container(config, name=name, host=agent.host)
        except DockerFailure as exc:
            if exc.status != 409:
                raise
            # A leftover container holds the name (for example after a lost record): replace it.
            await self.docker.at(agent.host).remove(name)
            machine_id = await self.docker.create_container(config, name=name, host=agent.host)
        has_dirs = image_info.labels.get(AGENT_DIRS_LABEL) == str(AGENT_UID)
        if prepare and not is_root(agent.policy) and not has_dirs:
            await self.docker.put_archive(machine_id, "/", _agent_directories())
        await self.docker.start(machine_id)
        return machine_id

    async def _image_info(self, image: str, host: str | None = None) -> ImageInfo:
        """The image's id, env and labels, cached per image and daemon."""
        key = (host, image)
        if key not in self._image_configs:
            self._image_configs[key] = await self.docker.image_inspect(image, host=host)
        return self._image_configs[key]

    async def _remove_machine(self, machine_id: str) -> None:
        for forget in self.machine_removed:
            forget(machine_id)
        await self.docker.remove(machine_id)
        self.docker.forget(machine_id)

    def _remove_later(self, machine_id: str) -> None:
        """Remove a replaced machine off the caller's critical path (awaited by :meth:`drain`)."""
        task = asyncio.create_task(self._remove_machine(machine_id))
        self._removals.add(task)
        task.add_done_callback(self._removal_done)

    def _removal_done(self, task: asyncio.Task[None]) -> None:
        self._removals.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("removing a replaced machine failed: %s", task.exception())

    async def _rename(self, machine_id: str, name: str) -> None:
        """Give a machine its agent's container name (cosmetic: ``docker ps``); a machine gone since is fine."""
        with contextlib.suppress(NotFound):
            await self.docker.rename(machine_id, name)

    async def drain(self) -> None:
        """Wait for background machine removals to finish."""
        if self._removals:
            await asyncio.gather(*self._removals, return_exceptions=True)

    async def _remove_strays(self, agent: Agent) -> None:
        """Remove the agent's machines other than its current one: left by a process that died between making
        a new machine and recording it, or between recording a restore and removing the old, frozen one."""
        for machine_id in await self.docker.list_by_label(f"{AGENT_LABEL}={agent.id}", host=agent.host):
            if machine_id != agent.machine_id:
                self.db.record_event(
                    agent.id, "machine-removed", f"stray machine {machine_id[:12]} of an interrupted change"
                )
                await self._remove_machine(machine_id)

    async def _remove_machines(self, agent: Agent) -> None:
        """Remove every machine of the agent on its daemon (the recorded one and any stray)."""
        await self.drain()
        ids = set(await self.docker.list_by_label(f"{AGENT_LABEL}={agent.id}", host=agent.host))
        if agent.machine_id:
            ids.add(agent.machine_id)
        for machine_id in ids:
            await self._remove_machine(machine_id)


def _agent_directories() -> bytes:
    """A tar making /workspace and the agent's home, owned by the agent user (for any base image)."""
    blocks = []
    for path in (WORKSPACE, "/home", AGENT_HOME):
        member = tarfile.TarInfo(path.lstrip("/"))
        member.type = tarfile.DIRTYPE
        member.mode = 0o755
        member.mtime = int(time.time())
        if path != "/home":
            member.uid = member.gid = AGENT_UID
        blocks.append(member.tobuf(format=tarfile.PAX_FORMAT))
    return b"".join(blocks) + b"\0" * (2 * tarfile.BLOCKSIZE)


def only_live_changes(old: Policy, new: Policy) -> bool:
    """Whether two policies differ only in what applies live (:data:`~.pool.LIVE_FIELDS`): CPU, memory and pids
    limits (``docker update``), the disk quota (Spinup's own), allowlist rules (read by the egress proxy for each
    connection) and ``self_control`` (an endpoint served from the host, nothing in the machine's config)."""
    return old.network == new.network and old.model_dump(exclude=set(LIVE_FIELDS)) == new.model_dump(
        exclude=set(LIVE_FIELDS)
    )
