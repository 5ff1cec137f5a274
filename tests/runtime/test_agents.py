"""Agent lifecycle against the real daemon: create, wake, stop, recreate, remove."""

from __future__ import annotations

import pytest

from conftest import RUN_ID, TEST_LABEL, docker_cli, lifecycle_kinds, unique_name
from spinup.runtime import AgentState, Policy, Runtime
from spinup.runtime.errors import AgentExists, AgentNotFound, ImageNotFound, InvalidInput


def _inspect(machine_id: str, fmt: str) -> str:
    return docker_cli("inspect", "--format", fmt, machine_id).stdout.strip()


async def test_create_starts_a_labelled_machine_with_no_network_and_an_init(runtime: Runtime) -> None:
    agent = await runtime.create_agent(unique_name())
    assert agent.state is AgentState.RUNNING and agent.machine_id
    assert _inspect(agent.machine_id, "{{.State.Running}}") == "true"
    assert _inspect(agent.machine_id, '{{index .Config.Labels "spinup.agent"}}') == agent.id
    assert _inspect(agent.machine_id, '{{index .Config.Labels "spinup.managed"}}') == "1"
    assert _inspect(agent.machine_id, f'{{{{index .Config.Labels "{TEST_LABEL}"}}}}') == RUN_ID
    assert _inspect(agent.machine_id, "{{.HostConfig.NetworkMode}}") == "none"
    assert _inspect(agent.machine_id, "{{.HostConfig.Init}}") == "true"
    interfaces = await runtime.exec(agent.name, "ls /sys/class/net")
    assert interfaces.stdout.split() == ["lo"]


async def test_host_network_is_an_explicit_opt_in(runtime: Runtime) -> None:
    agent = await runtime.create_agent(unique_name(), policy=Policy(network="host"))
    assert agent.machine_id and _inspect(agent.machine_id, "{{.HostConfig.NetworkMode}}") == "host"


async def test_duplicate_and_invalid_names_are_refused_and_leave_nothing_behind(runtime: Runtime) -> None:
    name = unique_name()
    await runtime.create_agent(name)
    with pytest.raises(AgentExists):
        await runtime.create_agent(name)
    with pytest.raises(InvalidInput):
        await runtime.create_agent("Not_Valid")
    assert [a.name for a in runtime.list_agents()] == [name]


async def test_a_missing_image_says_how_to_get_it_and_creates_no_agent(runtime: Runtime) -> None:
    with pytest.raises(ImageNotFound, match="docker pull"):
        await runtime.create_agent(unique_name(), image="spinup-test/absent:nope")
    assert runtime.list_agents() == []


async def test_unknown_agent_is_a_clear_error(runtime: Runtime) -> None:
    with pytest.raises(AgentNotFound, match="agent_create"):
        await runtime.wake("no-such-agent")


async def test_wake_starts_a_stopped_machine_and_records_it(runtime: Runtime, agent: str) -> None:
    stopped = await runtime.stop_agent(agent)
    assert stopped.state is AgentState.STOPPED
    assert stopped.machine_id and _inspect(stopped.machine_id, "{{.State.Running}}") == "false"
    woken = await runtime.wake(agent)
    assert woken.state is AgentState.RUNNING and woken.machine_id == stopped.machine_id
    assert lifecycle_kinds(runtime.events(agent))[-2:] == ["machine-stopped", "machine-started"]


async def test_a_machine_removed_behind_our_back_is_recreated_and_recorded(runtime: Runtime, agent: str) -> None:
    before = runtime.get_agent(agent)
    assert before.machine_id
    docker_cli("rm", "-f", before.machine_id)
    result = await runtime.exec(agent, "echo back")
    assert result.stdout == "back\n"
    after = runtime.get_agent(agent)
    assert after.machine_id and after.machine_id != before.machine_id
    assert lifecycle_kinds(runtime.events(agent))[-2:] == ["machine-missing", "machine-recreated"]


async def test_remove_deletes_the_machine_and_the_record(runtime: Runtime, agent: str) -> None:
    machine_id = runtime.get_agent(agent).machine_id
    assert machine_id
    await runtime.remove_agent(agent)
    assert docker_cli("inspect", machine_id, check=False).returncode != 0
    with pytest.raises(AgentNotFound):
        runtime.get_agent(agent)


async def test_status_reports_the_machine_without_waking_it(runtime: Runtime, agent: str) -> None:
    await runtime.stop_agent(agent)
    status = await runtime.status(agent)
    assert status.machine is not None and not status.machine.running
    assert status.events[0].kind == "created"


async def test_ensure_creates_a_bound_agent_on_first_use_and_reuses_it(runtime: Runtime) -> None:
    name = unique_name()
    first = await runtime.ensure_agent(name)
    second = await runtime.ensure_agent(name)
    assert first.id == second.id and second.state is AgentState.RUNNING


async def test_what_is_cached_per_machine_goes_with_the_machine(runtime: Runtime, agent: str) -> None:
    """Quota measurements and cgroup paths are dropped when a machine is removed (file permissions are learned
    only on the archive-API path of a remote daemon; here a non-root agent's file I/O runs as its own user)."""

    def cached(machine_id: str) -> list[str]:
        places = {
            "quota": machine_id in runtime._quota._used,
            "limits": machine_id in runtime._cgroups,
        }
        return [place for place, present in places.items() if present]

    async def use() -> str:
        await runtime.exec(agent, "echo x > /workspace/f")
        await (await runtime.files(agent)).read("/workspace/f")
        await runtime.status(agent)
        machine = runtime.get_agent(agent).machine_id
        assert machine
        return machine

    first = await use()
    assert cached(first) == ["quota", "limits"]
    snapshot = (await runtime.snapshot(agent)).snapshot
    await runtime.restore(agent, snapshot.id)  # a new machine; the old one goes in the background
    await runtime.drain()
    assert cached(first) == []
    second = await use()
    await runtime.stop_agent(agent, hibernate=True)
    assert cached(second) == []
    third = await use()
    await runtime.remove_agent(agent)
    assert cached(third) == []
