"""What an agent writes survives: stop + wake, a server restart, a machine removed out of band.

Full rehydration of a removed machine from the head snapshot comes with snapshots; for now a
removed machine is recreated from the base image and the event is recorded.
"""

from __future__ import annotations

from mcp import Client

from conftest import docker_cli, held_open, unique_name
from spinup.runtime import Runtime, Settings
from spinup.server.app import build_server

SETUP = (
    "mkdir -p /workspace/proj /home/agent/.venv/lib/site-packages/fakepkg && "
    "echo 'print(42)' > /workspace/proj/main.py && "
    "echo '__version__ = \"1.0\"' > /home/agent/.venv/lib/site-packages/fakepkg/__init__.py"
)
CHECK = "cat /workspace/proj/main.py /home/agent/.venv/lib/site-packages/fakepkg/__init__.py"
EXPECTED = 'print(42)\n__version__ = "1.0"\n'


async def test_files_and_installed_packages_survive_stop_and_wake(runtime: Runtime, agent: str) -> None:
    assert (await runtime.exec(agent, SETUP)).exit_code == 0
    await runtime.stop_agent(agent)
    assert (await runtime.exec(agent, CHECK)).stdout == EXPECTED


async def test_an_agent_outlives_the_server_process(settings: Settings) -> None:
    name = unique_name("restart")
    async with held_open(Client(build_server(settings))) as first:
        await first.call_tool("agent_create", {"name": name})
        await first.call_tool("exec", {"agent": name, "command": SETUP})
        await first.call_tool("file_write", {"agent": name, "path": "/workspace/note.md", "content": "kept"})
    # A new server (and runtime) over the same state directory sees the same agent and files.
    async with held_open(Client(build_server(settings, agent=name))) as second:
        check = await second.call_tool("exec", {"command": CHECK})
        assert check.structured_content and check.structured_content["stdout"] == EXPECTED
        note = await second.call_tool("file_read", {"path": "/workspace/note.md"})
        assert note.structured_content and note.structured_content["content"] == "kept"
        await second.call_tool("agent_remove", {"agent": name})


async def test_a_machine_removed_out_of_band_is_recreated_and_the_event_recorded(
    runtime: Runtime, agent: str
) -> None:
    await runtime.exec(agent, SETUP)
    old = runtime.get_agent(agent).machine_id
    assert old
    docker_cli("rm", "-f", old)
    result = await runtime.exec(agent, "test -d /workspace && echo alive")
    assert result.stdout == "alive\n"
    status = await runtime.status(agent)
    recreated = [e for e in status.events if e.kind == "machine-recreated"]
    assert recreated and "base image" in recreated[-1].detail
    assert status.agent.machine_id != old


async def test_two_agents_cannot_see_each_others_files_or_processes(runtime: Runtime) -> None:
    first, second = unique_name("iso"), unique_name("iso")
    await runtime.create_agent(first)
    await runtime.create_agent(second)
    await runtime.exec(first, "echo secret > /workspace/only-first.txt; nohup sleep 123 >/dev/null 2>&1 &")
    files = await runtime.files(second)
    assert not await files.exists("/workspace/only-first.txt")
    seen = await runtime.exec(second, "cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' '")
    assert "sleep 123" not in seen.stdout
    mine = await runtime.exec(first, "cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' '")
    assert "sleep 123" in mine.stdout
