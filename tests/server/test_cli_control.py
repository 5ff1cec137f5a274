"""The control commands of the CLI as a subprocess (``spinup events``, ``logs``, ``pause``, ``resume``,
``kill``) against the real daemon, on the state directory of a runtime the test holds.

One agent serves the module: each test leaves it running and unpaused. The CLI never creates a
machine here (the test's runtime does, with the run's label), so nothing escapes the cleanup.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from conftest import RUN_ID, TEST_LABEL, docker_cli, opened, unique_name
from spinup.runtime import ExecResult, Runtime, Settings
from spinup.runtime.errors import AgentPaused

SPINUP = str(Path(sys.executable).with_name("spinup"))
EVENT_FIELDS = {"id", "agent_id", "agent", "at", "kind", "detail", "data", "actor", "client"}
RECORD_FIELDS = {
    "id", "agent", "command", "cwd", "started_at", "state", "exit_code", "duration_s", "stdout_bytes",
    "stderr_bytes", "truncated", "timed_out", "limit", "actor", "killed_by",
}  # fmt: skip
# Written beside, then renamed: a freeze between truncate and write would leave it empty.
COUNTER_LOOP = (
    "nohup sh -c 'i=0; while [ ! -e /workspace/stop ]; do i=$((i+1)); echo $i > /workspace/.counter; "
    "mv /workspace/.counter /workspace/counter; sleep 0.1; done' >/dev/null 2>&1 &"
)


@dataclass(frozen=True)
class Done:
    code: int
    stdout: str
    stderr: str


def cli_env(home: Path) -> dict[str, str]:
    return {**os.environ, "SPINUP_HOME": str(home), "DOCKER_API_VERSION": "1.41"}


async def cli(home: Path, *args: str, timeout: float = 60) -> Done:
    """Run ``spinup ARGS`` on the state directory ``home`` without blocking the event loop."""
    proc = await asyncio.create_subprocess_exec(
        SPINUP, *args, env=cli_env(home), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(timeout):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return Done(proc.returncode, out.decode(), err.decode())


async def cli_json(home: Path, *args: str) -> object:
    done = await cli(home, *args, "--json")
    assert done.code == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
async def rt(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Runtime]:
    settings = Settings(home=tmp_path_factory.mktemp("control") / "spinup", label_extra={TEST_LABEL: RUN_ID})
    async with opened(Runtime(settings)) as runtime:
        yield runtime


@pytest.fixture(scope="module")
async def shared(rt: Runtime) -> str:
    """The module's agent, running."""
    name = unique_name("ctl")
    await rt.create_agent(name)
    return name


@pytest.fixture
async def name(rt: Runtime, shared: str) -> AsyncIterator[str]:
    """The module's agent, left running and unpaused by each test."""
    yield shared
    if rt.get_agent(shared).paused_at is not None:
        await rt.resume(shared)
    await rt.exec(shared, "touch /workspace/stop")


def home(rt: Runtime) -> Path:
    return rt.settings.home


def read_counter(rt: Runtime, agent: str) -> int:
    """The loop's counter, read on the host from the machine's overlay upper directory."""
    machine = rt.get_agent(agent).machine_id
    assert machine
    upper = docker_cli("inspect", "-f", "{{.GraphDriver.Data.UpperDir}}", machine).stdout.strip()
    return int((Path(upper) / "workspace" / "counter").read_text())


async def start_counter(rt: Runtime, agent: str) -> None:
    await rt.exec(agent, f"rm -f /workspace/stop /workspace/counter; {COUNTER_LOOP}")
    for _ in range(100):
        await asyncio.sleep(0.05)
        upper = docker_cli("inspect", "-f", "{{.GraphDriver.Data.UpperDir}}", rt.get_agent(agent).machine_id or "")
        if (Path(upper.stdout.strip()) / "workspace" / "counter").exists():
            return
    raise AssertionError("the counter loop did not start")


async def advances(rt: Runtime, agent: str, seconds: float = 1.0) -> tuple[int, int]:
    first = read_counter(rt, agent)
    await asyncio.sleep(seconds)
    return first, read_counter(rt, agent)


async def running_exec(rt: Runtime, agent: str, command: str) -> tuple[asyncio.Task[ExecResult], str]:
    """Start ``command`` as a task; return it and its exec id once a kill can reach it."""
    task = asyncio.create_task(rt.exec(agent, command))
    for _ in range(200):
        await asyncio.sleep(0.05)
        running = [r for r in (await rt.status(agent)).running_execs if r.command == command and r.docker_exec]
        if running:
            return task, running[0].id
    task.cancel()
    raise AssertionError(f"{command!r} never showed up as running")


async def test_pause_freezes_every_process_and_resume_thaws_them(rt: Runtime, name: str) -> None:
    await start_counter(rt, name)
    before, after = await advances(rt, name, 0.5)
    assert after > before

    sleeper, sleeper_id = await running_exec(rt, name, "sleep 1002")
    paused = await cli(home(rt), "pause", name)
    assert paused.code == 0, paused.stderr
    assert paused.stdout == f"paused {name}: its processes are frozen until: spinup resume {name}\n"
    record = rt.get_agent(name)
    assert record.paused_at is not None and record.paused_by is not None
    assert record.paused_by.startswith("spinup-cli ")
    await asyncio.sleep(0.3)
    frozen_at, later = await advances(rt, name, 1.0)
    assert later == frozen_at, "the loop went on while paused"

    started = time.monotonic()
    with pytest.raises(AgentPaused) as refused:
        await rt.exec(name, "echo hi")
    assert time.monotonic() - started < 2
    assert "spinup-cli" in str(refused.value)
    assert f"spinup resume {name}" in str(refused.value)

    # Killing one command needs the machine to run a sweep: refused at once while paused, nothing marked.
    started = time.monotonic()
    no_kill = await cli(home(rt), "kill", name, "--exec", sleeper_id)
    assert no_kill.code == 2 and f"Agent '{name}' is paused" in no_kill.stderr and "spinup resume" in no_kill.stderr
    assert time.monotonic() - started < 10 and not sleeper.done()
    assert rt.exec_log(name, sleeper_id).record.killed_by is None

    again = await cli(home(rt), "pause", name)
    assert again.code == 2 and "already paused" in again.stderr and "spinup-cli" in again.stderr

    resumed = await cli_json(home(rt), "resume", name)
    assert isinstance(resumed, dict)
    assert resumed["name"] == name and resumed["state"] == "running" and resumed["paused_by"] is None
    before, after = await advances(rt, name, 0.5)
    assert after > before >= frozen_at
    assert not sleeper.done()
    await rt.kill_exec(name, sleeper_id)
    async with asyncio.timeout(5):
        assert (await sleeper).exit_code == 137

    twice = await cli(home(rt), "resume", name)
    assert twice.code == 2
    assert twice.stderr == f"spinup: error: Agent '{name}' is not paused (it is running); there is nothing to resume.\n"
    assert twice.stdout == ""


async def test_kill_ends_running_commands_keeps_files_and_the_next_call_wakes(rt: Runtime, name: str) -> None:
    await rt.exec(name, "echo kept > /workspace/kept")
    task, exec_id = await running_exec(rt, name, "sleep 1000")

    killed = await cli(home(rt), "kill", name)
    assert killed.code == 0, killed.stderr
    assert killed.stdout.startswith(f"killed every process of {name}")
    async with asyncio.timeout(1):
        result = await task
    assert result.id == exec_id and result.exit_code == 137
    assert result.killed_by is not None and result.killed_by.startswith("spinup-cli")
    assert rt.exec_log(name, exec_id).record.state == "killed"
    assert rt.get_agent(name).state.value == "stopped"

    # A stopped agent can be neither paused nor killed.
    for verb, words in (("pause", "only a running agent can be paused"), ("kill", "nothing to kill")):
        refused = await cli(home(rt), verb, name)
        assert refused.code == 2 and words in refused.stderr and "Traceback" not in refused.stderr

    woken = await rt.exec(name, "cat /workspace/kept")
    assert woken.stdout == "kept\n" and woken.exit_code == 0
    assert rt.get_agent(name).state.value == "running"


async def test_kill_of_one_command_by_id_leaves_the_machine_running(rt: Runtime, name: str) -> None:
    machine = rt.get_agent(name).machine_id
    assert machine
    task, exec_id = await running_exec(rt, name, "sleep 1001")
    killed = await cli(home(rt), "kill", name, "--exec", exec_id)
    assert killed.code == 0, killed.stderr
    assert killed.stdout == f"killed command {exec_id} of {name}: sleep 1001\n"
    async with asyncio.timeout(5):
        result = await task
    assert result.id == exec_id and result.exit_code == 137
    assert "[spinup: killed by spinup-cli " in result.stderr
    assert result.stderr.endswith(f"(exec kill {exec_id})]")
    assert docker_cli("inspect", "-f", "{{.State.Running}}", machine).stdout.strip() == "true"
    assert (await rt.exec(name, "echo still")).stdout == "still\n"

    finished = await cli(home(rt), "kill", name, "--exec", exec_id)
    assert finished.code == 2 and "is killed, not running" in finished.stderr
    unknown = await cli(home(rt), "kill", name, "--exec", "x-000000000000")
    assert unknown.code == 2 and "No command with exec id 'x-000000000000'" in unknown.stderr
    events = rt.events(name, 5, kinds=["exec-killed"])
    assert events[-1].data == {"id": exec_id} and events[-1].client == "spinup-cli"


async def test_events_lists_what_happened_and_who_did_it(rt: Runtime, name: str) -> None:
    assert (await cli(home(rt), "pause", name)).code == 0
    assert (await cli(home(rt), "resume", name)).code == 0
    ran = await rt.exec(name, "echo event")
    assert (await cli(home(rt), "kill", name)).code == 0
    await rt.exec(name, "true")

    listed = await cli_json(home(rt), "events", name, "--limit", "500")
    assert isinstance(listed, list) and listed
    assert all(set(e) == EVENT_FIELDS for e in listed)
    assert [e["id"] for e in listed] == sorted(e["id"] for e in listed)
    kinds = [e["kind"] for e in listed]
    assert {"created", "exec", "paused", "resumed", "killed", "machine-started"} <= set(kinds)
    paused = [e for e in listed if e["kind"] == "paused"][-1]
    assert paused["client"] == "spinup-cli" and paused["agent"] == name
    assert paused["actor"]["transport"] == "cli" and paused["actor"]["session"].startswith("pid-")
    assert paused["agent_id"] == rt.get_agent(name).id
    assert datetime.fromisoformat(paused["at"]) > datetime.now(UTC) - timedelta(minutes=10)
    exec_event = next(e for e in listed if e["kind"] == "exec" and e["data"].get("id") == ran.id)
    assert exec_event["data"]["command"] == "echo event" and exec_event["data"]["exit_code"] == 0
    assert exec_event["client"] is None  # the test's runtime acts for no client

    only_exec = await cli_json(home(rt), "events", name, "--kind", "exec", "--limit", "500")
    assert isinstance(only_exec, list)
    assert {e["kind"] for e in only_exec} == {"exec"}
    assert [e["id"] for e in only_exec] == [e["id"] for e in listed if e["kind"] == "exec"]
    two_kinds = await cli_json(home(rt), "events", name, "--kind", "paused", "--kind", "resumed", "--limit", "500")
    assert isinstance(two_kinds, list) and {e["kind"] for e in two_kinds} == {"paused", "resumed"}
    assert len(await cli_json(home(rt), "events", name, "--limit", "2")) == 2  # type: ignore[arg-type]

    assert await cli_json(home(rt), "events", name, "--since", "1h", "--limit", "500") == listed
    ahead = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert await cli_json(home(rt), "events", name, "--since", ahead) == []
    assert await cli_json(home(rt), "events", name, "--since", "2000-01-01T00:00:00", "--limit", "500") == listed

    table = await cli(home(rt), "events", name, "--kind", "paused")
    assert table.code == 0
    header, *rows = table.stdout.splitlines()
    assert header.split() == ["TIME", "(UTC)", "AGENT", "KIND", "CLIENT", "DETAIL"]
    assert rows and all(row.split()[2:5] == [name, "paused", "spinup-cli"] for row in rows)

    for bad in ("10x", "yesterday", "-5m", ""):
        refused = await cli(home(rt), "events", name, f"--since={bad}")
        assert refused.code == 2 and "--since" in refused.stderr and "30s, 10m, 2h, 1d" in refused.stderr
        assert refused.stdout == ""
    unknown = await cli(home(rt), "events", "no-such-agent")
    assert unknown.code == 2 and "No agent named 'no-such-agent'" in unknown.stderr


async def test_follow_prints_events_other_processes_record(rt: Runtime, name: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        SPINUP, "events", name, "--follow", "--json", "--limit", "1",
        env=cli_env(home(rt)), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(30):
            newest = json.loads(await proc.stdout.readline())  # the history: one event, then it follows
            assert newest["id"] == rt.events(name, 1)[0].id
            ran = await rt.exec(name, "echo followed")  # recorded by this process, not the follower
            seen = []
            while not any(e["kind"] == "exec" and e["data"].get("id") == ran.id for e in seen):
                seen.append(json.loads(await proc.stdout.readline()))
        assert set(seen[-1]) == EVENT_FIELDS and seen[-1]["agent"] == name
        assert [e["id"] for e in seen] == sorted(e["id"] for e in seen) and seen[0]["id"] > newest["id"]
        proc.send_signal(signal.SIGINT)  # Ctrl-C is the normal way out
        async with asyncio.timeout(10):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.parametrize("loss", ["directory removed", "database replaced"])
async def test_follow_exits_3_when_the_database_goes_away(tmp_path: Path, loss: str) -> None:
    state = tmp_path / "spinup"
    seeded = Runtime(Settings(home=state))
    seeded.record_call("agent_list", None, "ok", 0.01)
    await seeded.close()
    proc = await asyncio.create_subprocess_exec(
        SPINUP, "events", "--follow", env=cli_env(state), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        async with asyncio.timeout(30):
            assert (await proc.stdout.readline()).split()[:3] == [b"TIME", b"(UTC)", b"AGENT"]
            assert b"tool-call" in await proc.stdout.readline()
        if loss == "directory removed":
            shutil.rmtree(state)
            expected = f"the state database {state / 'state.db'} is gone (was {state} removed?)"
        else:
            (state / "other.db").write_bytes(b"not a database")
            os.replace(state / "other.db", state / "state.db")
            expected = f"the state database {state / 'state.db'} was replaced by another file"
        started = time.monotonic()
        async with asyncio.timeout(10):
            code = await proc.wait()
        assert code == 3 and time.monotonic() - started < 3
        err = (await proc.stderr.read()).decode()
        assert err.startswith(f"spinup: error: stopped following events: {expected}.")
        assert "Traceback" not in err and err.count("\n") == 1
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_logs_lists_commands_and_shows_their_redacted_output(rt: Runtime, name: str) -> None:
    rt.set_secret("tok", "s3cr3t-value-123")
    rt.bind_secret(name, "tok", env="TOK")
    try:
        ran = await rt.exec(name, "echo $TOK; echo err-line >&2; exit 3")
        assert ran.id and ran.stdout == "[REDACTED:tok]\n" and ran.exit_code == 3

        listed = await cli_json(home(rt), "logs", name, "--limit", "100")
        assert isinstance(listed, list) and all(set(r) == RECORD_FIELDS for r in listed)
        assert [r["started_at"] for r in listed] == sorted(r["started_at"] for r in listed)  # oldest first
        mine = listed[-1]
        assert mine["id"] == ran.id and mine["agent"] == name and mine["state"] == "exited"
        assert mine["command"] == "echo $TOK; echo err-line >&2; exit 3" and mine["exit_code"] == 3
        assert mine["stdout_bytes"] == len("[REDACTED:tok]\n") and mine["truncated"] is False
        assert mine["killed_by"] is None and mine["duration_s"] > 0

        table = await cli(home(rt), "logs", name)
        assert table.code == 0
        last = table.stdout.splitlines()[-1].split()
        assert last[0] == ran.id and last[3:5] == ["exited", "3"] and last[-1] == "3"

        shown = await cli(home(rt), "logs", name, ran.id)
        assert (shown.code, shown.stdout, shown.stderr) == (0, "[REDACTED:tok]\n", "err-line\n")
        as_json = await cli_json(home(rt), "logs", name, ran.id)
        assert as_json == {"record": mine, "stdout": "[REDACTED:tok]\n", "stderr": "err-line\n", "output_kept": True}

        # After a restart (a new runtime on the same state directory) the output is still redacted.
        restarted = Runtime(rt.settings)
        try:
            kept = restarted.exec_log(name, ran.id)
            assert (kept.stdout, kept.stderr, kept.output_kept) == ("[REDACTED:tok]\n", "err-line\n", True)
        finally:
            await restarted.close()
        again = await cli(home(rt), "logs", name, ran.id, "--json")
        everything = "".join([again.stdout, again.stderr, shown.stdout, shown.stderr, table.stdout, json.dumps(listed)])
        assert "s3cr3t-value-123" not in everything and "[REDACTED:tok]" in again.stdout

        unknown = await cli(home(rt), "logs", name, "x-123456789abc")
        assert unknown.code == 2 and unknown.stdout == ""
        assert "No command with exec id 'x-123456789abc'" in unknown.stderr
    finally:
        rt.remove_secret("tok")
