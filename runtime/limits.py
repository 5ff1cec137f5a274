"""When a limit bites: the kernel's counters for a machine (OOM kills, refused forks) and its disk use.

The counters come from the machine's cgroup, read from the host when the daemon is local (a file
read, no Docker call). Comparing them before and after a command tells whether the memory or
pids limit hit that command, so the result can say so in words.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass, replace

from spinup.snapshot.beneath import walk_fds

from .cgroups import Cgroups, read_key
from .exec import ExecResult
from .models import Agent, format_size

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LimitCounters:
    """How often the kernel enforced a machine's limits since it started."""

    oom_kills: int
    pids_refused: int


class LimitWatch:
    """Reads machines' limit counters from their cgroups on the host."""

    def __init__(self, cgroups: Cgroups) -> None:
        self._cgroups = cgroups

    def counters(self, machine_id: str, pid: int) -> LimitCounters | None:
        """The machine's counters, or None when its cgroup cannot be read from here."""
        cgroup = self._cgroups.of(machine_id, pid)
        if cgroup is None:
            return None
        memory = pids = None
        if cgroup.memory is not None:
            memory = cgroup.memory / ("memory.events" if cgroup.unified else "memory.oom_control")
        if cgroup.pids is not None:
            pids = cgroup.pids / "pids.events"
        return LimitCounters(read_key(memory, "oom_kill") or 0, read_key(pids, "max") or 0)


def directory_usage(root: str) -> int:
    """Bytes of disk the tree under ``root`` uses (each hard-linked inode once).

    A file counts its allocated blocks or its apparent size, whichever is larger: a sparse file
    costs what it would cost once its holes are written out, as a snapshot restore does (Docker
    writes every hole of a layer as zeros). The machine runs meanwhile: directories are opened
    from their parents' descriptors, never through a symlink (``spinup.snapshot.beneath``), and
    one that moved is left out.
    """
    total = 0
    seen: set[int] = set()

    def visit(rel_dir: str, fd: int) -> list[str]:
        nonlocal total
        prefix = rel_dir + "/" if rel_dir else ""
        subdirs: list[str] = []
        try:
            entries = os.scandir(fd)
        except OSError:
            return subdirs
        with entries:
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
                    if st.st_ino in seen:
                        continue
                    seen.add(st.st_ino)
                allocated = st.st_blocks * 512
                total += max(allocated, st.st_size) if stat.S_ISREG(st.st_mode) else allocated
                if stat.S_ISDIR(st.st_mode):
                    subdirs.append(prefix + entry.name)
        return subdirs

    walk_fds(root, visit, skip_missing=True)
    return total


def note_limits(
    result: ExecResult, agent: Agent, before: LimitCounters | None, after: LimitCounters | None
) -> ExecResult:
    """``result`` with a note in words of which limit hit the command, judging by the kernel's counters."""
    if before is None or after is None:
        return result
    notes: list[str] = []
    limit = None
    if after.oom_kills > before.oom_kills:
        limit = "memory"
        notes.append(
            f"[spinup: the memory limit ({format_size(agent.policy.memory)}) was hit: the kernel killed a process "
            f"of this machine for using too much memory. Use less, or raise it: spinup agent policy "
            f"{agent.name} --memory <size>]"
        )
    if after.pids_refused > before.pids_refused:
        limit = limit or "pids"
        notes.append(
            f"[spinup: the pids limit ({agent.policy.pids} processes and threads) was hit: new processes could not "
            f"be created. Raise it with: spinup agent policy {agent.name} --pids <n>]"
        )
    if not notes:
        return result
    stderr = result.stderr + ("\n" if result.stderr else "") + "\n".join(notes)
    return replace(result, stderr=stderr, limit=limit)
