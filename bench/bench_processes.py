"""Background process benchmark: ``process_start`` to the first byte of output, against a raw detached exec.

Run it from the repository root against the local Docker daemon::

    .venv/bin/python bench/bench_processes.py [--n 20] [--warmup 3]

Each round starts one background command through ``Runtime.process_start`` and polls
``Runtime.process_output`` until its first byte arrives, and, as the baseline, starts the same
command with a raw aiodocker exec (``detach``, the ``docker exec -d`` call) that writes to a file,
polled on the host through ``/proc/<pid>/root`` at the same 5 ms interval. The order alternates
from round to round; every run is printed, then medians and p90s. Everything lives in a temporary
SPINUP_HOME and is removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import aiodocker

from spinup.runtime import Runtime, Settings

POLL = 0.005
COMMAND = "echo first; sleep 30"


def p90(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, round(0.9 * len(ordered)) - 1)]


async def spinup_first_byte(runtime: Runtime, agent: str) -> float:
    started = time.perf_counter()
    process = await runtime.process_start(agent, COMMAND)
    while not (await runtime.process_output(agent, process.id, max_bytes=16)).data:  # noqa: ASYNC110 - polling is what is measured
        await asyncio.sleep(POLL)
    took = time.perf_counter() - started
    await runtime.process_signal(agent, process.id, "KILL")
    return took


async def raw_first_byte(docker: aiodocker.Docker, machine: str, pid: int) -> float:
    name = f"/tmp/raw-{uuid.uuid4().hex[:8]}"
    started = time.perf_counter()
    execution = await docker.containers.container(machine).exec(["sh", "-c", f"echo first > {name}; sleep 30"])
    await execution.start(detach=True)
    path = f"/proc/{pid}/root{name}"
    while True:
        try:
            if os.stat(path).st_size > 0:
                break
        except FileNotFoundError:
            pass
        await asyncio.sleep(POLL)
    took = time.perf_counter() - started
    kill = await docker.containers.container(machine).exec(["sh", "-c", "pkill -f 'sleep 30' || kill $(pidof sleep)"])
    await kill.start(detach=True)
    return took


async def run(n: int, warmup: int) -> int:
    home = Path(tempfile.mkdtemp(prefix="spinup-bench-proc-"))
    runtime = Runtime(Settings(home=home))
    docker = aiodocker.Docker()
    agent = f"bench-proc-{uuid.uuid4().hex[:6]}"
    samples: dict[str, list[float]] = {"spinup": [], "raw": []}
    try:
        created = await runtime.create_agent(agent)
        assert created.machine_id is not None
        info = await runtime.machine(agent)
        assert info is not None
        for index in range(warmup + n):
            order = ["spinup", "raw"] if index % 2 == 0 else ["raw", "spinup"]
            for side in order:
                took = (
                    await spinup_first_byte(runtime, agent)
                    if side == "spinup"
                    else await raw_first_byte(docker, info.id, info.pid)
                )
                if index >= warmup:
                    samples[side].append(took * 1000)
            print(f"  round {index + 1}/{warmup + n}{' (warm-up)' if index < warmup else ''}", file=sys.stderr)
    finally:
        await runtime.remove_agent(agent)
        await runtime.close()
        await docker.close()
    for side, values in samples.items():
        print(f"{side:<7} " + " ".join(f"{v:.1f}" for v in values))
    spinup, raw = statistics.median(samples["spinup"]), statistics.median(samples["raw"])
    print(
        f"process_start to first byte: {spinup:.1f} ms (p90 {p90(samples['spinup']):.1f}) vs raw exec -d "
        f"{raw:.1f} ms (p90 {p90(samples['raw']):.1f}): {spinup / raw:.2f}x"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args(argv)
    os.environ.setdefault("DOCKER_API_VERSION", "1.41")
    return asyncio.run(run(args.n, args.warmup))


if __name__ == "__main__":
    sys.exit(main())
