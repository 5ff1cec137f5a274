"""Host directories mounted into machines, as mount points of their own with ``nosuid,nodev``.

Docker's bind mounts take no ``nosuid`` or ``nodev``, but a bind mount keeps the flags of the
mount it is taken from. So each host directory a machine gets is first made a mount point on
the host with those flags (a bind of itself, remounted), and read-only sources get a read-only
view of their own (runc 1.1 drops other flags when it remounts a bind read-only, so Docker is
given that view read-write and the kernel keeps it read-only). A setuid file a root agent leaves
in its caches is then never setuid for anyone on the host, and no device node there opens.

The mounts stay after the process ends (machines start again from them); doing it twice is a
no-op. Without root (or without ``mount``) the directories are bound plainly and a warning says so.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import subprocess
from pathlib import Path

log = logging.getLogger(__name__)

GUARD = ("nosuid", "nodev")
_MOUNT_TIMEOUT = 10.0
_warned: set[str] = set()


def _unescape(field: str) -> str:
    """A path as /proc/self/mountinfo writes it (space, tab, newline, backslash as octal escapes)."""
    return field.encode().decode("unicode_escape") if "\\" in field else field


def mount_options(point: Path) -> set[str] | None:
    """The per-mount options of the topmost mount at ``point``, or None when it is no mount point."""
    found: set[str] | None = None
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as mountinfo:
        for line in mountinfo:
            fields = line.split(" ", 6)
            if len(fields) > 5 and _unescape(fields[4]) == str(point):
                found = set(fields[5].split(","))  # later lines are mounted on top
    return found


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True, text=True, timeout=_MOUNT_TIMEOUT)


def _guard(source: Path, point: Path, read_only: bool) -> bool:
    """Make ``point`` a bind of ``source`` with the guard flags (and ``ro``); False when this host cannot."""
    wanted = {*GUARD, "ro" if read_only else "rw"}
    options = mount_options(point)
    if options is not None and wanted <= options:
        return True
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    try:
        if options is None:
            _mount("--bind", str(source), str(point))
        _mount("-o", f"remount,bind,{','.join(sorted(wanted))}", str(point))
    except (OSError, subprocess.SubprocessError) as exc:
        detail = exc.stderr.strip() if isinstance(exc, subprocess.CalledProcessError) else str(exc)
        log.warning("could not mount %s with %s: %s", point, ",".join(sorted(wanted)), detail)
        return False
    return True


def _locked_guard(source: Path, point: Path, read_only: bool, views: Path) -> bool:
    views.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(views / ".lock", "a") as lock:  # several Spinup processes: one mounts, the others see it
        fcntl.flock(lock, fcntl.LOCK_EX)
        if read_only:
            point.mkdir(exist_ok=True, mode=0o700)
        ok = _guard(source, point, read_only)
    if not ok and str(source) not in _warned:
        _warned.add(str(source))
        log.warning(
            "%s is mounted into machines without nosuid,nodev (mounting needs root and mount(8) on the host)", source
        )
    return ok


def guard_in_place(directory: Path, views: Path) -> bool:
    """Make the read-write host ``directory`` a ``nosuid,nodev`` mount point, so binds of it and of
    anything below it keep those flags; False (and a warning, once) where the host cannot mount."""
    return _locked_guard(directory, directory, False, views)


def read_only_bind(source: Path, target: str, views: Path) -> str:
    """A Docker ``Binds`` entry mounting host directory ``source`` read-only at ``target``, ``nosuid,nodev``.

    The view is a read-only mount of its own under ``views`` (the host keeps writing to ``source``),
    given to Docker read-write: the kernel keeps it read-only. A plain ``:ro`` bind where the host
    cannot mount.
    """
    point = views / source.name
    if _locked_guard(source, point, True, views):
        return f"{point}:{target}"
    return f"{source}:{target}:ro"


def release_below(root: Path) -> int:
    """Detach (lazily) the mounts made here under ``root``, for a state directory about to be deleted;
    returns how many. Machines that still run keep their own copies of them."""
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as mountinfo:
        points = [_unescape(line.split(" ", 6)[4]) for line in mountinfo]
    released = 0
    for point in reversed(points):  # the last mounted first
        if point.startswith(f"{root}/"):
            subprocess.run(["umount", "-l", point], capture_output=True, check=False, timeout=_MOUNT_TIMEOUT)
            released += 1
    return released
