"""Snapshots through a real OCI registry (Debian's docker-registry on a loopback port): push an agent's
head, pull it into another state directory on a daemon without its images, wake it; blobs already
on the other side are not sent again, either way."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from mcp import Client
from test_self_contained import ROOT, tiny_image  # noqa: F401 - the fixture is used by name

from conftest import RUN_ID, TEST_LABEL, call, docker_cli, fails, held_open, sh, store_of, unique_name
from spinup.runtime import InvalidInput, PackageEntry, Runtime, Settings
from spinup.runtime.registry import parse_ref
from spinup.runtime.snapshots import snapshot_tag
from spinup.server.app import build_server


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """The pushing side: a base cache of its own, so the pulling side finds nothing in a shared one."""
    return Settings(home=tmp_path / "a", label_extra={TEST_LABEL: RUN_ID}, base_cache=tmp_path / "cache-a")


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A registry of this test's own on 127.0.0.1: (its host:port, its access log)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = tmp_path / "registry.yml"
    config.write_text(
        f"version: 0.1\nlog:\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n"
        f"    rootdirectory: {tmp_path / 'registry'}\nhttp:\n  addr: 127.0.0.1:{port}\n"
    )
    log_path = tmp_path / "registry.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2).close()
                break
            except OSError:
                assert server.poll() is None, log_path.read_text()[-2000:]
                assert time.monotonic() < deadline, "the registry did not answer in 30 s"
                time.sleep(0.1)
        yield f"127.0.0.1:{port}", log_path
    finally:
        server.terminate()
        server.wait(timeout=30)


def _count(log: Path, request: str) -> int:
    """How many requests of this kind (``POST /v2/.../blobs/uploads/``, ``GET /v2/.../blobs/``) the log shows."""
    method, _, fragment = request.partition(" ")
    return sum(1 for line in log.read_text().splitlines() if f'"{method} /v2/' in line and fragment in line)


async def test_an_agent_pushed_to_a_registry_is_pulled_into_another_home_and_wakes_with_its_files(
    runtime: Runtime, tiny_image: str, registry: tuple[str, Path], tmp_path: Path  # noqa: F811
) -> None:
    host, log = registry
    name = unique_name()
    await runtime.create_agent(name, image=tiny_image, policy=ROOT)
    await sh(runtime, name, "echo travelled > /workspace/note && rm /opt/keep/a && ln -s note /workspace/link")
    entry = PackageEntry(manager="pip", name="demo", spec="demo==1.0", version="1.0", installed_at=datetime.now(UTC))
    runtime._db.set_packages(runtime.get_agent(name).id, [entry])
    head = (await runtime.snapshot(name, "to push")).snapshot

    pushed = await runtime.push_snapshot(name, f"{host}/team/{name}:v1", insecure=True)
    assert pushed.digest == head.manifest_digest, "the registry holds the snapshot exactly as stored"
    uploads = _count(log, "POST /blobs/uploads/")
    assert uploads == 3, "base layer, own layer, config"
    await runtime.push_snapshot(head.id, f"{host}/team/{name}:v2", insecure=True)
    assert _count(log, "POST /blobs/uploads/") == uploads, "a second push sends no blob again"
    # Another repository of the same registry: each layer is mounted from the first one, not sent again
    # (skopeo sends the config, under a kilobyte, anew).
    await runtime.push_snapshot(head.id, f"{host}/elsewhere/{name}:v1", insecure=True)
    assert _count(log, "POST mount=") == 2, "base layer and own layer mounted"
    assert _count(log, "POST /blobs/uploads/") - _count(log, "POST mount=") == uploads + 1, "only the config sent"

    # The other side: its own state directory and base cache, and a daemon without the agent's images.
    docker_cli("rmi", "-f", snapshot_tag(head.id), tiny_image)
    other = Runtime(Settings(home=tmp_path / "b", label_extra={TEST_LABEL: RUN_ID}, base_cache=tmp_path / "cache-b"))
    try:
        pulled = await other.pull_agent(f"{host}/team/{name}:v1", "pulled", insecure=True)
        assert pulled.head_snapshot == head.id
        assert await sh(other, "pulled", "cat /workspace/note; ls /opt/keep; readlink /workspace/link") == (
            "travelled\nb\nnote\n"
        )
        assert [(p.name, p.version) for p in other.package_manifest("pulled")] == [("demo", "1.0")]
        assert other.get_agent("pulled").policy.network == "none", "a pulled agent runs under the default policy"
        await sh(other, "pulled", "echo more > /tmp/more")
        assert (await other.snapshot("pulled", "after the pull")).created, "it goes on snapshotting"

        layers = [d["digest"] for d in store_of(runtime).get_json(head.manifest_digest)["layers"]]
        fetched = [_count(log, f"GET /blobs/{digest}") for digest in layers]
        assert fetched == [1, 1], "each layer was fetched once"
        again = await other.pull_agent(f"{host}/team/{name}:v2", "again", insecure=True)
        assert again.head_snapshot == head.id
        # skopeo reads the (small) config again; no layer the store holds is fetched.
        assert [_count(log, f"GET /blobs/{digest}") for digest in layers] == fetched
        assert (await other.verify_store()).ok
    finally:
        for agent in other.list_agents():
            await other.remove_agent(agent.name)
        await other.close()


def test_plain_http_is_only_for_a_loopback_registry_and_a_reference_is_checked() -> None:
    assert parse_ref("127.0.0.1:5000/team/agent", insecure=True).tag == "latest"
    with pytest.raises(InvalidInput, match="loopback"):
        parse_ref("registry.example.com/team/agent:v1", insecure=True)
    for bad in ("../etc/passwd", "host/Team/agent", "host/a:b:c", "-host/a"):
        with pytest.raises(InvalidInput, match="Invalid image reference"):
            parse_ref(bad)


async def test_mcp_clients_push_and_pull_only_when_the_operator_grants_registry(
    runtime: Runtime, settings: Settings, tiny_image: str, registry: tuple[str, Path]  # noqa: F811
) -> None:
    host, _ = registry
    name = unique_name()
    await runtime.create_agent(name, image=tiny_image, policy=ROOT)
    head = (await runtime.snapshot(name)).snapshot
    ref = f"{host}/mcp/{name}:v1"
    async with held_open(Client(build_server(settings))) as client:
        assert "SPINUP_MCP_GRANTS" in await fails(client, "snapshot_push", agent=name, ref=ref, insecure=True)
        assert "SPINUP_MCP_GRANTS" in await fails(client, "agent_pull", ref=ref, insecure=True)
    granted = replace(settings, mcp_grants=frozenset({"root", "registry"}))
    async with held_open(Client(build_server(granted))) as client:
        pushed = await call(client, "snapshot_push", agent=name, ref=ref, insecure=True)
        assert pushed["digest"] == head.manifest_digest and pushed["snapshot"] == head.id
        assert "loopback" in await fails(client, "snapshot_push", agent=name, ref="example.com/a/b", insecure=True)
        pulled = await call(client, "agent_pull", ref=ref, name=unique_name("p"), insecure=True)
        assert pulled["head_snapshot"] == head.id
