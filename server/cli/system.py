"""``spinup image build`` and ``spinup doctor``: the base image and the installation's health."""

from __future__ import annotations

import argparse
import asyncio
import sys

from spinup.runtime import DEFAULT_IMAGE, Runtime, Settings, diagnose

from .common import SubParsers, dispatch

REQUIRED_CHECKS = {"docker", "docker api", "base image", "state", "toolbox"}


async def build_image(rt: Runtime, args: argparse.Namespace) -> int:
    image_id = await rt.build_base_image(args.tag, on_line=lambda line: print(line, file=sys.stderr, flush=True))
    print(f"built {args.tag} ({image_id})")
    return 0


def doctor(args: argparse.Namespace) -> int:
    """Print each check; non-zero when a required one fails. With ``--fix``, also remove the warm pool's spares."""
    settings = Settings()
    checks = asyncio.run(diagnose(settings))
    for check in checks:
        mark = "ok  " if check.ok else "FAIL"
        print(f"[{mark}] {check.name}: {check.detail}" + ("" if check.ok else f"\n       fix: {check.fix}"))
    healthy = all(c.ok for c in checks if c.name in REQUIRED_CHECKS)
    if healthy:
        asyncio.run(_spares(settings, args.fix))
    return 0 if healthy else 1


async def _spares(settings: Settings, fix: bool) -> None:
    """Report the warm pool's spare machines (remove them with ``fix``: servers make them again)."""
    runtime = Runtime(settings)
    try:
        if fix:
            print(f"[ok  ] warm pool: removed {await runtime.reap_spares()} spare machine(s)")
        else:
            ready, levels = await runtime.spare_count(), await runtime.pool_levels()
            kept = sum(n for _, _, n in levels)
            each = "".join(f"{', ' if i else ': '}{key} {have} of {n}" for i, (key, have, n) in enumerate(levels))
            print(f"[ok  ] warm pool: {ready} spare machine(s) ready (SPINUP_WARM_POOL keeps {kept}{each})")
    finally:
        await runtime.close()


def register_image(sub: SubParsers) -> None:
    """Add ``spinup image build``."""
    image = sub.add_parser("image", help="manage the base image")
    image_sub = image.add_subparsers(dest="image_command", required=True)
    build = image_sub.add_parser("build", help="build spinup/base:bookworm locally with mmdebstrap (no registry)")
    build.add_argument("--tag", default=DEFAULT_IMAGE)
    dispatch(image, "image_command", {"build": build_image})


def register_doctor(sub: SubParsers) -> None:
    """Add ``spinup doctor``."""
    checked = sub.add_parser("doctor", help="check Docker, the base image and the state directory")
    checked.add_argument("--fix", action="store_true", help="also remove the warm pool's spare machines")
    checked.set_defaults(func=doctor)
