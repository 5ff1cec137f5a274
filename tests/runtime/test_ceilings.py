"""Operator ceilings on what one request may ask, against the real daemon (issue 16, item 8).

Each test asks past a (small) ceiling and gets a clear error naming the ceiling's setting; the
same request within it works.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from mcp import Client

from conftest import call, fails, held_open, opened, unique_name
from spinup.runtime import Policy, Runtime, Settings
from spinup.runtime.ceilings import Ceilings
from spinup.runtime.errors import InvalidInput, LimitReached
from spinup.server.app import build_server

MiB = 1 << 20
SMALL = Ceilings(
    output_bytes=MiB, read_bytes=MiB, list_bytes=4 * MiB, snapshots=2, mcp_memory=8 << 30, mcp_disk=30 << 30,
    mcp_pids=2048, mcp_agents=2,
)  # fmt: skip


@pytest.fixture
def tight(settings: Settings) -> Settings:
    return Settings(home=settings.home, label_extra=settings.label_extra, ceilings=SMALL, mcp_grants=frozenset())


@pytest.fixture
async def rt(tight: Settings) -> AsyncIterator[Runtime]:
    async with opened(Runtime(tight)) as runtime:
        yield runtime


def test_ceilings_come_from_the_environment_with_clear_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPINUP_MAX_OUTPUT_BYTES", "8m")
    monkeypatch.setenv("SPINUP_MCP_MAX_AGENTS", "3")
    ceilings = Ceilings.from_env()
    assert (ceilings.output_bytes, ceilings.mcp_agents, ceilings.read_bytes) == (8 * MiB, 3, 128 * MiB)
    monkeypatch.setenv("SPINUP_STORE_QUOTA", "lots")
    with pytest.raises(InvalidInput, match="SPINUP_STORE_QUOTA='lots' is not a size"):
        Ceilings.from_env()


async def test_exec_output_files_and_listings_are_bounded_by_the_ceilings(rt: Runtime) -> None:
    name = unique_name("ceil")
    await rt.create_agent(name)
    with pytest.raises(InvalidInput, match="SPINUP_MAX_OUTPUT_BYTES") as refused:
        await rt.exec(name, "true", output_cap=1 << 40)
    assert "process_start" in str(refused.value)
    assert (await rt.exec(name, "echo ok", output_cap=MiB)).stdout == "ok\n"
    script = (
        "mkdir -p /workspace/tree/sub && head -c 3000000 /dev/zero | tr '\\0' a > /workspace/tree/sub/line "
        "&& head -c 3000000 /dev/zero > /workspace/tree/sub/zeros "
        "&& mkdir /workspace/ok && echo hi > /workspace/ok/small"
    )
    assert (await rt.exec(name, script)).exit_code == 0
    files = await rt.files(name)
    with pytest.raises(InvalidInput, match="SPINUP_MAX_READ_BYTES") as whole:
        await files.read("/workspace/tree/sub/zeros", unit="bytes")
    assert "offset and limit" in str(whole.value)
    with pytest.raises(InvalidInput, match="SPINUP_MAX_READ_BYTES"):
        await files.read("/workspace/tree/sub/line")  # one 3 MB line: never held whole
    part = await files.read("/workspace/tree/sub/zeros", offset=MiB, limit=MiB, unit="bytes", encoding="base64")
    assert part.returned == MiB and not part.eof
    assert (await files.read("/workspace/ok/small")).content == "hi\n"
    started = time.monotonic()
    with pytest.raises(LimitReached, match="SPINUP_MAX_LIST_BYTES") as listing:
        await files.list("/workspace/tree", recursive=True)  # a walk past 6 MB of entries and contents
    assert "find /workspace/tree" in str(listing.value) and time.monotonic() - started < 10
    flat, _ = await files.list("/workspace/tree")  # a flat listing as the agent walks only the directory
    assert [entry.path for entry in flat] == ["/workspace/tree/sub"]
    listed, _ = await files.list("/workspace/ok")
    assert [entry.path for entry in listed] == ["/workspace/ok/small"]


async def test_mcp_clients_get_no_policy_past_the_ceilings_and_no_agent_past_the_count(
    rt: Runtime, tight: Settings
) -> None:
    async with held_open(Client(build_server(tight))) as client:
        for ask, setting in (
            ({"memory": "64g"}, "SPINUP_MCP_MAX_MEMORY"),
            ({"pids": 100000}, "SPINUP_MCP_MAX_PIDS"),
            ({"disk": "none"}, "SPINUP_MCP_MAX_DISK"),
            ({"disk": "40g"}, "SPINUP_MCP_MAX_DISK"),
        ):
            assert setting in await fails(client, "agent_create", name=unique_name("big"), **ask), ask
        assert rt.list_agents() == []
        for _ in range(2):
            await call(client, "agent_create", name=unique_name("n"), memory="256m", disk="1g")
        refused = await fails(client, "agent_create", name=unique_name("n"), memory="256m", disk="1g")
        assert "SPINUP_MCP_MAX_AGENTS" in refused and "agent_remove" in refused
    # The operator is not bound by the MCP ceilings.
    await rt.create_agent(unique_name("op"), policy=Policy(memory="256m", disk=None))


async def test_snapshots_stop_at_the_ceiling_and_the_store_quota_but_a_stop_still_saves(
    rt: Runtime, tight: Settings
) -> None:
    name = unique_name("snaps")
    await rt.create_agent(name)
    for index in range(2):
        await rt.exec(name, f"echo {index} > /workspace/f{index}")
        await rt.snapshot(name)
    await rt.exec(name, "echo more > /workspace/more")
    with pytest.raises(LimitReached, match="SPINUP_MAX_SNAPSHOTS") as refused:
        await rt.snapshot(name)
    assert "snapshot_delete" in str(refused.value)
    stopped = await asyncio.wait_for(rt.stop_agent(name), 60)  # Spinup's own snapshot before a stop still goes
    assert len(rt.list_snapshots(name)) == 3 and stopped.head_snapshot is not None
    quota = Settings(home=tight.home, label_extra=tight.label_extra, ceilings=Ceilings(store_bytes=1))
    other = Runtime(quota)
    try:
        await other.exec(name, "echo again > /workspace/again")
        with pytest.raises(LimitReached, match="SPINUP_STORE_QUOTA"):
            await other.snapshot(name)
    finally:
        await other.close()
