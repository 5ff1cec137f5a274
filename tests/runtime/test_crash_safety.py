"""kill -9 in the middle of a snapshot leaves the previous head intact and restorable.

Each case runs ``spinup snapshot create`` in a subprocess that SIGKILLs itself at a chosen point
(``SPINUP_CRASH_AT``), then checks the store and the agent from a fresh runtime.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from conftest import docker_cli, store_of
from spinup.runtime import Runtime, Settings

SPINUP = str(Path(sys.executable).with_name("spinup"))


async def _snapshot_in_subprocess(settings: Settings, agent: str, crash_at: str) -> int:
    env = {**os.environ, "SPINUP_HOME": str(settings.home), "SPINUP_CRASH_AT": crash_at, "DOCKER_API_VERSION": "1.41"}
    proc = await asyncio.create_subprocess_exec(
        SPINUP, "snapshot", "create", agent, "--label", "doomed",
        env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )
    async with asyncio.timeout(120):
        return await proc.wait()


@pytest.mark.parametrize("crash_at", ["layer-half-written", "before-manifest", "before-index", "before-head"])
async def test_a_crash_inside_a_snapshot_keeps_the_previous_head(
    runtime: Runtime, agent: str, crash_at: str
) -> None:
    await runtime.exec(agent, "echo v1 > /workspace/state")
    head = (await runtime.snapshot(agent, "good")).snapshot
    await runtime.exec(agent, "echo v2 > /workspace/state; head -c 8000000 /dev/urandom > /workspace/noise")
    code = await _snapshot_in_subprocess(runtime.settings, agent, crash_at)
    assert code == -signal.SIGKILL
    fresh = Runtime(runtime.settings)
    try:
        agent_record = fresh.get_agent(agent)
        assert agent_record.head_snapshot == head.id
        assert [s.id for s in fresh.list_snapshots(agent)] == [head.id]
        report = await fresh.verify_store()
        assert report.ok, report.problems
        if crash_at != "layer-half-written" or report.garbage:
            assert report.garbage, "the interrupted write should be reported as garbage"
        # The crash left the machine paused: waking resumes it, and the head restores exactly.
        machine = agent_record.machine_id
        assert machine
        docker_cli("rm", "-f", machine)
        docker_cli("rmi", "-f", f"spinup/snap:{head.id}", check=False)
        restored = await fresh.exec(agent, "cat /workspace/state; test -e /workspace/noise || echo no-noise")
        assert restored.stdout == "v1\nno-noise\n"
        collected = await fresh.collect_garbage()
        assert collected.blobs_removed + collected.temp_files_removed >= 1
        assert (await fresh.verify_store()).garbage == []
    finally:
        await fresh.close()


async def test_a_flipped_byte_in_a_layer_is_detected_on_restore(runtime: Runtime, agent: str) -> None:
    await runtime.exec(agent, "head -c 100000 /dev/urandom > /workspace/data")
    snapshot = (await runtime.snapshot(agent)).snapshot
    manifest = store_of(runtime).get_json(snapshot.manifest_digest)
    blob = store_of(runtime).blob_path(manifest["layers"][-1]["digest"])
    blob.chmod(0o644)
    raw = bytearray(blob.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    blob.write_bytes(bytes(raw))
    machine = runtime.get_agent(agent).machine_id
    assert machine
    docker_cli("rm", "-f", machine)
    docker_cli("rmi", "-f", f"spinup/snap:{snapshot.id}", check=False)
    from spinup.runtime.errors import SpinupError

    with pytest.raises(SpinupError, match="corrupt"):
        await runtime.exec(agent, "true")
    assert docker_cli("image", "inspect", f"spinup/snap:{snapshot.id}", check=False).returncode != 0
    report = await runtime.verify_store()
    assert not report.ok and any("corrupt" in p for p in report.problems)
