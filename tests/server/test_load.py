"""A small run of the load benchmark (``bench/load.py``) against a real ``spinup serve`` over streamable
HTTP with concurrent MCP clients: no call fails, nothing is left behind, no descriptor leaks."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from load import FD_SLACK, LoadParams, run_load

SMALL = LoadParams(
    agents=10, execs=100, concurrency=10, clients=3, file_trips=20, snapshots=5, restores=3, deadline=600
)


async def test_ten_agents_and_a_hundred_execs_over_http_fail_nothing_leave_nothing_and_leak_no_descriptor() -> None:
    report = await run_load(SMALL)

    assert report.errors == []
    summary = report.summary()
    assert summary["agent_create"]["n"] == 10 and summary["exec"]["n"] == 100
    assert summary["raw aiodocker exec"]["n"] == 100
    assert summary["file_read"]["n"] == 20 and summary["snapshot_create"]["n"] == 5
    assert summary["snapshot_restore"]["n"] == 3 and summary["agent_remove"]["n"] == 10
    assert report.leftover_machines == 0
    # The server's Docker client keeps up to one pooled connection per concurrent call once the agents exist:
    # after everything is removed no more are open than then (and the run did not grow them past that).
    assert report.fds["after"] <= report.fds["idle"] + FD_SLACK, (report.fds, report.opened)
    assert report.fds["peak"] <= report.fds["idle"] + FD_SLACK, report.fds
    assert report.machine_memory_per_agent > 0
