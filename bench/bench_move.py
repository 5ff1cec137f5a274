"""Moving an agent between two Docker daemons on this host, against doing it by hand. In one run:

- ``spinup agent move`` (capture what changed, load the snapshot into the other daemon from the store,
  create and start the machine there, remove the old one)
- vs the raw way: ``docker commit`` the machine, ``docker save | docker -H OTHER load``, ``docker -H OTHER
  run -d`` (the old machine left in place: the raw side does less)

Before each round the agent writes a new 10 MB file, so each move carries a change; both sides move the
same state to the other daemon, in rotated order. A warm-up move there and back first gives the second
daemon the base image, so neither side pays for it. Every run is printed.

Run: ``.venv/bin/python bench/bench_move.py [--runs 5] [--json out.json]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from bench_base import LABEL, SecondDaemon, med, sh

from spinup.runtime import Runtime, Settings

AGENT = "bench-move"
RAW_TAG = "spinup-bench/raw-move:latest"


def raw_move(machine_id: str, source: str, target: str) -> float:
    """Commit, save | load and run the machine's image on the other daemon (timed, ms); then clean up."""
    start = time.perf_counter()
    sh(f"docker -H {source} commit {machine_id} {RAW_TAG} >/dev/null")
    sh(f"docker -H {source} save {RAW_TAG} | docker -H {target} load -q >/dev/null")
    sh(f"docker -H {target} run -d --name raw-move --network none {RAW_TAG} sleep infinity >/dev/null")
    took = (time.perf_counter() - start) * 1000
    sh(f"docker -H {target} rm -f raw-move >/dev/null; docker -H {target} rmi {RAW_TAG} >/dev/null; "
       f"docker -H {source} rmi {RAW_TAG} >/dev/null")  # fmt: skip
    return took


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-move-"))
    local = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    samples: dict[str, list[float]] = {"spinup": [], "raw": []}
    with SecondDaemon() as other:
        runtime = Runtime(Settings(home=root / "home", label_extra=LABEL))
        try:
            await runtime.create_agent(AGENT)
            await runtime.exec(AGENT, "head -c 50000000 /dev/urandom > /workspace/base-work")
            start = time.perf_counter()
            await runtime.move_agent(AGENT, other.host)
            warm = (time.perf_counter() - start) * 1000
            print(f"warm-up move there (the other daemon gets the base image): {warm:.0f} ms", flush=True)
            await runtime.move_agent(AGENT, local)
            for run in range(args.runs):
                await runtime.exec(AGENT, f"head -c 10000000 /dev/urandom > /workspace/round-{run}")
                for side in ("spinup", "raw") if run % 2 == 0 else ("raw", "spinup"):
                    agent = runtime.get_agent(AGENT)
                    here = agent.host or local
                    there = other.host if here == local else local
                    sh("sync")
                    if side == "spinup":
                        start = time.perf_counter()
                        await runtime.move_agent(AGENT, there)
                        samples["spinup"].append((time.perf_counter() - start) * 1000)
                    else:
                        assert agent.machine_id is not None
                        samples["raw"].append(await asyncio.to_thread(raw_move, agent.machine_id, here, there))
                    print(f"run {run + 1}/{args.runs}: {side} {samples[side][-1]:.0f} ms", flush=True)
        finally:
            for agent in runtime.list_agents():
                await runtime.remove_agent(agent.name)
            await runtime.close()
    shutil.rmtree(root, ignore_errors=True)
    rows = {**samples, "spinup_median": med(samples["spinup"]), "raw_median": med(samples["raw"])}
    rows["ratio"] = round(rows["spinup_median"] / rows["raw_median"], 2)
    print(json.dumps(rows, indent=1))
    if args.json:
        await asyncio.to_thread(Path(args.json).write_text, json.dumps(rows, indent=1))


if __name__ == "__main__":
    asyncio.run(main())
