"""Port forwarding against the real daemon: a web server inside a ``network none`` machine, reached from the
host's 127.0.0.1 through a forward; parallel connections, closing, refused ports, taken host ports and the
machine going away."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import time

import pytest

from conftest import docker_cli
from port_helpers import HTTP_PORT, http_get, start_http
from spinup.runtime import InvalidInput, PortForward, Runtime
from spinup.runtime.docker import DockerBackend
from spinup.runtime.errors import AgentPaused, Conflict, ForwardUnavailable, NotFound


async def closed_promptly(host_port: int, seconds: float = 2.0) -> bytes:
    """Connect, send a request, and return what came back before the forward closed the connection."""
    async with asyncio.timeout(seconds):
        reader, writer = await asyncio.open_connection("127.0.0.1", host_port)
        writer.write(b"GET / HTTP/1.0\r\n\r\n")
        try:
            data = await reader.read()
        except ConnectionResetError:
            data = b""
        writer.close()
    return data


def listens(host_port: int) -> bool:
    """Whether something accepts connections on the host's 127.0.0.1:``host_port``."""
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", host_port)) == 0


async def closed(runtime: Runtime, agent: str, port: int, timeout: float = 10) -> PortForward:
    """The forward once it has closed."""
    async with asyncio.timeout(timeout):
        return await runtime.port_wait(agent, port)


async def test_forward_serves_a_web_server_of_a_network_none_machine(runtime: Runtime, agent: str) -> None:
    await runtime.exec(agent, "echo 'hello from inside' > /workspace/hello.txt")
    await start_http(runtime, agent)
    forward = await runtime.port_forward(agent, HTTP_PORT)
    assert forward.state == "open" and forward.agent == agent and forward.port == HTTP_PORT
    assert forward.url == f"http://127.0.0.1:{forward.host_port}"

    status, listing = await http_get(forward.host_port)
    assert status == 200 and b"Directory listing" in listing and b"hello.txt" in listing
    status, body = await http_get(forward.host_port, "/hello.txt")
    assert status == 200 and body == b"hello from inside\n"
    # The machine still has only lo: nothing on the host's loopback reaches port 8000 but the forward.
    assert (await runtime.exec(agent, "ls /sys/class/net")).stdout.split() == ["lo"]

    again, twice = await asyncio.gather(*(runtime.port_forward(agent, HTTP_PORT) for _ in range(2)))
    assert again.host_port == twice.host_port == forward.host_port  # the open forward, not a second one
    [listed] = runtime.port_list(agent)
    assert listed.connections == 2 and listed.bytes > len(listing) and listed.last_error is None
    [event] = runtime.events(agent, kinds=["port-forwarded"])
    assert event.data == {"port": HTTP_PORT, "host_port": forward.host_port}
    with pytest.raises(Conflict, match="already forwarded"):
        await runtime.port_forward(agent, HTTP_PORT, host_port=forward.host_port + 1)


async def test_twenty_parallel_connections_all_get_the_right_bytes(runtime: Runtime, agent: str) -> None:
    payload = os.urandom(1 << 20)
    assert (await runtime.exec(agent, "cat > /workspace/blob.bin", stdin=payload)).exit_code == 0
    await start_http(runtime, agent)
    forward = await runtime.port_forward(agent, HTTP_PORT)
    results = await asyncio.gather(*(http_get(forward.host_port, "/blob.bin", 30) for _ in range(20)))
    digest = hashlib.sha256(payload).hexdigest()
    assert [(status, hashlib.sha256(body).hexdigest()) for status, body in results] == [(200, digest)] * 20
    [listed] = runtime.port_list(agent)
    assert listed.connections == 20 and listed.bytes >= 20 * len(payload)


async def test_port_close_frees_the_host_port(runtime: Runtime, agent: str) -> None:
    await start_http(runtime, agent)
    forward = await runtime.port_forward(agent, HTTP_PORT)
    assert (await http_get(forward.host_port))[0] == 200
    done = await runtime.port_close(agent, HTTP_PORT)
    assert done.state == "closed" and done.reason is not None and done.reason.startswith("closed by")
    assert not listens(forward.host_port)
    with socket.socket() as mine:  # the port is ours to take (SO_REUSEADDR: the forward's own TIME_WAITs)
        mine.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        mine.bind(("127.0.0.1", forward.host_port))
        mine.listen()
    assert (await runtime.port_close(agent, HTTP_PORT)).state == "closed"  # closing again says how it ended
    [event] = runtime.events(agent, kinds=["port-closed"])
    assert event.data["port"] == HTTP_PORT and event.data["host_port"] == forward.host_port
    assert event.data["connections"] == 1
    with pytest.raises(NotFound, match="not forwarded by this process"):
        await runtime.port_close(agent, 9999)


async def test_a_port_nothing_listens_on_closes_the_connection_and_is_reported(runtime: Runtime, agent: str) -> None:
    forward = await runtime.port_forward(agent, 8001)
    started = time.monotonic()
    assert await closed_promptly(forward.host_port) == b""
    assert time.monotonic() - started < 1.0
    [listed] = runtime.port_list(agent)
    assert listed.state == "open" and listed.refused == 1
    assert listed.last_error is not None and "connection refused" in listed.last_error
    [event] = runtime.events(agent, kinds=["port-refused"])
    assert event.data["port"] == 8001 and "refused" in event.data["error"]

    await start_http(runtime, agent, 8001)
    status, body = await http_get(forward.host_port)
    assert status == 200 and b"Directory listing" in body
    assert runtime.port_list(agent)[0].connections == 2


async def test_a_taken_host_port_is_a_clear_error(runtime: Runtime, agent: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(Conflict, match=f"Host port {port} on 127.0.0.1 is already in use"):
            await runtime.port_forward(agent, HTTP_PORT, host_port=port)
    assert runtime.port_list(agent) == []
    asked = await runtime.port_forward(agent, HTTP_PORT, host_port=port)  # free again: the one asked for
    assert asked.host_port == port


async def test_bad_port_numbers_are_refused(runtime: Runtime, agent: str) -> None:
    for port in (0, 70000):
        with pytest.raises(InvalidInput, match="1 to 65535"):
            await runtime.port_forward(agent, port)
    with pytest.raises(InvalidInput, match="host_port"):
        await runtime.port_forward(agent, HTTP_PORT, host_port=-1)


async def test_stopping_the_machine_closes_the_forward_with_the_reason(runtime: Runtime, agent: str) -> None:
    await start_http(runtime, agent)
    forward = await runtime.port_forward(agent, HTTP_PORT)
    assert (await http_get(forward.host_port))[0] == 200
    await runtime.stop_agent(agent, snapshot=False)
    done = await closed(runtime, agent, HTTP_PORT)
    assert done.state == "closed" and done.reason == "the machine was stopped"
    assert not listens(forward.host_port)
    [event] = runtime.events(agent, kinds=["port-closed"])
    assert event.data["reason"] == "the machine was stopped"


async def test_killing_the_agent_closes_the_forward(runtime: Runtime, agent: str) -> None:
    forward = await runtime.port_forward(agent, HTTP_PORT)
    await runtime.kill(agent)
    assert (await closed(runtime, agent, HTTP_PORT)).reason == "the agent was killed"
    assert not listens(forward.host_port)


async def test_a_machine_killed_outside_spinup_closes_the_forward(runtime: Runtime, agent: str) -> None:
    forward = await runtime.port_forward(agent, HTTP_PORT)
    machine = runtime.get_agent(agent).machine_id
    assert machine is not None
    docker_cli("kill", machine)
    done = await closed(runtime, agent, HTTP_PORT)
    assert done.reason is not None and done.reason.startswith("the machine is gone")
    assert not listens(forward.host_port)
    # A new forward wakes the agent again.
    await start_http(runtime, agent)
    again = await runtime.port_forward(agent, HTTP_PORT)
    assert again.state == "open" and (await http_get(again.host_port))[0] == 200


async def test_a_paused_agent_is_refused(runtime: Runtime, agent: str) -> None:
    await runtime.pause(agent)
    try:
        with pytest.raises(AgentPaused, match="is paused"):
            await runtime.port_forward(agent, HTTP_PORT)
    finally:
        await runtime.resume(agent)


async def test_restoring_a_snapshot_closes_the_forward_of_the_old_machine(runtime: Runtime, agent: str) -> None:
    snapshot = (await runtime.snapshot(agent, "before")).snapshot
    await start_http(runtime, agent)
    forward = await runtime.port_forward(agent, HTTP_PORT)
    await runtime.restore(agent, snapshot.id)
    done = await closed(runtime, agent, HTTP_PORT)
    assert done.reason == "the machine was replaced (restored from a snapshot)"
    assert not listens(forward.host_port)


async def test_a_daemon_that_is_not_local_is_refused(
    runtime: Runtime, agent: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(DockerBackend, "is_local", property(lambda self: False))
    with pytest.raises(ForwardUnavailable, match="needs a local Docker daemon"):
        await runtime.port_forward(agent, HTTP_PORT)
    assert runtime.port_list() == []


async def test_a_server_that_speaks_first_reaches_the_client(runtime: Runtime, agent: str) -> None:
    banner = (
        "import socket; s = socket.socket(); s.bind(('127.0.0.1', 2525)); s.listen()\n"
        "while True:\n    c, _ = s.accept(); c.sendall(b'220 hello\\r\\n'); c.recv(100); c.close()\n"
    )
    await runtime.exec(agent, "cat > /tmp/banner.py", stdin=banner.encode())
    await runtime.exec(agent, "nohup python3 /tmp/banner.py >/tmp/banner.log 2>&1 &")
    forward = await runtime.port_forward(agent, 2525)
    for _ in range(50):
        try:
            async with asyncio.timeout(5):
                reader, writer = await asyncio.open_connection("127.0.0.1", forward.host_port)
                line = await reader.readline()
                writer.close()
        except ConnectionError:
            line = b""
        if line:
            break
        await asyncio.sleep(0.1)
    assert line == b"220 hello\r\n"
