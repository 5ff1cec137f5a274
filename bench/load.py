"""Load: ``spinup serve`` over streamable HTTP on loopback, driven by several concurrent MCP clients.

Run it from the repository root against the local Docker daemon::

    .venv/bin/python bench/load.py                       # 50 agents, 1000 execs at concurrency 20, 4 clients
    .venv/bin/python bench/load.py --agents 10 --execs 100 --json /tmp/load.json

It creates the agents, runs the execs (and, in the same run at the same concurrency, as many raw
aiodocker execs on the same machines: the baseline), file round trips, snapshots and restores,
then removes everything. It prints p50/p95/p99 per tool, the errors (there must be none), the
server's RSS and open descriptors before, at the peak and after, and memory per idle agent.
Bounded in count and in time; everything lives in a temporary SPINUP_HOME and stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import socket
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import aiodocker
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from spinup.runtime.host_mounts import release_below

SPINUP = str(Path(sys.executable).with_name("spinup"))
FD_SLACK = 8  # descriptors the server may hold after the run beyond those before (logs, the DB's WAL, ...)
MIB = 1024 * 1024


@dataclass(frozen=True)
class LoadParams:
    """How much load to make; the defaults are the full run."""

    agents: int = 50
    execs: int = 1000
    concurrency: int = 20
    clients: int = 4
    file_trips: int = 200
    snapshots: int = 20
    restores: int = 10
    deadline: float = 1800.0  # seconds the whole run may take


@dataclass
class LoadReport:
    """What a run measured (milliseconds, bytes, counts)."""

    params: LoadParams
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: list[str] = field(default_factory=list)
    rss: dict[str, int] = field(default_factory=dict)  # "before", "peak", "idle", "after"
    fds: dict[str, int] = field(default_factory=dict)
    machine_memory_per_agent: float = 0.0
    server_rss_per_agent: float = 0.0
    leftover_machines: int = 0
    opened: list[str] = field(default_factory=list)  # descriptors open after the run and not before

    def summary(self) -> dict[str, dict[str, float]]:
        """Per measured thing: count, p50, p95, p99 (ms)."""
        return {name: _percentiles(values) for name, values in sorted(self.latencies.items()) if values}


def _percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))], 1)

    return {"n": len(ordered), "p50": round(statistics.median(ordered), 1), "p95": at(0.95), "p99": at(0.99)}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def open_files(pid: int) -> list[str]:
    """What the process's descriptors point at now (sockets and pipes by kind)."""
    targets = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            targets.append(os.readlink(f"/proc/{pid}/fd/{fd}").split(":[")[0])
        except OSError:
            continue
    return sorted(targets)


def settled(pid: int) -> tuple[int, int]:
    """The process's resident memory (bytes) and open descriptors now."""
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


class Server:
    """``spinup serve`` on a free loopback port with a bearer token, stopped by :meth:`stop`."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.port = _free_port()
        self.token = secrets.token_urlsafe(24)
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        env = {**os.environ, "SPINUP_HOME": str(self.home), "SPINUP_TOKEN": self.token, "DOCKER_API_VERSION": "1.41"}
        log = (self.home.parent / "serve.log").open("wb")
        self.proc = await asyncio.create_subprocess_exec(
            SPINUP, "serve", "--port", str(self.port), env=env, stdout=asyncio.subprocess.DEVNULL, stderr=log
        )
        log.close()
        async with asyncio.timeout(60):
            while True:
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                except OSError:
                    if self.proc.returncode is not None:
                        raise RuntimeError("spinup serve exited before it listened") from None
                    await asyncio.sleep(0.1)
                    continue
                writer.close()
                await writer.wait_closed()
                return

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                async with asyncio.timeout(20):
                    await self.proc.wait()
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


class Caller:
    """Round-robins tool calls over the MCP sessions, timing each and counting failures."""

    def __init__(self, clients: list[Client], report: LoadReport) -> None:
        self.clients = clients
        self.report = report
        self._next = 0

    async def call(self, tool: str, **arguments: Any) -> dict[str, Any] | None:
        client = self.clients[self._next % len(self.clients)]
        self._next += 1
        started = time.perf_counter()
        try:
            result = await client.call_tool(tool, arguments)
        except Exception as exc:  # every failure is counted and printed, none hidden
            self.report.errors.append(f"{tool}: {type(exc).__name__}: {exc}")
            return None
        self.report.latencies[tool].append((time.perf_counter() - started) * 1000)
        if result.is_error:
            text = "".join(getattr(part, "text", "") for part in result.content)
            self.report.errors.append(f"{tool}: {text[:300]}")
            return None
        return result.structured_content


async def _bounded(concurrency: int, jobs: list[Callable[[], Awaitable[None]]]) -> None:
    gate = asyncio.Semaphore(concurrency)

    async def one(job: Callable[[], Awaitable[None]]) -> None:
        async with gate:
            await job()

    await asyncio.gather(*(one(job) for job in jobs))


async def _raw_exec(docker: aiodocker.Docker, machine: str, command: list[str]) -> None:
    execution = await docker.containers.container(machine).exec(command, stdout=True, stderr=True)
    async with execution.start(detach=False) as stream:
        while await stream.read_out() is not None:
            pass
    await execution.inspect()


async def _machine_memory(caller: Caller, names: list[str]) -> float:
    """Mean memory an idle agent's machine uses, as ``agent_status`` reports it (its cgroup, page cache not
    counted): read through the tool, so it works on cgroup v1 and v2 alike."""
    used = []
    for name in names:
        status = await caller.call("agent_status", agent=name)
        memory = ((status or {}).get("usage") or {}).get("memory_bytes")
        if memory is not None:
            used.append(int(memory))
    return statistics.mean(used) if used else 0.0


async def run_load(params: LoadParams, progress: Callable[[str], None] = lambda line: None) -> LoadReport:
    """Make the load described by ``params`` against a fresh ``spinup serve``; return what was measured."""
    report = LoadReport(params)
    tmp = Path(tempfile.mkdtemp(prefix="spinup-load-"))
    server = Server(tmp / "home")
    server.home.mkdir()
    docker = aiodocker.Docker()
    names = [f"load-{secrets.token_hex(3)}-{i}" for i in range(params.agents)]
    try:
        await server.start()
        async with asyncio.timeout(params.deadline):
            await _drive(server, docker, names, report, progress)
    finally:
        await _clean_up(docker, names, report)
        await docker.close()
        await server.stop()
        release_below(tmp)  # the nosuid,nodev mounts the server made for machines' host directories
        shutil.rmtree(tmp, ignore_errors=True)
    return report


async def _drive(
    server: Server, docker: aiodocker.Docker, names: list[str], report: LoadReport, progress: Callable[[str], None]
) -> None:
    params = report.params
    headers = {"Authorization": f"Bearer {server.token}"}
    async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(60, read=600)) as http:
        clients = [Client(streamable_http_client(server.url, http_client=http)) for _ in range(params.clients)]
        entered = [await c.__aenter__() for c in clients]
        try:
            caller = Caller(entered, report)
            await caller.call("agent_list")  # the sessions are up
            report.rss["before"], report.fds["before"] = settled(server.pid)
            before = open_files(server.pid)

            progress(f"creating {len(names)} agents")
            await _bounded(
                params.concurrency, [lambda n=n: _ignore(caller.call("agent_create", name=n)) for n in names]
            )
            machines = await _machines(docker, names)
            await asyncio.sleep(2)  # idle: what an agent costs while nothing runs in it
            report.rss["idle"], report.fds["idle"] = settled(server.pid)
            report.server_rss_per_agent = (report.rss["idle"] - report.rss["before"]) / max(1, len(names))
            report.machine_memory_per_agent = await _machine_memory(caller, names)

            progress(f"{params.execs} execs at concurrency {params.concurrency}, and as many raw execs")
            await _execs(caller, docker, names, machines, report)
            progress(f"{params.file_trips} file round trips")
            await _file_trips(caller, names, report)
            progress(f"{params.snapshots} snapshots, {params.restores} restores")
            made = await _snapshots(caller, names, report)
            await _restores(caller, made, report)
            report.rss["peak"], report.fds["peak"] = settled(server.pid)

            progress("removing every agent")
            await _bounded(
                params.concurrency, [lambda n=n: _ignore(caller.call("agent_remove", agent=n)) for n in names]
            )
            await asyncio.sleep(2)
        finally:
            for client in reversed(clients):
                await client.__aexit__(None, None, None)
        await asyncio.sleep(1)  # the sessions' descriptors close
        report.rss["after"], report.fds["after"] = settled(server.pid)
        after = open_files(server.pid)
        for target in before:
            if target in after:
                after.remove(target)
        report.opened = after


async def _ignore(call: Awaitable[object]) -> None:
    await call


async def _machines(docker: aiodocker.Docker, names: list[str]) -> dict[str, str]:
    """Each agent's machine id, by agent name (machines are named ``spinup-<agent>-...``)."""
    found: dict[str, str] = {}
    for container in await docker.containers.list(all=True, filters={"label": ["spinup.managed=1"]}):
        container_name = container["Names"][0].lstrip("/")
        for name in names:
            if container_name.startswith(f"spinup-{name}-"):
                found[name] = container["Id"]
    return found


async def _execs(
    caller: Caller, docker: aiodocker.Docker, names: list[str], machines: dict[str, str], report: LoadReport
) -> None:
    params = report.params

    async def spinup_exec(i: int) -> None:
        said = await caller.call("exec", agent=names[i % len(names)], command=["echo", str(i)])
        if said is not None and said.get("stdout") != f"{i}\n":
            report.errors.append(f"exec {i}: wrong output {said.get('stdout')!r}")

    async def raw_exec(i: int) -> None:
        machine = machines.get(names[i % len(names)])
        if machine is None:
            return
        started = time.perf_counter()
        await _raw_exec(docker, machine, ["echo", str(i)])
        report.latencies["raw aiodocker exec"].append((time.perf_counter() - started) * 1000)

    half = params.execs // 2
    # Two halves in rotated order, so neither side always runs on a warmer or busier machine.
    for start, first_spinup in ((0, True), (half, False)):
        count = half if start == 0 else params.execs - half
        spinup_jobs = [lambda i=i: spinup_exec(i) for i in range(start, start + count)]
        raw_jobs = [lambda i=i: raw_exec(i) for i in range(start, start + count)]
        for jobs in (spinup_jobs, raw_jobs) if first_spinup else (raw_jobs, spinup_jobs):
            await _bounded(params.concurrency, jobs)


async def _file_trips(caller: Caller, names: list[str], report: LoadReport) -> None:
    async def trip(i: int) -> None:
        agent, path, content = names[i % len(names)], f"/workspace/trip-{i}.txt", f"round trip {i}\n" * 64
        if await caller.call("file_write", agent=agent, path=path, content=content) is None:
            return
        read = await caller.call("file_read", agent=agent, path=path)
        if read is not None and read.get("content") != content:
            report.errors.append(f"file trip {i}: read back something else")

    await _bounded(report.params.concurrency, [lambda i=i: trip(i) for i in range(report.params.file_trips)])


async def _snapshots(caller: Caller, names: list[str], report: LoadReport) -> list[tuple[str, str]]:
    made: list[tuple[str, str]] = []

    async def snapshot(i: int) -> None:
        agent = names[i % len(names)]
        said = await caller.call("snapshot_create", agent=agent, label=f"load {i}")
        if said is not None:
            made.append((agent, str(said["snapshot"]["id"] if "snapshot" in said else said["id"])))

    await _bounded(report.params.concurrency, [lambda i=i: snapshot(i) for i in range(report.params.snapshots)])
    return made


async def _restores(caller: Caller, made: list[tuple[str, str]], report: LoadReport) -> None:
    targets = made[: report.params.restores]
    await _bounded(
        report.params.concurrency,
        [lambda a=a, s=s: _ignore(caller.call("snapshot_restore", agent=a, snapshot=s)) for a, s in targets],
    )


async def _clean_up(docker: aiodocker.Docker, names: list[str], report: LoadReport) -> None:
    """Remove any machine of the run's agents the server left (a failed run); count them."""
    leftovers = await _machines(docker, names)
    report.leftover_machines = len(leftovers)
    for machine in leftovers.values():
        await docker.containers.container(machine).delete(force=True)


def print_report(report: LoadReport) -> None:
    """The table: per tool n, p50, p95, p99; then errors, memory and descriptors."""
    print(f"{'measured':24} {'n':>6} {'p50 ms':>9} {'p95 ms':>9} {'p99 ms':>9}")
    for name, row in report.summary().items():
        print(f"{name:24} {row['n']:>6.0f} {row['p50']:>9.1f} {row['p95']:>9.1f} {row['p99']:>9.1f}")
    summary = report.summary()
    if "exec" in summary and "raw aiodocker exec" in summary:
        ratio = summary["exec"]["p50"] / summary["raw aiodocker exec"]["p50"]
        print(f"\nexec p50 / raw aiodocker exec p50 at the same concurrency: {ratio:.2f}x")
    print(f"\nerrors: {len(report.errors)}")
    for error in report.errors[:20]:
        print(f"  {error}")
    print("server RSS (MiB): " + ", ".join(f"{k} {v / MIB:.1f}" for k, v in report.rss.items()))
    print("server open descriptors: " + ", ".join(f"{k} {v}" for k, v in report.fds.items()))
    print(f"server RSS per idle agent: {report.server_rss_per_agent / 1024:.0f} KiB")
    print(f"machine memory per idle agent: {report.machine_memory_per_agent / MIB:.2f} MiB")
    print(f"machines left behind: {report.leftover_machines}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = LoadParams()
    for name in ("agents", "execs", "concurrency", "clients", "file_trips", "snapshots", "restores"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name))
    parser.add_argument("--json", type=Path, help="also write the report (every sample) here")
    args = parser.parse_args()
    params = LoadParams(**{k: v for k, v in vars(args).items() if k != "json"})
    report = asyncio.run(run_load(params, progress=lambda line: print(f"load: {line}", file=sys.stderr)))
    print_report(report)
    if args.json:
        plain = replace(report, latencies=dict(report.latencies))  # asdict cannot copy a defaultdict
        args.json.write_text(json.dumps({**asdict(plain), "summary": report.summary()}, indent=1))
    grew = report.fds.get("after", 0) - report.fds.get("idle", 0)  # the Docker client's pool is full by "idle"
    return 1 if report.errors or report.leftover_machines or grew > FD_SLACK else 0


if __name__ == "__main__":
    sys.exit(main())
