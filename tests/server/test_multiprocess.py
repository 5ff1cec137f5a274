"""Several Spinup processes on one state directory at once, as a harness's stdio server, the dashboard's
HTTP server and the CLI share one in daily use: execs and snapshots of one agent from many processes,
round after round, never fail, never hang, never leave the machine frozen and never lose a snapshot."""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import dataclass

from http_servers import SESSION_DEADLINE, SPINUP, authorized, http_server
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from conftest import call, docker_cli, server_env
from spinup.runtime import Runtime, Settings

ROUNDS = 4
EXECS = 5
SNAPSHOTS = 5
PROCESS_DEADLINE = 240


@dataclass(frozen=True)
class Done:
    args: tuple[str, ...]
    code: int
    stderr: str


async def spinup(settings: Settings, *args: str) -> Done:
    """Run the ``spinup`` CLI on the test's state directory; bounded in time."""
    proc = await asyncio.create_subprocess_exec(
        SPINUP, *args, env=server_env(settings), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        async with asyncio.timeout(PROCESS_DEADLINE):
            _, stderr = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return Done(args, proc.returncode, stderr.decode())


async def test_cli_execs_snapshots_and_an_http_server_on_one_agent_coordinate_across_processes(
    runtime: Runtime, settings: Settings, agent: str
) -> None:
    token = "multiprocess-token"
    async with (
        asyncio.timeout(ROUNDS * PROCESS_DEADLINE),
        http_server(settings, token=token) as url,
        authorized(token) as http,
        Client(streamable_http_client(url, http_client=http)) as client,
    ):
        for round_ in range(ROUNDS):
            processes = [
                *(
                    spinup(settings, "exec", agent, "--", "sh", "-c", f"echo r{round_}-{i} >> /workspace/log")
                    for i in range(EXECS)
                ),
                *(spinup(settings, "snapshot", "create", agent, "--label", f"r{round_}-{i}") for i in range(SNAPSHOTS)),
            ]

            async def over_http(round_: int = round_) -> None:
                for i in range(3):
                    said = await call(client, "exec", agent=agent, command=f"echo h{round_}-{i} >> /workspace/log")
                    assert said["exit_code"] == 0, said
                    await call(client, "file_write", agent=agent, path=f"/workspace/h{round_}-{i}", content="x")

            async with asyncio.timeout(SESSION_DEADLINE):
                done, _ = await asyncio.gather(asyncio.gather(*processes), over_http())
            failed = [d for d in done if d.code != 0]
            assert failed == [], failed
            machine = runtime.get_agent(agent).machine_id
            assert machine is not None
            assert docker_cli("inspect", "-f", "{{.State.Paused}}", machine).stdout.strip() == "false"

    logged = (await runtime.exec(agent, "sort /workspace/log")).stdout.split()
    wanted = [f"r{r}-{i}" for r in range(ROUNDS) for i in range(EXECS)]
    wanted += [f"h{r}-{i}" for r in range(ROUNDS) for i in range(3)]
    assert logged == sorted(wanted)
    verified = await spinup(settings, "snapshot", "verify")
    assert verified.code == 0 and "PROBLEM" not in verified.stderr, verified.stderr
    # Every round changed files, so every round made at least one snapshot (a capture with nothing new since
    # the head returns the head); verify found each one the database records listed in index.json.
    assert len(runtime.list_snapshots(agent)) >= ROUNDS
    with sqlite3.connect(settings.db_path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
