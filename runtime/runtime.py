"""The runtime facade: one object the server (or a script) holds to drive agents."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from spinup.snapshot.listing import Meta

from .agents import AgentService
from .config import Settings
from .docker import DockerBackend, MachineInfo
from .exec import ExecResult, ProgressCallback, run_command
from .files import AccessMemo, FileAccess, Files
from .limits import LimitCounters, LimitWatch
from .logredact import add_log_redactor, remove_log_redactor
from .models import Agent, Event, PackageEntry, PackageManager, format_size
from .packages import InstallResult, PackageService
from .policy import NPM_PREFIX, VENV, exec_user, is_root, owner
from .quota import DiskQuota
from .rebuild import Reinstalled, copy_directories, replay
from .secrets import SecretService
from .snapshots import SnapshotService
from .state import StateDB


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


class Runtime:
    """Agents, their machines, exec and files, over one Docker client and one state database."""

    def __init__(self, settings: Settings | None = None, docker: DockerBackend | None = None) -> None:
        self.settings = settings or Settings()
        self.docker = docker or DockerBackend()
        self.db = StateDB(self.settings.db_path)
        self.snapshots = SnapshotService(self.settings, self.db, self.docker)
        self.agents = AgentService(self.settings, self.db, self.docker, self.snapshots)
        self.quota = DiskQuota(self.docker)
        self.limits = LimitWatch()
        self.access = AccessMemo()
        self.agents.machine_removed += [self.quota.forget, self.limits.forget, self.access.forget]
        self.secrets = SecretService(self.settings, self.db, self.docker)
        self.packages = PackageService(self.db, self.settings.sources_dir, self._run_package_command)
        self.db.redact = self.secrets.redact
        add_log_redactor(self.secrets.redact)

    async def close(self) -> None:
        """Finish background removals, then release the Docker client and the database."""
        await self.agents.drain()
        await self.quota.drain()
        remove_log_redactor(self.secrets.redact)
        await self.docker.close()
        self.db.close()

    async def status(self, name: str) -> AgentStatus:
        """The agent, its machine (without waking it) and its recent events."""
        agent = self.agents.get(name)
        machine = await self.agents.machine(agent)
        used = await self.quota.measure(machine.id) if machine is not None else None
        return AgentStatus(agent, machine, self.agents.events(agent), used, self.db.packages(agent.id))

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
        agent = await self.agents.wake(name)
        assert agent.machine_id is not None
        await self.quota.check(agent)
        await self.secrets.sync_files(agent, agent.machine_id)
        before = await self._counters(agent.machine_id)
        try:
            result = await run_command(
                self.docker,
                agent.machine_id,
                command,
                cwd=cwd,
                env={**self.secrets.exec_env(agent), **(env or {})},
                redactor=self.secrets.redactor(),
                stdin=stdin,
                timeout=timeout if timeout is not None else self.settings.exec_timeout,
                output_cap=output_cap if output_cap is not None else self.settings.output_cap,
                user=exec_user(agent.policy),
                on_progress=on_progress,
            )
        finally:
            self.quota.changed(agent)
            self.access.forget(agent.machine_id)
        after = await self._counters(agent.machine_id)
        return _note_limits(result, agent, before, after)

    async def install_packages(
        self,
        name: str,
        manager: PackageManager,
        specs: list[str],
        on_progress: ProgressCallback | None = None,
    ) -> InstallResult:
        """Wake the agent and install packages with ``manager`` (pip, npm or apt), recording them."""
        agent = await self.agents.wake(name)
        return await self.packages.install(agent, manager, specs, on_progress)

    async def remove_packages(self, name: str, manager: PackageManager, names: list[str]) -> list[PackageEntry]:
        """Wake the agent, uninstall packages and drop them from its manifest."""
        agent = await self.agents.wake(name)
        return await self.packages.remove(agent, manager, names)

    async def rebuild(self, name: str, image: str) -> RebuildResult:
        """Move the agent to base ``image``: snapshot it, make a new machine, carry /workspace and the home
        directory over, reinstall its packages from the manifest, snapshot the result."""
        before = self.agents.get(name)
        saved = (await self.agents.snapshot(name, f"before rebuild on {image}")).snapshot
        manifest = self.db.packages(before.id)
        agent, old = await self.agents.move_to_image(name, image)
        assert agent.machine_id is not None
        if old is not None:
            if old.paused:
                await self.docker.unpause(old.id)
            await copy_directories(self.docker, old.id, agent.machine_id)
            self.agents.discard_machine(old.id)
        await self.exec(name, ["rm", "-rf", VENV, NPM_PREFIX], cwd="/")
        self.db.set_packages(agent.id, [])

        async def install(manager: PackageManager, specs: list[str]) -> dict[str, str]:
            result = await self.packages.install(self.agents.get(name), manager, specs)
            return {e.name: e.version for e in result.manifest if e.manager == manager}

        outcomes = await replay(manifest, install)
        self.db.set_packages(
            agent.id,
            [o.entry.model_copy(update={"version": o.version}) for o in outcomes if o.version is not None],
        )
        head = (await self.agents.snapshot(name, f"rebuilt on {image}")).snapshot
        return RebuildResult(self.agents.get(name), saved.id, head.id, outcomes)

    async def _run_package_command(
        self, name: str, argv: list[str], timeout: float, on_progress: ProgressCallback | None
    ) -> ExecResult:
        return await self.exec(name, argv, timeout=timeout, on_progress=on_progress, cwd="/")

    async def _counters(self, machine_id: str) -> LimitCounters | None:
        if not self.docker.is_local:
            return None
        counters = self.limits.counters(machine_id, 0)
        if counters is None:
            info = await self.docker.inspect(machine_id)
            counters = self.limits.counters(machine_id, info.pid) if info is not None else None
        return counters

    async def files(self, name: str) -> Files:
        """Wake the agent and return file operations on its machine."""
        agent = await self.agents.wake(name)
        assert agent.machine_id is not None
        root = is_root(agent.policy)
        access = FileAccess(
            user=exec_user(agent.policy),
            owner=owner(agent.policy),
            check_access=not root,
            user_name="root" if root else "agent",
            memo=self.access,
        )
        return Files(
            self.docker,
            agent.machine_id,
            access,
            redact=self.secrets.redactor().redact_bytes,
            write_guard=lambda: self.quota.check(agent),
            on_written=lambda: self.quota.changed(agent),
        )

    async def snapshot_diff_inputs(
        self, name: str, source: str | None, target: str | None
    ) -> tuple[str | None, dict[str, Meta], str]:
        """Resolve a diff request: the source snapshot id, the target listing and the target's name."""
        agent = self.agents.get(name)
        source = source or agent.head_snapshot
        if source is not None:
            self.snapshots.get(source)  # a clear error for an unknown id
        if target is not None:
            return source, await self.snapshots.tree(self.snapshots.get(target)), target
        agent = await self.agents.wake(name)
        machine = await self.agents.machine(agent)
        assert machine is not None
        # The live machine is its head's listing plus the unsnapshotted changes.
        return source, await self.snapshots.live_tree(agent, machine), "live machine"


def _note_limits(
    result: ExecResult, agent: Agent, before: LimitCounters | None, after: LimitCounters | None
) -> ExecResult:
    """Say in words which limit hit the command, judging by the kernel's counters."""
    if before is None or after is None:
        return result
    notes: list[str] = []
    limit = None
    if after.oom_kills > before.oom_kills:
        limit = "memory"
        notes.append(
            f"[spinup: the memory limit ({format_size(agent.policy.memory)}) was hit: the kernel killed a process "
            f"of this machine for using too much memory. Use less, or raise it: spinup agent policy "
            f"{agent.name} --memory <size>]"
        )
    if after.pids_refused > before.pids_refused:
        limit = limit or "pids"
        notes.append(
            f"[spinup: the pids limit ({agent.policy.pids} processes and threads) was hit: new processes could not "
            f"be created. Raise it with: spinup agent policy {agent.name} --pids <n>]"
        )
    if not notes:
        return result
    stderr = result.stderr + ("\n" if result.stderr else "") + "\n".join(notes)
    return replace(result, stderr=stderr, limit=limit)
