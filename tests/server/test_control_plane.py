"""The control plane over MCP: events with their clients, exec history, pause/resume/kill, resource updates.

Real parts throughout: the real MCP client in memory and over stdio, one real Docker daemon, one
state directory shared by every server of a test (as a harness and an operator would share it).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.types import Implementation, ResourceUpdatedNotification

from conftest import call, docker_cli, fails, held_open, server_env, unique_name
from spinup.runtime import Runtime, Settings
from spinup.server.app import build_server

SPINUP = str(Path(sys.executable).with_name("spinup"))
HARNESS = Implementation(name="test-harness", version="9.9.9")
OPERATOR = Implementation(name="test-operator", version="1.0")
TOKEN = "tok-3f9a7c1e5b2d8046"  # a credential value that must never come back


@pytest.fixture
async def harness(settings: Settings) -> AsyncIterator[Client]:
    """An in-memory MCP client that introduces itself as test-harness 9.9.9."""
    async with held_open(Client(build_server(settings), client_info=HARNESS)) as c:
        yield c


@pytest.fixture
async def made(harness: Client) -> AsyncIterator[str]:
    """An agent created through the harness, removed at the end."""
    name = unique_name("cp")
    await call(harness, "agent_create", name=name)
    yield name
    await harness.call_tool("agent_remove", {"agent": name})


def upper_file(machine_id: str, path: str) -> str:
    """A file of the machine read from the host through its overlay upper directory."""
    upper = docker_cli("inspect", "-f", "{{.GraphDriver.Data.UpperDir}}", machine_id).stdout.strip()
    return (Path(upper) / path.lstrip("/")).read_text()


async def test_a_scripted_session_records_each_step_with_the_client_that_made_it(
    settings: Settings, harness: Client
) -> None:
    name = unique_name("cp")
    await call(harness, "agent_create", name=name)
    try:
        ran = await call(harness, "exec", agent=name, command="echo hi > /workspace/a && echo done")
        assert ran["id"].startswith("x-") and ran["stdout"] == "done\n"
        await call(harness, "file_write", agent=name, path="/workspace/b.txt", content="hello")
        await call(harness, "file_move", agent=name, source="/workspace/b.txt", destination="/workspace/c.txt")
        await call(harness, "file_delete", agent=name, path="/workspace/c.txt")
        await call(harness, "snapshot_create", agent=name, label="one")
        await fails(harness, "exec_log", agent=name, exec_id="x-000000000000")
        page = await call(harness, "agent_events", agent=name, limit=100)
        steps = [(e["kind"], e["data"].get("tool")) for e in page["events"]]
        assert steps == [
            ("created", None),
            ("machine-created", None),
            ("tool-call", "agent_create"),
            ("exec", None),
            ("tool-call", "exec"),
            ("file-written", None),
            ("tool-call", "file_write"),
            ("file-moved", None),
            ("tool-call", "file_move"),
            ("file-deleted", None),
            ("tool-call", "file_delete"),
            ("snapshot-created", None),
            ("tool-call", "snapshot_create"),
            ("tool-call", "exec_log"),
        ]
        for event in page["events"]:
            assert event["actor"]["client"] == "test-harness", event
            assert event["actor"]["version"] == "9.9.9" and event["actor"]["transport"] == "in-memory"
        assert {e["actor"].get("session") for e in page["events"]} == {None}  # 2026-07-28 has no sessions
        exec_event = page["events"][3]
        assert exec_event["data"]["id"] == ran["id"] and exec_event["data"]["exit_code"] == 0
        assert exec_event["data"]["stdout_bytes"] == 5 and exec_event["data"]["cwd"] is None
        assert page["events"][5]["data"] == {"path": "/workspace/b.txt", "size": 5}
        outcomes = [e["data"]["outcome"] for e in page["events"] if e["kind"] == "tool-call"]
        assert outcomes == ["ok"] * 6 + ["error"]
        # Filters and paging.
        only_exec = await call(harness, "agent_events", agent=name, kind=["exec"])
        assert [e["data"]["id"] for e in only_exec["events"]] == [ran["id"]]
        newest = await call(harness, "agent_events", agent=name, limit=2)
        assert newest["next_before"] == newest["events"][0]["id"]
        older = await call(harness, "agent_events", agent=name, limit=2, before=newest["next_before"])
        assert older["events"][-1]["id"] < newest["events"][0]["id"]
        later = await call(harness, "agent_events", agent=name, after=newest["last_id"])
        assert [e["data"].get("tool") for e in later["events"]] == ["agent_events"] * 2
        assert "since must be an ISO 8601" in await fails(harness, "agent_events", agent=name, since="yesterday")
        assert "No agent named" in await fails(harness, "agent_events", agent="no-such-agent")

        # A second client, over stdio, in another process on the same state: told apart.
        params = StdioServerParameters(command=SPINUP, args=["mcp"], env=server_env(settings))
        async with Client(params, client_info=OPERATOR, mode="legacy") as operator:
            await call(operator, "exec", agent=name, command="true")
        events = (await call(harness, "agent_events", agent=name, kind=["exec", "tool-call"], limit=4))["events"]
        by_client = [(e["kind"], e["actor"]["client"], e["actor"]["transport"]) for e in events]
        sessions = {e["actor"].get("session") for e in events[-2:]}
        assert len(sessions) == 1 and None not in sessions  # one stdio connection, one session
        assert by_client == [
            ("tool-call", "test-harness", "in-memory"),
            ("tool-call", "test-harness", "in-memory"),
            ("exec", "test-operator", "stdio"),
            ("tool-call", "test-operator", "stdio"),
        ]
    finally:
        await harness.call_tool("agent_remove", {"agent": name})


async def test_exec_output_is_kept_redacted_and_readable_by_id_after_a_restart(settings: Settings) -> None:
    name = unique_name("cp")
    async with Client(build_server(settings), client_info=HARNESS) as first:
        await call(first, "agent_create", name=name)
    runtime = Runtime(settings)
    try:
        runtime.set_secret("API_TOKEN", TOKEN)
        runtime.bind_secret(name, "API_TOKEN", env="API_TOKEN")
    finally:
        await runtime.close()
    try:
        async with Client(build_server(settings), client_info=HARNESS) as before:
            ran = await call(before, "exec", agent=name, command='echo "token=$API_TOKEN"; echo oops >&2; exit 3')
        assert ran["stdout"] == "token=[REDACTED:API_TOKEN]\n"
        async with Client(build_server(settings), client_info=OPERATOR) as after:
            log = await call(after, "exec_log", agent=name, exec_id=ran["id"])
            assert log["output_kept"] is True
            assert (log["stdout"], log["stderr"]) == ("token=[REDACTED:API_TOKEN]\n", "oops\n")
            record = log["record"]
            assert record["state"] == "exited" and record["exit_code"] == 3 and record["agent"] == name
            assert record["command"].startswith('echo "token=$API_TOKEN"')
            assert record["actor"]["client"] == "test-harness"
            events = await call(after, "agent_events", agent=name, limit=200)
            assert "secret-used" in [e["kind"] for e in events["events"]]
            assert TOKEN not in json.dumps(events) and TOKEN not in json.dumps(log)
            missing = await fails(after, "exec_log", agent=name, exec_id="x-nope")
            assert "No command with exec id 'x-nope'" in missing
        logs = list((settings.home / "exec-logs").rglob("*.zst"))
        assert logs and all(TOKEN.encode() not in path.read_bytes() for path in logs)
    finally:
        async with Client(build_server(settings)) as cleanup:
            await cleanup.call_tool("agent_remove", {"agent": name})


async def test_pause_freezes_every_process_and_calls_fail_fast_saying_who_paused(
    harness: Client, made: str, settings: Settings
) -> None:
    counter = "i=0; while true; do i=$((i+1)); echo $i > /workspace/counter; sleep 0.05; done"
    await call(harness, "exec", agent=made, command=f"nohup sh -c '{counter}' >/dev/null 2>&1 &")
    await asyncio.sleep(0.5)
    machine = (await call(harness, "agent_status", agent=made))["agent"]["machine_id"]
    paused = await call(harness, "agent_pause", agent=made)
    assert paused["paused_by"] == "test-harness 9.9.9 over in-memory" and paused["paused_at"]
    frozen = upper_file(machine, "/workspace/counter")
    await asyncio.sleep(1.0)
    assert upper_file(machine, "/workspace/counter") == frozen
    started = time.monotonic()
    refused = await fails(harness, "exec", agent=made, command="true")
    assert time.monotonic() - started < 2
    assert f"Agent '{made}' is paused" in refused and "by test-harness 9.9.9" in refused
    assert "agent_resume" in refused and f"spinup resume {made}" in refused
    assert "already paused" in await fails(harness, "agent_pause", agent=made)
    # Pause state is Docker's and the database's: a new server sees it.
    async with Client(build_server(settings), client_info=OPERATOR) as other:
        assert "is paused" in await fails(other, "file_read", agent=made, path="/workspace/counter")
        resumed = await call(other, "agent_resume", agent=made)
        assert resumed["paused_at"] is None
    await asyncio.sleep(0.5)
    assert int(upper_file(machine, "/workspace/counter")) > int(frozen)
    assert "is not paused (it is running)" in await fails(harness, "agent_resume", agent=made)
    kinds = [e["kind"] for e in (await call(harness, "agent_events", agent=made, kind=["paused", "resumed"]))["events"]]
    assert kinds == ["paused", "resumed"]


async def test_kill_ends_a_running_command_and_its_tree_at_once_and_keeps_the_files(harness: Client, made: str) -> None:
    await call(harness, "file_write", agent=made, path="/workspace/keep.txt", content="kept")
    sleeper = asyncio.create_task(
        harness.call_tool("exec", {"agent": made, "command": "sleep 1000 & sleep 1000; wait", "timeout": 600})
    )
    await asyncio.sleep(1.0)
    status = await call(harness, "agent_status", agent=made)
    assert [e["command"] for e in status["running_execs"]] == ["sleep 1000 & sleep 1000; wait"]
    started = time.monotonic()
    killed = await call(harness, "agent_kill", agent=made)
    result = await asyncio.wait_for(sleeper, 10)
    assert time.monotonic() - started < 1.5
    assert killed["state"] == "stopped"
    assert result.structured_content is not None and result.structured_content["exit_code"] == 137
    assert "killed by test-harness" in result.structured_content["stderr"]
    machine = killed["machine_id"]
    assert docker_cli("top", machine, check=False).returncode != 0  # nothing runs
    assert "nothing of it is running" in await fails(harness, "agent_kill", agent=made)
    assert "only a running agent can be paused" in await fails(harness, "agent_pause", agent=made)
    back = await call(harness, "exec", agent=made, command="cat /workspace/keep.txt")
    assert back["stdout"] == "kept"
    kinds = [e["kind"] for e in (await call(harness, "agent_events", agent=made, limit=100))["events"]]
    assert kinds.index("killed") < kinds.index("machine-started")


async def test_exec_kill_ends_one_command_and_the_machine_keeps_running(harness: Client, made: str) -> None:
    sleeper = asyncio.create_task(harness.call_tool("exec", {"agent": made, "command": "sleep 1000"}))
    await asyncio.sleep(1.0)
    (running,) = (await call(harness, "agent_status", agent=made))["running_execs"]
    record = await call(harness, "exec_kill", agent=made, exec_id=running["id"])
    assert record["killed_by"] == "test-harness 9.9.9 over in-memory"
    result = await asyncio.wait_for(sleeper, 10)
    assert result.structured_content is not None
    assert result.structured_content["exit_code"] == 137 and result.structured_content["killed_by"]
    assert "not running: nothing to kill" in await fails(harness, "exec_kill", agent=made, exec_id=running["id"])
    assert (await call(harness, "exec", agent=made, command="echo alive"))["stdout"] == "alive\n"
    log = await call(harness, "exec_log", agent=made, exec_id=running["id"])
    assert log["record"]["state"] == "killed"


async def test_a_client_subscribed_to_an_agent_hears_of_an_exec_by_another_client(
    settings: Settings, harness: Client, made: str
) -> None:
    uri = f"spinup://agents/{made}"
    status = json.loads((await harness.read_resource(uri)).contents[0].text)  # type: ignore[union-attr]
    assert status["agent"]["name"] == made and status["machine_status"] == "running"
    listing = json.loads((await harness.read_resource("spinup://agents")).contents[0].text)  # type: ignore[union-attr]
    assert made in [a["name"] for a in listing["agents"]]

    # Protocol 2026-07-28: subscriptions/listen.
    async with harness.listen(resource_subscriptions=[uri]) as subscription:
        params = StdioServerParameters(command=SPINUP, args=["mcp"], env=server_env(settings))
        async with Client(params, client_info=OPERATOR, mode="legacy") as operator:
            await call(operator, "exec", agent=made, command="true")
        event = await asyncio.wait_for(anext(aiter(subscription)), 10)
        assert getattr(event, "uri", None) == uri

    # Earlier protocol versions: resources/subscribe, then notifications/resources/updated.
    updates: asyncio.Queue[str] = asyncio.Queue()

    async def on_message(message: Any) -> None:
        if isinstance(message, ResourceUpdatedNotification):
            updates.put_nowait(str(message.params.uri))

    async with Client(build_server(settings), mode="legacy", message_handler=on_message) as legacy:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            await legacy.subscribe_resource(f"{uri}/events")
        await call(harness, "exec", agent=made, command="true")
        assert await asyncio.wait_for(updates.get(), 10) == f"{uri}/events"


async def test_a_bound_server_shows_only_its_own_agent(settings: Settings, harness: Client, made: str) -> None:
    bound = unique_name("cb")
    async with Client(build_server(settings, agent=bound), client_info=HARNESS) as client:
        await call(client, "exec", command="true")
        listing = json.loads((await client.read_resource("spinup://agents")).contents[0].text)  # type: ignore[union-attr]
        assert [a["name"] for a in listing["agents"]] == [bound]
        with pytest.raises(Exception, match="bound to agent"):
            await client.read_resource(f"spinup://agents/{made}/events")
        events = (await call(client, "agent_events"))["events"]
        assert {e["agent"] for e in events} == {bound}
        await call(client, "agent_remove", agent=bound)
