"""Agents and their lifecycle: create, wake, stop, remove.

Wake runs before every operation on an agent: a running machine is used as is, a stopped one
is started, a missing one is created again. Each step is recorded as an event.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
from collections import defaultdict

from .config import Settings
from .docker import AGENT_LABEL, DockerBackend, MachineInfo
from .errors import AgentExists, DockerFailure, ImageNotFound
from .machines import machine_config, machine_name
from .models import Agent, AgentState, Event, Policy, validate_agent_name
from .state import StateDB

log = logging.getLogger(__name__)


class AgentService:
    """Owns agent records and keeps each agent's machine in the state callers expect."""

    def __init__(self, settings: Settings, db: StateDB, docker: DockerBackend) -> None:
        self.settings = settings
        self.db = db
        self.docker = docker
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    async def create(self, name: str, image: str | None = None, policy: Policy | None = None) -> Agent:
        """Create an agent and start its machine. The image must already be in Docker."""
        validate_agent_name(name)
        image = image or self.settings.default_image
        await self._require_image(image)
        agent = self.db.create_agent(name, image, policy or Policy())
        try:
            return await self.wake(name)
        except BaseException:
            log.warning("machine for new agent %s failed to start; removing the record", name)
            await self._remove_machines(agent)
            self.db.delete_agent(agent.id)
            raise

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
        """Make sure the agent's machine is running and return the fresh record."""
        agent = self.get(name)
        async with self._locks[agent.id]:
            agent = self.get(name)
            info = await self.machine(agent)
            if info is None:
                if agent.machine_id is not None:
                    self.db.record_event(agent.id, "machine-missing", f"machine {agent.machine_id[:12]} is gone")
                await self._create_machine(agent, recreated=agent.machine_id is not None)
            elif info.paused:
                await self.docker.unpause(info.id)
                self.db.record_event(agent.id, "machine-unpaused", info.id[:12])
            elif not info.running:
                await self.docker.start(info.id)
                self.db.set_machine(agent.id, info.id, AgentState.RUNNING)
                self.db.record_event(agent.id, "machine-started", info.id[:12])
            elif agent.state is not AgentState.RUNNING:
                self.db.set_machine(agent.id, info.id, AgentState.RUNNING)
            return self.get(name)

    async def stop(self, name: str) -> Agent:
        """Stop the agent's machine; its files stay in the machine's writable layer."""
        agent = self.get(name)
        async with self._locks[agent.id]:
            info = await self.machine(agent)
            if info is None:
                self.db.set_machine(agent.id, agent.machine_id, AgentState.MISSING)
            elif info.running:
                await self.docker.stop(info.id)
                self.db.set_machine(agent.id, info.id, AgentState.STOPPED)
                self.db.record_event(agent.id, "machine-stopped", info.id[:12])
            else:
                self.db.set_machine(agent.id, info.id, AgentState.STOPPED)
            return self.get(name)

    async def remove(self, name: str) -> Agent:
        """Remove the agent: its machine and its record."""
        agent = self.get(name)
        async with self._locks[agent.id]:
            await self._remove_machines(agent)
            self.db.delete_agent(agent.id)
        self._locks.pop(agent.id, None)
        return agent

    async def _require_image(self, image: str) -> None:
        if not await self.docker.image_exists(image):
            raise ImageNotFound(image, self.settings.default_image)

    async def _create_machine(self, agent: Agent, recreated: bool) -> None:
        await self._require_image(agent.image)
        config = machine_config(agent, self.settings, agent.image)
        name = machine_name(agent)
        try:
            machine_id = await self.docker.create_container(config, name=name)
        except DockerFailure as exc:
            if exc.status != 409:
                raise
            # A leftover container holds the name (for example after a lost record): replace it.
            await self.docker.remove(name)
            machine_id = await self.docker.create_container(config, name=name)
        await self.docker.start(machine_id)
        self.db.set_machine(agent.id, machine_id, AgentState.RUNNING)
        kind = "machine-recreated" if recreated else "machine-created"
        self.db.record_event(agent.id, kind, f"machine {machine_id[:12]} from base image {agent.image}")

    async def _remove_machines(self, agent: Agent) -> None:
        ids = set(await self.docker.list_by_label(f"{AGENT_LABEL}={agent.id}"))
        if agent.machine_id:
            ids.add(agent.machine_id)
        for machine_id in ids:
            await self.docker.remove(machine_id)
