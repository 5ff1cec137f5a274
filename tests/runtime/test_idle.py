"""Idle agents hibernate on their own when a timeout is configured, and come back intact."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from mcp import Client

from conftest import held_open, unique_name
from spinup.runtime import AgentState, Runtime, Settings
from spinup.server.app import build_server


async def test_idle_timeout_is_off_by_default(settings: Settings) -> None:
    assert settings.idle_timeout == 0


async def test_an_idle_agent_is_hibernated_and_woken_with_its_files(runtime: Runtime, agent: str) -> None:
    await runtime.exec(agent, "echo kept > /workspace/idle.txt")
    assert await runtime.hibernate_idle(3600) == []
    hibernated = await runtime.hibernate_idle(0)
    assert hibernated == [agent]
    record = runtime.get_agent(agent)
    assert record.state is AgentState.HIBERNATED and record.machine_id is None and record.head_snapshot
    assert (await runtime.exec(agent, "cat /workspace/idle.txt")).stdout == "kept\n"


async def test_the_server_hibernates_idle_agents_in_the_background(settings: Settings) -> None:
    name = unique_name("idle")
    async with held_open(Client(build_server(replace(settings, idle_timeout=0.5), agent=name))) as client:
        await client.call_tool("exec", {"command": "echo back > /workspace/x"})
        async with asyncio.timeout(30):
            while True:
                status = await client.call_tool("agent_status", {})
                assert status.structured_content is not None
                if status.structured_content["agent"]["state"] == "hibernated":
                    break
                await asyncio.sleep(0.2)
        again = await client.call_tool("exec", {"command": "cat /workspace/x"})
        assert again.structured_content and again.structured_content["stdout"] == "back\n"
        await client.call_tool("agent_remove", {"agent": name})
