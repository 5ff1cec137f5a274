"""Background processes over MCP against the real daemon: output by offset, survival, signals, lost."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from conftest import call, fails, held_open, server_env, unique_name
from spinup.runtime import Policy, Runtime, Settings
from spinup.runtime.errors import LimitReached
from spinup.server.app import build_server

SPINUP = str(Path(sys.executable).with_name("spinup"))
TOKEN = "proc-secret-9d2c71f0aa"
TICKER = "while true; do date +%s%N; sleep 0.1; done"


async def read_all(client: Client, agent: str, process: str, offset: int, **kw: Any) -> tuple[str, int]:
    """Everything from ``offset`` until a read returns nothing new."""
    text = ""
    while True:
        read = await call(client, "process_output", agent=agent, process=process, offset=offset, **kw)
        text += read["data"]
        if read["next_offset"] == offset:
            return text, offset
        offset = read["next_offset"]


@pytest.fixture
async def mcp(settings: Settings) -> AsyncIterator[Client]:
    async with held_open(Client(build_server(settings))) as c:
        yield c


@pytest.fixture
async def made(mcp: Client) -> AsyncIterator[str]:
    name = unique_name("pr")
    await call(mcp, "agent_create", name=name)
    yield name
    await mcp.call_tool("agent_remove", {"agent": name})


async def test_a_ticker_is_read_by_offset_without_loss_and_survives_the_server(
    settings: Settings, mcp: Client, made: str
) -> None:
    env = server_env(settings)
    # Started through a stdio server process that then goes away with its session.
    async with Client(StdioServerParameters(command=SPINUP, args=["mcp"], env=env), mode="legacy") as starter:
        started = await call(starter, "process_start", agent=made, command=TICKER, name="ticker")
        assert started["state"] == "running" and started["id"].startswith("p-")
        await asyncio.sleep(0.6)
        first = await call(starter, "process_output", agent=made, process="ticker", max_bytes=30)
        assert first["offset"] == 0 and 0 < first["next_offset"] <= 30 and not first["eof"]
        second, offset = await read_all(starter, made, "ticker", first["next_offset"])
    await asyncio.sleep(0.5)
    # Another server reads on from the last offset, and signals it.
    listed = await call(mcp, "process_list", agent=made)
    assert [p["state"] for p in listed["processes"]] == ["running"]
    third, offset = await read_all(mcp, made, started["id"], offset)
    signalled = await call(mcp, "process_signal", agent=made, process=started["id"], signal="TERM")
    assert signalled["id"] == started["id"]
    waited = await call(mcp, "process_wait", agent=made, process="ticker", timeout=10)
    assert waited["still_running"] is False
    assert (waited["process"]["state"], waited["process"]["exit_code"], waited["process"]["signal"]) == (
        "exited",
        143,
        "TERM",
    )
    rest, _ = await read_all(mcp, made, "ticker", offset)
    lines = (first["data"] + second + third + rest).splitlines()
    stamps = [int(line) for line in lines]
    assert len(stamps) >= 10 and stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert max(gaps) < 1_000_000_000  # one line every ~0.1 s: none missing
    final = await call(mcp, "process_output", agent=made, process="ticker", offset=10**9)
    assert (final["data"], final["eof"]) == ("", True)
    removed = await call(mcp, "process_remove", agent=made, process="ticker")
    assert removed["id"] == started["id"]
    assert "has no process 'ticker'" in await fails(mcp, "process_output", agent=made, process="ticker")


async def test_output_is_redacted_even_when_a_value_spans_two_reads(settings: Settings, mcp: Client, made: str) -> None:
    runtime = Runtime(settings)
    try:
        runtime.set_secret("PROC_TOKEN", TOKEN)
        runtime.bind_secret(made, "PROC_TOKEN", env="PROC_TOKEN")
    finally:
        await runtime.close()
    started = await call(mcp, "process_start", agent=made, command='echo "a=$PROC_TOKEN"; echo "b=$PROC_TOKEN" >&2')
    await call(mcp, "process_wait", agent=made, process=started["id"], timeout=10)
    for size in (1, 3, 7, 64):
        text, _ = await read_all(mcp, made, started["id"], 0, max_bytes=size)
        assert text == "a=[REDACTED:PROC_TOKEN]\n", size
    err, _ = await read_all(mcp, made, started["id"], 0, stream="stderr", max_bytes=5)
    assert err == "b=[REDACTED:PROC_TOKEN]\n"
    events = await call(mcp, "agent_events", agent=made, limit=100)
    assert TOKEN not in json.dumps(events)


async def test_daemons_that_left_the_group_are_signalled_and_bad_input_is_refused(mcp: Client, made: str) -> None:
    command = "setsid sleep 1001 & nohup sleep 1002 >/dev/null 2>&1 & sleep 1003"
    started = await call(mcp, "process_start", agent=made, command=command)
    await asyncio.sleep(0.5)
    assert "Unknown signal 'NOPE'" in await fails(
        mcp, "process_signal", agent=made, process=started["id"], signal="NOPE"
    )
    await call(mcp, "process_signal", agent=made, process=started["id"], signal="KILL")
    await call(mcp, "process_wait", agent=made, process=started["id"], timeout=10)
    left = await call(mcp, "exec", agent=made, command="cat /proc/[0-9]*/cmdline | tr '\\0' ' '")
    assert "sleep 100" not in left["stdout"]
    assert "nothing to signal" in await fails(mcp, "process_signal", agent=made, process=started["id"])
    assert "is still running" not in await fails(mcp, "process_output", agent=made, process="p-unknown")

    missing = await call(mcp, "process_start", agent=made, command=["no-such-program"])
    waited = await call(mcp, "process_wait", agent=made, process=missing["id"], timeout=10)
    assert waited["process"]["exit_code"] == 127
    err = await call(mcp, "process_output", agent=made, process=missing["id"], stream="stderr")
    assert "no-such-program" in err["data"]
    nowhere = await call(mcp, "process_start", agent=made, command="true", cwd="/no/such/dir")
    waited = await call(mcp, "process_wait", agent=made, process=nowhere["id"], timeout=10)
    assert waited["process"]["exit_code"] == 126
    assert (
        "cannot enter /no/such/dir"
        in (await call(mcp, "process_output", agent=made, process=nowhere["id"], stream="stderr"))["data"]
    )
    assert "cwd must be an absolute path" in await fails(mcp, "process_start", agent=made, command="true", cwd="rel")
    assert "Invalid process name" in await fails(mcp, "process_start", agent=made, command="true", name="no spaces")


async def test_processes_are_lost_with_the_reason_when_the_machine_stops_or_is_killed(mcp: Client, made: str) -> None:
    first = await call(mcp, "process_start", agent=made, command="sleep 1000")
    snapshot = await call(mcp, "snapshot_create", agent=made, label="with a process running")
    assert snapshot["created"] is True  # files are captured, processes are not
    await call(mcp, "agent_stop", agent=made)
    (entry,) = (await call(mcp, "process_list", agent=made))["processes"]
    assert entry["state"] == "lost" and "stopped" in entry["reason"]
    second = await call(mcp, "process_start", agent=made, command="sleep 1000")  # wakes the machine
    await call(mcp, "agent_kill", agent=made)
    states = {p["id"]: (p["state"], p["reason"]) for p in (await call(mcp, "process_list", agent=made))["processes"]}
    assert states[first["id"]][0] == "lost"
    assert states[second["id"]][0] == "lost" and "killed" in states[second["id"]][1]


async def test_output_beyond_the_cap_is_dropped_oldest_first_and_reported(mcp: Client, made: str) -> None:
    started = await call(mcp, "process_start", agent=made, command="head -c 40000000 /dev/zero | tr '\\0' x; echo END")
    waited = await call(mcp, "process_wait", agent=made, process=started["id"], timeout=60)
    assert waited["process"]["exit_code"] == 0 and waited["process"]["stdout_bytes"] == 40_000_004
    read = await call(mcp, "process_output", agent=made, process=started["id"], max_bytes=16)
    assert read["dropped_bytes"] >= 40_000_004 - 16 * 1024 * 1024 - 4096
    assert read["data"] == "x" * 16 and read["next_offset"] == read["dropped_bytes"] + 16
    tail = await call(mcp, "process_output", agent=made, process=started["id"], offset=40_000_000)
    assert (tail["data"], tail["eof"], tail["dropped_bytes"]) == ("END\n", True, 0)


async def test_the_cli_starts_lists_follows_and_kills_a_process(settings: Settings, made: str) -> None:
    env = {**os.environ, "SPINUP_HOME": str(settings.home), "DOCKER_API_VERSION": "1.41"}

    async def spinup(*args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            SPINUP, *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    code, out, _ = await spinup(
        "process", "start", made, "--name", "counter", "--shell", "--", "for i in 1 2 3; do echo $i; sleep 0.2; done"
    )
    assert code == 0 and out.strip().startswith("p-")
    code, out, _ = await spinup("process", "logs", made, "counter", "--follow")
    assert (code, out) == (0, "1\n2\n3\n")
    code, out, _ = await spinup("process", "list", made, "--json")
    (row,) = json.loads(out)
    assert (row["name"], row["state"], row["exit_code"], row["stdout_bytes"]) == ("counter", "exited", 0, 6)
    code, out, _ = await spinup("process", "start", made, "--", "sleep", "1000")
    code, out, _ = await spinup("process", "kill", made, out.strip(), "--signal", "KILL")
    assert code == 0 and "SIGKILL" in out
    code, _, err = await spinup("process", "kill", made, "p-none")
    assert code == 2 and "has no process 'p-none'" in err


async def test_a_process_file_the_agent_swaps_for_a_symlink_or_fifo_is_refused_not_followed(
    mcp: Client, made: str
) -> None:
    started = await call(mcp, "process_start", agent=made, command="echo hello; sleep 1000")
    await asyncio.sleep(0.3)
    directory = f"/run/spinup/proc/{started['id']}"
    swapped = await call(mcp, "exec", agent=made, command=f"rm {directory}/out && ln -s /etc/hostname {directory}/out")
    assert swapped["exit_code"] == 0, swapped["stderr"]
    assert "no longer a plain file" in await fails(mcp, "process_output", agent=made, process=started["id"])
    await call(mcp, "exec", agent=made, command=f"rm {directory}/err && mkfifo {directory}/err")
    refused = await fails(mcp, "process_output", agent=made, process=started["id"], stream="stderr")
    assert "no longer a plain file" in refused
    (entry,) = (await call(mcp, "process_list", agent=made))["processes"]
    assert entry["state"] == "running" and entry["stdout_bytes"] == 0
    await call(mcp, "process_signal", agent=made, process=started["id"], signal="KILL")


async def test_a_server_keeps_a_chatty_process_within_its_cap_without_being_asked(mcp: Client, made: str) -> None:
    writer = "for i in $(seq 48); do head -c 1000000 /dev/zero; sleep 0.05; done; echo END"
    started = await call(mcp, "process_start", agent=made, command=writer)
    directory = f"/run/spinup/proc/{started['id']}"
    for _ in range(600):  # watched through exec only: nothing here reads the process through Spinup
        if (await call(mcp, "exec", agent=made, command=f"test -e {directory}/exit"))["exit_code"] == 0:
            break
        await asyncio.sleep(0.1)
    cap_kib, seen = 16 * 1024, []
    for _ in range(100):  # the server's pass that notices the exit trims the tail written since its last pass
        used = await call(mcp, "exec", agent=made, command=f"du -k {directory}/out; stat -c %s {directory}/out")
        allocated, size = int(used["stdout"].split()[0]), int(used["stdout"].split()[-1])
        seen.append(allocated)
        if allocated <= cap_kib + 64:
            break
        await asyncio.sleep(0.1)
    assert size == 48_000_004
    assert seen[-1] <= cap_kib + 64, f"allocated KiB over 10 s after the exit: {seen}"


async def test_processes_past_the_pids_limit_are_refused_clearly_and_the_server_goes_on(settings: Settings) -> None:
    runtime = Runtime(settings)
    name = unique_name("pp")
    try:
        await runtime.create_agent(name, policy=Policy(pids=32))
        started = []
        with pytest.raises(LimitReached, match=r"at its pids limit \(32 processes and threads\)"):
            for _ in range(40):
                started.append(await runtime.process_start(name, "sleep 1000"))
        assert 3 <= len(started) < 32
        assert all(p.state == "running" for p in await runtime.process_list(name))
        for process in started[:3]:  # each frees its command and its supervisor
            await runtime.process_signal(name, process.id, "KILL")
            await runtime.process_wait(name, process.id, 10)
        again = await runtime.process_start(name, "echo room again")
        assert (await runtime.process_wait(name, again.id, 10))[0].exit_code == 0
    finally:
        await runtime.remove_agent(name)
        await runtime.close()


async def test_a_gigabyte_of_output_is_capped_and_the_drop_reported(mcp: Client, made: str) -> None:
    command = "yes 0123456789abcdef | head -c 1000000000; echo END"
    started = await call(mcp, "process_start", agent=made, command=command)
    waited = await call(mcp, "process_wait", agent=made, process=started["id"], timeout=120)
    assert waited["process"]["exit_code"] == 0 and waited["process"]["stdout_bytes"] == 1_000_000_004
    head = await call(mcp, "process_output", agent=made, process=started["id"], max_bytes=17)
    assert head["dropped_bytes"] > 1_000_000_000 - 17 * 1024 * 1024
    tail = await call(mcp, "process_output", agent=made, process=started["id"], offset=999_999_990)
    assert tail["data"].endswith("END\n") and tail["eof"] is True
    used = await call(mcp, "exec", agent=made, command=f"du -k /run/spinup/proc/{started['id']}/out")
    assert int(used["stdout"].split()[0]) <= 17 * 1024
