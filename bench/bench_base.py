"""Base images in the store: what storing one costs, what a store of many agents on it weighs, and
how long an agent takes to wake on a daemon that has lost its base image. In one run:

- store the base image once (cold cache)  vs  ``docker save IMAGE | zstd -3 -T0 > file``
- link it into a fresh store (warm cache) (what every new state directory pays)
- store size with N agents on one base    vs  the base alone, and N copies of it
- wake without the base in Docker         vs  ``docker load`` of the same base image saved uncompressed
  (on a second daemon the bench starts itself: the shared daemon's base image is never removed)

Run: ``.venv/bin/python bench/bench_base.py [--runs 3] [--agents 10] [--json out.json]``
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
from pathlib import Path
from typing import Any

from spinup.runtime import Policy, Runtime, Settings
from spinup.runtime.docker import DockerBackend
from spinup.runtime.snapshots import SnapshotService, snapshot_tag
from spinup.runtime.state import StateDB

IMAGE = "spinup/base:bookworm"
LABEL = {"spinup.bench": "base"}
ENV = {**os.environ, "DOCKER_API_VERSION": "1.41"}


def sh(command: str, host: str = "") -> None:
    env = {**ENV, "DOCKER_HOST": host} if host else ENV
    subprocess.run(["bash", "-o", "pipefail", "-c", command], check=True, env=env, capture_output=True)


def du(path: Path) -> int:
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def med(values: list[float]) -> float:
    return round(statistics.median(values), 1)


async def store_once(image_id: str, root: Path) -> float:
    """Store the base image into an empty cache and store (timed, ms)."""
    cache, home = root / "cache", root / "home"
    shutil.rmtree(cache, ignore_errors=True)
    shutil.rmtree(home, ignore_errors=True)
    settings = Settings(home=home, base_cache=cache)
    docker = DockerBackend()
    service = SnapshotService(settings, StateDB(settings.db_path), docker)
    sh("sync")
    start = time.perf_counter()
    await service.bases.ensure(image_id)
    took = (time.perf_counter() - start) * 1000
    await docker.close()
    return took


async def link_once(image_id: str, cache: Path, root: Path) -> float:
    home = Path(tempfile.mkdtemp(dir=root))
    settings = Settings(home=home, base_cache=cache)
    docker = DockerBackend()
    service = SnapshotService(settings, StateDB(settings.db_path), docker)
    start = time.perf_counter()
    await service.bases.ensure(image_id)
    took = (time.perf_counter() - start) * 1000
    await docker.close()
    return took


async def store_size(agents: int, cache: Path, root: Path) -> dict[str, Any]:
    settings = Settings(home=root / "many", base_cache=cache, label_extra=LABEL)
    runtime = Runtime(settings)
    try:
        for i in range(agents):
            name = f"bench-base-{i}"
            await runtime.create_agent(name)
            await runtime.exec(name, f"head -c 1000000 /dev/urandom > /workspace/own-{i}")
            await runtime.snapshot(name)
        store = du(settings.home / "store")
        base = du(cache / "blobs")
        own = sum(s.layer_size for s in runtime.list_snapshots())
        return {"agents": agents, "store_bytes": store, "base_bytes": base, "own_layer_bytes": own}
    finally:
        for agent in runtime.list_agents():
            await runtime.remove_agent(agent.name)
        await runtime.close()


class SecondDaemon:
    """A daemon of the bench's own, so its base image can be removed."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="bd-", dir="/tmp"))
        self.host = f"unix://{self.root}/docker.sock"
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> SecondDaemon:
        self.process = subprocess.Popen(
            ["dockerd", "--data-root", str(self.root / "data"), "--exec-root", str(self.root / "exec"),
             "--pidfile", str(self.root / "pid"), "-H", self.host, "--bridge=none", "--iptables=false"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while subprocess.run(["docker", "-H", self.host, "info"], env=ENV, capture_output=True).returncode:
            if time.monotonic() > deadline:
                raise RuntimeError("the second daemon did not start")
            time.sleep(0.2)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.process is not None
        self.process.terminate()
        self.process.wait(timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)


async def wake_without_base(runs: int, cache: Path, root: Path) -> dict[str, Any]:
    saved = root / "base.tar"
    sh(f"docker save {IMAGE} > {saved}")
    samples: dict[str, list[float]] = {"wake": [], "load": []}
    with SecondDaemon() as daemon:
        sh(f"docker -H {daemon.host} load -i {saved}")
        os.environ["DOCKER_HOST"] = daemon.host
        runtime = Runtime(Settings(home=root / "wake", base_cache=cache, label_extra=LABEL))
        try:
            await runtime.create_agent("bench-wake", policy=Policy(user="root"))
            await runtime.exec("bench-wake", "head -c 1000000 /dev/urandom > /workspace/own")
            agent = await runtime.stop_agent("bench-wake", hibernate=True)
            assert agent.head_snapshot
            tag = snapshot_tag(agent.head_snapshot)
            for run in range(runs):
                for side in ("wake", "load") if run % 2 == 0 else ("load", "wake"):
                    if runtime.get_agent("bench-wake").machine_id:
                        await runtime.stop_agent("bench-wake", hibernate=True)
                    sh(f"docker -H {daemon.host} rmi -f {tag} {IMAGE} >/dev/null 2>&1 || true; "
                       f"docker -H {daemon.host} system prune -a -f >/dev/null; sync")  # fmt: skip
                    start = time.perf_counter()
                    if side == "wake":
                        await runtime.wake("bench-wake")
                    else:
                        await asyncio.to_thread(sh, f"docker -H {daemon.host} load -i {saved}")
                    samples[side].append((time.perf_counter() - start) * 1000)
                    print(f"run {run + 1}/{runs}: {side} {samples[side][-1]:.0f} ms", flush=True)
        finally:
            for each in runtime.list_agents():
                await runtime.remove_agent(each.name)
            await runtime.close()
            del os.environ["DOCKER_HOST"]
    return samples


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--agents", type=int, default=10)
    parser.add_argument("--json")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-base-"))
    try:
        docker = DockerBackend()
        image = await docker.image_inspect(IMAGE)
        await docker.close()
        store_ms: list[float] = []
        raw_ms: list[float] = []
        for run in range(args.runs):
            for side in ("spinup", "raw") if run % 2 == 0 else ("raw", "spinup"):
                if side == "spinup":
                    store_ms.append(await store_once(image.id, root / "once"))
                else:
                    sh("sync")
                    start = time.perf_counter()
                    sh(f"docker save {IMAGE} | zstd -3 -T0 -q > {root / 'raw.tar.zst'}")
                    raw_ms.append((time.perf_counter() - start) * 1000)
            print(f"run {run + 1}/{args.runs}: store {store_ms[-1]:.0f} ms, save|zstd {raw_ms[-1]:.0f} ms", flush=True)
        cache = root / "once" / "cache"
        link_ms = [await link_once(image.id, cache, root) for _ in range(10)]
        print(f"link into fresh stores: {[round(x, 1) for x in link_ms]} ms", flush=True)
        size = await store_size(args.agents, cache, root)
        print(f"store with {args.agents} agents: {size}", flush=True)
        wake = await wake_without_base(args.runs, cache, root)
        rows = {
            "image": {"id": image.id, "size": image.size},
            "store_base_ms": {"spinup": store_ms, "save_zstd": raw_ms, "ratio": round(med(store_ms) / med(raw_ms), 2)},
            "link_base_ms": {"samples": link_ms, "median": med(link_ms)},
            "store_size": {**size, "per_agent_if_each_stored_base": size["base_bytes"]},
            "wake_without_base_ms": {**wake, "ratio": round(med(wake["wake"]) / med(wake["load"]), 2)},
        }
        print(json.dumps(rows, indent=1))
        if args.json:
            await asyncio.to_thread(Path(args.json).write_text, json.dumps(rows, indent=1))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
