"""Access control for a non-root agent's file tools where they go through the archive API (as root).

On a local daemon stat, read, write, mkdir and list act as the agent's user instead (``as_agent``).

The check runs in the machine as the agent's user (the toolbox's ``sh`` with ``test -r/-w/-x``),
usually beside the operation's own calls so it adds no round trip. Below a directory the agent
is known to reach (:class:`AccessMemo`) the permission bits of the file, or of its directory
for a new file, decide without an exec.
"""

from __future__ import annotations

import asyncio
import posixpath
from dataclasses import dataclass
from typing import Literal

from ..config import TOOLBOX_MOUNT
from ..docker import DockerBackend
from ..errors import PermissionDenied, SpinupError
from .archive import MachineArchive
from .toolbox import classify_failure, run_toolbox

Action = Literal["read", "list", "write", "stat"]

# Exit 0 when the user may do the action to $2 (run as that user by the toolbox's sh). For a path
# that does not exist yet, "write" asks whether its nearest existing ancestor takes new entries.
_ACCESS_SCRIPT = r"""
case "$1" in
  read) test -r "$2" ;;
  list) test -r "$2" && test -x "$2" ;;
  stat) cd "$(/.spinup/busybox dirname "$2")" ;;  # every directory on the way searchable, as stat(2) needs
  write)
    # (busybox resolves a dangling link's relative target from the cwd: start in the link's directory)
    cd "$(/.spinup/busybox dirname "$2")" 2>/dev/null && p=$(/.spinup/busybox readlink -f "$2") || p="$2"
    while [ ! -e "$p" ]; do p=$(/.spinup/busybox dirname "$p"); done
    if [ -d "$p" ]; then test -w "$p" && test -x "$p"; else test -w "$p"; fi ;;
esac
"""
_ACCESS_WORDS = {"read": "read", "list": "list", "write": "write to", "stat": "look up"}


class AccessMemo:
    """Directories each machine's agent user was found able to reach (every ancestor searchable).

    A read or write below a known directory is then decided by the permission bits of the file
    (or, for a new file, of its directory), without running the check in the machine. Whatever
    may change a directory's permissions (a command, mkdir, move, delete) makes the machine's
    entries forgotten; a file write changes only the file, whose bits are read every time.
    """

    def __init__(self) -> None:
        self._reachable: dict[str, set[str]] = {}

    def known(self, machine_id: str, path: str) -> bool:
        """Whether the agent is known to reach ``path``'s directory."""
        return posixpath.dirname(path) in self._reachable.get(machine_id, ())

    def learn(self, machine_id: str, path: str) -> None:
        """The agent reached ``path``: its directory and every ancestor are searchable."""
        reachable = self._reachable.setdefault(machine_id, set())
        directory = posixpath.dirname(path)
        while directory not in reachable:
            reachable.add(directory)
            if directory == "/":
                break
            directory = posixpath.dirname(directory)

    def forget(self, machine_id: str) -> None:
        """Permissions in the machine may have changed."""
        self._reachable.pop(machine_id, None)


@dataclass(frozen=True)
class FileAccess:
    """Whom a machine's file operations act as, and whether (and how) their access is checked."""

    user: str = "0:0"  # Docker's user for the toolbox and the access check
    owner: tuple[int, int] = (0, 0)  # uid and gid of new files and directories
    check_access: bool = False  # a non-root agent: every operation is checked first
    user_name: str = "root"  # the user as error messages name it
    memo: AccessMemo | None = None  # directories known reachable, shared across operations


async def passed(check: asyncio.Task[None] | None) -> None:
    """Wait for a check started beside the operation; raises what it raised."""
    if check is not None:
        await check


def drop(check: asyncio.Task[None] | None) -> None:
    """Cancel a check the operation no longer needs (it failed for another reason first)."""
    if check is None:
        return
    if not check.done():
        check.cancel()
    elif not check.cancelled():
        check.exception()  # retrieved: the operation's own error is the one reported


class AccessCheck:
    """Decides whether the agent's user may read, list or write a path in one machine."""

    def __init__(self, docker: DockerBackend, machine_id: str, access: FileAccess, archive: MachineArchive) -> None:
        self.docker = docker
        self.machine_id = machine_id
        self.access = access
        self._archive = archive

    def soon(self, path: str, action: Action) -> asyncio.Task[None] | None:
        """Start the access check beside the operation's own calls (the shell's tests follow symlinks)."""
        return asyncio.create_task(self.require(path, action)) if self.access.check_access else None

    async def require(self, path: str, action: Action) -> None:
        """Raise :class:`PermissionDenied` unless the agent's user may ``action`` ``path``."""
        if not self.access.check_access:
            return
        result = await run_toolbox(
            self.docker,
            self.machine_id,
            self.access.user,
            ["sh", "-c", _ACCESS_SCRIPT, "access", action, path],
            timeout=60,
            output_cap=4096,
        )
        if result.exit_code != 0:
            if classify_failure(result.stderr) == "no toolbox":
                raise SpinupError(
                    f"Cannot check access to {path}: this machine has no Spinup toolbox at {TOOLBOX_MOUNT}."
                )
            raise PermissionDenied(path, _ACCESS_WORDS[action], self.access.user_name)

    def known(self, path: str) -> bool:
        """Whether ``path`` is checked and lies in a directory the agent is known to reach."""
        memo = self.access.memo
        return self.access.check_access and memo is not None and memo.known(self.machine_id, path)

    def learn(self, path: str) -> None:
        """The agent was allowed at ``path``: remember its directories (when access is checked)."""
        if self.access.check_access and self.access.memo is not None:
            self.access.memo.learn(self.machine_id, path)

    def forget(self) -> None:
        """Permissions in the machine may have changed: forget what was known reachable."""
        if self.access.memo is not None:
            self.access.memo.forget(self.machine_id)

    def bits_allow(self, owner: tuple[int, int, int], want: int) -> bool:
        """Whether the permission bits grant ``want`` (4 read, 2 write, 1 search) to the agent's uid or gid."""
        uid, gid, mode = owner
        if uid == self.access.owner[0]:
            bits = mode >> 6
        elif gid == self.access.owner[1]:
            bits = mode >> 3
        else:
            bits = mode
        return bits & want == want

    async def may_write(self, target: str, *, exists: bool, parent_exists: bool) -> None:
        """Check a write of ``target``: from permission bits below a known directory, else in the machine."""
        memo = self.access.memo
        if memo is not None and memo.known(self.machine_id, target) and (exists or parent_exists):
            decider = target if exists else posixpath.dirname(target)
            if self.bits_allow(await self._archive.owner_of(decider), 2 if exists else 3):
                return
        await self.require(target, "write")
        if memo is not None:
            memo.learn(self.machine_id, target)
