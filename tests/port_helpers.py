"""What the port forwarding tests share: a web server inside a machine, and an HTTP GET from the host."""

from __future__ import annotations

import asyncio

from spinup.runtime import Runtime

HTTP_PORT = 8000


async def start_http(runtime: Runtime, agent: str, port: int = HTTP_PORT) -> None:
    """Start ``python3 -m http.server`` on the machine's 127.0.0.1:``port`` (serving /workspace); await it."""
    await runtime.exec(
        agent,
        f"nohup python3 -m http.server {port} --bind 127.0.0.1 >/tmp/http-{port}.log 2>&1 &",
        cwd="/workspace",
    )
    probe = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=1).close()"
    for _ in range(100):
        if (await runtime.exec(agent, ["python3", "-c", probe])).exit_code == 0:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"http.server did not listen on {port}")


async def http_get(host_port: int, path: str = "/", timeout: float = 10) -> tuple[int, bytes]:
    """An HTTP/1.0 GET to the host's 127.0.0.1:``host_port``: the status code and the body."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection("127.0.0.1", host_port)
        writer.write(f"GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode())
        await writer.drain()
        response = await reader.read()
        writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body
