"""Foundation benchmark: wake, exec and file I/O through Spinup, side by side with raw aiodocker.

Run it from the repository root against the local Docker daemon::

    .venv/bin/python bench/bench_foundation.py [--n 20] [--warmup 3] [--json results.json]

Every measurement is timed with ``time.perf_counter`` in rounds: each round runs every variant of
a group once (Spinup's and the raw baseline), in an order that rotates from round to round, so a
noisy machine slows all of them alike. The first ``--warmup`` rounds are not recorded.

Everything this script creates lives in a temporary SPINUP_HOME and in containers labelled
``spinup.bench=1``; all of them are removed at the end, whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import fcntl
import io
import json
import logging
import os
import platform
import secrets
import shutil
import statistics
import sys
import tarfile
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import aiodocker
from aiodocker.containers import DockerContainer
from aiodocker.exceptions import DockerError
from mcp import Client, StdioServerParameters

from spinup.runtime import Runtime, Settings
from spinup.runtime.docker import AGENT_LABEL, API_VERSION
from spinup.runtime.host_mounts import release_below
from spinup.runtime.machines import machine_config
from spinup.server.app import build_server

BENCH_LABEL = "spinup.bench"
FILE_SIZE = 10 * 1024 * 1024
OP_TIMEOUT = 120.0  # seconds; no single measured operation may take longer
EXEC_TARGET = 1.3
WAKE_TARGET = 1.2
FIRST_COMMAND_TARGET = 1.5  # a new agent's first command, over MCP, against one raw exec
WRITE_STDIO_TARGET = 1.5  # a 10 MB file_write over stdio against a raw put_archive of the same bytes
IDLE_BEFORE = 0.5  # seconds every first-command case waits, untimed, after the last round's clean-up

log = logging.getLogger("bench")


@dataclass
class Case:
    """One variant of a group: ``run`` is timed, ``prepare`` (before) and ``check`` (after) are not."""

    key: str
    run: Callable[[], Awaitable[Any]]
    prepare: Callable[[], Awaitable[None]] | None = None
    check: Callable[[Any], None] | None = None


@dataclass(frozen=True)
class Row:
    """One line of the table: a Spinup path against its raw baseline."""

    name: str
    subject: str
    baseline: str
    target: float | None = None


@dataclass
class RowResult:
    name: str
    subject: str
    baseline: str
    n: int
    subject_median_ms: float
    subject_p90_ms: float
    baseline_median_ms: float
    baseline_p90_ms: float
    ratio: float
    target: float | None
    meets_target: bool | None


@dataclass
class Samples:
    """Seconds per case key."""

    times: dict[str, list[float]] = field(default_factory=dict)

    def add(self, key: str, seconds: float) -> None:
        self.times.setdefault(key, []).append(seconds)


ROWS = (
    Row("wake from stopped machine", "wake_stopped_spinup", "wake_stopped_raw", WAKE_TARGET),
    Row("wake from missing machine", "wake_missing_spinup", "wake_missing_raw", WAKE_TARGET),
    Row("new agent + exec: warm pool", "first_command_pool", "exec_raw_first", FIRST_COMMAND_TARGET),
    Row("new agent + exec: warm pool", "first_command_pool", "create_exec_raw"),
    Row("new agent + exec: root pool", "first_command_pool_root", "exec_raw_first", FIRST_COMMAND_TARGET),
    Row("new agent + exec: cold", "first_command_cold", "create_exec_raw"),
    Row("exec true: MCP in memory", "exec_mcp_memory", "exec_raw", EXEC_TARGET),
    Row("exec true: MCP stdio", "exec_mcp_stdio", "exec_raw", EXEC_TARGET),
    Row("exec true: Runtime.exec", "exec_runtime", "exec_raw"),
    Row("write 10 MB: file_write MCP", "write_mcp", "write_raw"),
    Row("write 10 MB: file_write stdio", "write_mcp_stdio", "write_raw", WRITE_STDIO_TARGET),
    Row("write 10 MB: Files.write", "write_runtime", "write_raw"),
    Row("read 10 MB: file_read MCP", "read_mcp", "read_raw"),
    Row("read 10 MB: Files.read", "read_runtime", "read_raw"),
    Row("read 10 MB: file_read MCP", "read_mcp", "read_raw_identity"),
    Row("read 10 MB: Files.read", "read_runtime", "read_raw_identity"),
)

# What each raw baseline does, and its short name in the table.
BASELINES = {
    "wake_stopped_raw": ("start", "aiodocker start of a stopped container made with the same config"),
    "wake_missing_raw": ("create+start", "aiodocker create + start of machine_config(agent) (same image)"),
    "exec_raw": ("exec", "aiodocker exec create + start + read to EOF + exec inspect"),
    "exec_raw_first": (
        "exec (same)",
        "the raw exec again, in the rounds of the new-agent rows (after the same quiet)",
    ),
    "create_exec_raw": ("create+exec", "aiodocker create + start of machine_config(agent), then the raw exec"),
    "write_raw": ("put_archive", "in-memory tar + aiodocker put_archive"),
    "read_raw": ("get_archive", "aiodocker get_archive (aiohttp sends Accept-Encoding: gzip) + extract"),
    "read_raw_identity": (
        "get_archive/id",
        "the same GET with Accept-Encoding: identity (Docker does not gzip the tar) + extract",
    ),
}


async def measure(cases: Sequence[Case], n: int, warmup: int, samples: Samples) -> None:
    """Run ``warmup + n`` rounds of every case; record the last ``n`` of each."""
    for round_no in range(warmup + n):
        shift = round_no % len(cases)
        for case in [*cases[shift:], *cases[:shift]]:
            async with asyncio.timeout(OP_TIMEOUT):
                if case.prepare is not None:
                    await case.prepare()
                started = time.perf_counter()
                result = await case.run()
                elapsed = time.perf_counter() - started
            if case.check is not None:
                case.check(result)
            if round_no >= warmup:
                samples.add(case.key, elapsed)
        print(f"  round {round_no + 1}/{warmup + n}{' (warm-up)' if round_no < warmup else ''}", file=sys.stderr)


def p90(values: Sequence[float]) -> float:
    return statistics.quantiles(values, n=10, method="inclusive")[-1]


def summarize(samples: Samples) -> list[RowResult]:
    results = []
    for row in ROWS:
        subject, baseline = samples.times[row.subject], samples.times[row.baseline]
        ratio = statistics.median(subject) / statistics.median(baseline)
        results.append(
            RowResult(
                name=row.name,
                subject=row.subject,
                baseline=row.baseline,
                n=min(len(subject), len(baseline)),
                subject_median_ms=round(statistics.median(subject) * 1000, 2),
                subject_p90_ms=round(p90(subject) * 1000, 2),
                baseline_median_ms=round(statistics.median(baseline) * 1000, 2),
                baseline_p90_ms=round(p90(baseline) * 1000, 2),
                ratio=round(ratio, 2),
                target=row.target,
                meets_target=None if row.target is None else ratio <= row.target,
            )
        )
    return results


def format_table(results: Sequence[RowResult]) -> str:
    header = (
        f"{'measurement':<28} {'n':>3} {'spinup med':>10} {'p90':>8}  {'raw baseline':<15} {'raw med':>8} "
        f"{'p90':>8} {'ratio':>6}  target"
    )
    lines = [header, "-" * (len(header) + 12)]
    for r in results:
        target = "-" if r.target is None else f"<= {r.target:.1f}x {'ok' if r.meets_target else 'MISSED'}"
        lines.append(
            f"{r.name:<28} {r.n:>3} {r.subject_median_ms:>10.1f} {r.subject_p90_ms:>8.1f}  "
            f"{BASELINES[r.baseline][0]:<15} {r.baseline_median_ms:>8.1f} {r.baseline_p90_ms:>8.1f} "
            f"{r.ratio:>5.2f}x  {target}"
        )
    lines.append("times in ms (median and p90); ratio = spinup median / raw median")
    lines.extend(f"  {short:<15} {what}" for short, what in BASELINES.values())
    return "\n".join(lines)


def _locked(path: Path) -> bool:
    """Whether another process (or task) holds the flock of ``path``."""
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def tar_of(name: str, data: bytes) -> bytes:
    """An uncompressed tar holding one regular file ``name`` with ``data``."""
    buffer = io.BytesIO()
    member = tarfile.TarInfo(name)
    member.size = len(data)
    member.mode = 0o644
    member.mtime = int(time.time())
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(member, io.BytesIO(data))
    return buffer.getvalue()


def spinup_command() -> tuple[str, list[str]]:
    """How to start ``spinup mcp`` with this interpreter's installation."""
    script = Path(sys.executable).parent / "spinup"
    if script.exists():
        return str(script), ["mcp"]
    return sys.executable, ["-m", "spinup.server", "mcp"]


class Bench:
    """Holds the runtime, the raw client, both MCP clients and the agents under test."""

    def __init__(self, home: Path, stack: AsyncExitStack) -> None:
        self.home = home
        self.stack = stack
        # No warm pool but where measured: spares made in the background would be noise elsewhere.
        self.settings = Settings(home=home, label_extra={BENCH_LABEL: "1"}, warm_pool={})
        self.token = secrets.token_hex(3)
        self.rt = Runtime(self.settings)
        self.docker = aiodocker.Docker(api_version=API_VERSION)
        self.agent_ids: list[str] = []
        self.raw_exec_still_running = 0
        self.mem: Client
        self.stdio: Client

    async def close(self) -> None:
        """Remove every container this run made, then close the clients."""
        filters: list[str] = [f"{BENCH_LABEL}=1", *(f"{AGENT_LABEL}={agent_id}" for agent_id in self.agent_ids)]
        ids: set[str] = set()
        for label in filters:
            for container in await self.docker.containers.list(all=True, filters={"label": [label]}):
                ids.add(container.id)
        results = await asyncio.gather(
            *(self.docker.containers.container(i).delete(force=True, v=True) for i in ids), return_exceptions=True
        )
        for container_id, result in zip(ids, results, strict=True):
            if isinstance(result, BaseException) and not (isinstance(result, DockerError) and result.status == 404):
                log.warning("could not remove container %s: %r", container_id[:12], result)
        print(f"removed {len(ids)} bench containers", file=sys.stderr)
        await self.rt.close()
        await self.docker.close()

    async def agent(self, role: str) -> str:
        name = f"bench-{role}-{self.token}"
        agent = await self.rt.create_agent(name)
        self.agent_ids.append(agent.id)
        return name

    def raw_config(self, agent_name: str) -> dict[str, Any]:
        """The agent's own machine config, labelled so the runtime never takes it for the agent's machine."""
        agent = self.rt.get_agent(agent_name)
        config: dict[str, Any] = machine_config(agent, self.settings, self.settings.default_image)
        config["Labels"] = {**config["Labels"], AGENT_LABEL: "raw-baseline", BENCH_LABEL: "1"}
        return config

    async def machine(self, agent_name: str) -> DockerContainer:
        machine_id = self.rt.get_agent(agent_name).machine_id
        assert machine_id is not None
        return self.docker.containers.container(machine_id)

    async def connect_clients(self) -> None:
        self.mem = await self.stack.enter_async_context(Client(build_server(self.settings)))
        command, args = spinup_command()
        env = {"SPINUP_HOME": str(self.home), "DOCKER_API_VERSION": API_VERSION.lstrip("v"), "SPINUP_WARM_POOL": "0"}
        if "DOCKER_HOST" in os.environ:
            env["DOCKER_HOST"] = os.environ["DOCKER_HOST"]
        params = StdioServerParameters(command=command, args=args, env=env)
        self.stdio = await self.stack.enter_async_context(Client(params))

    # 1 and 2: wake

    async def wake_cases(self) -> list[Case]:
        stopped, missing = await self.agent("stopped"), await self.agent("missing")
        raw_stopped = await self.docker.containers.create(
            self.raw_config(stopped), name=f"spinup-bench-raw-stopped-{self.token}"
        )
        await raw_stopped.start()
        missing_config = self.raw_config(missing)
        raw_missing_name = f"spinup-bench-raw-missing-{self.token}"
        raw_missing: list[DockerContainer] = []

        async def stop_agent() -> None:
            await self.rt.stop_agent(stopped, snapshot=False)

        async def remove_agent_machine() -> None:
            await (await self.machine(missing)).delete(force=True, v=True)

        async def remove_raw() -> None:
            while raw_missing:
                await raw_missing.pop().delete(force=True, v=True)

        async def raw_create_start() -> None:
            container = await self.docker.containers.create(missing_config, name=raw_missing_name)
            raw_missing.append(container)
            await container.start()

        async def raw_stop() -> None:
            await raw_stopped.stop(t=5)

        def running(agent: Any) -> None:
            assert agent.state.value == "running", agent

        return [
            Case("wake_stopped_spinup", lambda: self.rt.wake(stopped), stop_agent, running),
            Case("wake_stopped_raw", raw_stopped.start, raw_stop),
            Case("wake_missing_spinup", lambda: self.rt.wake(missing), remove_agent_machine, running),
            Case("wake_missing_raw", raw_create_start, remove_raw),
        ]

    # 3: exec

    async def raw_exec(self, container: DockerContainer) -> int:
        execution = await container.exec(["true"], stdout=True, stderr=True, stdin=False, tty=False)
        async with execution.start(detach=False) as stream:
            while await stream.read_out() is not None:
                pass
        info = await execution.inspect()
        while info["Running"]:
            self.raw_exec_still_running += 1
            info = await execution.inspect()
        return int(info["ExitCode"])

    def exec_cases(self, agent: str, container: DockerContainer) -> list[Case]:
        arguments = {"agent": agent, "command": ["true"]}

        def tool_ok(result: Any) -> None:
            assert not result.is_error, result.content
            assert result.structured_content["exit_code"] == 0, result.structured_content

        def exit_zero(code: Any) -> None:
            assert code == 0, code

        def runtime_ok(result: Any) -> None:
            assert result.exit_code == 0, result

        return [
            Case("exec_raw", lambda: self.raw_exec(container), check=exit_zero),
            Case("exec_mcp_memory", lambda: self.mem.call_tool("exec", arguments), check=tool_ok),
            Case("exec_mcp_stdio", lambda: self.stdio.call_tool("exec", arguments), check=tool_ok),
            Case("exec_runtime", lambda: self.rt.exec(agent, ["true"]), check=runtime_ok),
        ]

    # 3b: a new agent's first command

    async def first_command_cases(self, container: DockerContainer) -> list[Case]:
        """agent_create then exec ``true`` over MCP (in memory), with a spare ready (default policy, root) and
        without; against a raw create + start + exec of the same config and one raw exec. Each case starts with
        no agent of its own and, for the pool, a spare of each shape started and no refill under way (the refill
        a claim starts is awaited before the next case, so it slows none of them)."""
        pooled = replace(self.settings, warm_pool={"": 1, "+root": 1}, mcp_grants=frozenset({"root"}))
        pool_rt = Runtime(pooled)
        self.stack.push_async_callback(pool_rt.close)
        pooled_client = await self.stack.enter_async_context(Client(build_server(pooled)))
        config = self.raw_config(await self.agent("first-command-template"))
        made: list[str] = []
        raw_made: list[DockerContainer] = []
        fill_lock = self.home / "locks" / "pool.fill"

        async def settled() -> None:
            """Every agent of a previous round removed, a spare of each shape started, no refill running."""
            while made:
                await self.rt.remove_agent(made.pop())
            while raw_made:
                await raw_made.pop().delete(force=True, v=True)
            await self.rt.drain()
            for _ in range(3000):
                await pool_rt.fill_pool()
                if await pool_rt.spare_count() >= 2 and not _locked(fill_lock):
                    await asyncio.sleep(IDLE_BEFORE)  # the daemon done with the removals and the start
                    return
                await asyncio.sleep(0.01)
            raise RuntimeError("the warm pool did not settle with a spare of each shape")

        async def first_command(client: Client, **policy: str) -> Any:
            name = f"bench-new-{self.token}-{len(self.agent_ids)}-{time.monotonic_ns() % 10**6}"
            made.append(name)
            created = await client.call_tool("agent_create", {"name": name, **policy})
            assert not created.is_error, created.content
            self.agent_ids.append(created.structured_content["id"])
            return await client.call_tool("exec", {"agent": name, "command": ["true"]})

        async def raw_create_exec() -> int:
            made_raw = await self.docker.containers.create(config, name=f"spinup-bench-first-{secrets.token_hex(3)}")
            raw_made.append(made_raw)
            await made_raw.start()
            return await self.raw_exec(made_raw)

        def tool_ok(result: Any) -> None:
            assert not result.is_error, result.content
            assert result.structured_content["exit_code"] == 0, result.structured_content

        def exit_zero(code: Any) -> None:
            assert code == 0, code

        return [
            Case("first_command_pool", lambda: first_command(pooled_client), settled, tool_ok),
            Case("first_command_pool_root", lambda: first_command(pooled_client, user="root"), settled, tool_ok),
            Case("first_command_cold", lambda: first_command(self.mem), settled, tool_ok),
            Case("create_exec_raw", raw_create_exec, settled, exit_zero),
            Case("exec_raw_first", lambda: self.raw_exec(container), settled, exit_zero),
        ]

    # 4: files

    def write_cases(self, agent: str, container: DockerContainer, data: bytes) -> list[Case]:
        encoded = base64.b64encode(data).decode("ascii")

        async def runtime_write() -> Any:
            files = await self.rt.files(agent)
            return await files.write("/workspace/bench-runtime.bin", encoded, encoding="base64")

        async def raw_write() -> None:
            await container.put_archive("/", tar_of("workspace/bench-raw.bin", data))

        def tool_ok(result: Any) -> None:
            assert not result.is_error, result.content
            assert result.structured_content["size"] == len(data), result.structured_content

        def size_ok(info: Any) -> None:
            assert info.size == len(data), info

        arguments = {"agent": agent, "path": "/workspace/bench-mcp.bin", "content": encoded, "encoding": "base64"}
        return [
            Case("write_raw", raw_write),
            Case("write_mcp", lambda: self.mem.call_tool("file_write", arguments), check=tool_ok),
            Case("write_mcp_stdio", lambda: self.stdio.call_tool("file_write", arguments), check=tool_ok),
            Case("write_runtime", runtime_write, check=size_ok),
        ]

    async def read_cases(self, agent: str, container: DockerContainer, data: bytes) -> list[Case]:
        path = "/workspace/bench-read.bin"
        await container.put_archive("/", tar_of(path.lstrip("/"), data))

        async def runtime_read() -> Any:
            files = await self.rt.files(agent)
            return await files.read(path, encoding="base64")

        async def raw_read() -> bytes:
            tar = await container.get_archive(path)
            with tar:
                member = tar.next()
                assert member is not None
                fh = tar.extractfile(member)
                assert fh is not None
                return fh.read()

        async def raw_read_identity() -> bytes:
            async with self.docker._query(
                f"containers/{container.id}/archive",
                params={"path": path},
                headers={"Accept-Encoding": "identity"},
            ) as response:
                body = await response.read()
            with tarfile.open(fileobj=io.BytesIO(body), mode="r") as tar:
                member = tar.next()
                assert member is not None
                fh = tar.extractfile(member)
                assert fh is not None
                return fh.read()

        def tool_ok(result: Any) -> None:
            assert not result.is_error, result.content
            assert base64.b64decode(result.structured_content["content"]) == data

        def content_ok(content: Any) -> None:
            assert base64.b64decode(content.content) == data

        def bytes_ok(raw: Any) -> None:
            assert raw == data

        arguments = {"agent": agent, "path": path, "encoding": "base64"}
        return [
            Case("read_raw", raw_read, check=bytes_ok),
            Case("read_raw_identity", raw_read_identity, check=bytes_ok),
            Case("read_mcp", lambda: self.mem.call_tool("file_read", arguments), check=tool_ok),
            Case("read_runtime", runtime_read, check=content_ok),
        ]


async def run(n: int, warmup: int) -> tuple[list[RowResult], dict[str, Any]]:
    samples = Samples()
    home = Path(tempfile.mkdtemp(prefix="spinup-bench-"))
    try:
        async with AsyncExitStack() as stack:
            bench = Bench(home, stack)
            stack.push_async_callback(bench.close)
            version = await bench.docker.version()

            print("wake (stopped, missing) ...", file=sys.stderr)
            await measure(await bench.wake_cases(), n, warmup, samples)

            io_agent = await bench.agent("io")
            container = await bench.machine(io_agent)
            await bench.connect_clients()
            print("exec true ...", file=sys.stderr)
            await measure(bench.exec_cases(io_agent, container), n, warmup, samples)
            print("new agent + first command ...", file=sys.stderr)
            await measure(await bench.first_command_cases(container), n, warmup, samples)

            data = os.urandom(FILE_SIZE)
            print("write 10 MB ...", file=sys.stderr)
            await measure(bench.write_cases(io_agent, container, data), n, warmup, samples)
            print("read 10 MB ...", file=sys.stderr)
            await measure(await bench.read_cases(io_agent, container, data), n, warmup, samples)

            meta = {
                "n": n,
                "warmup": warmup,
                "file_size": FILE_SIZE,
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "docker": version.get("Version"),
                "docker_api": API_VERSION,
                "raw_exec_inspect_retries": bench.raw_exec_still_running,
                "baselines": {key: what for key, (_, what) in BASELINES.items()},
                "samples_ms": {k: [round(v * 1000, 3) for v in vs] for k, vs in samples.times.items()},
            }
    finally:
        release_below(home)  # the nosuid,nodev mounts made for machines
        shutil.rmtree(home, ignore_errors=True)
    return summarize(samples), meta


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=20, help="timed rounds per measurement (>= 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds before timing")
    parser.add_argument("--json", type=Path, help="also write the table (and every sample) as JSON here")
    args = parser.parse_args(argv)
    if args.n < 20:
        parser.error("--n must be at least 20")
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    results, meta = asyncio.run(run(args.n, args.warmup))
    print(format_table(results))
    print(f"raw exec: exec inspect still said Running after EOF {meta['raw_exec_inspect_retries']} times")
    if args.json is not None:
        args.json.write_text(json.dumps({"rows": [asdict(r) for r in results], **meta}, indent=2) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
