"""``spinup ps`` and ``spinup top`` as real subprocesses, and the resource use agent_status reports."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from mcp import Client

from conftest import call, docker_cli, unique_name
from spinup.runtime import Actor, Policy, Runtime, Settings, acting_as

SPINUP = str(Path(sys.executable).with_name("spinup"))
USAGE_FIELDS = {
    "cpu_percent",
    "memory_bytes",
    "memory_limit",
    "pids",
    "pids_limit",
    "disk_used",
    "store_bytes",
    "uptime_s",
    "last_activity",
}


def cli_env(settings: Settings) -> dict[str, str]:
    return {"SPINUP_HOME": str(settings.home), "DOCKER_API_VERSION": "1.41", "PATH": os.environ["PATH"]}


def spinup(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the real ``spinup`` command on the test's state directory."""
    return subprocess.run(
        [SPINUP, *args], capture_output=True, text=True, env=cli_env(settings), timeout=120, check=False
    )


async def busy_and_stopped(runtime: Runtime) -> tuple[str, str]:
    """A running agent with two busy loops (memory 256m, pids 300), and a stopped one."""
    busy, stopped = unique_name("ps"), unique_name("ps")
    machine = (await runtime.create_agent(busy, policy=Policy(memory="256m", pids=300))).machine_id
    assert machine is not None
    docker_cli("exec", "-d", machine, "sh", "-c", "(while :; do :; done) & while :; do :; done")
    await runtime.create_agent(stopped)
    await runtime.stop_agent(stopped, snapshot=False)
    return busy, stopped


async def test_ps_json_lists_every_agent_with_its_state_and_use(runtime: Runtime, settings: Settings) -> None:
    busy, stopped = await busy_and_stopped(runtime)
    done = await asyncio.to_thread(spinup, settings, "ps", "--json")
    assert done.returncode == 0, done.stderr
    rows = {row["name"]: row for row in json.loads(done.stdout)}
    assert set(rows) == {busy, stopped}
    row = rows[busy]
    assert set(row) == {"name", "id", "state", "agent_state", "image", "paused_by", "usage", "last_event"}
    assert (row["state"], row["agent_state"], row["image"]) == ("running", "running", "spinup/base:bookworm")
    assert row["id"] == runtime.get_agent(busy).id
    use = row["usage"]
    assert set(use) == USAGE_FIELDS
    assert use["cpu_percent"] > 50 and use["memory_bytes"] > 0
    assert (use["memory_limit"], use["pids_limit"]) == (256 << 20, 300)
    assert use["uptime_s"] >= 0 and use["disk_used"] >= 0 and use["store_bytes"] == 0
    newest = runtime.events(busy, limit=1)[-1]
    assert row["last_event"]["kind"] == newest.kind and row["last_event"]["at"] == newest.at.isoformat()
    assert use["last_activity"] == newest.at.isoformat()
    idle = rows[stopped]
    assert idle["state"] == "exited" and idle["agent_state"] == "stopped"
    assert idle["usage"]["cpu_percent"] is None and idle["usage"]["memory_bytes"] is None
    assert idle["last_event"]["kind"] == "machine-stopped"


async def test_ps_prints_a_table_in_human_units(runtime: Runtime, settings: Settings) -> None:
    busy, stopped = await busy_and_stopped(runtime)
    done = await asyncio.to_thread(spinup, settings, "ps")
    assert done.returncode == 0, done.stderr
    header, *lines = done.stdout.splitlines()
    assert header.split() == ["NAME", "STATE", "IMAGE", "UPTIME", "CPU", "MEM", "DISK", "LAST-EVENT"]
    cells = {line.split()[0]: line.split() for line in lines}
    assert set(cells) == {busy, stopped}
    name, state, image, uptime, cpu, memory, disk, *last = cells[busy]
    assert (name, state, image) == (busy, "running", "spinup/base:bookworm")
    assert uptime.endswith("s") and cpu.endswith("%") and float(cpu[:-1]) > 50
    assert memory.endswith("/256.0M") and disk[-1] in "BKMG" and last[-1] == "ago"
    assert cells[stopped][1:2] == ["exited"] and cells[stopped][3:5] == ["-", "-"]


async def test_top_once_prints_one_frame_busiest_first(runtime: Runtime, settings: Settings) -> None:
    busy, stopped = await busy_and_stopped(runtime)
    done = await asyncio.to_thread(spinup, settings, "top", "--once")
    assert done.returncode == 0, done.stderr
    title, blank, header, *lines = done.stdout.splitlines()
    assert title.startswith("spinup top - ") and "2 agents, 1 running" in title and blank == ""
    assert header.split() == ["NAME", "STATE", "CPU", "MEM", "MEM%", "PIDS", "DISK", "STORE", "UPTIME", "LAST-EVENT"]
    assert [line.split()[0] for line in lines] == [busy, stopped]
    first = lines[0].split()
    assert float(first[2].rstrip("%")) > 50 and first[5].endswith("/300")
    assert "\x1b" not in done.stdout  # not a terminal: no screen control
    as_json = await asyncio.to_thread(spinup, settings, "top", "--once", "--json")
    assert as_json.returncode == 0 and len(as_json.stdout.splitlines()) == 1
    assert {row["name"] for row in json.loads(as_json.stdout)} == {busy, stopped}


async def test_top_refreshes_until_ctrl_c_and_then_exits_0(runtime: Runtime, settings: Settings) -> None:
    name = unique_name("top")
    await runtime.create_agent(name)
    proc = await asyncio.create_subprocess_exec(
        SPINUP,
        "top",
        "--interval",
        "0.3",
        env=cli_env(settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    frames = 0
    async with asyncio.timeout(60):
        while frames < 2:
            line = (await proc.stdout.readline()).decode()
            assert line, (await proc.communicate())[1]
            frames += line.startswith("spinup top - ")
        proc.send_signal(signal.SIGINT)
        _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert b"Traceback" not in err


async def test_top_rejects_a_bad_interval(settings: Settings) -> None:
    done = await asyncio.to_thread(spinup, settings, "top", "--interval", "0")
    assert done.returncode == 2 and "above 0" in done.stderr


async def test_agent_status_reports_usage_pause_and_running_commands(client: Client, settings: Settings) -> None:
    name = unique_name("st")
    await call(client, "agent_create", name=name, memory="320m", pids=100)
    status = await call(client, "agent_status", agent=name)
    use = status["usage"]
    assert set(use) == USAGE_FIELDS
    assert (use["memory_limit"], use["pids_limit"]) == (320 << 20, 100)
    assert use["memory_bytes"] > 0 and use["cpu_percent"] is not None and use["uptime_s"] >= 0
    assert use["disk_used"] == status["disk_used"]
    assert (status["paused_at"], status["paused_by"], status["running_execs"]) == (None, None, [])

    running = asyncio.create_task(client.call_tool("exec", {"agent": name, "command": "sleep 3"}))
    try:
        for _ in range(300):
            status = await call(client, "agent_status", agent=name)
            if status["running_execs"]:
                break
            await asyncio.sleep(0.1)
        [record] = status["running_execs"]
        assert set(record) == {"id", "command", "started_at"} and record["command"] == "sleep 3"
        assert record["id"] and record["started_at"].startswith("20")
    finally:
        await running

    other = Runtime(settings)  # another Spinup process on the same state, as an operator's CLI is
    try:
        with acting_as(Actor("ops-console", "1.0", "cli", "s1")):
            await other.pause(name)
        paused = await call(client, "agent_status", agent=name)
        assert paused["machine_status"] == "paused"
        assert paused["paused_at"] is not None and "ops-console" in paused["paused_by"]
        assert paused["usage"]["memory_bytes"] > 0 and paused["usage"]["cpu_percent"] < 5
        await other.resume(name)
    finally:
        await other.close()
    await call(client, "agent_remove", agent=name)
