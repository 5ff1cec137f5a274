"""A machine's cgroup on this host: where it is, and its kernel files read safely.

Docker gives each machine its own cgroup; the runtime finds it once per machine from one of the
machine's processes (``/proc/<pid>/cgroup``), under cgroup v1 (one hierarchy per controller) or
v2 (one unified tree), and reads the controllers' files directly: a file read, no Docker call.

Reads are bounded, never follow a symlink at the file itself, never wait (``O_NONBLOCK``, regular
files only), and a directory that resolves outside ``/sys/fs/cgroup`` is not used. A cgroup that
vanished (the machine stopped meanwhile) reads as None, never as an error.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
READ_LIMIT = 64 * 1024  # bytes read of one kernel file at most
# cgroup v1 writes "no limit" as the largest page-aligned counter (9223372036854771712 on x86-64).
V1_UNLIMITED = 1 << 62


@dataclass(frozen=True)
class MachineCgroup:
    """The directories of a machine's cgroup per controller (all the same one under cgroup v2)."""

    unified: bool  # cgroup v2
    memory: Path | None
    pids: Path | None
    cpu: Path | None  # v1: the cpuacct hierarchy's directory


def read_text(path: Path | str) -> str | None:
    """The start (at most ``READ_LIMIT`` bytes) of a regular file, or None when it cannot be read now."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        data = os.read(fd, READ_LIMIT)
    except OSError:
        return None
    finally:
        os.close(fd)
    return data.decode("ascii", "replace")


def read_int(path: Path | None) -> int | None:
    """A file holding one number; None when absent, unreadable, or ``max`` (no limit)."""
    if path is None:
        return None
    text = read_text(path)
    if text is None:
        return None
    value = text.strip()
    return int(value) if value.isdigit() else None


def read_key(path: Path | None, key: str) -> int | None:
    """The number after ``key`` in a flat keyed file (``memory.stat``, ``cpu.stat``, ``*.events``)."""
    if path is None:
        return None
    text = read_text(path)
    if text is None:
        return None
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == key and value.strip().isdigit():
            return int(value)
    return None


def _inside_root(directory: Path) -> Path | None:
    """``directory`` when it resolves (symlinks followed) to a place under the cgroup root, else None."""
    root = os.path.realpath(CGROUP_ROOT)
    resolved = os.path.realpath(directory)
    if os.path.commonpath([root, resolved]) != root or not os.path.isdir(resolved):
        return None
    return Path(resolved)


def locate(pid: int, machine_id: str) -> MachineCgroup | None:
    """The cgroup of host process ``pid``, a process of machine ``machine_id``; None when not found."""
    text = read_text(f"/proc/{pid}/cgroup") if pid > 0 else None
    return None if text is None else parse_membership(text, machine_id)


def parse_membership(text: str, machine_id: str) -> MachineCgroup | None:
    """The directories named by a ``/proc/<pid>/cgroup`` text whose paths name ``machine_id``."""
    unified = (CGROUP_ROOT / "cgroup.controllers").exists()  # cgroup v2 only (not the hybrid layout)
    found: dict[str, Path] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3 or machine_id not in parts[2]:
            continue
        _, controllers, path = parts
        relative = path.lstrip("/")
        if controllers == "":
            if unified:  # one tree for every controller
                directory = _inside_root(CGROUP_ROOT / relative)
                if directory is not None:
                    found.update(memory=directory, pids=directory, cpu=directory)
            continue
        names = controllers.split(",")
        wanted = [name for name in names if name in ("memory", "pids", "cpuacct")]
        if not wanted:
            continue
        # A co-mounted hierarchy ("cpu,cpuacct") is a directory of that name, often linked as each name too.
        for mount in (controllers, *names):
            directory = _inside_root(CGROUP_ROOT / mount / relative)
            if directory is not None:
                found.update({("cpu" if name == "cpuacct" else name): directory for name in wanted})
                break
    if not found:
        return None
    return MachineCgroup(unified, found.get("memory"), found.get("pids"), found.get("cpu"))


class Cgroups:
    """Where each machine's cgroup is, found once per machine and kept until it is removed."""

    def __init__(self) -> None:
        self._found: dict[str, MachineCgroup] = {}

    def of(self, machine_id: str, pid: int = 0) -> MachineCgroup | None:
        """The machine's cgroup (looked up through ``pid`` the first time), or None if not found from here."""
        cgroup = self._found.get(machine_id)
        if cgroup is None and pid > 0:
            cgroup = locate(pid, machine_id)
            if cgroup is not None:
                self._found[machine_id] = cgroup
        return cgroup

    def __contains__(self, machine_id: object) -> bool:
        return machine_id in self._found

    def forget(self, machine_id: str) -> None:
        """Drop what is cached for a removed machine."""
        self._found.pop(machine_id, None)


def cpu_usage_ns(cgroup: MachineCgroup) -> int | None:
    """CPU time the machine's processes used since it started, in nanoseconds."""
    if cgroup.cpu is None:
        return None
    if cgroup.unified:
        usec = read_key(cgroup.cpu / "cpu.stat", "usage_usec")
        return None if usec is None else usec * 1000
    return read_int(cgroup.cpu / "cpuacct.usage")


def memory_use(cgroup: MachineCgroup) -> tuple[int | None, int | None]:
    """Memory in use (page cache the kernel can drop at once not counted, as ``docker stats`` shows) and the
    limit (None: none)."""
    if cgroup.memory is None:
        return None, None
    if cgroup.unified:
        usage = read_int(cgroup.memory / "memory.current")
        limit = read_int(cgroup.memory / "memory.max")
        inactive = read_key(cgroup.memory / "memory.stat", "inactive_file")
    else:
        usage = read_int(cgroup.memory / "memory.usage_in_bytes")
        limit = read_int(cgroup.memory / "memory.limit_in_bytes")
        if limit is not None and limit >= V1_UNLIMITED:
            limit = None
        inactive = read_key(cgroup.memory / "memory.stat", "total_inactive_file")
    if usage is not None and inactive is not None and inactive < usage:
        usage -= inactive
    return usage, limit


def pids_use(cgroup: MachineCgroup) -> tuple[int | None, int | None]:
    """Processes and threads now, and the limit (None: none)."""
    if cgroup.pids is None:
        return None, None
    return read_int(cgroup.pids / "pids.current"), read_int(cgroup.pids / "pids.max")
