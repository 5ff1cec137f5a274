"""Port forwarding through the MCP tools (in memory) and through ``spinup forward`` as a subprocess, against
the real daemon."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from mcp import Client

from conftest import call, unique_name
from port_helpers import HTTP_PORT, http_get, start_http
from spinup.runtime import Runtime

SPINUP = str(Path(sys.executable).with_name("spinup"))


async def test_port_tools_forward_list_and_close(client: Client) -> None:
    name = unique_name("port")
    await call(client, "agent_create", name=name)
    try:
        await call(client, "exec", agent=name, command="echo served > /workspace/page.txt")
        server = f"cd /workspace && nohup python3 -m http.server {HTTP_PORT} --bind 127.0.0.1 >/tmp/h.log 2>&1 &"
        await call(client, "exec", agent=name, command=server)
        made = await call(client, "port_forward", agent=name, port=HTTP_PORT)
        assert made["state"] == "open" and made["url"] == f"http://127.0.0.1:{made['host_port']}"
        for _ in range(50):  # the server may still be starting: a refused connection is only reported
            try:
                status, body = await http_get(made["host_port"], "/page.txt")
                break
            except (ConnectionError, ValueError, IndexError):
                await asyncio.sleep(0.1)
        assert (status, body) == (200, b"served\n")
        [listed] = (await call(client, "port_list", agent=name))["forwards"]
        assert listed["host_port"] == made["host_port"] and listed["connections"] >= 1 and listed["bytes"] > 0
        assert listed["opened_at"].endswith("+00:00")
        assert name in [f["agent"] for f in (await call(client, "port_list"))["forwards"]]
        ended = await call(client, "port_close", agent=name, port=HTTP_PORT)
        assert ended["state"] == "closed" and ended["reason"].startswith("closed by")
        refused = await client.call_tool("port_forward", {"agent": name, "port": 0})
        assert refused.is_error
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert tools["port_list"].annotations.read_only_hint is True  # type: ignore[union-attr]
        assert tools["port_close"].annotations.destructive_hint is True  # type: ignore[union-attr]
        assert tools["port_forward"].annotations.idempotent_hint is True  # type: ignore[union-attr]
        assert tools["port_forward"].annotations.destructive_hint is False  # type: ignore[union-attr]
    finally:
        await call(client, "agent_remove", agent=name)


@pytest.fixture
async def served(runtime: Runtime, agent: str) -> str:
    """An agent whose machine serves /workspace on 127.0.0.1:8000."""
    await runtime.exec(agent, "echo from-cli > /workspace/cli.txt")
    await start_http(runtime, agent)
    return agent


@pytest.fixture
async def forwarding(runtime: Runtime, served: str) -> AsyncIterator[tuple[asyncio.subprocess.Process, int]]:
    """``spinup forward AGENT 8000`` running, and the host port of the URL it printed."""
    env = {**os.environ, "SPINUP_HOME": str(runtime.settings.home), "DOCKER_API_VERSION": "1.41"}
    proc = await asyncio.create_subprocess_exec(
        SPINUP, "forward", served, str(HTTP_PORT), env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(30):
            url = (await proc.stdout.readline()).decode().strip()
        assert url.startswith("http://127.0.0.1:"), url
        yield proc, int(url.rsplit(":", 1)[1])
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_spinup_forward_prints_the_url_and_stops_on_ctrl_c(
    forwarding: tuple[asyncio.subprocess.Process, int],
) -> None:
    proc, host_port = forwarding
    assert await http_get(host_port, "/cli.txt") == (200, b"from-cli\n")
    proc.send_signal(signal.SIGINT)
    async with asyncio.timeout(20):
        _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()


async def test_spinup_forward_exits_3_when_the_machine_stops(
    runtime: Runtime, served: str, forwarding: tuple[asyncio.subprocess.Process, int]
) -> None:
    proc, host_port = forwarding
    assert (await http_get(host_port))[0] == 200
    await runtime.stop_agent(served, snapshot=False)
    async with asyncio.timeout(20):
        _, err = await proc.communicate()
    assert proc.returncode == 3
    assert "ended: the machine was stopped" in err.decode()


async def test_spinup_forward_without_cap_sys_admin_says_it_needs_root(runtime: Runtime, served: str) -> None:
    env = {**os.environ, "SPINUP_HOME": str(runtime.settings.home), "DOCKER_API_VERSION": "1.41"}
    proc = await asyncio.create_subprocess_exec(
        "setpriv", "--bounding-set", "-sys_admin", "--inh-caps", "-sys_admin", SPINUP, "forward", served,
        str(HTTP_PORT), env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    assert proc.returncode == 2 and out == b""
    assert "port forwarding needs root (CAP_SYS_ADMIN) and a local Docker daemon" in err.decode()
