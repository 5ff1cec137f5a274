"""The Docker-API capture path (for daemons whose upper directory is unreadable) gives the same
files as the overlay fast path, and its snapshots restore."""

from __future__ import annotations

from dataclasses import replace

import pytest

from conftest import docker_cli, store_of
from spinup.runtime import Policy, Runtime, Settings
from spinup.snapshot.listing import Meta, apply_layer, layer_entries
from spinup.snapshot.store import Descriptor

CHANGES = (
    "mkdir -p /workspace/d/e /workspace/emptydir && echo hi > '/workspace/d/a b.txt' && "
    "ln -s /etc/passwd /workspace/abs && ln -s ../abs /workspace/d/rel && touch /workspace/empty && "
    "chmod 4755 /workspace/empty && ln '/workspace/d/a b.txt' /workspace/hard && "
    "echo ü > '/workspace/ünï cödé' && chown 1000:1000 /workspace/d/e && rm /etc/motd && "
    "rm -rf /usr/share/doc/tar && mkdir /usr/share/doc/tar && echo x > /usr/share/doc/tar/new"
)


def _top_layer_files(runtime: Runtime, manifest_digest: str) -> dict[str, Meta]:
    manifest = store_of(runtime).get_json(manifest_digest)
    tree: dict[str, Meta] = {}
    apply_layer(tree, layer_entries(store_of(runtime), Descriptor.from_json(manifest["layers"][-1])))
    return {path: meta for path, meta in tree.items() if meta.type != "directory"}


@pytest.fixture
async def agent(root_agent: str) -> str:
    """The changes touch /etc, /usr and ownership: the agent runs as root."""
    return root_agent


async def test_api_capture_archives_the_same_files_as_the_fast_path(runtime: Runtime, agent: str) -> None:
    assert (await runtime.exec(agent, CHANGES)).exit_code == 0
    fast = (await runtime.snapshot(agent, "fast")).snapshot
    api_runtime = Runtime(replace(runtime.settings, capture_mode="api"))
    try:
        # Same machine, so the API path sees the same changes; force a new layer with one more file.
        await runtime.exec(agent, "echo more > /workspace/more.txt")
        via_api = (await api_runtime.snapshot(agent, "api")).snapshot
    finally:
        await api_runtime.close()
    fast_files = _top_layer_files(runtime, fast.manifest_digest)
    api_files = _top_layer_files(runtime, via_api.manifest_digest)
    assert api_files.pop("/workspace/more.txt").size == 5
    assert api_files == fast_files


async def test_an_api_captured_snapshot_rehydrates_with_deletions_applied(settings: Settings) -> None:
    runtime = Runtime(replace(settings, capture_mode="api"))
    try:
        await runtime.create_agent("api-only", policy=Policy(user="root"))
        assert (await runtime.exec("api-only", CHANGES)).exit_code == 0
        first = (await runtime.snapshot("api-only")).snapshot
        await runtime.exec("api-only", "rm '/workspace/d/a b.txt' /workspace/hard && echo v2 > /workspace/v2")
        second = (await runtime.snapshot("api-only")).snapshot
        assert second.parent_id == first.id
        machine = runtime.get_agent("api-only").machine_id
        assert machine
        docker_cli("rm", "-f", machine)
        docker_cli("rmi", "-f", f"spinup/snap:{second.id}")
        listing = await runtime.exec(
            "api-only",
            "ls -A /workspace; echo --; ls -A /usr/share/doc/tar; test -e /etc/motd || echo motd-gone; "
            "stat -c %a /workspace/empty",
        )
        assert listing.stdout.splitlines() == [
            "abs",
            "d",
            "empty",
            "emptydir",
            "v2",
            "ünï cödé",
            "--",
            "new",
            "motd-gone",
            "4755",
        ]
    finally:
        for agent in runtime.list_agents():
            await runtime.remove_agent(agent.name)
        await runtime.close()
        docker_cli("rmi", "-f", f"spinup/snap:{first.id}", check=False)
