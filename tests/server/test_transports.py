"""The real transports: ``spinup mcp`` over stdio and ``spinup serve`` over streamable HTTP, as
subprocesses driven by the real MCP client; the bearer token; a clean stdout."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from conftest import docker_cli, held_open, unique_name
from spinup.runtime import Settings

SPINUP = str(Path(sys.executable).with_name("spinup"))


def server_env(settings: Settings) -> dict[str, str]:
    """What a server subprocess needs: the client passes little of our environment on."""
    return {"SPINUP_HOME": str(settings.home), "DOCKER_API_VERSION": "1.41", "PATH": os.environ["PATH"]}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def call(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, result.content
    assert result.structured_content is not None
    return result.structured_content


def remove_leftovers(name: str) -> None:
    ids = docker_cli("ps", "-aq", "--filter", f"label=spinup.name={name}").stdout.split()
    if ids:
        docker_cli("rm", "-f", *ids, check=False)


@asynccontextmanager
async def http_server(settings: Settings, *args: str, token: str | None = None) -> AsyncIterator[str]:
    """``spinup serve`` on a free loopback port; yields its /mcp URL once it answers."""
    port = free_port()
    env = server_env(settings) | ({"SPINUP_TOKEN": token} if token else {})
    proc = await asyncio.create_subprocess_exec(
        SPINUP, "serve", "--port", str(port), *args, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}/mcp"
    try:
        async with asyncio.timeout(30):
            while True:
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.close()
                    await writer.wait_closed()
                    break
                except OSError:
                    assert proc.returncode is None, "spinup serve exited early"
                    await asyncio.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        async with asyncio.timeout(15):
            await proc.wait()


async def test_stdio_server_lists_tools_runs_commands_and_files(settings: Settings) -> None:
    name = unique_name("stdio")
    params = StdioServerParameters(command=SPINUP, args=["mcp"], env=server_env(settings))
    try:
        async with held_open(Client(params)) as client:
            tools = {t.name for t in (await client.list_tools()).tools}
            assert {"agent_create", "exec", "file_read", "file_write", "snapshot_create"} <= tools
            await call(client, "agent_create", name=name)
            assert (await call(client, "exec", agent=name, command="echo hi"))["stdout"] == "hi\n"
            await call(client, "file_write", agent=name, path="/workspace/a.txt", content="over stdio")
            assert (await call(client, "file_read", agent=name, path="/workspace/a.txt"))["content"] == "over stdio"
            bad = await client.call_tool("exec", {"agent": "no-such-agent", "command": "true"})
            assert bad.is_error
            assert (await call(client, "agent_list"))["agents"][0]["name"] == name
            await call(client, "agent_remove", agent=name)
    finally:
        remove_leftovers(name)


async def test_a_bound_stdio_server_speaks_the_legacy_handshake_harnesses_use(settings: Settings) -> None:
    name = unique_name("bound")
    params = StdioServerParameters(command=SPINUP, args=["mcp", "--agent", name], env=server_env(settings))
    try:
        async with held_open(Client(params, mode="legacy")) as client:
            exec_tool = next(t for t in (await client.list_tools()).tools if t.name == "exec")
            assert "agent" not in exec_tool.input_schema.get("properties", {})
            assert (await call(client, "exec", command=["hostname"]))["stdout"].strip() == name
            await call(client, "agent_remove", agent=name)
    finally:
        remove_leftovers(name)


async def test_stdio_stdout_carries_only_json_rpc(settings: Settings) -> None:
    proc = await asyncio.create_subprocess_exec(
        SPINUP, "-v", "mcp", env=server_env(settings),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdin and proc.stdout
    initialize = {
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
    listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
    proc.stdin.write((json.dumps(initialize) + "\n").encode())
    proc.stdin.write((json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}) + "\n").encode())
    proc.stdin.write((json.dumps(listing) + "\n").encode())
    await proc.stdin.drain()
    lines = []
    try:
        async with asyncio.timeout(30):
            while len(lines) < 2:
                lines.append(json.loads(await proc.stdout.readline()))
    finally:
        proc.stdin.close()
        async with asyncio.timeout(15):
            await proc.wait()
    assert lines[0]["id"] == 1 and lines[0]["result"]["protocolVersion"] == "2025-11-25"
    assert lines[1]["id"] == 2 and len(lines[1]["result"]["tools"]) >= 13
    assert await proc.stdout.read() == b""


async def test_http_requires_the_bearer_token_on_every_request(settings: Settings) -> None:
    name = unique_name("http")
    token = "s3cret-token"
    try:
        async with http_server(settings, token=token) as url:
            async with httpx2.AsyncClient() as raw:
                assert (await raw.post(url, json={})).status_code == 401
                wrong = await raw.post(url, json={}, headers={"Authorization": "Bearer nope"})
                assert wrong.status_code == 401 and token not in wrong.text
            authed = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"})
            async with held_open(Client(streamable_http_client(url, http_client=authed))) as client:
                await call(client, "agent_create", name=name)
                assert (await call(client, "exec", agent=name, command="echo web"))["stdout"] == "web\n"
                await call(client, "file_write", agent=name, path="/workspace/h.txt", content="over http")
                assert (await call(client, "file_read", agent=name, path="/workspace/h.txt"))["content"] == "over http"
                await call(client, "agent_remove", agent=name)
    finally:
        remove_leftovers(name)


async def test_http_on_loopback_without_a_token_is_open_to_this_machine(settings: Settings) -> None:
    async with http_server(settings) as url, held_open(Client(url)) as client:
        assert "agents" in await call(client, "agent_list")


async def test_serving_a_non_loopback_address_without_a_token_is_refused(settings: Settings) -> None:
    env = {k: v for k, v in server_env(settings).items() if k != "SPINUP_TOKEN"}
    proc = await asyncio.create_subprocess_exec(
        SPINUP, "serve", "--host", "0.0.0.0", "--port", str(free_port()), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        _, stderr = await proc.communicate()
    assert proc.returncode == 2
    assert b"token" in stderr and b"SPINUP_TOKEN" in stderr


@pytest.mark.parametrize("args", [["agent", "create", "Bad_Name"], ["exec", "no-such-agent", "--", "true"]])
async def test_the_cli_reports_bad_input_in_words_and_a_non_zero_exit(settings: Settings, args: list[str]) -> None:
    proc = await asyncio.create_subprocess_exec(
        SPINUP, *args, env=server_env(settings), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(30):
        _, stderr = await proc.communicate()
    assert proc.returncode == 2 and stderr.startswith(b"spinup: error: ")


async def test_cli_exec_passes_options_before_the_separator_and_everything_after_it(settings: Settings) -> None:
    name = unique_name("cli")
    env = server_env(settings)
    try:
        create = await asyncio.create_subprocess_exec(SPINUP, "agent", "create", name, env=env,
                                                      stdout=asyncio.subprocess.DEVNULL)
        async with asyncio.timeout(60):
            assert await create.wait() == 0
        proc = await asyncio.create_subprocess_exec(
            SPINUP, "exec", name, "--timeout", "30", "--cwd", "/tmp", "--", "sh", "-c", "pwd; echo $0 -la; exit 3", "x",
            env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(60):
            out, _ = await proc.communicate()
        assert proc.returncode == 3 and out == b"/tmp\nx -la\n"
    finally:
        rm = await asyncio.create_subprocess_exec(
            SPINUP, "agent", "rm", name, env=env, stderr=asyncio.subprocess.DEVNULL
        )
        async with asyncio.timeout(60):
            await rm.wait()
        remove_leftovers(name)
