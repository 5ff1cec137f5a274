"""Packages benchmark: first vs repeat install of a wheel set, and rebuilding an agent from its manifest.

Run it from the repository root against the local Docker daemon::

    .venv/bin/python bench/bench_packages.py [--n 5] [--warmup 1] [--wheels 20] [--json results.json]

The wheels (built here, pure Python) are served by a PEP 503 index on the host's 127.0.0.1, so the
agents run with network ``host`` and reach nothing but loopback. Each round runs every variant
once, in an order that rotates from round to round (the first ``--warmup`` rounds are not
recorded); a variant's setup (``prepare``) is not timed:

- ``first install``: ``package_install`` of every wheel in a fresh agent (downloads; fills the
  agent's own cache);
- ``repeat install``: an agent that installed the set and removed it (untimed) installs it again
  (served from its cache);
- ``second agent``: the same as ``first install`` in another fresh agent of the round (caches are
  never shared, so it downloads again whichever agent went first);
- ``raw pip``: the baseline, ``docker exec`` of ``python3 -m venv`` + ``pip install`` of the same
  set in a plain container made (untimed) from the same image (no Spinup, no cache);
- ``rebuild``: ``spinup agent rebuild`` of an agent that installed the set (untimed) onto another
  tag of the base image (snapshot, new machine, files carried over, the manifest replayed from the
  cache).

Every round is printed, then medians, p90s and ``median / raw pip median``. Everything lives in a
temporary SPINUP_HOME and containers labelled ``spinup.bench=1``; all of it is removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from package_sources import make_wheel, serve_index
from spinup.runtime import Policy, Runtime, Settings
from spinup.runtime.config import DEFAULT_IMAGE
from spinup.runtime.host_mounts import release_below

BENCH_LABEL = "spinup.bench"
DOCKER_ENV = {**os.environ, "DOCKER_API_VERSION": "1.41"}


def pip_conf(url: str) -> str:
    return f"[global]\nindex-url = {url}\ntrusted-host = 127.0.0.1\n"


async def new_agent(runtime: Runtime, name: str, url: str) -> None:
    await runtime.create_agent(name, policy=Policy(network="host"))
    await (await runtime.files(name)).write("/home/agent/.config/pip/pip.conf", pip_conf(url))


@dataclass
class Case:
    """One variant: ``run`` is timed; ``prepare`` (before) is not."""

    key: str
    run: Callable[[], Awaitable[Any]]
    prepare: Callable[[], Awaitable[None]] | None = None


def start_plain() -> str:
    """A plain container of the base image (no Spinup), on network host, as the agent user."""
    return subprocess.run(
        ["docker", "run", "-d", "--network", "host", "--label", f"{BENCH_LABEL}=1", "-u", "1000:1000",
         DEFAULT_IMAGE, "sleep", "600"],
        capture_output=True, text=True, check=True, env=DOCKER_ENV,
    ).stdout.strip()  # fmt: skip


def raw_pip(container: str, names: list[str], url: str) -> None:
    """docker exec venv + pip install of ``names`` (no cache) in the plain ``container``."""
    subprocess.run(
        ["docker", "exec", container, "sh", "-c",
         f'python3 -m venv /tmp/v && /tmp/v/bin/pip install -q --disable-pip-version-check --no-cache-dir '
         f'--index-url {url} --trusted-host 127.0.0.1 "$@"', "pip", *names],
        check=True, capture_output=True, env=DOCKER_ENV,
    )  # fmt: skip


def p90(values: Sequence[float]) -> float:
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=10, method="inclusive")[-1]


KEYS = ("first install", "repeat install", "second agent", "raw pip", "rebuild")


class Round:
    """The agents and the plain container of one round, and its variants."""

    def __init__(self, runtime: Runtime, index: int, names: list[str], url: str, other_base: str) -> None:
        self.runtime = runtime
        self.names = names
        self.url = url
        self.other_base = other_base
        self.agents = {role: f"bench-{role}-{index}" for role in ("first", "repeat", "second", "rebuild")}
        self.containers: list[str] = []

    async def install(self, role: str) -> None:
        result = await self.runtime.install_packages(self.agents[role], "pip", self.names)
        assert len(result.added) == len(self.names), result

    async def fresh(self, role: str) -> None:
        await new_agent(self.runtime, self.agents[role], self.url)

    async def installed_then_removed(self) -> None:
        await self.fresh("repeat")
        await self.install("repeat")
        await self.runtime.remove_packages(self.agents["repeat"], "pip", self.names)

    async def installed(self) -> None:
        await self.fresh("rebuild")
        await self.install("rebuild")

    async def plain(self) -> None:
        self.containers.append(await asyncio.to_thread(start_plain))

    async def pip(self) -> None:
        await asyncio.to_thread(raw_pip, self.containers[-1], self.names, self.url)

    async def rebuild(self) -> None:
        rebuilt = await self.runtime.rebuild(self.agents["rebuild"], self.other_base)
        assert len(rebuilt.packages) == len(self.names) and all(o.version == "1.0" for o in rebuilt.packages)

    def cases(self) -> list[Case]:
        return [
            Case("first install", lambda: self.install("first"), lambda: self.fresh("first")),
            Case("repeat install", lambda: self.install("repeat"), self.installed_then_removed),
            Case("second agent", lambda: self.install("second"), lambda: self.fresh("second")),
            Case("raw pip", self.pip, self.plain),
            Case("rebuild", self.rebuild, self.installed),
        ]

    async def close(self) -> None:
        for name in self.agents.values():
            if self.runtime.find_agent(name) is not None:
                await self.runtime.remove_agent(name)
        for container in self.containers:
            await asyncio.to_thread(
                subprocess.run, ["docker", "rm", "-f", container], capture_output=True, env=DOCKER_ENV
            )


async def bench(rounds: int, warmup: int, wheel_count: int) -> dict[str, list[float]]:
    """Seconds per variant over ``rounds`` recorded rounds (after ``warmup`` unrecorded ones)."""
    home = Path(tempfile.mkdtemp(prefix="spinup-bench-packages-"))
    other_base = f"spinup-bench/other-base:{os.getpid()}"
    await asyncio.to_thread(subprocess.run, ["docker", "tag", DEFAULT_IMAGE, other_base], check=True, env=DOCKER_ENV)
    files = home / "wheels"
    names = [f"spinup-bench-{i:02d}" for i in range(wheel_count)]
    for name in names:
        make_wheel(files, name, "1.0")
    server, url, _ = serve_index(files)
    runtime = Runtime(Settings(home=home / "spinup", label_extra={BENCH_LABEL: "1"}))
    samples: dict[str, list[float]] = {key: [] for key in KEYS}
    try:
        for index in range(warmup + rounds):
            current = Round(runtime, index, names, url, other_base)
            try:
                cases = current.cases()
                shift = index % len(cases)
                order: list[str] = []
                for case in [*cases[shift:], *cases[:shift]]:
                    if case.prepare is not None:
                        await case.prepare()
                    started = time.perf_counter()
                    await case.run()
                    elapsed = time.perf_counter() - started
                    order.append(f"{case.key} {elapsed:.2f} s")
                    if index >= warmup:
                        samples[case.key].append(elapsed)
            finally:
                await current.close()
            tag = " (warm-up)" if index < warmup else ""
            print(f"round {index + 1}/{warmup + rounds}{tag}: " + ", ".join(order), flush=True)
    finally:
        for agent in runtime.list_agents():
            await runtime.remove_agent(agent.name)
        await runtime.close()
        server.shutdown()
        await asyncio.to_thread(subprocess.run, ["docker", "rmi", other_base], capture_output=True, env=DOCKER_ENV)
        release_below(home)  # the nosuid,nodev mounts made for machines
        shutil.rmtree(home, ignore_errors=True)
    return {key: [round(v, 3) for v in values] for key, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=5, help="recorded rounds (each makes fresh agents)")
    parser.add_argument("--warmup", type=int, default=1, help="unrecorded rounds before them")
    parser.add_argument("--wheels", type=int, default=20, help="wheels in the set")
    parser.add_argument("--json", type=Path, help="also write every sample as JSON here")
    args = parser.parse_args()
    samples = asyncio.run(bench(args.n, args.warmup, args.wheels))
    raw = statistics.median(samples["raw pip"])
    print(f"{'measurement':<16} {'n':>3} {'median s':>9} {'p90 s':>7} {'min s':>7} {'vs raw pip':>11}")
    for key, values in samples.items():
        median = statistics.median(values)
        print(
            f"{key:<16} {len(values):>3} {median:>9.2f} {p90(values):>7.2f} {min(values):>7.2f} {median / raw:>10.2f}x"
        )
    print(f"{args.wheels} pure-Python wheels from a loopback index; raw pip = docker exec venv + pip, no cache")
    print("every run (s), in order:")
    for key, values in samples.items():
        print(f"  {key:<16} " + " ".join(f"{v:.2f}" for v in values))
    if args.json:
        args.json.write_text(json.dumps(samples, indent=2))


if __name__ == "__main__":
    main()
