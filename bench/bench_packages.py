"""Packages benchmark: first vs repeat install of a wheel set, and rebuilding an agent from its manifest.

Run it from the repository root against the local Docker daemon::

    .venv/bin/python bench/bench_packages.py [--n 5] [--wheels 20] [--json results.json]

The wheels (built here, pure Python) are served by a PEP 503 index on the host's 127.0.0.1, so the
agents run with network ``host`` and reach nothing but loopback. Each round measures:

- ``first install``: ``package_install`` of every wheel in a fresh agent (downloads; fills the
  agent's own cache);
- ``repeat install``: the same agent removes them and installs them again (served from its cache);
- ``second agent``: the same in a second fresh agent (downloads again: caches are never shared);
- ``raw pip``: the baseline, ``docker exec`` of ``python3 -m venv`` + ``pip install`` of the same
  set in a plain container made from the same image (no Spinup, no cache);
- ``rebuild``: ``spinup agent rebuild`` of the first agent onto another tag of the base image
  (snapshot, new machine, files carried over, the manifest replayed from the cache).

Everything lives in a temporary SPINUP_HOME and containers labelled ``spinup.bench=1``; all of
it is removed at the end.
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


def raw_pip(names: list[str], url: str) -> float:
    """Seconds for docker exec venv + pip install of ``names`` in a fresh plain container."""
    container = subprocess.run(
        ["docker", "run", "-d", "--network", "host", "--label", f"{BENCH_LABEL}=1", "-u", "1000:1000",
         DEFAULT_IMAGE, "sleep", "600"],
        capture_output=True, text=True, check=True, env=DOCKER_ENV,
    ).stdout.strip()  # fmt: skip
    try:
        started = time.perf_counter()
        subprocess.run(
            ["docker", "exec", container, "sh", "-c",
             f'python3 -m venv /tmp/v && /tmp/v/bin/pip install -q --disable-pip-version-check --no-cache-dir '
             f'--index-url {url} --trusted-host 127.0.0.1 "$@"', "pip", *names],
            check=True, capture_output=True, env=DOCKER_ENV,
        )  # fmt: skip
        return time.perf_counter() - started
    finally:
        subprocess.run(["docker", "rm", "-f", container], capture_output=True, env=DOCKER_ENV)


async def bench(rounds: int, wheel_count: int) -> dict[str, Any]:
    home = Path(tempfile.mkdtemp(prefix="spinup-bench-packages-"))
    other_base = f"spinup-bench/other-base:{os.getpid()}"
    await asyncio.to_thread(subprocess.run, ["docker", "tag", DEFAULT_IMAGE, other_base], check=True, env=DOCKER_ENV)
    files = home / "wheels"
    names = [f"spinup-bench-{i:02d}" for i in range(wheel_count)]
    for name in names:
        make_wheel(files, name, "1.0")
    server, url, _ = serve_index(files)
    runtime = Runtime(Settings(home=home / "spinup", label_extra={BENCH_LABEL: "1"}))
    samples: dict[str, list[float]] = {
        "first install": [], "repeat install": [], "second agent": [], "raw pip": [], "rebuild": []
    }  # fmt: skip
    try:
        for index in range(rounds):
            first, second = f"bench-first-{index}", f"bench-repeat-{index}"
            await new_agent(runtime, first, url)
            await new_agent(runtime, second, url)
            started = time.perf_counter()
            result = await runtime.install_packages(first, "pip", names)
            samples["first install"].append(time.perf_counter() - started)
            assert len(result.added) == wheel_count
            await runtime.remove_packages(first, "pip", names)
            started = time.perf_counter()
            await runtime.install_packages(first, "pip", names)
            samples["repeat install"].append(time.perf_counter() - started)
            started = time.perf_counter()
            await runtime.install_packages(second, "pip", names)
            samples["second agent"].append(time.perf_counter() - started)
            samples["raw pip"].append(await asyncio.to_thread(raw_pip, names, url))
            started = time.perf_counter()
            rebuilt = await runtime.rebuild(first, other_base)
            samples["rebuild"].append(time.perf_counter() - started)
            assert all(o.version == "1.0" for o in rebuilt.packages)
            for name in (first, second):
                await runtime.remove_agent(name)
            print(f"  round {index + 1}/{rounds}", file=sys.stderr)
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
    parser.add_argument("--n", type=int, default=5, help="rounds (each makes fresh agents)")
    parser.add_argument("--wheels", type=int, default=20, help="wheels in the set")
    parser.add_argument("--json", type=Path, help="also write every sample as JSON here")
    args = parser.parse_args()
    samples = asyncio.run(bench(args.n, args.wheels))
    raw = statistics.median(samples["raw pip"])
    print(f"{'measurement':<16} {'n':>3} {'median s':>9} {'min s':>7} {'vs raw pip':>11}")
    for key, values in samples.items():
        median = statistics.median(values)
        print(f"{key:<16} {len(values):>3} {median:>9.2f} {min(values):>7.2f} {median / raw:>10.2f}x")
    print(f"{args.wheels} pure-Python wheels from a loopback index; raw pip = docker exec venv + pip, no cache")
    if args.json:
        args.json.write_text(json.dumps(samples, indent=2))


if __name__ == "__main__":
    main()
