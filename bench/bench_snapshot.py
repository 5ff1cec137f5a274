"""Snapshot benchmark: Spinup's snapshot and restore beside the raw tools, in one run.

Workload: about 260 MB in 20,000 files (200 MB of text in 20 files plus 20,000 small files)
written in one agent's machine. Measured, each with its baseline:

- first snapshot            vs  GNU ``tar -c | zstd -3 -T0`` of the same upper directory,
                                ``docker commit``, and ``docker commit`` + ``docker save | gzip -6``
- incremental after 1 KB    (target <= 150 ms)
- compressed size           vs  gzip -6 of the committed layer (target <= gzip + 5%)
- restore, image cached     vs  raw create + start of the same image (target <= 1.2x)
- restore, image absent     vs  ``docker load`` of the same image, uncompressed

Run: ``.venv/bin/python bench/bench_snapshot.py [--runs 5] [--json out.json]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from spinup.runtime import Runtime, Settings
from spinup.runtime.host_mounts import release_below
from spinup.runtime.machines import machine_config

LABEL = {"spinup.bench": "snapshot"}
DOCKER_ENV = {**os.environ, "DOCKER_API_VERSION": "1.41"}
WORKLOAD = r"""
import os, random
random.seed(7)
words = [("".join(random.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(random.randint(2, 9))))
         for _ in range(5000)]
os.makedirs("/workspace/text", exist_ok=True)
for i in range(20):
    with open(f"/workspace/text/doc{i:02}.txt", "w") as fh:
        written = 0
        while written < 10_000_000:
            line = " ".join(random.choices(words, k=12)) + "\n"
            fh.write(line)
            written += len(line)
for d in range(100):
    os.makedirs(f"/workspace/small/{d:03}", exist_ok=True)
    for f in range(200):
        with open(f"/workspace/small/{d:03}/f{f:03}.py", "w") as fh:
            fh.write(f"# file {d}/{f}\n" + " ".join(random.choices(words, k=random.randint(20, 120))) + "\n")
"""


def docker(*args: str, **kw: Any) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["docker", *args], check=True, capture_output=True, env=DOCKER_ENV, **kw)


def shell(command: str) -> None:
    subprocess.run(["bash", "-o", "pipefail", "-c", command], check=True, env=DOCKER_ENV)


async def timed(fn: Callable[[], Awaitable[Any]]) -> float:
    start = time.perf_counter()
    await fn()
    return (time.perf_counter() - start) * 1000


async def timed_sync(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    await asyncio.to_thread(fn)
    return (time.perf_counter() - start) * 1000


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"median": round(statistics.median(ordered), 1), "p90": round(ordered[int(0.9 * (len(ordered) - 1))], 1)}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="spinup-bench-"))
    runtime = Runtime(Settings(home=work / "home", label_extra=LABEL))
    name = "bench-snap"
    rows: dict[str, Any] = {}
    try:
        agent = await runtime.create_agent(name)
        result = await runtime.exec(name, ["python3", "-c", WORKLOAD], timeout=1800)
        assert result.exit_code == 0, result.stderr
        await runtime.stop_agent(name, snapshot=False)
        agent = runtime.get_agent(name)
        info = await runtime._agents.machine(agent)
        assert info is not None and info.upper_dir
        upper = info.upper_dir
        print(f"workload ready in {upper}", flush=True)

        first, tarzstd, commit, commit_save_gzip = [], [], [], []
        snapshot_size = gzip_size = tarzstd_size = 0
        for run in range(args.runs):
            runtime._db.set_head(agent.id, None)  # the next capture is a first (full) one
            agent = runtime.get_agent(name)
            created = {}

            async def capture() -> None:
                created["r"] = await runtime.snapshot(name, f"first-{run}")  # noqa: B023

            out = work / "baseline.tar.zst"

            async def baseline() -> None:
                await asyncio.to_thread(shell, f"tar -C {upper} -c . | zstd -3 -T0 -q -f -o {out}")  # noqa: B023

            # Alternate which side goes first, and let the previous round's writes reach the disk
            # (untimed) before each side, so neither pays for the other's writeback.
            for side in [capture, baseline] if run % 2 == 0 else [baseline, capture]:
                await asyncio.to_thread(os.sync)
                (first if side is capture else tarzstd).append(await timed(side))
            snapshot_size = created["r"].snapshot.layer_size
            tarzstd_size = out.stat().st_size
            tag = f"spinup-bench/commit:{run}"
            commit.append(await timed_sync(lambda: docker("commit", info.id, tag)))  # noqa: B023
            gz = work / "commit.tar.gz"
            commit_save_gzip.append(
                commit[-1] + await timed_sync(lambda: shell(f"docker save {tag} | gzip -6 > {gz}"))  # noqa: B023
            )
            docker("rmi", "-f", tag)
            print(f"run {run + 1}/{args.runs}: first {first[-1]:.0f} ms, tar|zstd {tarzstd[-1]:.0f} ms", flush=True)
        # gzip -6 of just the layer Docker would store: the container's diff, as docker export of changes.
        gz_layer = work / "layer.tar.gz"
        shell(f"tar -C {upper} -c . | gzip -6 > {gz_layer}")
        gzip_size = gz_layer.stat().st_size

        incremental = []
        for run in range(max(args.runs * 2, 10)):
            await runtime.exec(name, f"head -c 1024 /dev/urandom > /workspace/small/000/f000.py; echo {run}")
            await asyncio.to_thread(os.sync)
            incremental.append(await timed(lambda: runtime.snapshot(name, "inc")))
        head = runtime.get_snapshot(runtime.get_agent(name).head_snapshot or "")

        image = await runtime._snapshots.ensure_image(head)
        restore_cached, raw_create = [], []
        for _ in range(args.runs):
            restore_cached.append(await timed(lambda: runtime.restore(name, head.id)))
            config = machine_config(runtime.get_agent(name), runtime.settings, image)

            async def create_start(config: dict[str, Any] = config) -> None:
                cid = await runtime._docker.create_container(config)
                await runtime._docker.start(cid)
                created["raw"] = cid

            raw_create.append(await timed(create_start))
            await runtime._docker.remove(created["raw"])

        saved = work / "image.tar"
        docker("save", "-o", str(saved), image)
        restore_store, docker_load = [], []
        for _ in range(args.runs):
            docker("rmi", "-f", image)
            restore_store.append(await timed(lambda: runtime.restore(name, head.id)))
            await runtime.stop_agent(name, snapshot=False)
            docker("rm", "-f", runtime.get_agent(name).machine_id or "")
            docker("rmi", "-f", image)
            docker_load.append(await timed_sync(lambda: docker("load", "-i", str(saved))))
            await runtime.wake(name)

        def row(subject: list[float], baseline: list[float] | None, target: float | None) -> dict[str, Any]:
            out: dict[str, Any] = {"spinup_ms": summary(subject)}
            if baseline:
                out["baseline_ms"] = summary(baseline)
                out["ratio"] = round(statistics.median(subject) / statistics.median(baseline), 2)
            if target is not None:
                out["target"] = target
            return out

        rows = {
            "first snapshot vs tar|zstd -3 -T0": row(first, tarzstd, 1.25),
            "first snapshot vs docker commit": row(first, commit, None),
            "first snapshot vs docker commit + save|gzip -6": row(first, commit_save_gzip, None),
            "incremental snapshot after 1 KB change (target 150 ms)": row(incremental, None, None),
            "restore, image cached vs create+start": row(restore_cached, raw_create, 1.2),
            "restore, image absent (from store) vs docker load": row(restore_store, docker_load, None),
            "sizes_bytes": {
                "spinup_layer_zstd3": snapshot_size,
                "tar_zstd3": tarzstd_size,
                "tar_gzip6": gzip_size,
                "spinup_vs_gzip6": round(snapshot_size / gzip_size, 3),
            },
        }
        print(json.dumps(rows, indent=2))
        if args.json:
            args.json.write_text(json.dumps(rows, indent=2))
    finally:
        for a in runtime.list_agents():
            await runtime.remove_agent(a.name)
        images = docker("images", "-q", "--filter", "label=spinup.bench=snapshot").stdout.decode().split()
        if images:
            await asyncio.to_thread(
                subprocess.run, ["docker", "rmi", "-f", *set(images)], env=DOCKER_ENV, capture_output=True
            )
        await runtime.close()
        release_below(work)  # the nosuid,nodev mounts made for machines
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
