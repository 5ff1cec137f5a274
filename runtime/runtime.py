"""The runtime facade: one object the server (or a script) holds to drive agents."""

from __future__ import annotations

from dataclasses import dataclass

from spinup.snapshot.listing import Meta

from .agents import AgentService
from .config import Settings
from .docker import DockerBackend, MachineInfo
from .exec import ExecResult, ProgressCallback, run_command
from .files import Files
from .models import Agent, Event
from .snapshots import SnapshotService
from .state import StateDB


@dataclass(frozen=True)
class AgentStatus:
    """An agent with its machine as Docker sees it now and its recent events."""

    agent: Agent
    machine: MachineInfo | None
    events: list[Event]


class Runtime:
    """Agents, their machines, exec and files, over one Docker client and one state database."""

    def __init__(self, settings: Settings | None = None, docker: DockerBackend | None = None) -> None:
        self.settings = settings or Settings()
        self.docker = docker or DockerBackend()
        self.db = StateDB(self.settings.db_path)
        self.snapshots = SnapshotService(self.settings, self.db, self.docker)
        self.agents = AgentService(self.settings, self.db, self.docker, self.snapshots)

    async def close(self) -> None:
        """Finish background removals, then release the Docker client and the database."""
        await self.agents.drain()
        await self.docker.close()
        self.db.close()

    async def status(self, name: str) -> AgentStatus:
        """The agent, its machine (without waking it) and its recent events."""
        agent = self.agents.get(name)
        return AgentStatus(agent, await self.agents.machine(agent), self.agents.events(agent))

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
        """Wake the agent and run a command in its machine."""
        agent = await self.agents.wake(name)
        assert agent.machine_id is not None
        return await run_command(
            self.docker,
            agent.machine_id,
            command,
            cwd=cwd,
            env=env,
            stdin=stdin,
            timeout=timeout if timeout is not None else self.settings.exec_timeout,
            output_cap=output_cap if output_cap is not None else self.settings.output_cap,
            on_progress=on_progress,
        )

    async def files(self, name: str) -> Files:
        """Wake the agent and return file operations on its machine."""
        agent = await self.agents.wake(name)
        assert agent.machine_id is not None
        return Files(self.docker, agent.machine_id)

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
