"""Shared fixtures: a real Docker daemon, a throwaway state directory, labelled machines.

Every machine a test creates carries ``spinup.test=<run id>``; the session removes them all at
the end, even when tests fail. Docker being unreachable is a failure, never a skip.
"""

from __future__ import annotations

import asyncio
import io
import os
import secrets
import subprocess
import tarfile
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
from mcp import Client

from spinup.runtime import Event, Policy, Runtime, Settings
from spinup.runtime.config import DEFAULT_IMAGE
from spinup.runtime.host_mounts import release_below
from spinup.server.app import build_server
from spinup.snapshot.store import Store

T = TypeVar("T")
RUN_ID = "t" + secrets.token_hex(4)
TEST_LABEL = "spinup.test"
DOCKER_ENV = {"DOCKER_API_VERSION": "1.41"}
# A call waits this long for another's hold on an agent (900 s by default): a lock left held fails fast.
LOCK_WAIT = "120"
os.environ.setdefault("SPINUP_LOCK_WAIT", LOCK_WAIT)
# No spare machines unless a test asks for them (tests/runtime/test_warm_pool.py).
os.environ.setdefault("SPINUP_WARM_POOL", "0")


def docker_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the docker CLI against the test daemon."""
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, check=check, env={**os.environ, **DOCKER_ENV}
    )


def store_of(runtime: Runtime) -> Store:
    """The runtime's snapshot store, opened on its directory (for tests that read its blobs)."""
    return Store(runtime.settings.home / "store")


# Events of what a caller did rather than of the agent's lifecycle.
ACTIVITY_KINDS = frozenset({"exec", "tool-call", "file-written", "file-moved", "file-deleted", "secret-used"})


def lifecycle_kinds(events: list[Event]) -> list[str]:
    """The kinds of ``events`` that are lifecycle steps (no execs, tool calls, file changes)."""
    return [e.kind for e in events if e.kind not in ACTIVITY_KINDS]


async def call(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    """Call an MCP tool that must succeed; return its structured result."""
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, result.content
    assert result.structured_content is not None
    return result.structured_content


async def fails(client: Client, tool: str, **arguments: Any) -> str:
    """Call an MCP tool that must fail as a tool error; return the error's text."""
    result = await client.call_tool(tool, arguments)
    assert result.is_error, result.structured_content
    text = "".join(getattr(part, "text", "") for part in result.content)
    assert text
    return text


def server_env(settings: Settings) -> dict[str, str]:
    """What a server subprocess needs: MCP clients pass little of our environment on."""
    return {
        "SPINUP_HOME": str(settings.home),
        "DOCKER_API_VERSION": "1.41",
        "PATH": os.environ["PATH"],
        "SPINUP_LOCK_WAIT": LOCK_WAIT,
        "SPINUP_WARM_POOL": os.environ["SPINUP_WARM_POOL"],
    }


async def sh(runtime: Runtime, agent: str, command: str) -> str:
    """Run a setup or check command in the machine; it must succeed."""
    result = await runtime.exec(agent, command)
    assert result.exit_code == 0, result.stderr
    return result.stdout


def unique_name(prefix: str = "a") -> str:
    """An agent name no other test uses."""
    return f"{prefix}-{secrets.token_hex(3)}"


def _remove_spares_below(root: Path) -> None:
    """Remove warm-pool spares of the state directories under ``root``: a server a harness started (its
    environment cleared of SPINUP_WARM_POOL) and killed may have left some, without the test label."""
    for machine in docker_cli("ps", "-aq", "--filter", "label=spinup.spare").stdout.split():
        binds = docker_cli("inspect", "-f", "{{json .HostConfig.Binds}}", machine, check=False).stdout
        if str(root) in binds:
            docker_cli("rm", "-f", machine, check=False)


@pytest.fixture(scope="session", autouse=True)
def _docker_and_cleanup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    probe = docker_cli("info", "--format", "{{.ServerVersion}}", check=False)
    if probe.returncode != 0:
        pytest.fail(f"Docker daemon unreachable: {probe.stderr.strip()}. Run scripts/setup first.")
    yield
    ids = docker_cli("ps", "-aq", "--filter", f"label={TEST_LABEL}={RUN_ID}").stdout.split()
    if ids:
        docker_cli("rm", "-f", *ids, check=False)
    _remove_spares_below(tmp_path_factory.getbasetemp())
    images = docker_cli("images", "-q", "--filter", f"label={TEST_LABEL}={RUN_ID}").stdout.split()
    if images:
        docker_cli("rmi", "-f", *sorted(set(images)), check=False)
    release_below(tmp_path_factory.getbasetemp())  # the nosuid,nodev mounts made for machines


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings with a fresh state directory and this run's label on every machine."""
    return Settings(home=tmp_path / "spinup", label_extra={TEST_LABEL: RUN_ID})


@asynccontextmanager
async def opened(runtime: Runtime) -> AsyncIterator[Runtime]:
    """``runtime`` for the block; then its agents are removed and it is closed."""
    try:
        yield runtime
    finally:
        for agent in runtime.list_agents():
            await runtime.remove_agent(agent.name)
        await runtime.close()


@pytest.fixture
async def runtime(settings: Settings) -> AsyncIterator[Runtime]:
    """A runtime over the real daemon; its agents are removed afterwards."""
    async with opened(Runtime(settings)) as rt:
        yield rt


@pytest.fixture
async def agent(runtime: Runtime) -> str:
    """The name of a fresh, running agent."""
    name = unique_name()
    await runtime.create_agent(name)
    return name


@pytest.fixture
async def root_agent(runtime: Runtime) -> str:
    """The name of a fresh, running agent whose policy runs commands as root (for tests that touch /etc)."""
    name = unique_name("r")
    await runtime.create_agent(name, policy=Policy(user="root"))
    return name


@asynccontextmanager
async def held_open(context: AbstractAsyncContextManager[T]) -> AsyncIterator[T]:
    """Enter and exit ``context`` in one dedicated task.

    anyio cancel scopes (inside the MCP client) must be exited by the task that entered them;
    pytest-asyncio may run a fixture's setup and teardown in different tasks.
    """
    entered: asyncio.Future[T] = asyncio.get_running_loop().create_future()
    release = asyncio.Event()

    async def hold() -> None:
        try:
            async with context as value:
                entered.set_result(value)
                await release.wait()
        except BaseException as exc:
            if not entered.done():
                entered.set_exception(exc)
            raise

    task = asyncio.create_task(hold())
    try:
        yield await entered
    finally:
        release.set()
        async with asyncio.timeout(30):
            await task


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[Client]:
    """An MCP client connected in memory to an unbound server."""
    async with held_open(Client(build_server(settings))) as c:
        yield c


@pytest.fixture(scope="session")
def noshell_image() -> Iterator[str]:
    """An image holding one file (/etc/motd) and no tools at all."""
    tag = f"spinup-test/noshell:{RUN_ID}"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("etc/motd")
        info.size = 6
        tar.addfile(info, io.BytesIO(b"hello\n"))
    subprocess.run(
        ["docker", "import", "-c", f"LABEL {TEST_LABEL}={RUN_ID}", "-", tag],
        input=buffer.getvalue(),
        check=True,
        capture_output=True,
        env={**os.environ, **DOCKER_ENV},
    )
    try:
        yield tag
    finally:
        docker_cli("rmi", "-f", tag, check=False)


@pytest.fixture(scope="session")
def other_base() -> Iterator[str]:
    """Another base image: the default one plus a marker file, committed under a test tag."""
    tag = f"spinup-test/other-base:{RUN_ID}"
    container = f"spinup-test-other-{RUN_ID}"
    docker_cli(
        "run", "--name", container, "--network", "none", DEFAULT_IMAGE, "sh", "-c", "echo other > /etc/other-base"
    )
    docker_cli("commit", "--change", f"LABEL {TEST_LABEL}={RUN_ID}", container, tag)
    docker_cli("rm", "-f", container)
    try:
        yield tag
    finally:
        docker_cli("rmi", "-f", tag, check=False)
