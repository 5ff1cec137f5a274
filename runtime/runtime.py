"""The runtime facade: the one object the server, the CLI (or a script) holds to drive agents.

Every operation on an agent is a method here, named for what it does (``create_agent``,
``exec``, ``snapshot``, ``restore``, ...). The services behind it (agents and their machines,
snapshots, credentials, packages, the Docker backend, the state database) are private: callers
never reach past this surface.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from signal import Signals
from typing import TypeVar

from .actors import current_actor
from .agents import AgentService
from .cgroups import Cgroups
from .config import DOCKER_URL_SCHEMES, Settings
from .control import CONTROL_URL, TOKEN_ENV, URL_ENV, ControlListener, control_token, forget_token, listen_in_machine
from .credentials import SecretInfo
from .docker import DockerBackend, MachineInfo
from .egress.denials import DENIAL_KINDS, summarize_denials
from .errors import (
    AgentExists,
    AgentNotFound,
    AgentPaused,
    InvalidInput,
    LimitReached,
    MachineReplaced,
    SpinupError,
    WrongState,
)
from .exec import ExecResult, ProgressCallback, kill_command, run_command, signal_marked
from .exec_history import ExecHistory, ExecLog, ExecRecord, command_text
from .files import AccessMemo, AgentFiles, FileAccess, Files, InMachineFiles, as_agent_supported
from .harnesses import get_harness
from .image import build_base_image
from .limits import LimitCounters, LimitWatch, note_limits
from .locks import Hold
from .logredact import add_log_redactor, remove_log_redactor
from .models import Agent, Event, PackageEntry, PackageManager, Policy, SecretBinding, Snapshot, validate_agent_name
from .packages import InstallResult, PackageService
from .policy import NPM_PREFIX, PROCESS_DIR, VENV, WORKSPACE, exec_user, is_root, owner
from .ports import PortForward, PortService
from .processes import ProcessInfo, ProcessOutput, ProcessService, Stream, parse_signal, wait_interval
from .quota import DiskQuota
from .rebuild import Reinstalled, copy_directories, replay
from .registry import parse_ref
from .secrets import SecretListing, SecretService
from .snapshot_capture import crash_hook
from .snapshot_transfer import Pushed
from .snapshots import CaptureResult, GcResult, MigrateResult, ProgressFn, SnapshotService, VerifyReport
from .state import StateDB
from .terminal import DEFAULT_SHELL, Terminal
from .usage import AgentOverview, ResourceUse, UsageMeter

log = logging.getLogger(__name__)
T = TypeVar("T")
# How often a file operation is tried again on the new machine when the old one was replaced under it.
MACHINE_REPLACED_RETRIES = 3
EXEC_RUNNING = "exec-running"  # crash-test point (SPINUP_CRASH_AT): a command has started in the machine


@dataclass(frozen=True)
class RebuildResult:
    """An agent on its new base image, the snapshot saved before, and how each package fared."""

    agent: Agent
    saved_snapshot: str
    snapshot: str
    packages: list[Reinstalled]


@dataclass(frozen=True)
class AgentStatus:
    """An agent with its machine as Docker sees it now and its recent events."""

    agent: Agent
    machine: MachineInfo | None
    events: list[Event]
    disk_used: int | None = None  # bytes the machine's writable layer uses, when measured
    packages: list[PackageEntry] = field(default_factory=list)
    running_execs: list[ExecRecord] = field(default_factory=list)
    usage: ResourceUse | None = None  # what the machine uses now (CPU, memory, pids, disk, store, uptime)


@dataclass(frozen=True)
class RestoreResult:
    """An agent after a restore, and the snapshot of the work saved first (None when nothing had changed)."""

    agent: Agent
    saved_before_restore: str | None


@dataclass(frozen=True)
class SnapshotDiff:
    """Paths that differ between two states of an agent (directories are listed only when removed)."""

    source: str  # a snapshot id, or "base image"
    target: str  # a snapshot id, or "live machine"
    added: list[str]
    changed: list[str]
    removed: list[str]


class Runtime:
    """Agents, their machines, exec, files, packages, snapshots and credentials, over one Docker client and
    one state database."""

    def __init__(self, settings: Settings | None = None, docker: DockerBackend | None = None) -> None:
        self.settings = settings or Settings()
        self._docker = docker or DockerBackend(
            call_timeout=self.settings.docker_timeout, stream_idle=self.settings.docker_stream_idle
        )
        self._db = StateDB(self.settings.db_path)
        self._docker.locate = self._db.machine_host  # a machine moved to another daemon is reached there
        self._fault = crash_hook(self.settings.crash_at)
        self._db.events_keep = self.settings.events_keep
        self._db.events_max_age_days = self.settings.events_max_age_days
        self._processes = ProcessService(self._db, self._docker)
        self._execs = ExecHistory(
            self._db, self.settings.exec_logs_dir, self.settings.exec_logs_keep, self.settings.exec_logs_bytes
        )
        self._snapshots = SnapshotService(self.settings, self._db, self._docker)
        self._agents = AgentService(self.settings, self._db, self._docker, self._snapshots)
        self._quota = DiskQuota(self._docker)
        self._cgroups = Cgroups()
        self._limits = LimitWatch(self._cgroups)
        self._usage = UsageMeter(self._docker, self._db, self._quota, self._cgroups)
        self._access = AccessMemo()
        self._agents.machine_removed += [
            self._quota.forget,
            self._cgroups.forget,
            self._usage.forget,
            self._access.forget,
        ]
        self._secrets = SecretService(self.settings, self._db, self._docker)
        self._packages = PackageService(self._db, self.settings.sources_dir, self._run_package_command, self._fault)
        self._db.redact = self._secrets.redact
        add_log_redactor(self._secrets.redact)
        self._ports = PortService(self._db)
        self._control_tokens: dict[str, str] = {}  # agent id -> its control endpoint's token

    async def close(self) -> None:
        """Close this process's port forwards, finish background removals, then release the Docker client and
        the database."""
        self._ports.close_all("the Spinup process that made it closed its runtime")
        await self._agents.drain()
        await self._quota.drain()
        await self._snapshots.bases.drain()
        remove_log_redactor(self._secrets.redact)
        await self._docker.close()
        self._db.close()

    async def drain(self) -> None:
        """Wait for machines replaced by a restore, a policy change or a rebuild to be removed."""
        await self._agents.drain()

    # agents

    async def create_agent(
        self, name: str, image: str | None = None, policy: Policy | None = None, grants: frozenset[str] | None = None
    ) -> Agent:
        """Create an agent and start its machine. The image must already be in Docker. With ``grants`` (an MCP
        client's, see ``Settings.mcp_grants``) a policy beyond them or past the operator's ceilings
        (``Settings.ceilings``) is refused."""
        return await self._agents.create(name, image, policy, grants)

    async def ensure_agent(self, name: str, image: str | None = None) -> Agent:
        """Wake ``name``, creating the agent first if it does not exist (for servers bound to one agent)."""
        return await self._agents.ensure(name, image)

    def get_agent(self, name: str) -> Agent:
        """The agent record (no Docker call); a clear error if there is none."""
        return self._agents.get(name)

    def find_agent(self, name: str) -> Agent | None:
        """The agent record, or None when no agent has that name."""
        return self._db.find_agent(name)

    def list_agents(self) -> builtins.list[Agent]:
        """All agents, oldest first."""
        return self._agents.list()

    def events(
        self,
        name: str | None = None,
        limit: int = 20,
        *,
        kinds: Sequence[str] = (),
        since: datetime | None = None,
        after: int | None = None,
        before: int | None = None,
    ) -> builtins.list[Event]:
        """Events, oldest first: of agent ``name`` (also after its removal) or of everything when None;
        the newest ``limit`` (below id ``before``), or with ``after`` the first ``limit`` past that id."""
        if limit < 1:
            raise InvalidInput(f"limit must be >= 1, got {limit}.")
        if name is not None:
            validate_agent_name(name)
            if self._db.find_agent(name) is None and not self._db.events(agent_name=name, limit=1):
                raise AgentNotFound(name)
        return self._db.events(limit=limit, kinds=kinds, since=since, after=after, before=before, agent_name=name)

    def last_event_id(self) -> int:
        """The newest event's id (0 if none): poll it to notice events recorded by any Spinup process."""
        return self._db.last_event_id()

    def on_event(self, listener: Callable[[Event], None]) -> Callable[[], None]:
        """Call ``listener`` with every event this process records (from the thread that recorded it);
        returns a function that stops it."""
        self._db.event_listeners.append(listener)
        return lambda: self._db.event_listeners.remove(listener)

    def record_call(self, tool: str, agent: str | None, outcome: str, duration_s: float, error: str = "") -> None:
        """Record a tool call (by the current actor) as a ``tool-call`` event of ``agent`` or of the runtime."""
        known = self._db.find_agent(agent) if agent else None
        data = {"tool": tool, "outcome": outcome, "duration_ms": round(duration_s * 1000, 1)}
        if error:
            data["error"] = error[:500]
        self._db.record_event(known.id if known else None, "tool-call", f"{tool}: {outcome}", data)

    async def wake(self, name: str) -> Agent:
        """Make sure the agent's machine is running (start it, or rebuild it from its head) and return it."""
        return await self._agents.wake(name)

    async def machine(self, name: str) -> MachineInfo | None:
        """The agent's machine as Docker sees it now (without waking it), or None."""
        return await self._agents.machine(self._agents.get(name))

    async def status(self, name: str) -> AgentStatus:
        """The agent, its machine (without waking it), what it uses now and its recent events."""
        agent = self._agents.get(name)
        machine = await self._agents.machine(agent)
        usage = await self._usage.usage(agent, machine)
        return AgentStatus(
            agent,
            machine,
            self._agents.events(agent),
            usage.disk_used,
            self._db.packages(agent.id),
            self._execs.running(agent),
            usage,
        )

    async def usage(self, name: str) -> ResourceUse:
        """What the agent's machine uses now (without waking it): CPU over a short window, memory, pids,
        disk, store bytes, uptime, last activity."""
        agent = self._agents.get(name)
        return await self._usage.usage(agent, await self._agents.machine(agent))

    async def overview(self) -> builtins.list[AgentOverview]:
        """Every agent with its machine's state, image, what it uses now and its newest event (what
        ``spinup ps`` shows); machines are inspected concurrently and share one CPU window."""
        return await self._usage.overview(self._agents.list())

    async def pause(self, name: str) -> Agent:
        """Freeze every process of the agent's machine; calls that need it fail at once until :meth:`resume`."""
        return await self._agents.pause(name)

    async def resume(self, name: str) -> Agent:
        """Thaw a paused agent."""
        return await self._agents.resume(name)

    async def kill(self, name: str) -> Agent:
        """SIGKILL every process of the agent's machine now (no snapshot; files kept; the next call wakes it)."""
        agent = self._agents.get(name)
        self._execs.mark_killed(agent, _actor_name())
        killed = await self._agents.kill(name)
        self._processes.mark_lost(agent, f"the agent was killed by {_actor_name()}")
        return killed

    async def kill_exec(self, name: str, exec_id: str) -> ExecRecord:
        """Kill one running command (its process group and everything carrying its marker) by exec id.

        Refused while the agent is paused: the kill sweeps the machine with a command of its own, and
        nothing runs in a frozen machine (resume it first, or kill the whole agent)."""
        agent = self._agents.get(name)
        if agent.paused_at is not None:
            raise AgentPaused(name, agent.paused_at.isoformat(timespec="seconds"), agent.paused_by)
        record = self._execs.request_kill(agent, exec_id, _actor_name())
        assert record.docker_exec is not None
        async with self._agents.locks.using(agent):  # the sweep is an exec: never into a frozen machine
            await kill_command(self._docker, record.machine_id, record.docker_exec, record.marker, record.user)
        self._db.record_event(agent.id, "exec-killed", f"{exec_id} killed by {record.killed_by}", {"id": exec_id})
        return record

    def exec_log(self, name: str, exec_id: str) -> ExecLog:
        """A past command's record and its output (capped and redacted as returned), by exec id."""
        return self._execs.read(self._agents.get(name), exec_id)

    def recent_execs(self, name: str, limit: int = 20) -> builtins.list[ExecRecord]:
        """The agent's most recent commands, newest first."""
        return self._execs.recent(self._agents.get(name), limit)

    async def stop_agent(self, name: str, *, snapshot: bool = True, hibernate: bool = False) -> Agent:
        """Stop the agent's machine, first capturing a snapshot when anything changed; ``hibernate`` also
        removes the machine (the next wake rebuilds it from the snapshot)."""
        return await self._agents.stop(name, snapshot=snapshot, hibernate=hibernate)

    async def remove_agent(self, name: str) -> Agent:
        """Remove the agent: its machine, its record, and its snapshots that no other agent builds on."""
        agent = await self._agents.remove(name)
        self._execs.forget(agent.id)
        self._control_tokens.pop(agent.id, None)
        forget_token(self.settings.home, agent.id)
        return agent

    async def set_policy(self, name: str, policy: Policy, progress: ProgressFn | None = None) -> Agent:
        """Give the agent a new policy; its machine is rebuilt under it from a snapshot of its state."""
        return await self._agents.set_policy(name, policy, progress)

    @property
    def warm_pool_on(self) -> bool:
        """Whether this runtime keeps spare machines (a pooled image, a local daemon, Spinup as root)."""
        return bool(self._agents.pool.kinds()) and self._agents.pool.usable

    async def keep_warm(self) -> None:
        """A server's background loop: keep the warm pool filled (``Settings.warm_pool``) until cancelled."""
        if self.warm_pool_on:
            await self._agents.pool.keep_filled()

    async def fill_pool(self) -> int:
        """Make the warm pool's missing spare machines now; how many were made."""
        return await self._agents.pool.fill() if self.warm_pool_on else 0

    async def spare_count(self) -> int:
        """Unclaimed spare machines of this state directory."""
        return len(await self._agents.pool.spares())

    async def pool_levels(self) -> builtins.list[tuple[str, int, int]]:
        """Per pooled image and shape (``IMAGE`` or ``IMAGE+root``): the spare machines ready and how many are kept."""
        return await self._agents.pool.levels()

    async def reap_spares(self) -> int:
        """Remove every unclaimed spare machine of this state directory; how many."""
        return await self._agents.pool.reap()

    async def hibernate_idle(self, idle_seconds: float) -> builtins.list[str]:
        """Hibernate running agents not woken for ``idle_seconds``; returns their names."""
        return await self._agents.hibernate_idle(idle_seconds)

    def docker_host(self, to: str) -> str:
        """The address of a Docker daemon: a name from ``Settings.docker_hosts``, ``local`` (this process's
        daemon), or an address as in ``DOCKER_HOST``."""
        if to in self.settings.docker_hosts:
            return self.settings.docker_hosts[to]
        if to == "local":
            return self._docker.host
        if to.startswith(DOCKER_URL_SCHEMES):
            return to
        named = ", ".join(sorted(self.settings.docker_hosts)) or "none (set SPINUP_DOCKER_HOSTS=NAME=URL,...)"
        raise InvalidInput(
            f"{to!r} is not a Docker daemon Spinup knows: give an address as in DOCKER_HOST (unix:///path/docker.sock "
            f"or tcp://HOST:PORT), 'local' for this process's daemon, or a named one ({named})."
        )

    async def move_agent(self, name: str, to: str, progress: ProgressFn | None = None) -> Agent:
        """Move the agent to another Docker daemon (see :meth:`docker_host` for ``to``): captured, made again
        there from its snapshot, started, and the old machine removed; name, history and head are kept."""
        return await self._agents.move(name, self.docker_host(to), progress)

    async def rebuild(self, name: str, image: str) -> RebuildResult:
        """Move the agent to base ``image``: snapshot it, make a new machine, carry /workspace and the home
        directory over, reinstall its packages from the manifest, snapshot the result. The agent is held for
        the whole rebuild (other calls on it wait)."""
        before = self._agents.get(name)
        async with self._agents.locks.operating(before):
            return await self._rebuild_held(name, image, before)

    async def _rebuild_held(self, name: str, image: str, before: Agent) -> RebuildResult:
        saved = (await self._agents.snapshot(name, f"before rebuild on {image}")).snapshot
        manifest = self._db.packages(before.id)
        # Until finish_rebuild, a failure (or this process dying) puts the agent back on `saved`.
        async with self._agents.rebuilding(name, image, saved.id) as (agent, old):
            assert agent.machine_id is not None
            if old is not None:
                if old.paused:
                    await self._docker.unpause(old.id)
                await copy_directories(self._docker, old.id, agent.machine_id)
                self._agents.discard_machine(old.id)
            await self.exec(name, ["rm", "-rf", VENV, NPM_PREFIX], cwd="/")
            self._db.set_packages(agent.id, [])

            async def install(manager: PackageManager, specs: list[str]) -> dict[str, str]:
                result = await self._packages.install(self._agents.get(name), manager, specs)
                return {e.name: e.version for e in result.manifest if e.manager == manager}

            outcomes = await replay(manifest, install)
            self._agents.finish_rebuild(
                agent,
                [o.entry.model_copy(update={"version": o.version}) for o in outcomes if o.version is not None],
            )
        head = (await self._agents.snapshot(name, f"rebuilt on {image}")).snapshot
        self._db.record_event(
            agent.id,
            "rebuilt",
            f"on {image}: {len(outcomes)} packages replayed, head {head.id}",
            {"image": image, "saved": saved.id, "head": head.id, "packages": len(outcomes)},
        )
        return RebuildResult(self._agents.get(name), saved.id, head.id, outcomes)

    async def build_base_image(self, tag: str, on_line: Callable[[str], None] | None = None) -> str:
        """Build the default base image locally (mmdebstrap, then docker import) and tag it; returns its id."""
        return await build_base_image(self._docker, tag, on_line=on_line)

    # exec and files

    async def exec(
        self,
        name: str,
        command: str | list[str],
        *,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        stdin: bytes | None = None,
        timeout: float | None = None,
        output_cap: int | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> ExecResult:
        """Wake the agent and run a command in its machine as the policy's user.

        When the memory or pids limit hit the command, its stderr ends with a note that says so
        and ``limit`` names it.
        """
        if output_cap is not None:
            self.settings.ceilings.check_output(output_cap)
        # Held from the wake until the command runs: nothing freezes or replaces the machine in between.
        agent, hold = await self._agents.wake_and_hold(name)
        try:
            return await self._exec_held(agent, hold, command, cwd, env, stdin, timeout, output_cap, on_progress)
        finally:
            hold.release()

    async def _exec_held(
        self,
        agent: Agent,
        hold: Hold,
        command: str | list[str],
        cwd: str | None,
        env: dict[str, str] | None,
        stdin: bytes | None,
        timeout: float | None,
        output_cap: int | None,
        on_progress: ProgressCallback | None,
    ) -> ExecResult:
        assert agent.machine_id is not None
        machine_id = agent.machine_id
        await self._quota.check(agent)
        await self._secrets.sync_files(agent, machine_id)
        before = await self._counters(machine_id)
        first_event = self._db.last_event_id() if agent.policy.network == "allowlist" else 0
        user = exec_user(agent.policy)
        exec_id, marker = self._execs.begin(agent, command_text(command), cwd, user)
        try:
            self._secrets.record_use(agent)
            result = await run_command(
                self._docker,
                agent.machine_id,
                command,
                cwd=cwd,
                env=self._command_env(agent, env),
                redactor=self._secrets.redactor(),
                stdin=stdin,
                timeout=timeout if timeout is not None else self.settings.exec_timeout,
                output_cap=output_cap if output_cap is not None else self.settings.output_cap,
                user=user,
                on_progress=on_progress,
                marker=marker,
                on_created=lambda docker_exec: self._execs.attach(exec_id, docker_exec),
                guard=lambda: self._agents.using_machine(agent, machine_id),
                on_started=lambda: self._started(hold),
            )
        except BaseException as exc:
            self._execs.abandon(agent, exec_id, exc)
            raise
        finally:
            self._quota.changed(agent)
            self._access.forget(machine_id)
        after = await self._counters(machine_id)
        result = note_limits(result, agent, before, after)
        if agent.policy.network == "allowlist":
            denied = self._db.events(agent.id, limit=500, kinds=DENIAL_KINDS, after=first_event)
            result = replace(result, network_denied=summarize_denials(denied))
        return await self._execs.finish(agent, exec_id, result)

    @asynccontextmanager
    async def terminal(
        self,
        name: str,
        command: builtins.list[str] | None = None,
        *,
        rows: int = 24,
        cols: int = 80,
        term: str = "xterm-256color",
    ) -> AsyncIterator[Terminal]:
        """Wake the agent and start ``command`` (default: an interactive shell) with a terminal, in /workspace as
        the policy's user with the agent's environment and bound credentials, for the block (see
        :class:`Terminal`: keystrokes in, redacted output out, resize, how it ended)."""
        if rows < 1 or cols < 1:
            raise InvalidInput(f"A terminal needs at least one row and one column, not {rows}x{cols}.")
        argv = command or DEFAULT_SHELL
        agent, hold = await self._agents.wake_and_hold(name)
        try:
            assert agent.machine_id is not None
            machine_id = agent.machine_id
            await self._quota.check(agent)
            await self._secrets.sync_files(agent, machine_id)
            env = self._command_env(agent, {"TERM": term, "COLUMNS": str(cols), "LINES": str(rows)})
            execution = await self._docker.exec_create(
                machine_id, argv, env=env, workdir=WORKSPACE, user=exec_user(agent.policy), stdin=True, tty=True
            )
            self._secrets.record_use(agent)
            self._db.record_event(
                agent.id, "terminal", f"{command_text(command) if command else 'shell'} by {_actor_name()}"
            )
            async with execution.attach() as session:
                hold.release()  # the command runs: a snapshot may freeze it now, as any command
                with contextlib.suppress(SpinupError):  # a command that ended at once has no terminal left
                    await execution.resize(rows, cols)
                yield Terminal(self._docker, machine_id, execution, session, self._secrets.redactor().stream())
        finally:
            hold.release()

    def _command_env(self, agent: Agent, env: dict[str, str] | None) -> dict[str, str]:
        """What a command gets in its environment: the agent's name, its control endpoint (``self_control``), its
        bound credentials, then ``env``."""
        control = {URL_ENV: CONTROL_URL, TOKEN_ENV: self._control_token(agent.id)} if agent.policy.self_control else {}
        return {"SPINUP_AGENT": agent.name, **control, **self._secrets.exec_env(agent), **(env or {})}

    # the control endpoint of self_control agents

    async def control_listener(self, name: str) -> ControlListener | None:
        """For a running ``self_control`` agent on a local daemon: its machine id and a socket listening on
        127.0.0.1:7390 inside its machine, for the caller to serve the agent's control endpoint on; None when
        the agent has no endpoint now or another process already serves it."""
        agent = self._agents.get(name)
        if not agent.policy.self_control or agent.machine_id is None:
            return None
        machine = await self._docker.inspect(agent.machine_id)
        if machine is None or not machine.running or machine.paused or machine.pid <= 0:
            return None
        if not self._docker.of(machine.id).is_local:
            return None
        return await asyncio.to_thread(listen_in_machine, machine.id, machine.pid)

    def control_token(self, name: str) -> str:
        """The bearer token of the agent's control endpoint (what commands inside get as $SPINUP_CONTROL_TOKEN)."""
        return self._control_token(self._agents.get(name).id)

    def _control_token(self, agent_id: str) -> str:
        """The agent's control token, read (or made) once per process: it never changes while the agent lives."""
        if agent_id not in self._control_tokens:
            self._control_tokens[agent_id] = control_token(self.settings.home, agent_id)
        return self._control_tokens[agent_id]

    def _started(self, hold: Hold) -> None:
        """A command runs: let go of its machine (a snapshot may freeze it now)."""
        hold.release()
        self._fault(EXEC_RUNNING)

    async def _counters(self, machine_id: str) -> LimitCounters | None:
        if not self._docker.of(machine_id).is_local:
            return None
        counters = self._limits.counters(machine_id, 0)
        if counters is None:
            info = await self._docker.inspect(machine_id)
            counters = self._limits.counters(machine_id, info.pid) if info is not None else None
        return counters

    # background processes

    async def process_start(
        self,
        name: str,
        command: str | list[str],
        *,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        process_name: str | None = None,
    ) -> ProcessInfo:
        """Start ``command`` in the background and return at once; it outlives the call, the session
        and this process. Its output is read with :meth:`process_output`."""
        cwd = cwd or WORKSPACE
        argv = self._processes.validate(command, cwd, process_name)
        if not self._docker.at(self._agents.get(name).host).is_local:
            raise SpinupError(
                "Background processes need a local Docker daemon (their output is read from the host); "
                "run the command with exec, or run Spinup on the Docker host."
            )
        agent, hold = await self._agents.wake_and_hold(name)
        try:
            return await self._process_start_held(agent, hold, command, argv, cwd, env, process_name)
        finally:
            hold.release()

    async def _process_start_held(
        self,
        agent: Agent,
        hold: Hold,
        command: str | list[str],
        argv: list[str],
        cwd: str,
        env: dict[str, str] | None,
        process_name: str | None,
    ) -> ProcessInfo:
        name = agent.name
        assert agent.machine_id is not None
        await self._quota.check(agent)
        await self._secrets.sync_files(agent, agent.machine_id)
        machine = await self._agents.machine(agent)
        assert machine is not None
        process_id, marker = self._processes.new_ids()
        self._secrets.record_use(agent)
        before = await self._counters(machine.id)
        launched = await run_command(
            self._docker,
            machine.id,
            self._processes.launch_argv(process_id, marker, cwd, argv),
            cwd="/",
            env=self._command_env(agent, env),
            timeout=30,
            output_cap=8192,
            user=exec_user(agent.policy),
            redactor=self._secrets.redactor(),
            guard=lambda: self._agents.using_machine(agent, machine.id),
            on_started=hold.release,
        )
        if launched.exit_code != 0:
            said = (launched.stderr or launched.stdout).strip()
            after = await self._counters(machine.id)
            # At the limit the fork fails in the command, or earlier in Docker's own exec setup ("read init-p").
            refused = before is not None and after is not None and after.pids_refused > before.pids_refused
            if refused or "can't fork" in said or "Resource temporarily unavailable" in said:
                raise LimitReached(
                    f"Agent '{name}' is at its pids limit ({agent.policy.pids} processes and threads): no new process "
                    f"can start. Stop some (process_list, process_signal) or raise it: spinup agent policy {name} "
                    f"--pids <n>."
                )
            hint = (
                f" This machine predates background processes: hibernate it once (spinup agent stop {name} "
                f"--hibernate) so it is rebuilt with their in-memory directory."
                if PROCESS_DIR in said
                else ""
            )
            raise SpinupError(f"Could not start the process (exit {launched.exit_code}): {said}.{hint}")
        self._processes.record(
            agent, machine, process_id, marker, process_name, command_text(command), cwd, exec_user(agent.policy)
        )
        return self._processes.get(agent, process_id, machine)

    async def process_list(self, name: str) -> builtins.list[ProcessInfo]:
        """The agent's background processes (running, exited, lost), oldest first."""
        agent = self._agents.get(name)
        return self._processes.list(agent, await self._agents.machine(agent))

    async def process_output(
        self, name: str, process_id: str, *, stream: Stream = "stdout", offset: int = 0, max_bytes: int = 65536
    ) -> ProcessOutput:
        """A process's ``stream`` from byte ``offset`` (at most ``max_bytes``), credential values redacted."""
        agent = self._agents.get(name)
        machine = await self._agents.machine(agent)
        return self._processes.output(agent, process_id, machine, self._secrets.redactor(), stream, offset, max_bytes)

    async def process_wait(
        self, name: str, process_id: str, timeout: float, on_progress: ProgressCallback | None = None
    ) -> tuple[ProcessInfo, bool]:
        """Wait until the process ends or ``timeout`` seconds pass; returns it and whether it still runs."""
        if not 0 < timeout <= 86400:
            raise InvalidInput(f"timeout must be between 0 and 86400 seconds, got {timeout}.")
        agent = self._agents.get(name)
        started = time.monotonic()
        reported = started
        while True:
            info = self._processes.get(agent, process_id, await self._agents.machine(agent))
            elapsed = time.monotonic() - started
            if info.state != "running" or elapsed >= timeout:
                return info, info.state == "running"
            if on_progress is not None and time.monotonic() - reported >= 2:
                reported = time.monotonic()
                await on_progress(elapsed, info.stdout_bytes + info.stderr_bytes)
            await asyncio.sleep(min(wait_interval(elapsed), max(0.0, timeout - elapsed)))

    async def process_signal(self, name: str, process_id: str, signal: str = "TERM") -> ProcessInfo:
        """Send ``signal`` to the process's whole group (and whatever carries its marker)."""
        bare = parse_signal(signal)
        agent = self._agents.get(name)
        machine = await self._agents.machine(agent)
        info = self._processes.get(agent, process_id, machine)
        if info.state != "running" or machine is None:  # a running process has its machine running
            raise WrongState(f"Process {info.id} is {info.state}: there is nothing to signal.")
        if machine.paused:
            raise AgentPaused(
                name, (agent.paused_at or datetime.now(UTC)).isoformat(timespec="seconds"), agent.paused_by
            )
        child = self._processes.child_pid(agent, info.id, machine)
        marker = str(self._processes.row(agent, info.id)["marker"])
        number = Signals[f"SIG{bare}"]
        sent = await asyncio.to_thread(signal_marked, machine.id, marker, number, child)
        if sent == 0:
            raise WrongState(f"Process {info.id} has no process left to signal (it is ending).")
        self._db.record_event(
            agent.id, "process-signalled", f"{info.id} SIG{bare} ({sent} processes)", {"id": info.id, "signal": bare}
        )
        return self._processes.get(agent, info.id, machine)

    async def trim_process_output(self) -> int:
        """Bring every running background process back within its output cap (and notice the ended ones);
        servers call this twice a second. Returns how many processes were looked at."""
        running = self._processes.agents_running()
        looked = 0
        for agent in self._agents.list():
            if agent.id in running:
                looked += len(self._processes.list(agent, await self._agents.machine(agent)))
        return looked

    async def process_remove(self, name: str, process_id: str) -> ProcessInfo:
        """Forget an ended process and its output."""
        agent = self._agents.get(name)
        return self._processes.forget(agent, process_id, await self._agents.machine(agent))

    async def on_files(self, name: str, operation: Callable[[Files], Awaitable[T]]) -> T:
        """Wake the agent and run ``operation`` on its files; called again on the new machine when a restore or
        rebuild replaced the machine between the wake and the operation (which then did nothing)."""
        for _ in range(MACHINE_REPLACED_RETRIES):
            try:
                return await operation(await self.files(name))
            except MachineReplaced:
                log.info("the machine of agent %s was replaced before a file operation; again", name)
        return await operation(await self.files(name))

    async def files(self, name: str) -> Files:
        """Wake the agent and return file operations on its machine."""
        agent = await self._agents.wake(name)
        assert agent.machine_id is not None
        root = is_root(agent.policy)
        access = FileAccess(
            user=exec_user(agent.policy),
            owner=owner(agent.policy),
            check_access=not root,
            user_name="root" if root else "agent",
            memo=self._access,
        )

        async def as_agent() -> AgentFiles:
            machine = await self._agents.machine(agent)
            if machine is None or not machine.running or machine.pid <= 0:
                raise SpinupError(f"Agent '{agent.name}''s machine is not running; try again.")
            return AgentFiles(machine.pid, machine.id, owner(agent.policy), access.user_name, self._fault)

        machine_id = agent.machine_id
        # Not root: the agent's user does the I/O, so nothing races past its permissions. From the host on a
        # local daemon; elsewhere (a remote daemon) each operation is one command in the machine as that user.
        from_host = not root and self._docker.of(machine_id).is_local and as_agent_supported()
        in_machine = not root and not from_host
        return Files(
            self._docker,
            machine_id,
            access,
            redact=self._secrets.redactor().redact_bytes,
            write_guard=lambda: self._quota.check(agent),
            on_written=lambda: self._quota.changed(agent),
            record=lambda kind, detail, data: self._db.record_event(agent.id, kind, detail, data),
            ceilings=self.settings.ceilings,
            as_agent=as_agent if from_host else None,
            in_machine=InMachineFiles(self._docker, machine_id, access.user, access.user_name) if in_machine else None,
            guard=lambda: self._agents.using_machine(agent, machine_id),
        )

    # ports

    async def port_forward(self, name: str, port: int, host_port: int | None = None) -> PortForward:
        """Wake the agent and forward the host's 127.0.0.1:``host_port`` (a free one when None) to ``port`` on
        the machine's 127.0.0.1; returns the open forward when there is one.

        The forward lives in this process and ends when the machine stops, is killed, removed or
        replaced. Needs a local Docker daemon and root (it enters the machine's network namespace).
        """
        agent = await self._agents.wake(name)
        machine = await self._agents.machine(agent)
        return await self._ports.forward(agent, machine, port, host_port, self._docker.at(agent.host).is_local)

    def port_list(self, name: str | None = None) -> builtins.list[PortForward]:
        """The forwards this process made (of agent ``name`` when given), open and recently closed."""
        if name is not None:
            validate_agent_name(name)
        return self._ports.list(name)

    async def port_close(self, name: str, port: int) -> PortForward:
        """Close the forward of agent ``name``'s ``port`` made by this process (a closed one is returned as is)."""
        validate_agent_name(name)
        return self._ports.close(name, port, f"closed by {_actor_name()}")

    async def port_wait(self, name: str, port: int) -> PortForward:
        """Wait until the forward of agent ``name``'s ``port`` closes; returns it with the reason."""
        return await self._ports.wait_closed(name, port)

    # packages

    async def install_packages(
        self,
        name: str,
        manager: PackageManager,
        specs: list[str],
        on_progress: ProgressCallback | None = None,
    ) -> InstallResult:
        """Wake the agent and install packages with ``manager`` (pip, npm or apt), recording them."""
        agent = await self._agents.wake(name)
        result = await self._packages.install(agent, manager, specs, on_progress)
        return replace(
            result,
            requested=[self._secrets.redact(spec) for spec in result.requested],
            manifest=self._shown_packages(result.manifest),
        )

    async def install_harness(
        self,
        name: str,
        harness: str,
        credential: str | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> InstallResult:
        """Install a harness CLI (``claude-code``, ``codex``, ``gemini``) in the agent's machine through npm,
        recorded in the manifest; with ``credential`` (a stored secret), bind it as the harness's login variable.
        Under a ``self_control`` policy the harness is also pointed at the agent's control endpoint."""
        known = get_harness(harness)
        if credential is not None:
            self._secrets.require(credential)  # before the install, which takes a while
        result = await self.install_packages(name, "npm", known.specs(), on_progress)
        if credential is not None:
            self.bind_secret(name, credential, env=known.login_env)
        if self._agents.get(name).policy.self_control:
            connected = await self.exec(name, ["sh", "-c", known.connect], timeout=120)
            if connected.exit_code != 0:
                raise SpinupError(
                    f"{known.name} is installed, but pointing it at the agent's control endpoint failed: "
                    f"{(connected.stderr or connected.stdout).strip()[-500:]}"
                )
        self._db.record_event(
            self._agents.get(name).id,
            "harness-installed",
            f"{known.name} ({' '.join(known.specs())})" + (f", login from {credential}" if credential else ""),
        )
        return result

    async def remove_packages(self, name: str, manager: PackageManager, names: list[str]) -> list[PackageEntry]:
        """Wake the agent, uninstall packages and drop them from its manifest."""
        agent = await self._agents.wake(name)
        return self._shown_packages(await self._packages.remove(agent, manager, names))

    def package_manifest(self, name: str) -> list[PackageEntry]:
        """The agent's package manifest: each requested package and the version installed."""
        return self._shown_packages(self._packages.manifest(self._agents.get(name)))

    def export_packages(self, name: str, manager: PackageManager) -> str:
        """One manager's part of the manifest as requirements.txt, package.json or an apt list."""
        return self._secrets.redact(self._packages.export(self._agents.get(name), manager))

    def _shown_packages(self, entries: list[PackageEntry]) -> list[PackageEntry]:
        """Manifest entries with credential values redacted (a spec may carry one: git+https://user:TOKEN@...)."""
        redact = self._secrets.redact
        return [e.model_copy(update={"spec": redact(e.spec), "name": redact(e.name)}) for e in entries]

    async def _run_package_command(
        self, name: str, argv: list[str], timeout: float, on_progress: ProgressCallback | None
    ) -> ExecResult:
        return await self.exec(name, argv, timeout=timeout, on_progress=on_progress, cwd="/")

    # snapshots

    async def snapshot(self, name: str, label: str = "", progress: ProgressFn | None = None) -> CaptureResult:
        """Capture what the agent's machine changed since its head; returns the head if nothing did.

        Refused past the operator's ceilings on an agent's snapshots and store use (``Settings.ceilings``);
        the snapshots Spinup takes itself (before a stop, a restore, a policy change) are not.
        """
        agent = self._agents.get(name)
        stored = self._db.store_bytes([agent.id]).get(agent.id, 0)
        self.settings.ceilings.check_snapshot(name, len(self._db.list_snapshots(agent.id)), stored)
        return await self._agents.snapshot(name, label, progress)

    async def restore(self, name: str, snapshot_id: str, progress: ProgressFn | None = None) -> RestoreResult:
        """Replace the agent's machine with one made from ``snapshot_id``; unsnapshotted work is saved first."""
        agent, saved = await self._agents.restore(name, snapshot_id, progress)
        return RestoreResult(agent, saved)

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
        """Create a new agent ``name`` whose machine starts from ``snapshot_id`` (its parent's policy by default,
        ``network``/``user`` changed when given); with ``grants`` (an MCP client's, see ``Settings.mcp_grants``)
        a policy beyond them is refused."""
        return await self._agents.fork(snapshot_id, name, policy, grants, network=network, user=user)

    def check_snapshot_of(self, name: str, snapshot_id: str, *, own_only: bool = False) -> Snapshot:
        """The snapshot, if it is agent ``name``'s own or (unless ``own_only``) the one it was forked from;
        otherwise :class:`ForeignSnapshot`."""
        return self._snapshots.check_of(self._agents.get(name), snapshot_id, own_only=own_only)

    def get_snapshot(self, snapshot_id: str) -> Snapshot:
        """The snapshot with this id; a clear error if there is none."""
        return self._snapshots.get(snapshot_id)

    def list_snapshots(self, name: str | None = None) -> builtins.list[Snapshot]:
        """The snapshots of agent ``name`` (of every agent when None), oldest first."""
        return self._snapshots.list(self._agents.get(name) if name is not None else None)

    async def delete_snapshot(self, snapshot_id: str) -> Snapshot:
        """Delete a snapshot nothing builds on and that is no agent's head; its blobs go at the next gc."""
        return await self._snapshots.delete(snapshot_id)

    async def diff(self, name: str, source: str | None = None, target: str | None = None) -> SnapshotDiff:
        """Paths added, changed and removed from ``source`` (default: the head) to ``target`` (default: the live
        machine, which is woken)."""
        agent = self._agents.get(name)
        source = source or agent.head_snapshot
        before = await self._snapshots.tree(self._snapshots.get(source)) if source is not None else {}
        if target is not None:
            after = await self._snapshots.tree(self._snapshots.get(target))
        else:
            agent = await self._agents.wake(name)
            machine = await self._agents.machine(agent)
            assert machine is not None
            # The live machine is its head's listing plus the unsnapshotted changes.
            after = await self._snapshots.live_tree(agent, machine)
        changes = await self._snapshots.diff(before, after)
        redact = self._secrets.redact  # paths are the agent's to name, so a credential value may be one
        return SnapshotDiff(
            source or "base image",
            target or "live machine",
            [redact(path) for path in changes.added],
            [redact(path) for path in changes.changed],
            [redact(path) for path in changes.removed],
        )

    async def verify_store(self) -> VerifyReport:
        """Re-hash every blob of the snapshot store and check every snapshot's references."""
        return await self._snapshots.verify()

    async def collect_garbage(self) -> GcResult:
        """Remove unreferenced blobs and interrupted writes from the store (safe while snapshots are taken)."""
        return await self._snapshots.gc()

    async def export_snapshot(self, snapshot_id: str, destination: Path, format: str = "docker") -> int:
        """Write the snapshot (base image included) as a ``docker save`` archive (``docker``) or an OCI archive
        (``oci``); returns its size in bytes."""
        return await self._snapshots.export(self._snapshots.get(snapshot_id), destination, format)

    async def push_snapshot(
        self,
        snapshot_or_agent: str,
        ref: str,
        *,
        insecure: bool = False,
        credential: str | None = None,
        progress: ProgressFn | None = None,
    ) -> Pushed:
        """Push a snapshot (or an agent's head) to a registry as a complete OCI image; only blobs the
        registry lacks are sent. ``credential`` names a secret holding ``user:password``; ``insecure``
        (plain HTTP) is for a loopback registry only."""
        image_ref = parse_ref(ref, insecure)
        if snapshot_or_agent.startswith("s-"):
            snapshot = self._snapshots.get(snapshot_or_agent)
        else:
            agent = self._agents.get(snapshot_or_agent)
            if agent.head_snapshot is None:
                raise InvalidInput(f"Agent '{agent.name}' has no snapshot yet: take one (spinup snapshot create).")
            snapshot = self._snapshots.get(agent.head_snapshot)
        value = self._secrets.store.get(credential) if credential else None
        return await self._snapshots.transfer.push(snapshot, image_ref, value, progress)

    async def pull_agent(
        self,
        ref: str,
        name: str | None = None,
        *,
        insecure: bool = False,
        credential: str | None = None,
        progress: ProgressFn | None = None,
    ) -> Agent:
        """Make a new agent from a snapshot in a registry (default name: the reference's last path part); only
        blobs the store lacks are fetched, and everything is checked before it is stored. The agent runs
        under the default policy: a pulled image never brings its own."""
        image_ref = parse_ref(ref, insecure)
        name = name or image_ref.path.rsplit("/", 1)[-1]
        validate_agent_name(name)
        if self._db.find_agent(name) is not None:
            raise AgentExists(f"An agent named '{name}' exists already: pull with another --name.")
        value = self._secrets.store.get(credential) if credential else None
        snapshot = await self._snapshots.transfer.fetch(image_ref, value, progress)
        packages = await self._snapshots.packages(snapshot)
        return await self._agents.from_pulled(name, snapshot, packages)

    async def migrate_store(self, progress: ProgressFn | None = None) -> MigrateResult:
        """Rewrite snapshots taken before base images were stored so they list their base layers (resumable)."""
        return await self._snapshots.migrate(progress)

    # credentials

    def set_secret(self, name: str, value: str, *, overwrite: bool = True) -> SecretInfo:
        """Store (or, with ``overwrite``, replace) a credential's value, encrypted at rest."""
        return self._secrets.set(name, value, overwrite=overwrite)

    def remove_secret(self, name: str) -> SecretInfo:
        """Delete a credential and every binding of it."""
        return self._secrets.remove(name)

    def list_secrets(self) -> builtins.list[SecretListing]:
        """Stored credentials (names, fingerprints, bound agents), never values."""
        return self._secrets.list()

    def bind_secret(
        self, name: str, secret: str, env: str | None = None, file: str | None = None, header: str | None = None
    ) -> SecretBinding:
        """Give agent ``name`` the credential ``secret`` as an environment variable, a file, and/or a header the
        egress proxy adds for one host (``host:Header:template``, the value never entering the machine)."""
        return self._secrets.bind(self._agents.get(name), secret, env=env, file=file, header=header)

    def unbind_secret(self, name: str, secret: str) -> None:
        """Stop giving agent ``name`` the credential ``secret``."""
        self._secrets.unbind(self._agents.get(name), secret)

    def rotate_master_key(self, new_key: bytes | None = None) -> str:
        """Re-encrypt every credential under a new key; returns ``"env"`` or ``"file"`` (where the key is)."""
        return self._secrets.rotate_key(new_key)

    def redact(self, text: str) -> str:
        """``text`` with every credential value (and its encodings) replaced by ``[REDACTED:NAME]``."""
        return self._secrets.redact(text)


def _actor_name() -> str:
    actor = current_actor()
    return actor.describe() if actor is not None else "spinup"
