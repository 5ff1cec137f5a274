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
from pathlib import Path

from .exec import ExecResult
from .models import Agent, format_size

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class LimitCounters:
    """How often the kernel enforced a machine's limits since it started."""

    oom_kills: int
    pids_refused: int


@dataclass(frozen=True)
class _CgroupFiles:
    memory: Path | None
    pids: Path | None


def _counter(path: Path | None, key: str) -> int:
    if path is None:
        return 0
    try:
        text = path.read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == key and value.strip().isdigit():
            return int(value)
    return 0


def _cgroup_files(pid: int, machine_id: str) -> _CgroupFiles | None:
    """The memory and pids counter files of the cgroup holding host process ``pid``."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    unified = (CGROUP_ROOT / "cgroup.controllers").exists()  # cgroup v2 only (not the hybrid layout)
    memory = pids = None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if machine_id not in path:
            continue
        relative = path.lstrip("/")
        if controllers == "":
            if unified:  # one tree for every controller
                memory = CGROUP_ROOT / relative / "memory.events"
                pids = CGROUP_ROOT / relative / "pids.events"
        elif "memory" in controllers.split(","):
            memory = CGROUP_ROOT / "memory" / relative / "memory.oom_control"
        elif "pids" in controllers.split(","):
            pids = CGROUP_ROOT / "pids" / relative / "pids.events"
    if memory is None and pids is None:
        return None
    return _CgroupFiles(memory, pids)


class LimitWatch:
    """Reads machines' limit counters from the host, caching where each machine's cgroup is."""

    def __init__(self) -> None:
        self._files: dict[str, _CgroupFiles | None] = {}

    def counters(self, machine_id: str, pid: int) -> LimitCounters | None:
        """The machine's counters, or None when its cgroup cannot be read from here."""
        files = self._files.get(machine_id)
        if files is None and pid > 0:
            files = _cgroup_files(pid, machine_id)
            if files is not None:
                self._files[machine_id] = files
        if files is None:
            return None
        return LimitCounters(_counter(files.memory, "oom_kill"), _counter(files.pids, "max"))

    def forget(self, machine_id: str) -> None:
        """Drop what is cached for a removed machine."""
        self._files.pop(machine_id, None)


def directory_usage(root: str) -> int:
    """Bytes of disk the tree under ``root`` uses (allocated blocks; each hard-linked inode once)."""
    total = 0
    seen: set[int] = set()
    stack = [root]
    while stack:
        current = stack.pop()
        try:
            entries = os.scandir(current)
        except OSError:
            continue
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
                total += st.st_blocks * 512
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
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
