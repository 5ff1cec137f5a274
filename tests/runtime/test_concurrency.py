"""Many calls on one agent at once against the real daemon: every call returns, each result is
consistent, a snapshot taken among them is one point in time, and nothing is left frozen."""

from __future__ import annotations

import asyncio
from typing import Any

from conftest import unique_name
from spinup.runtime import Runtime

# A background writer keeps two files in step: a then b, each replaced whole by a rename with the same
# counter. Read at one point in time, b is a or one behind it; a capture that read the files at
# different times would see b far behind or ahead.
COUNTER = (
    "cd /workspace; n=0; while :; do n=$((n+1)); echo $n > a.new; mv a.new a; echo $n > b.new; mv b.new b; done"
)
READ_PAIR = "cat /workspace/a /workspace/b"


def _in_step(output: str) -> bool:
    a, b = (int(line) for line in output.split())
    return a - b in (0, 1)


async def test_twenty_execs_file_writes_a_snapshot_and_a_restore_at_once_all_return_consistently(
    runtime: Runtime, agent: str
) -> None:
    await runtime.exec(agent, "echo v0 > /workspace/marker")
    await runtime.process_start(agent, ["sh", "-c", COUNTER], process_name="counter")
    await asyncio.sleep(0.3)
    first = (await runtime.snapshot(agent, "v0")).snapshot
    await runtime.exec(agent, "echo v1 > /workspace/marker")

    async def run(i: int) -> Any:
        return await runtime.exec(agent, f"echo {i} > /workspace/e{i} && cat /workspace/e{i}")

    async def write(i: int) -> Any:
        return await runtime.on_files(agent, lambda files: files.write(f"/workspace/w{i}", f"w{i}"))

    calls = [
        *(run(i) for i in range(20)),
        *(write(i) for i in range(10)),
        runtime.snapshot(agent, "among them"),
        runtime.restore(agent, first.id),
    ]
    results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 300)

    errors = [r for r in results if isinstance(r, BaseException)]
    assert errors == []
    for i, result in enumerate(results[:20]):
        assert result.exit_code == 0 and result.stdout == f"{i}\n", result
    for i, result in enumerate(results[20:30]):
        assert result.path == f"/workspace/w{i}" and result.size == 2
    middle = results[30].snapshot
    machine = await runtime.machine(agent)
    assert machine is not None and machine.running and not machine.paused
    # The restore came last or not: either way the agent answers, from the snapshot it was restored to.
    assert runtime.get_agent(agent).head_snapshot in (first.id, middle.id)
    assert (await runtime.exec(agent, "cat /workspace/marker")).stdout in ("v0\n", "v1\n")
    assert _in_step((await runtime.exec(agent, READ_PAIR)).stdout)

    fork = unique_name("f")
    await runtime.fork(middle.id, fork)
    assert _in_step((await runtime.exec(fork, READ_PAIR)).stdout)  # the snapshot is one point in time
    report = await runtime.verify_store()
    assert report.ok, report.problems


async def test_a_pause_from_another_runtime_waits_for_execs_being_set_up_and_later_execs_are_refused(
    runtime: Runtime, agent: str
) -> None:
    other = Runtime(runtime.settings)
    try:
        for round_, delay in enumerate((0.0, 0.02, 0.05, 0.1)):
            execs = [asyncio.create_task(runtime.exec(agent, f"echo {i}")) for i in range(15)]
            await asyncio.sleep(delay)
            await other.pause(agent)
            await asyncio.sleep(0.2)
            await other.resume(agent)
            done = await asyncio.wait_for(asyncio.gather(*execs, return_exceptions=True), 60)
            # Each exec either ran whole (before the freeze, or frozen with its machine and thawed with it) or
            # was refused saying the agent is paused: none hung, none lost its output.
            for i, result in enumerate(done):
                if isinstance(result, BaseException):
                    assert "is paused" in str(result), (round_, result)
                else:
                    assert (result.exit_code, result.stdout) == (0, f"{i}\n"), (round_, result)
        assert (await runtime.exec(agent, "echo after")).stdout == "after\n"
    finally:
        await other.close()
