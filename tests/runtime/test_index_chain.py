"""The file index is stored as deltas over the previous snapshot's; chains survive restarts and gc."""

from __future__ import annotations

from conftest import store_of
from spinup.runtime import Runtime
from spinup.snapshot.index import MAX_DELTA_DEPTH, parse


async def test_a_long_chain_of_snapshots_keeps_exact_incremental_capture(runtime: Runtime, agent: str) -> None:
    await runtime.exec(agent, "mkdir -p /workspace/many && for i in $(seq 200); do echo $i > /workspace/many/$i; done")
    await runtime.snapshot(agent)
    depths = []
    for step in range(MAX_DELTA_DEPTH + 4):
        await runtime.exec(agent, f"echo {step} > /workspace/counter; rm -f /workspace/many/{step + 1}")
        result = await runtime.snapshot(agent, f"step {step}")
        assert result.snapshot.paths_changed <= 4, "only the counter, the deletion and their parents"
        manifest = store_of(runtime).get_json(result.snapshot.manifest_digest)
        with store_of(runtime).open_blob(manifest["annotations"]["dev.spinup.index"]) as blob:
            depths.append(parse(blob.read()).get("depth", 0))
    assert max(depths) == MAX_DELTA_DEPTH and 0 in depths[1:], "deltas stack up, then a full index is written"

    collected = await runtime.collect_garbage()
    assert collected.blobs_removed == 0, "gc keeps every index a delta builds on"
    assert (await runtime.verify_store()).ok

    fresh = Runtime(runtime.settings)  # no cached index: the chain is read back from the store
    try:
        await fresh.exec(agent, "rm /workspace/many/150")
        after = await fresh.snapshot(agent, "after restart")
        assert after.created and after.snapshot.paths_changed <= 3
        tree = await fresh._snapshots.tree(after.snapshot)
        assert "/workspace/many/150" not in tree and "/workspace/many/149" in tree
        assert "/workspace/many/1" not in tree and tree["/workspace/counter"].size == 3
    finally:
        await fresh.close()
