"""Abuse of ``spinup serve`` over HTTP on loopback: malformed JSON-RPC, a 100 MB body, a slow-loris
crowd, and far more sessions than allowed that never close. Each is refused or bounded cleanly,
the server's memory stays bounded, and a well-behaved client is served throughout."""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import AsyncIterator
from pathlib import Path

from http_servers import SESSION_DEADLINE, SPINUP, authorized, http_server, processes_with
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from conftest import call, server_env
from spinup.runtime import Settings

TOKEN = "abuse-token"
MIB = 1024 * 1024
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "abuse", "version": "0"}},
}
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


def _server_pid(url: str) -> int:
    """The pid of the ``spinup serve`` listening on the URL's port."""
    port = url.split(":")[2].split("/")[0]
    pids = processes_with(b"serve", port.encode())
    assert pids, f"no spinup serve on port {port}"
    return pids[0]


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def _well_behaved(url: str) -> None:
    """A real MCP client's session: list agents, then close."""
    async with authorized(TOKEN) as http, Client(streamable_http_client(url, http_client=http)) as client:
        assert (await call(client, "agent_list"))["agents"] == []


async def test_malformed_json_rpc_and_a_100_mb_body_are_refused_and_cost_no_memory(settings: Settings) -> None:
    async with asyncio.timeout(SESSION_DEADLINE), http_server(settings, token=TOKEN) as url:
        pid = _server_pid(url)
        before = _rss(pid)
        async with authorized(TOKEN) as http:
            for body in (
                b"{not json",
                b"[]",
                b'{"jsonrpc": "2.0"}',
                b'{"jsonrpc": "2.0", "id": 1, "method": 7}',
                b"\0" * 64,
            ):
                answer = await http.post(url, content=body, headers=MCP_HEADERS)
                assert 400 <= answer.status_code < 500, (body, answer.status_code, answer.text)
            wrong_type = await http.post(
                url, content=b'{"a": 1}', headers={**MCP_HEADERS, "Content-Type": "text/plain"}
            )
            assert 400 <= wrong_type.status_code < 500

            async def hundred_megabytes() -> AsyncIterator[bytes]:
                chunk = b"x" * MIB
                for _ in range(100):
                    yield chunk

            declared = await http.post(
                url, content=hundred_megabytes(), headers={**MCP_HEADERS, "Content-Length": str(100 * MIB)}
            )
            assert declared.status_code == 413
            chunked = await http.post(url, content=hundred_megabytes(), headers=MCP_HEADERS)
            assert chunked.status_code == 413
        await _well_behaved(url)
        assert _rss(pid) - before < 60 * MIB  # the body was never held whole


async def test_a_file_write_bigger_than_the_sdks_default_body_limit_goes_through(settings: Settings) -> None:
    content = base64.b64encode(os.urandom(6 * MIB)).decode()  # 8 MiB of JSON: twice the SDK's default limit
    async with (
        asyncio.timeout(SESSION_DEADLINE),
        http_server(settings, token=TOKEN) as url,
        authorized(TOKEN) as http,
        Client(streamable_http_client(url, http_client=http)) as client,
    ):
        await call(client, "agent_create", name="big-writer")
        try:
            written = await call(
                client, "file_write", agent="big-writer", path="/workspace/big", content=content, encoding="base64"
            )
            assert written["size"] == 6 * MIB
        finally:
            await call(client, "agent_remove", agent="big-writer")


async def test_sessions_past_the_limit_are_refused_idle_ones_are_closed_and_memory_stays_bounded(
    settings: Settings,
) -> None:
    limits = {"SPINUP_HTTP_MAX_SESSIONS": "200", "SPINUP_HTTP_SESSION_IDLE": "4"}
    async with asyncio.timeout(SESSION_DEADLINE), http_server(settings, token=TOKEN, env=limits) as url:
        pid = _server_pid(url)
        _ = _rss(pid)
        statuses: list[int] = []
        async with authorized(TOKEN) as http:
            gate = asyncio.Semaphore(20)

            async def open_and_forget() -> None:
                async with gate:
                    answer = await http.post(url, json=INITIALIZE, headers=MCP_HEADERS)
                    statuses.append(answer.status_code)

            await asyncio.gather(*(open_and_forget() for _ in range(300)))
            grown = _rss(pid)
            assert statuses.count(200) == 200 and statuses.count(503) == 100, sorted(set(statuses))
            await asyncio.sleep(8)  # past the idle timeout: the forgotten sessions are closed
            again = await http.post(url, json=INITIALIZE, headers=MCP_HEADERS)
            assert again.status_code == 200
        await _well_behaved(url)
        # 200 sessions cost a bounded amount; once closed, more do not add to it.
        assert _rss(pid) - grown < 40 * MIB


async def test_a_slow_loris_crowd_holds_bounded_memory_and_a_real_client_is_still_served(settings: Settings) -> None:
    async with asyncio.timeout(SESSION_DEADLINE), http_server(settings, token=TOKEN) as url:
        pid = _server_pid(url)
        before = _rss(pid)
        port = int(url.split(":")[2].split("/")[0])
        writers: list[asyncio.StreamWriter] = []
        try:
            for _ in range(300):
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                writers.append(writer)
            for _ in range(3):  # a byte now and then, never the end of the headers
                for writer in writers:
                    writer.write(b"a")
                await asyncio.sleep(1)
            await asyncio.wait_for(_well_behaved(url), 30)
            assert _rss(pid) - before < 60 * MIB
            assert len(os.listdir(f"/proc/{pid}/fd")) < 1000
        finally:
            for writer in writers:
                writer.close()
        await asyncio.sleep(1)
        await _well_behaved(url)


async def test_an_http_limit_that_is_not_a_number_stops_the_server_with_a_clear_error(settings: Settings) -> None:
    proc = await asyncio.create_subprocess_exec(
        SPINUP, "serve", "--port", "1", env={**server_env(settings), "SPINUP_HTTP_MAX_SESSIONS": "many"},
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(30):
        _, stderr = await proc.communicate()
    assert proc.returncode != 0
    assert "SPINUP_HTTP_MAX_SESSIONS='many' is not a valid value" in stderr.decode()
