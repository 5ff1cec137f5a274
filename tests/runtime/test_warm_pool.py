"""The warm pool against the real daemon: spares made ahead, claimed by agent_create with the agent's
name, limits and hostname, the cold path for what a spare cannot become, one claim per spare across
processes, spares of another state directory left alone, and reaping by a server's shutdown and by
``spinup doctor --fix``."""

from __future__ import annotations

import asyncio
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from http_servers import free_port
from mcp import Client

from conftest import call, docker_cli, server_env, unique_name
from spinup.runtime import Policy, Runtime, Settings
from spinup.runtime.config import parse_warm_pool
from spinup.runtime.egress import EgressClient
from spinup.runtime.errors import InvalidInput
from spinup.runtime.hostname import set_machine_hostname
from spinup.runtime.pool import SPARE_LABEL, home_key, shape_of
from spinup.server.app import build_server

SPINUP = str(Path(sys.executable).with_name("spinup"))


def pooled(settings: Settings, spares: int = 2) -> Settings:
    return replace(settings, warm_pool={"": spares})


@pytest.fixture
async def pool_runtime(settings: Settings) -> AsyncIterator[Runtime]:
    runtime = Runtime(pooled(settings))
    try:
        yield runtime
    finally:
        for agent in runtime.list_agents():
            await runtime.remove_agent(agent.name)
        await runtime.reap_spares()
        await runtime.close()


def spares_on_daemon(settings: Settings) -> list[str]:
    return docker_cli("ps", "-aq", "--filter", f"label={SPARE_LABEL}={home_key(settings)}").stdout.split()


async def machines_labelled_spare(settings: Settings, count: int) -> None:
    """Wait (up to a minute) until ``count`` machines carry this state directory's spare label."""
    for _ in range(600):
        if len(spares_on_daemon(settings)) >= count:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"fewer than {count} spare machines after a minute: {spares_on_daemon(settings)}")


async def test_a_new_agent_takes_a_spare_with_its_own_name_hostname_and_user(pool_runtime: Runtime) -> None:
    assert await pool_runtime.fill_pool() == 2
    assert await pool_runtime.spare_count() == 2 and pool_runtime.list_agents() == []
    name = unique_name("warm")

    agent = await pool_runtime.create_agent(name)

    created = [e for e in pool_runtime.events(name, limit=20) if e.kind == "machine-created"]
    assert [e.detail.endswith("from the warm pool") for e in created] == [True]
    check = await pool_runtime.exec(name, 'hostname; cat /etc/hostname; echo "$SPINUP_AGENT"; id -u; pwd')
    assert check.stdout == f"{name}\n{name}\n{name}\n1000\n/workspace\n", check.stderr
    assert agent.machine_id is not None
    assert docker_cli("inspect", "-f", "{{.Name}}", agent.machine_id).stdout.strip().startswith(f"/spinup-{name}-")
    assert await pool_runtime.spare_count() == 1  # the claimed one is the agent's now
    await pool_runtime.exec(name, "echo kept > /workspace/f")
    await pool_runtime.stop_agent(name, hibernate=True)  # and it snapshots and rehydrates as any machine
    assert (await pool_runtime.exec(name, "cat /workspace/f; hostname")).stdout == f"kept\n{name}\n"


async def test_limits_are_applied_live_and_other_policies_start_cold(pool_runtime: Runtime) -> None:
    await pool_runtime.fill_pool()
    limited = unique_name("lim")
    agent = await pool_runtime.create_agent(limited, policy=Policy(memory=512 * 1024 * 1024, pids=300, cpus=1))
    assert agent.machine_id is not None
    limits = docker_cli(
        "inspect", "-f", "{{.HostConfig.Memory}} {{.HostConfig.PidsLimit}} {{.HostConfig.NanoCpus}}", agent.machine_id
    ).stdout.split()
    assert limits == [str(512 * 1024 * 1024), "300", "1000000000"]
    assert any(e.detail.endswith("from the warm pool") for e in pool_runtime.events(limited, limit=20))
    cold = unique_name("cold")
    await pool_runtime.create_agent(cold, policy=Policy(package_cache=False))
    assert not any("warm pool" in e.detail for e in pool_runtime.events(cold, limit=20))
    assert await pool_runtime.spare_count() == 1  # the cold agent took none


async def test_two_processes_creating_at_once_never_share_a_spare(settings: Settings) -> None:
    first, second = Runtime(pooled(settings, 1)), Runtime(pooled(settings, 1))
    names = [unique_name("race") for _ in range(4)]
    try:
        assert await first.fill_pool() == 1
        await asyncio.gather(*(rt.create_agent(n) for rt, n in zip([first, second] * 2, names, strict=True)))
        machines = {first.get_agent(n).machine_id for n in names}
        assert len(machines) == 4
        for name in names:
            assert (await second.exec(name, "hostname")).stdout == f"{name}\n"
        warm = [n for n in names if any("warm pool" in e.detail for e in first.events(n, limit=20))]
        assert len(warm) == 1
    finally:
        for name in names:
            await first.remove_agent(name)
        await first.reap_spares()
        await first.close()
        await second.close()


async def test_spares_of_another_state_directory_are_left_alone(settings: Settings, tmp_path: Path) -> None:
    mine, theirs = Runtime(pooled(settings, 1)), Runtime(pooled(replace(settings, home=tmp_path / "other"), 1))
    try:
        await theirs.fill_pool()
        assert await mine.spare_count() == 0
        name = unique_name("own")
        await mine.create_agent(name)
        assert not any("warm pool" in e.detail for e in mine.events(name, limit=20))
        assert await theirs.spare_count() == 1
        await mine.remove_agent(name)
    finally:
        await theirs.reap_spares()
        await mine.close()
        await theirs.close()


async def test_a_server_keeps_the_pool_filled_and_removes_its_spares_when_it_stops(settings: Settings) -> None:
    pool = pooled(settings)
    name = unique_name("srv")
    async with Client(build_server(pool)) as client:
        await machines_labelled_spare(pool, 2)
        await call(client, "agent_create", name=name)
        assert (await call(client, "exec", agent=name, command="hostname"))["stdout"] == f"{name}\n"
        await machines_labelled_spare(pool, 3)  # refilled after the claim (the claimed one keeps its label)
        await call(client, "agent_remove", agent=name)
    assert spares_on_daemon(pool) == []
    assert not pool.cache_dir.exists() or list(pool.cache_dir.iterdir()) == []  # no spare's caches left


async def test_doctor_fix_removes_the_spares(pool_runtime: Runtime) -> None:
    await pool_runtime.fill_pool()
    env = {**server_env(pool_runtime.settings), "SPINUP_WARM_POOL": "2"}
    report = await asyncio.to_thread(
        subprocess.run, [SPINUP, "doctor"], env=env, capture_output=True, text=True, timeout=120
    )
    image = pool_runtime.settings.default_image
    assert f"warm pool: 2 spare machine(s) ready (SPINUP_WARM_POOL keeps 2: {image} 2 of 2)" in report.stdout, (
        report.stdout + report.stderr
    )
    fixed = await asyncio.to_thread(
        subprocess.run, [SPINUP, "doctor", "--fix"], env=env, capture_output=True, text=True, timeout=120
    )
    assert "removed 2 spare machine(s)" in fixed.stdout, fixed.stdout + fixed.stderr
    assert await pool_runtime.spare_count() == 0 and spares_on_daemon(pool_runtime.settings) == []
    assert os.environ["SPINUP_WARM_POOL"] == "0"  # the rest of the suite runs without spares


def test_the_pool_setting_takes_a_count_or_image_counts_and_refuses_anything_else() -> None:
    assert parse_warm_pool("2") == {"": 2}
    assert parse_warm_pool("0") == {"": 0}
    assert parse_warm_pool("spinup/base:bookworm=3, localhost:5000/team/img:1=1") == {
        "spinup/base:bookworm": 3,
        "localhost:5000/team/img:1": 1,
    }
    assert parse_warm_pool("2,+root=1, img:1+allowlist+root=3,+host=0") == {
        "": 2,
        "+root": 1,
        "img:1+root+allowlist": 3,  # tags in one order, so a key names one shape
        "+host": 0,
    }
    for bad in ("-1", "many", "img=", "img=65", "=x", "+admin=1", "+host+allowlist=1", "+root+root=1", "img+=1"):
        with pytest.raises(InvalidInput, match="SPINUP_WARM_POOL"):
            parse_warm_pool(bad)


def test_a_policy_takes_a_spare_of_its_shape_whatever_its_limits_rules_or_self_control() -> None:
    assert shape_of(Policy()) == "" and shape_of(Policy(cpus=1, memory=256 * 1024 * 1024, pids=64, disk=None)) == ""
    assert shape_of(Policy(self_control=True)) == ""
    assert shape_of(Policy(user="root", memory=512 * 1024 * 1024)) == "root"
    assert shape_of(Policy(network="host")) == "host"
    assert shape_of(Policy().updated(allow=["pypi", "127.0.0.1:8080"])) == "allowlist"
    assert shape_of(Policy(user="root").updated(allow=["pypi"], intercept=["pypi.org"])) == "root+allowlist"
    for other in (Policy(package_cache=False), Policy(nofile=1024), Policy(user="root", nofile=1024)):
        assert shape_of(other) is None, other


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "5")
        self.end_headers()
        self.wfile.write(b"hello")

    def log_message(self, format: str, *args: object) -> None:
        pass


FETCH = """
import json, sys, urllib.request, urllib.error
out = []
for url in sys.argv[1:]:
    try:
        with urllib.request.urlopen(url, timeout=20) as r:
            out.append(r.status)
    except urllib.error.HTTPError as e:
        out.append(e.code)
print(json.dumps(out))
"""


async def test_root_host_network_and_allowlist_agents_take_spares_of_their_shape(settings: Settings) -> None:
    shaped = replace(settings, warm_pool={"+root": 1, "+host": 1, "+allowlist": 1})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port, other = server.server_address[1], free_port()
    runtime = Runtime(shaped)
    root, host, listed, cold = (unique_name(prefix) for prefix in ("root", "host", "list", "cold"))
    try:
        assert await runtime.fill_pool() == 3
        await runtime.create_agent(root, policy=Policy(user="root", memory=1024 * 1024 * 1024))
        await runtime.create_agent(host, policy=Policy(network="host"))
        await runtime.create_agent(listed, policy=Policy().updated(allow=[f"127.0.0.1:{port}"]))
        await runtime.create_agent(cold, policy=Policy(user="root", network="host"))  # a shape with no spares
        warm = {n for n in (root, host, listed, cold) if any("warm pool" in e.detail for e in runtime.events(n, 20))}
        assert warm == {root, host, listed}
        assert await runtime.spare_count() == 0

        assert (await runtime.exec(root, "id -u; hostname; apt-get --version | head -1")).stdout.startswith(
            f"0\n{root}\napt "
        )
        assert docker_cli(
            "inspect", "-f", "{{.HostConfig.Memory}}", runtime.get_agent(root).machine_id or ""
        ).stdout.strip() == str(1024**3)
        seen = await runtime.exec(host, "hostname; readlink /proc/self/ns/net")
        assert seen.stdout == f"{host}\n{os.readlink('/proc/self/ns/net')}\n"  # the host's network, its own name
        assert socket.gethostname() != host  # the host kept its name
        fetched = await runtime.exec(
            listed,
            ["python3", "-c", FETCH, f"http://127.0.0.1:{port}/", f"http://127.0.0.1:{other}/"],
            env={"NO_PROXY": "", "no_proxy": ""},
        )
        assert json.loads(fetched.stdout) == [200, 403], fetched.stderr
        assert (await runtime.exec(listed, "id -u; hostname")).stdout == f"1000\n{listed}\n"
    finally:
        for agent in runtime.list_agents():
            await runtime.remove_agent(agent.name)
        await runtime.reap_spares()
        await EgressClient(shaped).stop()
        await runtime.close()
        server.shutdown()


async def test_a_spare_that_stopped_is_replaced_with_its_caches(pool_runtime: Runtime) -> None:
    assert await pool_runtime.fill_pool() == 2
    stopped = spares_on_daemon(pool_runtime.settings)[0]
    drawn = docker_cli("inspect", "-f", '{{index .Config.Labels "spinup.agent"}}', stopped).stdout.strip()
    assert (pool_runtime.settings.cache_dir / drawn).is_dir()
    docker_cli("stop", "-t", "0", stopped)  # as after a daemon restart

    assert await pool_runtime.fill_pool() == 1
    assert stopped not in " ".join(spares_on_daemon(pool_runtime.settings))
    assert len(spares_on_daemon(pool_runtime.settings)) == 2
    assert not (pool_runtime.settings.cache_dir / drawn).exists()


async def test_the_hostname_of_a_process_in_the_hosts_own_uts_namespace_is_never_set() -> None:
    before = socket.gethostname()
    try:
        with pytest.raises(RuntimeError, match="shares this host's UTS namespace"):
            await set_machine_hostname(os.getpid(), "", "not-the-host")
    finally:
        if socket.gethostname() != before:
            socket.sethostname(before)
    assert socket.gethostname() == before
