"""Control-plane benchmark: status and overview (``spinup ps``) of 1, 10 and 50 agents, and the exec round trip,
side by side with raw aiodocker.

Run it from the repository root against the local Docker daemon::

    .venv/bin/python bench/bench_control.py [--n 20] [--warmup 3] [--json results.json]

Each group is timed in rounds with ``time.perf_counter``: every round runs every variant once, in
an order that rotates from round to round, so a noisy machine slows all of them alike; the first
``--warmup`` rounds are not recorded. Every recorded run is printed.

- ``Runtime.status`` of each of N agents (all at once) and ``Runtime.overview`` (what ``spinup ps``
  does) against ``docker inspect`` of the same N containers, all at once, through aiodocker. Both
  include the deliberate CPU window (``CPU_WINDOW``, one pause shared by every machine); the
  ``no CPU pause`` variant sets it to 0 and shows what the rest costs. Before each timed call the
  previous CPU readings are dropped, so every call pays for its window as a first look does.
- ``Runtime.exec`` (which records an exec row, an output file and an event) against aiodocker's
  exec create + start + read to EOF + inspect of the same argv.

The agents (up to 50, created once and reused: 1, then 10, then 50) live in a temporary
SPINUP_HOME and carry ``spinup.bench=1``; all of them are removed at the end, whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiodocker
from aiodocker.containers import DockerContainer
from aiodocker.exceptions import DockerError

from spinup.runtime import Runtime, Settings
from spinup.runtime import usage as usage_module
from spinup.runtime.docker import AGENT_LABEL, API_VERSION
from spinup.runtime.host_mounts import release_below

BENCH_LABEL = "spinup.bench"
OP_TIMEOUT = 120.0  # seconds; no single measured operation may take longer
EXEC_TARGET = 1.3
SIZES = (1, 10, 50)
CREATE_AT_ONCE = 8  # agents created concurrently while setting up
CGROUP_MODE = "v2" if os.path.exists("/sys/fs/cgroup/cgroup.controllers") else "v1"

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
    *(
        row
        for size in SIZES
        for row in (
            Row(f"status x{size} (all at once)", f"status_{size}", f"inspect_{size}"),
            Row(f"overview of {size} (spinup ps)", f"overview_{size}", f"inspect_{size}"),
            Row(f"overview of {size}, no CPU pause", f"overview_nopause_{size}", f"inspect_{size}"),
        )
    ),
    Row("exec 'true' (sh -c): Runtime.exec", "exec_runtime_sh", "exec_raw_sh", EXEC_TARGET),
    Row("exec ['true']: Runtime.exec", "exec_runtime", "exec_raw", EXEC_TARGET),
)

BASELINES = {
    **{
        f"inspect_{size}": (f"inspect x{size}", f"aiodocker inspect of the same {size} containers at once")
        for size in SIZES
    },
    "exec_raw_sh": ("exec sh -c", "aiodocker exec create + start + read to EOF + inspect of /bin/sh -c true"),
    "exec_raw": ("exec true", "aiodocker exec create + start + read to EOF + inspect of true"),
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
        f"{'measurement':<34} {'n':>3} {'spinup med':>10} {'p90':>8}  {'raw baseline':<12} {'raw med':>8} "
        f"{'p90':>8} {'ratio':>7}  target"
    )
    lines = [header, "-" * (len(header) + 12)]
    for r in results:
        target = "-" if r.target is None else f"<= {r.target:.1f}x {'ok' if r.meets_target else 'MISSED'}"
        lines.append(
            f"{r.name:<34} {r.n:>3} {r.subject_median_ms:>10.1f} {r.subject_p90_ms:>8.1f}  "
            f"{BASELINES[r.baseline][0]:<12} {r.baseline_median_ms:>8.1f} {r.baseline_p90_ms:>8.1f} "
            f"{r.ratio:>6.2f}x  {target}"
        )
    lines.append(
        f"times in ms (median and p90); ratio = spinup median / raw median; CPU window {usage_module.CPU_WINDOW}s"
    )
    lines.extend(f"  {short:<12} {what}" for short, what in BASELINES.values())
    return "\n".join(lines)


def format_runs(samples: Samples) -> str:
    """Every recorded run of every case, in ms, in the order they ran."""
    width = max(len(key) for key in samples.times)
    return "\n".join(
        f"{key:<{width}}  " + " ".join(f"{v * 1000:.1f}" for v in values) for key, values in samples.times.items()
    )


class Bench:
    """Holds the runtime, the raw client and the agents under test."""

    def __init__(self, home: Path) -> None:
        self.settings = Settings(home=home, label_extra={BENCH_LABEL: "1"})
        self.token = secrets.token_hex(3)
        self.rt = Runtime(self.settings)
        self.docker = aiodocker.Docker(api_version=API_VERSION)
        self.agents: list[str] = []
        self.agent_ids: list[str] = []
        self.raw_exec_still_running = 0

    async def close(self) -> None:
        """Remove every agent and container this run made, then close the clients."""
        removed = await asyncio.gather(*(self.rt.remove_agent(name) for name in self.agents), return_exceptions=True)
        for name, result in zip(self.agents, removed, strict=True):
            if isinstance(result, BaseException):
                log.warning("could not remove agent %s: %r", name, result)
        ids: set[str] = set()
        for label in [f"{BENCH_LABEL}=1", *(f"{AGENT_LABEL}={agent_id}" for agent_id in self.agent_ids)]:
            for container in await self.docker.containers.list(all=True, filters={"label": [label]}):
                ids.add(container.id)
        results = await asyncio.gather(
            *(self.docker.containers.container(i).delete(force=True, v=True) for i in ids), return_exceptions=True
        )
        for container_id, result in zip(ids, results, strict=True):
            if isinstance(result, BaseException) and not (isinstance(result, DockerError) and result.status == 404):
                log.warning("could not remove container %s: %r", container_id[:12], result)
        print(f"removed {len(self.agents)} bench agents and {len(ids)} leftover containers", file=sys.stderr)
        await self.rt.close()
        await self.docker.close()

    async def grow_to(self, count: int) -> None:
        """Create agents until there are ``count`` (a few at a time)."""
        while len(self.agents) < count:
            batch = [
                f"bench-c{len(self.agents) + i}-{self.token}"
                for i in range(min(CREATE_AT_ONCE, count - len(self.agents)))
            ]
            created = await asyncio.gather(*(self.rt.create_agent(name) for name in batch))
            self.agents += batch
            self.agent_ids += [agent.id for agent in created]
        print(f"{len(self.agents)} agents running", file=sys.stderr)

    def machine_ids(self) -> list[str]:
        ids = [self.rt.get_agent(name).machine_id for name in self.agents]
        assert all(ids)
        return [i for i in ids if i]

    async def forget_readings(self) -> None:
        self.rt._usage._last.clear()  # every timed call takes its CPU window, as a first look does

    def listing_cases(self, size: int) -> list[Case]:
        names = list(self.agents)
        ids = self.machine_ids()
        assert len(names) == len(ids) == size

        async def statuses() -> list[Any]:
            return await asyncio.gather(*(self.rt.status(name) for name in names))

        async def overview_without_pause() -> Any:
            window = usage_module.CPU_WINDOW
            usage_module.CPU_WINDOW = 0.0
            try:
                return await self.rt.overview()
            finally:
                usage_module.CPU_WINDOW = window

        async def raw_inspect() -> list[Any]:
            return await asyncio.gather(*(self.docker.containers.container(i).show() for i in ids))

        def every_status(results: Any) -> None:
            assert len(results) == size and all(s.usage is not None and s.usage.memory_bytes for s in results)

        def every_row(rows: Any) -> None:
            assert len(rows) == size and all(r.state == "running" and r.usage.memory_bytes for r in rows), rows

        def every_cpu(rows: Any) -> None:
            every_row(rows)
            assert all(r.usage.cpu_percent is not None for r in rows)

        def every_inspect(raw: Any) -> None:
            assert len(raw) == size and all(c["State"]["Running"] for c in raw)

        return [
            Case(f"inspect_{size}", raw_inspect, check=every_inspect),
            Case(f"status_{size}", statuses, self.forget_readings, every_status),
            Case(f"overview_{size}", self.rt.overview, self.forget_readings, every_cpu),
            Case(f"overview_nopause_{size}", overview_without_pause, self.forget_readings, every_row),
        ]

    async def raw_exec(self, container: DockerContainer, argv: list[str]) -> int:
        execution = await container.exec(argv, stdout=True, stderr=True, stdin=False, tty=False)
        async with execution.start(detach=False) as stream:
            while await stream.read_out() is not None:
                pass
        info = await execution.inspect()
        while info["Running"]:
            self.raw_exec_still_running += 1
            info = await execution.inspect()
        return int(info["ExitCode"])

    def exec_cases(self) -> list[Case]:
        name = self.agents[0]
        container = self.docker.containers.container(self.machine_ids()[0])

        def exit_zero(code: Any) -> None:
            assert code == 0, code

        def runtime_ok(result: Any) -> None:
            assert result.exit_code == 0 and result.id, result

        return [
            Case("exec_raw_sh", lambda: self.raw_exec(container, ["/bin/sh", "-c", "true"]), check=exit_zero),
            Case("exec_runtime_sh", lambda: self.rt.exec(name, "true"), check=runtime_ok),
            Case("exec_raw", lambda: self.raw_exec(container, ["true"]), check=exit_zero),
            Case("exec_runtime", lambda: self.rt.exec(name, ["true"]), check=runtime_ok),
        ]


async def run(n: int, warmup: int) -> tuple[list[RowResult], Samples, dict[str, Any]]:
    samples = Samples()
    home = Path(tempfile.mkdtemp(prefix="spinup-bench-"))
    bench = Bench(home)
    try:
        version = await bench.docker.version()
        for size in SIZES:
            await bench.grow_to(size)
            print(f"status and overview of {size} ...", file=sys.stderr)
            await measure(bench.listing_cases(size), n, warmup, samples)
        print("exec true ...", file=sys.stderr)
        await measure(bench.exec_cases(), n, warmup, samples)
        execs = len(bench.rt.recent_execs(bench.agents[0], limit=10_000))
        meta = {
            "n": n,
            "warmup": warmup,
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "docker": version.get("Version"),
            "docker_api": API_VERSION,
            "cgroup": CGROUP_MODE,
            "cpu_window_s": usage_module.CPU_WINDOW,
            "execs_recorded": execs,
            "raw_exec_inspect_retries": bench.raw_exec_still_running,
            "baselines": {key: what for key, (_, what) in BASELINES.items()},
            "samples_ms": {k: [round(v * 1000, 3) for v in vs] for k, vs in samples.times.items()},
        }
    finally:
        try:
            await bench.close()
        finally:
            release_below(home)  # the nosuid,nodev mounts made for machines
            shutil.rmtree(home, ignore_errors=True)
    return summarize(samples), samples, meta


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=20, help="timed rounds per measurement (>= 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds before timing")
    parser.add_argument("--json", type=Path, help="also write the table (and every sample) as JSON here")
    args = parser.parse_args(argv)
    if args.n < 20:
        parser.error("--n must be at least 20")
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    results, samples, meta = asyncio.run(run(args.n, args.warmup))
    print(format_table(results))
    print(f"\nevery run (ms), in order:\n{format_runs(samples)}")
    print(
        f"\n{meta['execs_recorded']} exec rows recorded for the exec agent; raw exec: exec inspect still said "
        f"Running after EOF {meta['raw_exec_inspect_retries']} times; docker {meta['docker']}, cgroup "
        f"{meta['cgroup']}, {meta['cpus']} CPUs"
    )
    if args.json is not None:
        args.json.write_text(json.dumps({"rows": [asdict(r) for r in results], **meta}, indent=2) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
