"""The real transports: ``spinup mcp`` over stdio and ``spinup serve`` over streamable HTTP, as
subprocesses driven by the real MCP client; the bearer token; a clean stdout.

``spinup serve`` always requires a token on HTTP: one it is given, or one it generates into the
state directory; ``--no-auth`` only on loopback and never beside a host-network agent.

A server subprocess builds ``Settings()`` from its environment, so its machines do not carry the
session's test label: every test removes the agents it made through the tools, and then any
container left with its agent's ``spinup.name`` label.
"""

from __future__ import annotations

import asyncio
import json
import stat
from pathlib import Path
from typing import Any

import httpx2
import pytest
from http_servers import SESSION_DEADLINE, SPINUP, authorized, free_port, http_server
from mcp import Client, MCPError
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from conftest import call, docker_cli, server_env, unique_name
from spinup.runtime import Policy, Runtime, Settings

LEGACY = "2025-11-25"
MODERN = "2026-07-28"
CORE_TOOLS = {
    "agent_create", "agent_list", "agent_status", "agent_stop", "agent_remove", "exec",
    "file_read", "file_write", "file_list", "file_stat", "file_move", "file_delete", "file_mkdir",
}


async def failed_call(client: Client, tool: str, **arguments: Any) -> str:
    """Call a tool that must fail as a tool error (not a protocol error); return the error text."""
    result = await client.call_tool(tool, arguments)
    assert result.is_error
    text = "".join(getattr(part, "text", "") for part in result.content)
    assert text
    return text


async def remove_agents(client: Client, *names: str) -> None:
    """Remove, through the tools, whichever of ``names`` the server still knows."""
    known = {a["name"] for a in (await call(client, "agent_list"))["agents"]}
    for name in names:
        if name in known:
            await call(client, "agent_remove", agent=name)


def remove_leftovers(*names: str) -> None:
    for name in names:
        ids = docker_cli("ps", "-aq", "--filter", f"label=spinup.name={name}").stdout.split()
        if ids:
            docker_cli("rm", "-f", *ids, check=False)


def stdio(settings: Settings, *args: str) -> StdioServerParameters:
    return StdioServerParameters(command=SPINUP, args=["mcp", *args], env=server_env(settings))


def serve_log(settings: Settings, url: str) -> Path:
    """Where :func:`http_server` keeps the stderr of the server at ``url``."""
    return settings.home.parent / f"serve-{url.split(':')[2].split('/')[0]}.log"


async def serve_exits(settings: Settings, *args: str) -> tuple[int, str]:
    """Run ``spinup serve`` expected to refuse to start: its exit code and stderr."""
    proc = await asyncio.create_subprocess_exec(
        SPINUP, "serve", "--port", str(free_port()), *args, env=server_env(settings),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(30):
            _, stderr = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, stderr.decode()


# stdio


async def test_stdio_server_lists_its_tools_runs_commands_and_reads_back_what_it_wrote(settings: Settings) -> None:
    name = unique_name("stdio")
    try:
        async with asyncio.timeout(SESSION_DEADLINE), Client(stdio(settings)) as client:
            tools = {t.name for t in (await client.list_tools()).tools}
            assert tools >= CORE_TOOLS
            try:
                created = await call(client, "agent_create", name=name)
                assert created["name"] == name
                assert (await call(client, "exec", agent=name, command="echo hi"))["stdout"] == "hi\n"
                await call(client, "file_write", agent=name, path="/workspace/a.txt", content="over stdio")
                read = await call(client, "file_read", agent=name, path="/workspace/a.txt")
                assert read["content"] == "over stdio"
                assert [a["name"] for a in (await call(client, "agent_list"))["agents"]] == [name]
            finally:
                await remove_agents(client, name)
            assert (await call(client, "agent_list"))["agents"] == []
    finally:
        remove_leftovers(name)


async def test_a_bound_stdio_server_hides_the_agent_argument_and_creates_its_agent_on_first_use(
    settings: Settings,
) -> None:
    name = unique_name("bound")
    try:
        async with asyncio.timeout(SESSION_DEADLINE), Client(stdio(settings, "--agent", name), mode="legacy") as client:
            tools = (await client.list_tools()).tools
            assert {t.name for t in tools} >= CORE_TOOLS
            # agent_remove keeps its argument on purpose: it names what it deletes.
            taking_agent = {t.name for t in tools if "agent" in t.input_schema.get("properties", {})}
            assert taking_agent == {"agent_remove"}
            assert (await call(client, "agent_list"))["agents"] == []
            try:
                assert (await call(client, "exec", command=["hostname"]))["stdout"].strip() == name
                await call(client, "file_write", path="/workspace/b.txt", content="bound")
                assert (await call(client, "file_read", path="/workspace/b.txt"))["content"] == "bound"
                assert [a["name"] for a in (await call(client, "agent_list"))["agents"]] == [name]
            finally:
                await remove_agents(client, name)
    finally:
        remove_leftovers(name)


async def test_a_stdio_server_keeps_serving_after_bad_calls(settings: Settings) -> None:
    name = unique_name("bad")
    try:
        async with asyncio.timeout(SESSION_DEADLINE), Client(stdio(settings)) as client:
            try:
                await call(client, "agent_create", name=name)
                await failed_call(client, "exec", agent="no-such-agent", command="true")
                assert (await call(client, "exec", agent=name, command="echo 1"))["stdout"] == "1\n"
                await failed_call(client, "agent_create", name="Bad_Name")
                assert (await call(client, "exec", agent=name, command="echo 2"))["stdout"] == "2\n"
                await failed_call(client, "file_read", agent=name, path="/workspace/missing.txt")
                assert (await call(client, "exec", agent=name, command="echo 3"))["stdout"] == "3\n"
                await failed_call(client, "exec", agent=name)
                await failed_call(client, "no_such_tool")
                assert (await call(client, "exec", agent=name, command="echo 4"))["stdout"] == "4\n"
                assert [a["name"] for a in (await call(client, "agent_list"))["agents"]] == [name]
            finally:
                await remove_agents(client, name)
    finally:
        remove_leftovers(name)


def jsonrpc_request(msg_id: int, method: str, version: str, params: dict[str, Any] | None = None) -> bytes:
    """One request line; a modern (2026-07-28) request carries the version and client in ``_meta``."""
    params = dict(params or {})
    if version == MODERN:
        params["_meta"] = {
            "io.modelcontextprotocol/protocolVersion": MODERN,
            "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1"},
            "io.modelcontextprotocol/clientCapabilities": {},
        }
    return (json.dumps({"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params}) + "\n").encode()


def parse_jsonrpc(line: bytes) -> dict[str, Any]:
    message = json.loads(line)
    assert isinstance(message, dict) and message.get("jsonrpc") == "2.0", line
    assert "method" in message or ("id" in message and ("result" in message or "error" in message)), line
    return message


@pytest.mark.parametrize("version", [LEGACY, MODERN])
async def test_stdio_stdout_carries_only_json_rpc(settings: Settings, version: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        SPINUP, "-v", "mcp", env=server_env(settings), limit=16 * 1024 * 1024,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdin and proc.stdout and proc.stderr
    if version == LEGACY:
        client_info = {"name": "raw", "version": "1"}
        proc.stdin.write(jsonrpc_request(
            1, "initialize", version, {"protocolVersion": LEGACY, "capabilities": {}, "clientInfo": client_info}
        ))
        proc.stdin.write(b'{"jsonrpc": "2.0", "method": "notifications/initialized"}\n')
    else:
        proc.stdin.write(jsonrpc_request(1, "server/discover", version))
    proc.stdin.write(jsonrpc_request(2, "tools/list", version))
    # A failing call makes the server log (at debug level, with -v): none of it may reach stdout.
    proc.stdin.write(jsonrpc_request(3, "tools/call", version, {"name": "exec", "arguments": {
        "agent": "no-such-agent", "command": "true"}}))
    await proc.stdin.drain()
    replies: dict[int, dict[str, Any]] = {}
    try:
        async with asyncio.timeout(60):
            while len(replies) < 3:
                line = await proc.stdout.readline()
                assert line, "the server closed stdout early"
                message = parse_jsonrpc(line)
                if "id" in message:
                    replies[message["id"]] = message
    finally:
        proc.stdin.close()
        async with asyncio.timeout(30):
            rest, stderr = await asyncio.gather(proc.stdout.read(), proc.stderr.read())
            await proc.wait()
    for line in rest.splitlines():
        parse_jsonrpc(line)
    if version == LEGACY:
        assert replies[1]["result"]["protocolVersion"] == LEGACY
    else:
        assert MODERN in replies[1]["result"]["supportedVersions"]
    assert {t["name"] for t in replies[2]["result"]["tools"]} >= CORE_TOOLS
    assert replies[3]["result"]["isError"] is True
    assert stderr, "with -v the server logs, to stderr"


# streamable HTTP


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_http_requires_the_bearer_token_on_every_request(settings: Settings, mode: str) -> None:
    name = unique_name("http")
    token = "s3cret-token"
    try:
        async with asyncio.timeout(SESSION_DEADLINE), http_server(settings, token=token) as url:
            async with httpx2.AsyncClient(timeout=30) as raw:
                missing = await raw.post(url, json={})
                assert missing.status_code == 401
                assert missing.headers["www-authenticate"].startswith("Bearer")
                assert (await raw.get(url)).status_code == 401
                wrong = await raw.post(url, json={}, headers={"Authorization": "Bearer nope"})
                assert wrong.status_code == 401 and token not in wrong.text
                assert (await raw.post(url, json={}, headers={"Authorization": token})).status_code == 401
                # The scheme is case-insensitive: past the token check, an empty body is the SDK's to refuse.
                lowercase = await raw.post(url, json={}, headers={"Authorization": f"bearer {token}"})
                assert lowercase.status_code not in (401, 403)
            async with authorized(token) as http:
                transport = streamable_http_client(url, http_client=http)
                async with Client(transport, mode=mode) as client:
                    assert {t.name for t in (await client.list_tools()).tools} >= CORE_TOOLS
                    try:
                        await call(client, "agent_create", name=name)
                        assert (await call(client, "exec", agent=name, command="echo web"))["stdout"] == "web\n"
                        await call(client, "file_write", agent=name, path="/workspace/h.txt", content="over http")
                        read = await call(client, "file_read", agent=name, path="/workspace/h.txt")
                        assert read["content"] == "over http"
                    finally:
                        await remove_agents(client, name)
    finally:
        remove_leftovers(name)


async def test_a_client_with_the_wrong_token_cannot_connect(settings: Settings) -> None:
    async with (
        asyncio.timeout(SESSION_DEADLINE),
        http_server(settings, token="right-token") as url,
        authorized("wrong-token") as http,
    ):
        with pytest.RaisesGroup(MCPError, flatten_subgroups=True):
            async with Client(streamable_http_client(url, http_client=http)) as client:
                await client.list_tools()


async def test_http_without_a_token_generates_one_keeps_it_private_and_requires_it(settings: Settings) -> None:
    token_file = settings.home / "http-token"
    async with asyncio.timeout(SESSION_DEADLINE):
        async with http_server(settings) as url:
            assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
            assert stat.S_IMODE(settings.home.stat().st_mode) == 0o700
            token = token_file.read_text().strip()
            assert len(token) >= 40
            printed = serve_log(settings, url).read_text()
            assert str(token_file) in printed and "generated" in printed
            async with httpx2.AsyncClient(timeout=30) as raw:
                assert (await raw.post(url, json={})).status_code == 401
                assert (await raw.get(url.removesuffix("/mcp") + "/metrics")).status_code == 401
            async with authorized(token) as http, Client(streamable_http_client(url, http_client=http)) as client:
                assert {t.name for t in (await client.list_tools()).tools} >= CORE_TOOLS
        # The next start keeps the token MCP clients were given.
        async with http_server(settings) as url:
            assert token_file.read_text().strip() == token
            assert "kept" in serve_log(settings, url).read_text()
            async with authorized(token) as http, Client(streamable_http_client(url, http_client=http)) as client:
                assert (await call(client, "agent_list"))["agents"] == []


async def test_a_token_file_others_can_read_is_refused(settings: Settings) -> None:
    settings.home.mkdir(parents=True)
    token_file = settings.home / "http-token"
    token_file.write_text("readable-by-all-0123456789\n")
    token_file.chmod(0o644)
    code, stderr = await serve_exits(settings)
    assert code == 2 and "chmod 600" in stderr and "readable-by-all" not in stderr


async def test_token_on_the_command_line_is_warned_about(settings: Settings) -> None:
    async with asyncio.timeout(SESSION_DEADLINE), http_server(settings, "--token", "cmdline-token-0123") as url:
        assert "visible to every local user in ps" in serve_log(settings, url).read_text()
        async with authorized("cmdline-token-0123") as http, Client(streamable_http_client(url, http_client=http)) as c:
            assert (await call(c, "agent_list"))["agents"] == []


async def test_no_auth_serves_loopback_with_a_warning_and_never_beside_a_host_network_agent(
    settings: Settings,
) -> None:
    code, stderr = await serve_exits(settings, "--host", "0.0.0.0", "--no-auth")
    assert code == 2 and "loopback" in stderr
    name = unique_name("hostnet")
    async with asyncio.timeout(SESSION_DEADLINE), http_server(settings, "--no-auth") as url:
        assert "--no-auth" in serve_log(settings, url).read_text()
        assert not (settings.home / "http-token").exists()
        async with Client(url) as client:
            assert (await call(client, "agent_list"))["agents"] == []
        runtime = Runtime(settings)
        try:
            await runtime.create_agent(name, policy=Policy(network="host"))
            async with httpx2.AsyncClient(timeout=30) as raw:
                for _ in range(50):  # the server looks again within a second
                    refused = await raw.post(url, json={})
                    if refused.status_code == 403:
                        break
                    await asyncio.sleep(0.2)
                assert refused.status_code == 403 and name in refused.json()["error_description"]
            code, stderr = await serve_exits(settings, "--no-auth")
            assert code == 2 and name in stderr and "network=host" in stderr
        finally:
            if runtime.find_agent(name) is not None:
                await runtime.remove_agent(name)
            await runtime.close()


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2"])
async def test_http_on_any_loopback_address_refuses_a_rebound_host_name(settings: Settings, host: str) -> None:
    """DNS-rebinding protection keeps a web page from reaching the server through a name it controls."""
    initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": LEGACY, "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}}
    headers = {"Accept": "application/json, text/event-stream", "Authorization": "Bearer rebind-token"}
    async with (
        asyncio.timeout(SESSION_DEADLINE),
        http_server(settings, host=host, token="rebind-token") as url,
        httpx2.AsyncClient(timeout=30, headers=headers) as raw,
    ):
        port = url.split(":")[2].split("/")[0]
        rebound = await raw.post(url, json=initialize, headers={"Host": f"attacker.example:{port}"})
        assert rebound.status_code in (400, 403, 421)
        assert (await raw.post(url, json=initialize)).status_code == 200


# the command line


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
