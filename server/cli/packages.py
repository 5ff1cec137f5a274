"""``spinup package``: install, remove and list an agent's packages (pip, npm, apt)."""

from __future__ import annotations

import argparse
import sys

from spinup.runtime import Runtime

from .common import SubParsers, dispatch

MANAGERS = ["pip", "npm", "apt"]


async def install(rt: Runtime, args: argparse.Namespace) -> int:
    async def progress(elapsed: float, output_bytes: int) -> None:
        print(f"spinup: {args.manager} has been installing for {elapsed:.0f}s", file=sys.stderr)

    result = await rt.install_packages(args.agent, args.manager, args.specs, progress)
    for package in result.added:
        print(f"added {package.name} {package.version}")
    if not result.added:
        print("nothing new: already installed", file=sys.stderr)
    return 0


async def remove(rt: Runtime, args: argparse.Namespace) -> int:
    await rt.remove_packages(args.agent, args.manager, args.names)
    print(f"removed {', '.join(args.names)}", file=sys.stderr)
    return 0


async def listing(rt: Runtime, args: argparse.Namespace) -> int:
    if args.export:
        sys.stdout.write(rt.export_packages(args.agent, args.export))
        return 0
    for entry in rt.package_manifest(args.agent):
        print(f"{entry.manager:<4} {entry.name:<32} {entry.version:<16} {entry.spec}")
    return 0


def register(sub: SubParsers) -> None:
    """Add ``spinup package`` and its subcommands."""
    pkg = sub.add_parser("package", help="install, remove and list an agent's packages (pip, npm, apt)")
    pkg_sub = pkg.add_subparsers(dest="package_command", required=True)
    installed = pkg_sub.add_parser("install", help="install packages and record them in the agent's manifest")
    installed.add_argument("agent")
    installed.add_argument("manager", choices=MANAGERS)
    installed.add_argument("specs", nargs="+", metavar="SPEC", help="e.g. requests>=2.31, left-pad@1.3.0, jq")
    removed = pkg_sub.add_parser("remove", help="uninstall packages and drop them from the manifest")
    removed.add_argument("agent")
    removed.add_argument("manager", choices=MANAGERS)
    removed.add_argument("names", nargs="+", metavar="NAME")
    listed = pkg_sub.add_parser("list", help="the agent's manifest, or one manager's part as a file")
    listed.add_argument("agent")
    listed.add_argument("--export", choices=MANAGERS, help="print requirements.txt, package.json or an apt list")
    dispatch(pkg, "package_command", {"install": install, "remove": remove, "list": listing})
