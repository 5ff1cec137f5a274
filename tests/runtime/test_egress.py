"""Network 'allowlist' against a real daemon: the egress proxy's listener inside the machine, its decisions,
denials the agent sees, live rule changes, HTTPS tunnels, edge credentials, restarts and load.

Everything stays on loopback: the test's servers listen on the host's 127.0.0.1, which the machine reaches
only through the proxy and only because a rule names the address. Names the proxy would resolve are
pinned (SPINUP_EGRESS_RESOLVE), so no query leaves the host.
"""

from __future__ import annotations

import asyncio
import datetime
import http.server
import ipaddress
import json
import os
import signal
import socket
import ssl
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import zstandard
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conftest import RUN_ID, TEST_LABEL, unique_name
from package_sources import make_wheel, serve_index
from spinup.runtime import Policy, Runtime, Settings
from spinup.runtime.egress import EgressClient

NO_BYPASS = {"NO_PROXY": "", "no_proxy": ""}  # the test's servers are on 127.0.0.1, which NO_PROXY names


class _Recorder(http.server.BaseHTTPRequestHandler):
    seen: list[dict[str, str]]

    def do_GET(self) -> None:
        self.seen.append({"path": self.path, **{k.lower(): v for k, v in self.headers.items()}})
        body = b"x" * int(self.path.split("size=")[1]) if "size=" in self.path else f"hello {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def _serve(context: ssl.SSLContext | None = None) -> tuple[http.server.ThreadingHTTPServer, list[dict[str, str]]]:
    seen: list[dict[str, str]] = []
    handler = type("Handler", (_Recorder,), {"seen": seen})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, seen


def _self_signed(directory: Path) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    path = directory / "upstream.pem"
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        + cert.public_bytes(serialization.Encoding.PEM)
    )
    return path


def _blobs_holding(blobs: Path, needle: bytes) -> list[str]:
    """Names of the store's blobs whose bytes (decompressed when zstd) contain ``needle``."""
    found = []
    for blob in blobs.iterdir():
        data = blob.read_bytes()
        if data[:4] == b"\x28\xb5\x2f\xfd":
            data = zstandard.ZstdDecompressor().decompressobj().decompress(data)
        if needle in data:
            found.append(blob.name)
    return found


class World:
    """The module's servers, runtime and allowlist agent."""

    def __init__(self, home: Path) -> None:
        self.cert = _self_signed(home.parent)
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(self.cert)
        self.allowed, self.allowed_seen = _serve()
        self.refused, self.refused_seen = _serve()
        self.secure, self.secure_seen = _serve(tls)
        self.a = self.allowed.server_address[1]
        self.b = self.refused.server_address[1]
        self.c = self.secure.server_address[1]
        self.settings = Settings(
            home=home,
            label_extra={TEST_LABEL: RUN_ID},
            egress_resolve="allowed.test=127.0.0.1",
            egress_upstream_ca=str(self.cert),
        )
        self.rt = Runtime(self.settings)
        self.name = unique_name("eg")

    def close(self) -> None:
        for server in (self.allowed, self.refused, self.secure):
            server.shutdown()


@pytest.fixture(scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    world = World(tmp_path_factory.mktemp("egress") / "spinup")
    rules = [f"127.0.0.1:{world.a}", f"127.0.0.1:{world.c}"]
    await world.rt.create_agent(world.name, policy=Policy().updated(allow=rules))
    try:
        yield world
    finally:
        for agent in world.rt.list_agents():
            await world.rt.remove_agent(agent.name)
        await EgressClient(world.settings).stop()
        await world.rt.close()
        world.close()


FETCH = """
import json, sys, urllib.request, urllib.error
out = []
for url in sys.argv[1:]:
    try:
        with urllib.request.urlopen(url, timeout=20) as r:
            out.append({"url": url, "status": r.status, "body": r.read().decode()[:300]})
    except urllib.error.HTTPError as e:
        out.append({"url": url, "status": e.code, "body": e.read().decode()[:600]})
    except Exception as e:
        out.append({"url": url, "error": repr(e)})
print(json.dumps(out))
"""


async def fetch(world: World, *urls: str, agent: str | None = None) -> tuple[list[dict[str, Any]], Any]:
    result = await world.rt.exec(agent or world.name, ["python3", "-c", FETCH, *urls], env=NO_BYPASS)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout), result


async def test_the_allowed_server_answers_and_the_other_gets_a_403_that_explains(world: World) -> None:
    before = world.rt.last_event_id()
    (ok, refused), result = await fetch(world, f"http://127.0.0.1:{world.a}/one", f"http://127.0.0.1:{world.b}/two")
    assert ok["status"] == 200 and ok["body"] == "hello /one"
    assert refused["status"] == 403
    assert f"refused http 127.0.0.1:{world.b}" in refused["body"]
    assert f"may reach: 127.0.0.1:{world.a}" in refused["body"]
    assert f"spinup agent policy {world.name} --allow 127.0.0.1:{world.b}" in refused["body"]
    assert not world.refused_seen  # refused before any connection was made
    assert result.network_denied == [
        {
            "host": "127.0.0.1",
            "port": world.b,
            "count": 1,
            "decision": "refused",
            "reason": result.network_denied[0]["reason"],
        }
    ]
    events = world.rt.events(world.name, limit=50, after=before)
    allowed = [e for e in events if e.kind == "egress"]
    assert allowed and allowed[0].data["port"] == world.a and allowed[0].data["bytes_received"] > 0
    assert allowed[0].data["decision"] == "allowed" and allowed[0].client == "spinup-egress"
    assert [e.data["port"] for e in events if e.kind == "egress-refused"] == [world.b]
    exec_event = next(e for e in events if e.kind == "exec")
    assert exec_event.data["network_denied"][0]["port"] == world.b


async def test_a_pinned_name_reaches_its_address_only_with_a_rule_naming_it(world: World) -> None:
    (by_name,), _ = await fetch(world, f"http://allowed.test:{world.a}/n")
    assert by_name["status"] == 403 and "no rule" in by_name["body"]  # the name has no rule of its own
    await world.rt.set_policy(
        world.name,
        world.rt.get_agent(world.name).policy.updated(
            allow=[*world.rt.get_agent(world.name).policy.allow, f"allowed.test:{world.a}"]
        ),
    )
    (by_name,), _ = await fetch(world, f"http://allowed.test:{world.a}/n")
    assert by_name["status"] == 200 and world.allowed_seen[-1]["host"] == f"allowed.test:{world.a}"


async def test_loopback_private_and_metadata_addresses_are_refused_by_the_proxy(world: World) -> None:
    before = world.rt.last_event_id()
    results, result = await fetch(
        world, "http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/", f"http://127.0.0.1:{world.b}/"
    )
    assert [r["status"] for r in results] == [403, 403, 403]
    reasons = {
        e.data["host"]: e.data["reason"] for e in world.rt.events(world.name, after=before, kinds=["egress-refused"])
    }
    assert "the cloud metadata address" in reasons["169.254.169.254"]
    assert "a private address" in reasons["10.0.0.1"]
    assert "127.0.0.1" in reasons
    # Decided without a connection: a refusal carries no address, and no 'egress' (connected) event exists.
    assert not world.rt.events(world.name, after=before, kinds=["egress", "egress-failed"])
    assert {d["host"] for d in result.network_denied} == {"169.254.169.254", "10.0.0.1", "127.0.0.1"}


async def test_the_machine_has_only_lo_and_a_direct_connection_goes_nowhere(world: World) -> None:
    code = f"""
import socket, errno
print(sorted(line.split(':')[0].strip() for line in open('/proc/net/dev').readlines()[2:]))
for address in (('127.0.0.1', {world.a}), ('10.0.0.1', 80)):
    s = socket.socket(); s.settimeout(5)
    try:
        s.connect(address); print('connected')
    except OSError as e:
        print(errno.errorcode[e.errno])
"""
    result = await world.rt.exec(world.name, ["python3", "-c", code])
    assert result.stdout.split("\n")[:3] == ["['lo']", "ECONNREFUSED", "ENETUNREACH"]


async def test_https_connect_to_an_allowed_server_works_end_to_end_and_a_refused_one_is_refused(world: World) -> None:
    pem = world.cert.read_bytes().split(b"-----END PRIVATE KEY-----\n")[1]
    await world.rt.exec(world.name, ["sh", "-c", "cat > /tmp/upstream.crt"], stdin=pem)
    code = """
import http.client, os, ssl, sys
context = ssl.create_default_context(cafile='/tmp/upstream.crt')
for port in sys.argv[1:]:
    connection = http.client.HTTPSConnection('127.0.0.1', 3128, context=context, timeout=20)
    connection.set_tunnel('127.0.0.1', int(port))
    try:
        connection.request('GET', '/secure'); response = connection.getresponse()
        print(response.status, response.read().decode())
    except OSError as e:
        print('ERR', e)
"""
    result = await world.rt.exec(world.name, ["python3", "-c", code, str(world.c), str(world.b)])
    lines = result.stdout.splitlines()
    assert lines[0] == "200 hello /secure"
    assert lines[1].startswith("ERR Tunnel connection failed: 403")
    connect = world.rt.events(world.name, limit=5, kinds=["egress"])[-1]
    assert connect.data["scheme"] == "https" and connect.data["method"] == "CONNECT" and connect.data["port"] == world.c
    assert "intercepted" not in connect.data  # TLS stayed end to end


async def test_a_rule_change_applies_to_the_next_request_without_a_restart(world: World) -> None:
    machine = world.rt.get_agent(world.name).machine_id
    policy = world.rt.get_agent(world.name).policy
    await world.rt.set_policy(world.name, policy.updated(allow=[*policy.allow, f"127.0.0.1:{world.b}"]))
    (now_allowed,), _ = await fetch(world, f"http://127.0.0.1:{world.b}/later")
    assert now_allowed["status"] == 200
    await world.rt.set_policy(world.name, policy)
    (refused_again,), _ = await fetch(world, f"http://127.0.0.1:{world.b}/again")
    assert refused_again["status"] == 403
    assert world.rt.get_agent(world.name).machine_id == machine
    kinds = [e.kind for e in world.rt.events(world.name, limit=30)]
    assert "policy-changed" in kinds and "machine-created" not in kinds[-10:]


async def test_pip_installs_through_the_allowlist_and_is_refused_visibly_without_the_rule(
    world: World, tmp_path: Path
) -> None:
    make_wheel(tmp_path / "wheels", "egress-probe", "1.0")
    server, index, requests = serve_index(tmp_path / "wheels")
    port = server.server_address[1]
    policy = world.rt.get_agent(world.name).policy
    pip = [
        "pip",
        "install",
        "--target",
        "/tmp/probe",
        "--no-cache-dir",
        "--index-url",
        index,
        "--retries",
        "0",
        "--timeout",
        "10",
        "egress-probe",
    ]
    try:
        await world.rt.set_policy(world.name, policy.updated(allow=[*policy.allow, f"127.0.0.1:{port}"]))
        installed = await world.rt.exec(world.name, pip, env=NO_BYPASS)
        assert installed.exit_code == 0, installed.stderr
        assert "/simple/egress-probe/" in requests and installed.network_denied == []
        await world.rt.exec(world.name, ["rm", "-rf", "/tmp/probe"])
        await world.rt.set_policy(world.name, policy)
        refused = await world.rt.exec(world.name, pip, env=NO_BYPASS)
        # pip only says "No matching distribution found"; the result says why.
        assert refused.exit_code != 0 and "No matching distribution" in refused.stderr
        assert refused.network_denied[0]["host"] == "127.0.0.1" and refused.network_denied[0]["port"] == port
    finally:
        await world.rt.set_policy(world.name, policy)
        server.shutdown()


async def test_garbage_and_200_parallel_connections_leave_no_threads_or_descriptors_behind(world: World) -> None:
    status = await EgressClient(world.settings).status()
    assert status is not None
    pid = status["pid"]

    def fds() -> int:
        return len(os.listdir(f"/proc/{pid}/fd"))

    def threads() -> int:
        text = Path(f"/proc/{pid}/status").read_text()
        return int(next(line for line in text.splitlines() if line.startswith("Threads:")).split()[1])

    await fetch(world, f"http://127.0.0.1:{world.a}/warm")
    baseline_fds, baseline_threads = fds(), threads()
    code = f"""
import socket, concurrent.futures, urllib.request
s = socket.create_connection(('127.0.0.1', 3128)); s.sendall(b'\\x16\\x03\\x01garbage\\r\\n\\r\\n')
print(s.recv(100).split(b'\\r\\n')[0].decode()); s.close()
def get(i):
    try:
        return urllib.request.urlopen('http://127.0.0.1:{world.a}/p%d' % i, timeout=60).status
    except Exception as e:
        return getattr(e, 'code', repr(e))
with concurrent.futures.ThreadPoolExecutor(200) as pool:
    results = list(pool.map(get, range(200)))
print(sorted(set(map(str, results))), results.count(200))
"""
    result = await world.rt.exec(world.name, ["python3", "-c", code], env=NO_BYPASS, timeout=120)
    lines = result.stdout.splitlines()
    assert lines[0] == "HTTP/1.1 400 Bad Request", result.stdout + result.stderr
    statuses, ok = lines[1].rsplit(" ", 1)
    assert set(eval(statuses)) <= {"200", "503"} and int(ok) >= 100, lines[1]
    for _ in range(100):
        if fds() <= baseline_fds + 2 and threads() <= baseline_threads + 2:
            break
        await asyncio.sleep(0.1)
    assert fds() <= baseline_fds + 2, (fds(), baseline_fds)
    assert threads() <= baseline_threads + 2


async def test_a_killed_proxy_comes_back_on_the_next_call_and_listens_again(world: World) -> None:
    client = EgressClient(world.settings)
    status = await client.status()
    assert status is not None
    os.kill(status["pid"], signal.SIGKILL)
    for _ in range(50):
        if await client.status() is None:
            break
        await asyncio.sleep(0.1)
    # A process started before the restart, talking to the old listener, fails cleanly; the next call brings it back.
    (again,), _ = await fetch(world, f"http://127.0.0.1:{world.a}/after-restart")
    assert again["status"] == 200
    restarted = await client.status()
    assert restarted is not None and restarted["pid"] != status["pid"]


async def test_edge_credentials_reach_the_server_and_never_the_machine(world: World) -> None:
    rt, value = world.rt, "edge-" + os.urandom(12).hex()
    rt.set_secret("EDGE_TOKEN", value)
    rt.bind_secret(world.name, "EDGE_TOKEN", header="127.0.0.1:Authorization:Bearer {value}")
    policy = rt.get_agent(world.name).policy
    await rt.set_policy(world.name, policy.updated(intercept=["127.0.0.1"]))
    try:
        (plain, secure), _ = await fetch(world, f"http://127.0.0.1:{world.a}/plain", f"https://127.0.0.1:{world.c}/tls")
        assert plain["status"] == 200 and secure["status"] == 200, secure
        assert world.allowed_seen[-1]["authorization"] == f"Bearer {value}"
        assert world.secure_seen[-1]["authorization"] == f"Bearer {value}"
        intercepted = rt.events(world.name, limit=5, kinds=["egress"])[-1]
        assert intercepted.data["intercepted"] is True and intercepted.data["edge_credentials"] == ["EDGE_TOKEN"]
        # Nowhere in the machine: environment, any process's environ, any file.
        search = (
            f"grep -rlF {value} / --exclude-dir=proc --exclude-dir=sys 2>/dev/null; "
            f"cat /proc/*/environ 2>/dev/null | grep -cF {value}; env | grep -cF {value}"
        )
        found = await rt.exec(world.name, ["sh", "-c", search])
        assert found.stdout.split() == ["0", "0"], found.stdout
        snapshot = await rt.snapshot(world.name, "after edge credentials")
        assert snapshot.snapshot is not None
        assert not _blobs_holding(world.settings.home / "store" / "blobs" / "sha256", value.encode())
    finally:
        rt.unbind_secret(world.name, "EDGE_TOKEN")
        await rt.set_policy(world.name, rt.get_agent(world.name).policy.updated(intercept=[]))


async def test_an_allowed_destination_that_does_not_answer_gets_a_502_with_the_reason(world: World) -> None:
    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    policy = world.rt.get_agent(world.name).policy
    await world.rt.set_policy(world.name, policy.updated(allow=[*policy.allow, f"127.0.0.1:{closed}"]))
    try:
        (answer,), result = await fetch(world, f"http://127.0.0.1:{closed}/")
        assert answer["status"] == 502 and "failed: connection refused" in answer["body"], answer
        (denial,) = result.network_denied
        assert denial["decision"] == "failed" and denial["port"] == closed
    finally:
        await world.rt.set_policy(world.name, policy)
