"""Spinup servers as subprocesses for tests: ``spinup serve`` on a free loopback port, and an HTTP client
that sends its bearer token."""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx2

from conftest import server_env
from spinup.runtime import Settings

SPINUP = str(Path(sys.executable).with_name("spinup"))
# A session's worth of calls, creating a machine included; generous for a loaded CI machine.
SESSION_DEADLINE = 180


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def wait_listening(proc: asyncio.subprocess.Process, host: str, port: int) -> None:
    """Until ``host:port`` accepts a connection (the server must not exit first)."""
    async with asyncio.timeout(30):
        while True:
            try:
                _, writer = await asyncio.open_connection(host, port)
            except OSError:
                assert proc.returncode is None, "spinup serve exited before it listened"
                await asyncio.sleep(0.1)
                continue
            writer.close()
            await writer.wait_closed()
            return


@asynccontextmanager
async def http_server(
    settings: Settings,
    *args: str,
    token: str | None = None,
    host: str = "127.0.0.1",
    env: dict[str, str] | None = None,
) -> AsyncIterator[str]:
    """``spinup serve`` on a free loopback port; yields its /mcp URL once it answers (its stderr: serve_log)."""
    port = free_port()
    env = server_env(settings) | ({"SPINUP_TOKEN": token} if token else {}) | (env or {})
    settings.home.parent.mkdir(parents=True, exist_ok=True)
    log = (settings.home.parent / f"serve-{port}.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        SPINUP, "serve", "--host", host, "--port", str(port), *args, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=log,
    )
    try:
        await wait_listening(proc, host, port)
        yield f"http://{host}:{port}/mcp"
    finally:
        if proc.returncode is None:
            proc.terminate()
        async with asyncio.timeout(15):
            await proc.wait()
        log.close()


def authorized(token: str) -> httpx2.AsyncClient:
    """An HTTP client sending the bearer token, with the long read timeout a tool call may need."""
    return httpx2.AsyncClient(
        headers={"Authorization": f"Bearer {token}"}, timeout=httpx2.Timeout(30, read=SESSION_DEADLINE)
    )


async def stop_process(proc: asyncio.subprocess.Process, wait: float = 15) -> None:
    """SIGTERM a child process and wait for it; SIGKILL it if it has not ended after ``wait`` seconds."""
    if proc.returncode is None:
        proc.terminate()
    try:
        async with asyncio.timeout(wait):
            await proc.wait()
    except TimeoutError:
        proc.kill()
        await proc.wait()


def processes_with(*words: bytes) -> list[int]:
    """Pids of the processes whose command line has every one of ``words`` as an argument."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if all(word in argv for word in words):
            pids.append(int(entry.name))
    return pids
