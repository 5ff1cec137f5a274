"""Capture through the Docker API only, for daemons whose upper directory Spinup cannot read.

Docker's container-changes endpoint lists what the machine added, modified and deleted
relative to its image. Deleted paths become whiteouts; the rest is archived inside the machine
by the toolbox's tar (streamed out over exec, spooled to a temp file, then compressed into the
store like any layer). Paths captured by an earlier snapshot of the same machine that are no
longer changed were deleted, and get whiteouts too.

Compared with the overlay fast path, every snapshot re-archives all the machine's changes
since its image (the stored layer is not incremental), and a replaced directory shows as
per-entry whiteouts rather than an opaque marker, and extended attributes are not carried
(busybox tar cannot read them); restoring gives the same files.
"""

from __future__ import annotations

import asyncio
import posixpath
import tempfile
from typing import IO

from spinup.snapshot.index import Entry, Index
from spinup.snapshot.walk import EXCLUDED, LayerPlan

from .config import TOOLBOX_MOUNT
from .docker import DockerBackend
from .errors import DockerFailure

# Docker's change kinds
MODIFIED, ADDED, DELETED = 0, 1, 2
_END_OF_ARCHIVE = 1024  # busybox tar ends with exactly two zero blocks, no record padding
_ARGS_PER_EXEC = 64 * 1024  # bytes of paths per tar invocation, well under ARG_MAX


async def changed_paths(docker: DockerBackend, machine_id: str) -> Index:
    """The machine's changes as an index: whiteouts for deletions, 'other' for the rest."""
    changes = await docker.container_changes(machine_id)
    entries: dict[str, Entry] = {}
    parents: set[str] = set()
    for change in changes:
        rel = change.path.lstrip("/")
        if not rel:
            continue
        parents.add(posixpath.dirname(rel))
        if rel in EXCLUDED or any(rel.startswith(e + "/") for e in EXCLUDED):
            continue
        entries[rel] = Entry.whiteout() if change.kind == DELETED else Entry("other")
    return Index(entries, frozenset(parents))


def plan_from_changes(previous: Index | None, current: Index) -> LayerPlan:
    """Everything changed is archived; deletions and vanished earlier captures are whited out."""
    out = LayerPlan()
    for path, entry in sorted(current.entries.items()):
        if entry.kind == "whiteout":
            if not _has_listed_ancestor(path, current, "whiteout"):
                out.whiteouts.append(path)
        else:
            out.archive.append(path)
    for path in sorted((previous.entries if previous else {}).keys() - current.entries.keys()):
        if not any(posixpath.dirname(path) == p or path.startswith(p + "/") for p in out.whiteouts):
            out.whiteouts.append(path)
    return out


def _has_listed_ancestor(path: str, index: Index, kind: str) -> bool:
    parent = posixpath.dirname(path)
    while parent:
        entry = index.entries.get(parent)
        if entry is not None and entry.kind == kind:
            return True
        parent = posixpath.dirname(parent)
    return False


async def spool_tar(docker: DockerBackend, machine_id: str, paths: list[str], user: str) -> IO[bytes]:
    """Archive ``paths`` inside the machine with the toolbox tar; returns a rewound temp file."""
    docker = docker.of(machine_id)  # the daemon the machine lives on
    spool = tempfile.TemporaryFile()  # noqa: SIM115 - returned to the caller, who closes it
    try:
        groups: list[list[str]] = [[]]
        size = 0
        for path in paths:
            if size + len(path) > _ARGS_PER_EXEC and groups[-1]:
                groups.append([])
                size = 0
            groups[-1].append(path)
            size += len(path) + 1
        for number, group in enumerate(groups):
            last = number == len(groups) - 1
            await _tar_group(docker, machine_id, group, spool, keep_end=last, user=user)
        spool.seek(0)
        return spool
    except BaseException:
        spool.close()
        raise


async def _tar_group(
    docker: DockerBackend, machine_id: str, group: list[str], out: IO[bytes], keep_end: bool, user: str
) -> None:
    argv = [TOOLBOX_MOUNT, "tar", "-c", "-f", "-", "-C", "/", "--no-recursion", "--numeric-owner", "--", *group]
    # As the policy's user: a non-root machine's root has no capabilities (cannot read the agent's
    # private files), and everything such an agent changed is its own.
    execution = await docker.exec_create(machine_id, argv, env={}, workdir="/", user=user, stdin=False)
    errors = bytearray()
    held = b""
    # tar may pause between members, never for long: a silent stream means a hung daemon.
    async with execution.attach(idle=docker.stream_idle) as stream:
        while (message := await stream.read()) is not None:
            if message.stream == 2:
                errors += message.data
                continue
            # Hold back the last bytes: they are this archive's end marker unless more data follows.
            data = held + message.data
            if len(data) > _END_OF_ARCHIVE:
                await asyncio.to_thread(out.write, data[:-_END_OF_ARCHIVE])
                held = data[-_END_OF_ARCHIVE:]
            else:
                held = data
    state = await docker.exec_inspect(execution.id)
    if state.exit_code not in (0, None):
        raise DockerFailure(
            f"Archiving the machine's changes failed (toolbox tar exit {state.exit_code}): "
            f"{errors.decode(errors='replace').strip()[-1000:]}"
        )
    if keep_end:
        out.write(held)
