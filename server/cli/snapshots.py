"""``spinup snapshot``: create, list, show, restore, fork, diff, delete, verify, collect, export and migrate."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from spinup.runtime import Runtime, readable_size

from ..schemas import AgentInfo, SnapshotInfo
from .common import SubParsers, dispatch, print_json, progress_printer


async def create(rt: Runtime, args: argparse.Namespace) -> int:
    result = await rt.snapshot(args.agent, args.label, progress_printer())
    verb = "created" if result.created else "unchanged; head is"
    stored = readable_size(result.snapshot.layer_size)
    print(f"{verb} {result.snapshot.id} ({stored} stored, {result.duration_s}s)", file=sys.stderr)
    print_json(SnapshotInfo.of(result.snapshot).model_dump())
    return 0


async def listing(rt: Runtime, args: argparse.Namespace) -> int:
    snapshots = rt.list_snapshots(args.agent)
    print(f"{'ID':<16} {'AGENT':<18} {'CREATED':<26} {'LAYERS':>6} {'BYTES':>12}  LABEL")
    names = {a.id: a.name for a in rt.list_agents()}
    for s in snapshots:
        print(
            f"{s.id:<16} {names.get(s.agent_id, s.agent_id):<18} {s.created_at.isoformat()[:25]:<26} "
            f"{s.layers:>6} {s.layer_size:>12}  {s.label}"
        )
    return 0


async def show(rt: Runtime, args: argparse.Namespace) -> int:
    print_json(SnapshotInfo.of(rt.get_snapshot(args.snapshot)).model_dump())
    return 0


async def restore(rt: Runtime, args: argparse.Namespace) -> int:
    saved = (await rt.restore(args.agent, args.snapshot)).saved_before_restore
    print(
        f"restored {args.agent} to {args.snapshot}" + (f"; its previous work is saved as {saved}" if saved else ""),
        file=sys.stderr,
    )
    return 0


async def fork(rt: Runtime, args: argparse.Namespace) -> int:
    print_json(AgentInfo.of(await rt.fork(args.snapshot, args.name)).model_dump())
    return 0


async def diff(rt: Runtime, args: argparse.Namespace) -> int:
    changes = await rt.diff(args.agent, args.source, args.target)
    for mark, paths in (("A", changes.added), ("M", changes.changed), ("D", changes.removed)):
        for path in paths:
            print(f"{mark} {path}")
    return 0


async def remove(rt: Runtime, args: argparse.Namespace) -> int:
    await rt.delete_snapshot(args.snapshot)
    print(f"deleted {args.snapshot} (run spinup snapshot gc to free its blobs)", file=sys.stderr)
    return 0


async def verify(rt: Runtime, args: argparse.Namespace) -> int:
    report = await rt.verify_store()
    for line in report.problems:
        print(f"PROBLEM {line}")
    for line in report.garbage:
        print(f"garbage {line}")
    print(
        f"checked {report.blobs_checked} blobs, {report.snapshots_checked} snapshots: "
        + ("ok" if report.ok else f"{len(report.problems)} problems"),
        file=sys.stderr,
    )
    return 0 if report.ok else 1


async def collect(rt: Runtime, args: argparse.Namespace) -> int:
    gc = await rt.collect_garbage()
    if gc.relisted:
        print(f"listed again in index.json (it had lost them): {', '.join(gc.relisted)}", file=sys.stderr)
    print(
        f"removed {gc.blobs_removed} blobs ({gc.bytes_freed} bytes) and {gc.temp_files_removed} temporary files",
        file=sys.stderr,
    )
    if gc.cache_bases_removed:
        print(
            f"removed {len(gc.cache_bases_removed)} base image(s) no state directory uses from the base cache "
            f"({gc.cache_bytes_freed} bytes)",
            file=sys.stderr,
        )
    return 0


async def export(rt: Runtime, args: argparse.Namespace) -> int:
    size = await rt.export_snapshot(args.snapshot, Path(args.output), args.format)
    how = f"docker load -i {args.output}" if args.format == "docker" else f"skopeo copy oci-archive:{args.output} ..."
    print(f"wrote {args.output} ({size} bytes); load it with: {how}", file=sys.stderr)
    return 0


async def push(rt: Runtime, args: argparse.Namespace) -> int:
    pushed = await rt.push_snapshot(
        args.source, args.ref, insecure=args.insecure, credential=args.credential, progress=progress_printer()
    )
    print(f"pushed {pushed.snapshot_id} to {pushed.ref} ({pushed.digest})", file=sys.stderr)
    print_json({"snapshot": pushed.snapshot_id, "ref": pushed.ref, "digest": pushed.digest})
    return 0


async def migrate(rt: Runtime, args: argparse.Namespace) -> int:
    result = await rt.migrate_store(progress_printer())
    for snapshot_id, reason in result.skipped.items():
        print(f"SKIPPED {snapshot_id}: {reason}")
    print(
        f"migrated {len(result.migrated)} snapshots, {result.current} were current, {len(result.skipped)} skipped"
        + (" (run it again once Docker has their base images)" if result.skipped else ""),
        file=sys.stderr,
    )
    return 1 if result.skipped else 0


def register(sub: SubParsers) -> None:
    """Add ``spinup snapshot`` and its subcommands."""
    snap = sub.add_parser("snapshot", help="create, list, restore, fork, diff, verify and collect snapshots")
    snap_sub = snap.add_subparsers(dest="snapshot_command", required=True)
    created = snap_sub.add_parser("create", help="snapshot an agent's machine")
    created.add_argument("agent")
    created.add_argument("--label", default="")
    snap_sub.add_parser("list", help="list snapshots (of one agent, or all)").add_argument("agent", nargs="?")
    snap_sub.add_parser("show", help="show one snapshot").add_argument("snapshot")
    restored = snap_sub.add_parser("restore", help="replace an agent's machine with a snapshot (saves its work first)")
    restored.add_argument("agent")
    restored.add_argument("snapshot")
    forked = snap_sub.add_parser("fork", help="create a new agent from a snapshot")
    forked.add_argument("snapshot")
    forked.add_argument("name")
    diffed = snap_sub.add_parser("diff", help="paths added/changed/removed between snapshots, or vs the live machine")
    diffed.add_argument("agent")
    diffed.add_argument("source", nargs="?", help="default: the agent's head")
    diffed.add_argument("target", nargs="?", help="default: the live machine")
    snap_sub.add_parser("rm", help="delete a snapshot nothing builds on").add_argument("snapshot")
    snap_sub.add_parser("verify", help="re-hash every blob and check every reference")
    snap_sub.add_parser("gc", help="remove unreferenced blobs and interrupted writes")
    exported = snap_sub.add_parser("export", help="write a docker-save or OCI archive (base image included)")
    exported.add_argument("snapshot")
    exported.add_argument("output", help="path of the .tar to write")
    exported.add_argument(
        "--format", choices=("docker", "oci"), default="docker", help="docker: for docker load; oci: an OCI archive"
    )
    pushed = snap_sub.add_parser("push", help="push a snapshot (or an agent's head) to an OCI registry")
    pushed.add_argument("source", metavar="SNAPSHOT|AGENT")
    pushed.add_argument("ref", help="host[:port]/path[:tag], such as registry.example.com/team/agent:v1")
    pushed.add_argument("--insecure", action="store_true", help="plain HTTP, for a registry on loopback only")
    pushed.add_argument("--credential", help="a secret holding the registry's user:password")
    snap_sub.add_parser("migrate", help="store base images and make older snapshots list their layers (resumable)")
    dispatch(
        snap,
        "snapshot_command",
        {
            "create": create,
            "list": listing,
            "show": show,
            "restore": restore,
            "fork": fork,
            "diff": diff,
            "rm": remove,
            "verify": verify,
            "gc": collect,
            "export": export,
            "migrate": migrate,
            "push": push,
        },
    )
