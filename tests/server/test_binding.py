"""Grants and binding over MCP: a fork gets no policy beyond the server's grants, a bound server sees and touches
only its agent and that agent's snapshots (issue 16, item 5).

Real parts: the real in-memory MCP client, one real Docker daemon; the operator works through a Runtime on the same
state directory.
"""

from __future__ import annotations

from mcp import Client

from conftest import call, fails, held_open, unique_name
from spinup.runtime import Policy, Runtime, Settings
from spinup.server.app import build_server


def granting(settings: Settings, *grants: str) -> Settings:
    return Settings(home=settings.home, label_extra=settings.label_extra, mcp_grants=frozenset(grants))


async def test_a_fork_over_mcp_of_an_operator_made_host_network_agent_is_refused_beyond_the_grants(
    settings: Settings, runtime: Runtime
) -> None:
    source = unique_name("host")
    await runtime.create_agent(source, policy=Policy(network="host", user="root"))
    snapshot = (await runtime.snapshot(source)).snapshot.id
    escaped = unique_name("esc")
    async with held_open(Client(build_server(granting(settings, "root")))) as client:
        refused = await fails(client, "snapshot_fork", snapshot=snapshot, name=escaped)
    assert f"policy of agent '{source}'" in refused and "--network host" in refused, refused
    assert "SPINUP_MCP_GRANTS=host-network,root" in refused, refused
    assert "network='none'" in refused, refused
    assert runtime.find_agent(escaped) is None, "no agent made, no record left"
    async with held_open(Client(build_server(granting(settings, "root")))) as client:
        within = await call(client, "snapshot_fork", snapshot=snapshot, name=unique_name("in"), network="none")
    assert within["network"] == "none" and within["policy"]["user"] == "root", "an explicit policy within grants"

    async with held_open(Client(build_server(granting(settings, "root", "host-network")))) as client:
        forked = await call(client, "snapshot_fork", snapshot=snapshot, name=escaped)
    assert forked["network"] == "host", "granted: the fork keeps its source's policy"


async def test_a_bound_server_sees_and_touches_only_its_agent_and_its_snapshots(
    settings: Settings, runtime: Runtime
) -> None:
    mine, other = unique_name("mine"), unique_name("other")
    await runtime.create_agent(mine)
    await runtime.create_agent(other)
    await runtime.exec(other, "echo secret-plan > /workspace/plan")
    first = (await runtime.snapshot(other, "first")).snapshot.id
    await runtime.exec(other, "echo more > /workspace/more")
    second = (await runtime.snapshot(other, "second")).snapshot.id
    await runtime.restore(other, first)  # `second` is now a leaf no agent has as head: deletable
    own = (await runtime.snapshot(mine)).snapshot.id
    runtime.set_secret("OTHER_TOKEN", "tok-5e1d9a7c3b")
    runtime.bind_secret(other, "OTHER_TOKEN")

    async with held_open(Client(build_server(settings, agent=mine))) as client:
        listed = await call(client, "agent_list")
        assert [a["name"] for a in listed["agents"]] == [mine]

        refused = await fails(client, "agent_remove", agent=other)
        assert f"bound to agent '{mine}'" in refused and f"agent '{other}'" in refused, refused
        assert runtime.find_agent(other) is not None

        for snapshot in (first, second):
            refused = await fails(client, "snapshot_fork", snapshot=snapshot, name=unique_name("steal"))
            assert f"belongs to agent '{other}'" in refused and "snapshot_fork" in refused, refused
        refused = await fails(client, "snapshot_delete", snapshot=second)
        assert f"belongs to agent '{other}'" in refused, refused
        assert runtime.get_snapshot(second).id == second
        for side in ("source", "target"):
            refused = await fails(client, "snapshot_diff", **{side: first})
            assert f"belongs to agent '{other}'" in refused, refused
        refused = await fails(client, "snapshot_restore", snapshot=first)
        assert f"belongs to agent '{other}'" in refused and "snapshot_fork" in refused, refused
        assert runtime.get_agent(mine).head_snapshot == own

        listed = await call(client, "snapshot_list")
        assert [s["id"] for s in listed["snapshots"]] == [own]
        secrets = await call(client, "secret_list")
        assert all(entry["bound_to"] == [] for entry in secrets["secrets"]), secrets

        # Its own snapshots stay usable.
        await call(client, "snapshot_diff", source=own)
        fork = unique_name("fork")
        assert (await call(client, "snapshot_fork", snapshot=own, name=fork))["name"] == fork
    assert [a.name for a in runtime.list_agents()].count(other) == 1
    assert (await runtime.exec(other, "cat /workspace/plan")).stdout == "secret-plan\n"


async def test_a_model_cannot_test_guesses_of_a_secret_against_its_fingerprint(
    client: Client, settings: Settings
) -> None:
    operator = Runtime(settings)
    try:
        operator.set_secret("DEPLOY_KEY", "hunter2-hunter2")
    finally:
        await operator.close()
    guess = await call(client, "secret_set", name="GUESS", value="hunter2-hunter2")
    listed = await call(client, "secret_list")
    assert "fingerprint" not in guess, guess
    assert all("fingerprint" not in entry for entry in listed["secrets"]), listed
    assert {entry["name"] for entry in listed["secrets"]} == {"DEPLOY_KEY", "GUESS"}


async def test_a_short_secret_that_would_redact_every_agents_output_is_refused(client: Client) -> None:
    refused = await fails(client, "secret_set", name="PIN", value="1234567")
    assert "at least 8 characters" in refused and "1234567" not in refused
