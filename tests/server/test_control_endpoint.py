"""The control endpoint of a `self_control` agent, called from inside its machine over real HTTP by an MCP
client made of the standard library (`tests/control_client.py`): it snapshots, lists and restores its own
agent and nothing else, needs its token, answers a restore before the machine is replaced, and exists only
under `self_control`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from conftest import sh, unique_name
from spinup.runtime import InvalidInput, Policy, Runtime
from spinup.server.control import CONTROL_TOOLS, ControlEndpoints

CLIENT = (Path(__file__).parent.parent / "control_client.py").read_bytes()


async def _inside(runtime: Runtime, agent: str, calls: list[Any], env: dict[str, str] | None = None) -> list[Any]:
    """The answers of the control endpoint to ``calls``, made by a client in the agent's machine."""
    result = await runtime.exec(agent, ["python3", "-", json.dumps(calls)], stdin=CLIENT, env=env, timeout=120)
    assert result.exit_code == 0, result.stderr
    return list(json.loads(result.stdout))


def _result(answer: dict[str, Any]) -> dict[str, Any]:
    assert "result" in answer and not answer["result"].get("isError"), answer
    return dict(answer["result"].get("structuredContent") or {})


@pytest.fixture
async def endpoints(runtime: Runtime) -> AsyncIterator[ControlEndpoints]:
    served = ControlEndpoints(runtime)
    task = asyncio.create_task(served.keep_serving())
    try:
        yield served
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_an_agent_snapshots_lists_and_restores_itself_from_inside_and_reaches_no_other(
    runtime: Runtime, endpoints: ControlEndpoints
) -> None:
    name, other = unique_name("self"), unique_name("other")
    await runtime.create_agent(name, policy=Policy(self_control=True))
    await runtime.create_agent(other)
    foreign = (await runtime.snapshot(other, "not yours")).snapshot
    await sh(runtime, name, "echo v1 > /workspace/state")
    v1 = (await runtime.snapshot(name, "v1")).snapshot
    await sh(runtime, name, "echo v2 > /workspace/state")

    hello, listed, created, snapshots, status, refused = await _inside(runtime, name, [
        ["tools/list", {}],
        ["snapshot_create", {"label": "checkpoint from inside"}],
        ["snapshot_list", {}],
        ["agent_status", {}],
        ["snapshot_restore", {"snapshot": foreign.id}],
    ])  # fmt: skip
    assert hello["result"]["serverInfo"]["name"] == "spinup"
    assert {tool["name"] for tool in listed["result"]["tools"]} == CONTROL_TOOLS | {"snapshot_restore"}
    checkpoint = _result(created)["snapshot"]
    assert checkpoint["label"] == "checkpoint from inside" and checkpoint["parent_id"] == v1.id
    own = {s["id"] for s in _result(snapshots)["snapshots"]}
    assert own == {v1.id, checkpoint["id"]} and foreign.id not in own
    assert _result(status)["agent"]["name"] == name
    assert refused["result"]["isError"] and "snapshot_fork" in json.dumps(refused), "another agent's snapshot"
    assert runtime.get_agent(name).head_snapshot == checkpoint["id"]

    # A restore asked for from inside answers first, then replaces the machine.
    machine = runtime.get_agent(name).machine_id
    (_, scheduled) = await _inside(runtime, name, [["snapshot_restore", {"snapshot": v1.id}]])
    assert _result(scheduled)["scheduled"] is True and "in a moment" in _result(scheduled)["message"]
    for _ in range(300):
        if runtime.get_agent(name).machine_id != machine:
            break
        await asyncio.sleep(0.1)
    assert (await runtime.exec(name, "cat /workspace/state")).stdout == "v1\n"
    (_, again) = await _inside(runtime, name, [["snapshot_list", {}]])
    assert v1.id in {s["id"] for s in _result(again)["snapshots"]}, "the new machine is served again"


async def test_the_endpoint_needs_its_token_and_exists_only_under_self_control(
    runtime: Runtime, agent: str, endpoints: ControlEndpoints
) -> None:
    (no_endpoint,) = await _inside(runtime, agent, [], env={"CONTROL_WAIT": "3"})
    assert no_endpoint == {"unreachable": True}
    assert "SPINUP_CONTROL_TOKEN" not in (await runtime.exec(agent, "env")).stdout

    await runtime.set_policy(agent, runtime.get_agent(agent).policy.updated(self_control=True))
    (wrong,) = await _inside(runtime, agent, [], env={"SPINUP_CONTROL_TOKEN": "not-the-token"})
    assert wrong == {"http_status": 401}
    (hello,) = await _inside(runtime, agent, [])
    assert hello["result"]["serverInfo"]["name"] == "spinup"

    with pytest.raises(InvalidInput, match="self_control needs network 'none' or 'allowlist'"):
        Policy().updated(network="host", self_control=True)
