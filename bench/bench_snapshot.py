"""Snapshot benchmark: Spinup's snapshot and restore beside the raw tools, in one run.

Workload: about 260 MB in 20,000 files (200 MB of text in 20 files plus 20,000 small files)
written in one agent's machine. Measured, each beside its baseline in the same rounds:

- first snapshot            vs  GNU ``tar -c | zstd -3 -T0`` of the same upper directory (target <= 1.25x),
                                ``docker commit``, and ``docker commit`` + ``docker save | gzip -6``
- incremental after 1 KB    vs  GNU ``find`` printing the same upper directory's metadata (target <= 1.2x)
- compressed size           vs  gzip -6 of the same upper directory (target <= gzip + 5%)
- restore, image cached     vs  raw create + start of the same image and config (target <= 1.2x)
- restore, image absent     vs  ``docker load`` (+ create + start) of the same layers, from the same state:
                                the snapshot's image deleted (no container uses it), the base image present

The two sides of a row alternate which goes first from round to round; ``sync`` runs (untimed)
before each side, and the replaced machine's background removal is drained before each side.
Every round is printed, then the table (medians, p90s, ratio = spinup median / baseline median).

Run: ``.venv/bin/python bench/bench_snapshot.py [--runs 5] [--json out.json]``; with ``--small-dirs 1000
--incremental-only`` the workload has 200,000 small files and only the incremental row is measured
(after one untimed first snapshot), to see how it scales.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from spinup.runtime import Runtime, Settings
from spinup.runtime.docker import AGENT_LABEL
from spinup.runtime.host_mounts import release_below
from spinup.runtime.machines import machine_config
from spinup.runtime.models import Snapshot
from spinup.snapshot.oci import DIFF_ID, UNCOMPRESSED_SIZE

LABEL = {"spinup.bench": "snapshot"}
DOCKER_ENV = {**os.environ, "DOCKER_API_VERSION": "1.41"}
FIRST_TARGET = 1.25  # x tar | zstd -3 -T0
INCREMENTAL_TARGET = 1.2  # x find -printf of the same upper directory
CACHED_TARGET = 1.2  # x create + start
SIZE_TARGET = 1.05  # x tar | gzip -6
FIND_FORMAT = r"%p %i %s %T@ %C@ %m %u %g\n"
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
for d in range(SMALL_DIRS):
    os.makedirs(f"/workspace/small/{d:03}", exist_ok=True)
    for f in range(200):
        with open(f"/workspace/small/{d:03}/f{f:03}.py", "w") as fh:
            fh.write(f"# file {d}/{f}\n" + " ".join(random.choices(words, k=random.randint(20, 120))) + "\n")
"""


@dataclass(frozen=True)
class Row:
    """One line of the table: a Spinup sample key against a baseline sample key."""

    name: str
    subject: str
    baseline: str
    target_ratio: float | None = None
    target_ms: float | None = None  # a bound on the Spinup median itself


@dataclass
class RowResult:
    name: str
    subject: str
    baseline: str
    n: int
    spinup_median_ms: float
    spinup_p90_ms: float
    baseline_median_ms: float
    baseline_p90_ms: float
    ratio: float
    target: str
    meets_target: bool | None


ROWS = (
    Row("first snapshot", "first", "tar_zstd", target_ratio=FIRST_TARGET),
    Row("first snapshot", "first", "commit"),
    Row("first snapshot", "first", "commit_save_gzip"),
    Row("incremental after 1 KB change", "incremental", "find_walk", target_ratio=INCREMENTAL_TARGET),
    Row("restore, image cached", "restore_cached", "create_start", target_ratio=CACHED_TARGET),
    Row("restore, image absent", "restore_absent", "load_create_start"),
    Row("restore, image absent", "restore_absent", "load"),
)

# What each baseline does, and its short name in the table.
BASELINES = {
    "tar_zstd": ("tar|zstd -3", "GNU tar -c of the upper directory | zstd -3 -T0 to a file"),
    "commit": ("docker commit", "docker commit of the (stopped) machine"),
    "commit_save_gzip": ("commit+save|gz", "docker commit, then docker save | gzip -6 to a file"),
    "find_walk": ("find -printf", f"find UPPER -printf '{FIND_FORMAT.strip()}' > /dev/null (same metadata)"),
    "create_start": ("create+start", "aiodocker create + start of the agent's machine config, same image"),
    "load_create_start": (
        "load+create+st",
        "docker load -i of the same layers (uncompressed, base layers present), then create + start",
    ),
    "load": ("docker load", "the docker load -i part of load+create+st alone"),
}


def docker(*args: str, **kw: Any) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["docker", *args], check=True, capture_output=True, env=DOCKER_ENV, **kw)


def shell(command: str) -> None:
    subprocess.run(["bash", "-o", "pipefail", "-c", command], check=True, env=DOCKER_ENV)


async def timed(fn: Callable[[], Awaitable[Any]]) -> float:
    """Milliseconds ``fn`` takes (after an untimed ``sync``, so no side pays the other's writeback)."""
    await asyncio.to_thread(os.sync)
    start = time.perf_counter()
    await fn()
    return (time.perf_counter() - start) * 1000


async def timed_sync(fn: Callable[[], Any]) -> float:
    """Milliseconds the blocking ``fn`` takes in a worker thread (after an untimed ``sync``)."""
    await asyncio.to_thread(os.sync)
    start = time.perf_counter()
    await asyncio.to_thread(fn)
    return (time.perf_counter() - start) * 1000


def rotated(sides: Sequence[Any], round_no: int) -> list[Any]:
    """``sides`` rotated by the round number, so each goes first as often as the others."""
    shift = round_no % len(sides)
    return [*sides[shift:], *sides[:shift]]


def p90(values: Sequence[float]) -> float:
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=10, method="inclusive")[-1]


def summarize(samples: dict[str, list[float]]) -> list[RowResult]:
    results = []
    for row in ROWS:
        subject, baseline = samples[row.subject], samples[row.baseline]
        if not subject or not baseline:
            continue  # not measured in this run (--incremental-only)
        median = statistics.median(subject)
        ratio = median / statistics.median(baseline)
        if row.target_ratio is not None:
            met: bool | None = ratio <= row.target_ratio
            target = f"ok: {ratio:.2f}x <= {row.target_ratio:.2f}x" if met else (
                f"MISSED: {ratio:.2f}x vs target {row.target_ratio:.2f}x"
            )  # fmt: skip
        elif row.target_ms is not None:
            met = median <= row.target_ms
            target = f"ok: {median:.0f} ms <= {row.target_ms:.0f} ms" if met else (
                f"MISSED: {median:.0f} ms vs target {row.target_ms:.0f} ms"
            )  # fmt: skip
        else:
            met, target = None, "-"
        results.append(
            RowResult(
                name=row.name,
                subject=row.subject,
                baseline=row.baseline,
                n=min(len(subject), len(baseline)),
                spinup_median_ms=round(median, 1),
                spinup_p90_ms=round(p90(subject), 1),
                baseline_median_ms=round(statistics.median(baseline), 1),
                baseline_p90_ms=round(p90(baseline), 1),
                ratio=round(ratio, 2),
                target=target,
                meets_target=met,
            )
        )
    return results


def format_table(results: Sequence[RowResult], sizes: dict[str, Any]) -> str:
    header = (
        f"{'measurement':<30} {'n':>3} {'spinup med':>10} {'p90':>8}  {'baseline':<15} {'base med':>9} "
        f"{'p90':>9} {'ratio':>6}  target"
    )
    lines = [header, "-" * (len(header) + 24)]
    for r in results:
        lines.append(
            f"{r.name:<30} {r.n:>3} {r.spinup_median_ms:>10.1f} {r.spinup_p90_ms:>8.1f}  "
            f"{BASELINES[r.baseline][0]:<15} {r.baseline_median_ms:>9.1f} {r.baseline_p90_ms:>9.1f} "
            f"{r.ratio:>5.2f}x  {r.target}"
        )
    if not sizes:
        lines.append("times in ms (median and p90); ratio = spinup median / baseline median")
        return "\n".join(lines)
    ratio = sizes["spinup_vs_gzip6"]
    verdict = f"ok: {ratio:.2f}x <= {SIZE_TARGET:.2f}x" if ratio <= SIZE_TARGET else (
        f"MISSED: {ratio:.2f}x vs target {SIZE_TARGET:.2f}x"
    )  # fmt: skip
    lines.append(
        f"{'compressed size (MB)':<30} {'':>3} {sizes['spinup_layer_zstd3'] / 1e6:>10.1f} {'':>8}  "
        f"{'tar|gzip -6':<15} {sizes['tar_gzip6'] / 1e6:>9.1f} {'':>9} {ratio:>5.2f}x  {verdict}"
        f"   (tar|zstd -3: {sizes['tar_zstd3'] / 1e6:.1f} MB)"
    )
    lines.append("times in ms (median and p90); ratio = spinup median / baseline median")
    lines.extend(f"  {short:<15} {what}" for short, what in BASELINES.values())
    return "\n".join(lines)


def format_runs(samples: dict[str, list[float]]) -> str:
    """Every recorded run of every key, in ms, in the order they ran."""
    width = max(len(key) for key in samples)
    return "\n".join(f"{key:<{width}}  " + " ".join(f"{v:.1f}" for v in values) for key, values in samples.items())


def without_layers(saved: Path, out: Path, keep_from: int) -> list[str]:
    """Copy the ``docker save`` archive ``saved`` to ``out`` without the files of its first ``keep_from`` layers
    (Docker has them: ``docker load`` reads no file for a layer it has); returns the kept layers' paths."""
    with tarfile.open(saved) as source:
        member = source.getmember("manifest.json")
        reader = source.extractfile(member)
        assert reader is not None
        layers: list[str] = json.load(reader)[0]["Layers"]
        dropped = set(layers[:keep_from])
        with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as target:
            for member in source:
                if member.name in dropped:
                    continue
                target.addfile(member, source.extractfile(member) if member.isfile() else None)
    return layers[keep_from:]


class Restores:
    """The restore rows: the agent, its head snapshot and image, and the raw containers made beside it."""

    def __init__(self, runtime: Runtime, name: str, head: Snapshot, image: str) -> None:
        self.runtime = runtime
        self.name = name
        self.head = head
        self.image = image
        self.raw: list[str] = []
        self.deleted_layers: list[int] = []  # layers each ``docker rmi`` deleted

    def raw_config(self) -> dict[str, Any]:
        """The agent's machine config, labelled so no runtime takes it for the agent's machine."""
        config: dict[str, Any] = machine_config(self.runtime.get_agent(self.name), self.runtime.settings, self.image)
        config["Labels"] = {**config["Labels"], AGENT_LABEL: "raw-baseline"}
        return config

    async def create_start(self) -> None:
        container = await self.runtime._docker.create_container(self.raw_config())
        self.raw.append(container)
        await self.runtime._docker.start(container)

    async def remove_raw(self) -> None:
        while self.raw:
            await self.runtime._docker.remove(self.raw.pop())

    async def settle(self) -> None:
        """Remove raw containers and wait for the runtime's background removals (untimed)."""
        await self.remove_raw()
        await self.runtime._agents.drain()

    async def image_gone(self, own_layers: int) -> None:
        """Bring the state both absent-image sides start from: no container uses the snapshot's image, and
        ``docker rmi`` deleted it with its own layers (the base image stays)."""
        await self.settle()
        if await self.runtime.machine(self.name) is not None:
            await self.runtime.stop_agent(self.name, hibernate=True)  # nothing changed: no new snapshot
            await self.runtime._agents.drain()
            assert self.runtime.get_agent(self.name).head_snapshot == self.head.id, "hibernating took a snapshot"
        output = await asyncio.to_thread(docker, "rmi", self.image)  # no -f: fails while a container uses it
        deleted = sum(line.startswith("Deleted:") for line in output.stdout.decode().splitlines()) - 1
        self.deleted_layers.append(deleted)
        gone = await asyncio.to_thread(
            subprocess.run, ["docker", "image", "inspect", self.image], capture_output=True, env=DOCKER_ENV
        )
        if gone.returncode == 0 or deleted != own_layers:
            raise RuntimeError(f"docker rmi {self.image} deleted {deleted} layers of {own_layers}; image still there?")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", "--n", dest="runs", type=int, default=5, help="rounds per row (incremental: 2x)")
    parser.add_argument("--json", type=Path, help="also write the table and every sample (ms) as JSON here")
    parser.add_argument("--small-dirs", type=int, default=100, help="directories of 200 small files (100: 20,000)")
    parser.add_argument("--incremental-only", action="store_true", help="measure only the incremental row")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="spinup-bench-"))
    runtime = Runtime(Settings(home=work / "home", label_extra=LABEL))
    name = "bench-snap"
    samples: dict[str, list[float]] = {key: [] for key in ("first", "incremental", "restore_cached", "restore_absent")}
    samples.update({key: [] for key in BASELINES})
    try:
        agent = await runtime.create_agent(name)
        workload = f"SMALL_DIRS = {args.small_dirs}\n" + WORKLOAD
        result = await runtime.exec(name, ["python3", "-c", workload], timeout=1800)
        assert result.exit_code == 0, result.stderr
        await runtime.stop_agent(name, snapshot=False)
        agent = runtime.get_agent(name)
        info = await runtime._agents.machine(agent)
        assert info is not None and info.upper_dir
        upper = info.upper_dir
        print(f"workload ready in {upper}", flush=True)

        # 1. First snapshots, each from scratch, beside tar | zstd; then docker commit (+ save | gzip).
        snapshot_size = tarzstd_size = 0
        out = work / "baseline.tar.zst"
        if args.incremental_only:
            first = await runtime.snapshot(name, "first (untimed)")
            print(f"first snapshot (untimed): {first.snapshot.paths_changed} paths", flush=True)
        for run in range(0 if args.incremental_only else args.runs):
            runtime._db.set_head(agent.id, None)  # the next capture is a first (full) one
            agent = runtime.get_agent(name)
            created = {}

            async def capture() -> None:
                created["r"] = await runtime.snapshot(name, f"first-{run}")  # noqa: B023

            async def baseline() -> None:
                await asyncio.to_thread(shell, f"tar -C {upper} -c . | zstd -3 -T0 -q -f -o {out}")

            for key, side in rotated([("first", capture), ("tar_zstd", baseline)], run):
                samples[key].append(await timed(side))
            snapshot_size = created["r"].snapshot.layer_size
            tarzstd_size = out.stat().st_size
            tag = f"spinup-bench/commit:{run}"
            samples["commit"].append(await timed_sync(lambda: docker("commit", info.id, tag)))  # noqa: B023
            gz = work / "commit.tar.gz"
            saving = await timed_sync(lambda: shell(f"docker save {tag} | gzip -6 > {gz}"))  # noqa: B023
            samples["commit_save_gzip"].append(samples["commit"][-1] + saving)
            docker("rmi", "-f", tag)
            print(
                f"first snapshot round {run + 1}/{args.runs}: spinup {samples['first'][-1]:.1f} ms, "
                f"tar|zstd {samples['tar_zstd'][-1]:.1f}, commit {samples['commit'][-1]:.1f}, "
                f"commit+save|gzip {samples['commit_save_gzip'][-1]:.1f}",
                flush=True,
            )
        gzip_size = 0
        if not args.incremental_only:
            gz_layer = work / "layer.tar.gz"
            shell(f"tar -C {upper} -c . | gzip -6 > {gz_layer}")
            gzip_size = gz_layer.stat().st_size

        # 2. Incremental snapshots after a 1 KB change, beside a raw metadata walk of the same upper directory.
        async def incremental() -> None:
            await runtime.snapshot(name, "inc")

        def find_walk() -> None:
            with open(os.devnull, "w") as null:
                subprocess.run(["find", upper, "-printf", FIND_FORMAT], check=True, stdout=null)

        async def walk() -> None:
            await asyncio.to_thread(find_walk)

        rounds = max(args.runs * 2, 10)
        for run in range(rounds):
            await runtime.exec(name, f"head -c 1024 /dev/urandom > /workspace/small/000/f000.py; echo {run}")
            machine = await runtime.machine(name)
            assert machine is not None and machine.upper_dir == upper
            for key, side in rotated([("incremental", incremental), ("find_walk", walk)], run):
                samples[key].append(await timed(side))
            print(
                f"incremental round {run + 1}/{rounds}: spinup {samples['incremental'][-1]:.1f} ms, "
                f"find walk {samples['find_walk'][-1]:.1f}",
                flush=True,
            )
        if args.incremental_only:
            results = summarize(samples)
            print(format_table(results, {}))
            print(f"\nevery run (ms), in order:\n{format_runs({k: v for k, v in samples.items() if v})}")
            return
        head = runtime.get_snapshot(runtime.get_agent(name).head_snapshot or "")

        # 3. Restores with the image cached, beside a raw create + start of the same image and config.
        image = await runtime._snapshots.ensure_image(head)
        restores = Restores(runtime, name, head, image)
        await runtime.restore(name, head.id)  # untimed: from here the machine runs from the head's image
        cached = [("restore_cached", lambda: runtime.restore(name, head.id)), ("create_start", restores.create_start)]
        for run in range(args.runs):
            for key, side in rotated(cached, run):
                await restores.settle()  # the replaced machine's background removal is not the next side's
                samples[key].append(await timed(side))
            await restores.settle()
            print(
                f"restore cached round {run + 1}/{args.runs}: spinup {samples['restore_cached'][-1]:.1f} ms, "
                f"create+start {samples['create_start'][-1]:.1f}",
                flush=True,
            )

        # 4. Restores with the image absent, beside docker load of the same layers (+ create + start).
        stored = await asyncio.to_thread(
            runtime._snapshots.snapshot_store.save_image, head.manifest_digest, image, head.id, False
        )
        base_layers = json.loads(docker("image", "inspect", stored.base_id).stdout)[0]["RootFS"]["Layers"]
        image_layers = json.loads(docker("image", "inspect", image).stdout)[0]["RootFS"]["Layers"]
        assert image_layers[: len(base_layers)] == base_layers, "the snapshot image does not build on the base"
        spinup_layers = [(d.annotations or {})[DIFF_ID] for d in stored.layers]
        own_layers = image_layers[len(base_layers) :]
        assert spinup_layers == own_layers, (spinup_layers, own_layers)
        saved, trimmed = work / "image.tar", work / "image-own-layers.tar"
        docker("save", "-o", str(saved), image)
        kept = await asyncio.to_thread(without_layers, saved, trimmed, len(base_layers))
        saved.unlink()
        spinup_bytes = sum(int((d.annotations or {})[UNCOMPRESSED_SIZE]) for d in stored.layers)
        print(
            f"image absent: both sides load the same {len(own_layers)} layers ({spinup_bytes / 1e6:.1f} MB "
            f"uncompressed; docker load's archive {trimmed.stat().st_size / 1e6:.1f} MB, {len(kept)} layer files); "
            f"the base image's {len(base_layers)} layer(s) stay in Docker",
            flush=True,
        )

        async def restore_absent() -> None:
            await runtime.restore(name, head.id)

        async def load_create_start() -> None:
            started = time.perf_counter()
            await asyncio.to_thread(docker, "load", "-i", str(trimmed))
            samples["load"].append((time.perf_counter() - started) * 1000)
            await restores.create_start()

        absent = [("restore_absent", restore_absent), ("load_create_start", load_create_start)]
        for run in range(args.runs):
            for key, side in rotated(absent, run):
                await restores.image_gone(len(own_layers))
                samples[key].append(await timed(side))
                assert await runtime._docker.image_exists(image)
            await restores.settle()
            print(
                f"restore absent round {run + 1}/{args.runs}: spinup {samples['restore_absent'][-1]:.1f} ms, "
                f"docker load + create+start {samples['load_create_start'][-1]:.1f} "
                f"(load {samples['load'][-1]:.1f}); rmi deleted {restores.deleted_layers[-2:]} layers",
                flush=True,
            )

        sizes = {
            "spinup_layer_zstd3": snapshot_size,
            "tar_zstd3": tarzstd_size,
            "tar_gzip6": gzip_size,
            "spinup_vs_gzip6": round(snapshot_size / gzip_size, 3),
        }
        results = summarize(samples)
        print(format_table(results, sizes))
        print(f"\nevery run (ms), in order:\n{format_runs(samples)}")
        if args.json:
            meta = {"runs": args.runs, "cpus": os.cpu_count(), "own_layers": len(own_layers), "sizes_bytes": sizes}
            args.json.write_text(
                json.dumps({"rows": [asdict(r) for r in results], **meta, "samples_ms": samples}, indent=2) + "\n"
            )
    finally:
        for a in runtime.list_agents():
            await runtime.remove_agent(a.name)
        await runtime.close()
        containers = docker("ps", "-aq", "--filter", "label=spinup.bench=snapshot").stdout.decode().split()
        if containers:
            await asyncio.to_thread(
                subprocess.run, ["docker", "rm", "-f", *containers], env=DOCKER_ENV, capture_output=True
            )
        images = docker("images", "-q", "--filter", "label=spinup.bench=snapshot").stdout.decode().split()
        if images:
            await asyncio.to_thread(
                subprocess.run, ["docker", "rmi", "-f", *set(images)], env=DOCKER_ENV, capture_output=True
            )
        release_below(work)  # the nosuid,nodev mounts made for machines
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
