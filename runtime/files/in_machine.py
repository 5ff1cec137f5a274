"""A non-root agent's file I/O on a remote Docker daemon: toolbox applets run inside the machine as its user.

On a local daemon :mod:`.as_agent` opens files from the host as the agent's user. A remote daemon's
machines have no ``/proc/<pid>/root`` here, and the archive API acts as root, so a check made before
it could be raced (a background job swapping a checked directory for a symlink to ``/etc``). Here
the kernel inside the machine checks every step as the agent's user, in the one command that does
the I/O: there is nothing to race. Contents travel base64 in the command's output (bounded), and
every command has a deadline, so a FIFO swapped in cannot hang a call.
"""

from __future__ import annotations

import binascii
import fnmatch
import posixpath
import stat as statmod
from dataclasses import dataclass
from datetime import UTC, datetime

import pybase64

from ..config import TOOLBOX_MOUNT
from ..docker import DockerBackend
from ..errors import (
    InvalidInput,
    IsADirectory,
    LimitReached,
    NotADirectory,
    PathNotFound,
    PermissionDenied,
    SpinupError,
)
from ..exec import ExecResult
from .results import FileInfo, FileType
from .toolbox import classify_failure, failure_error, run_toolbox

TIMEOUT = 120.0  # seconds one file command may take (a FIFO or a hung read ends there)
OUTPUT_SLACK = 64 * 1024
STAT_FORMAT = "%f|%s|%Y|%n"  # raw mode (hex), size, mtime, name: the name last, so '|' in it is fine
NOT_REGULAR = 22  # exit status of a read of something that is not a regular file

_STAT = f'"$0" stat -c \'{STAT_FORMAT}\' -- "$1" || exit 1; if [ -L "$1" ]; then "$0" readlink -- "$1"; fi'
_READ = (
    'if [ -d "$1" ]; then echo "$1: Is a directory" >&2; exit 21; fi; '
    f'if [ -e "$1" ] && [ ! -f "$1" ]; then echo "$1: not a regular file" >&2; exit {NOT_REGULAR}; fi; '
    '"$0" stat -L -c %s -- "$1" || exit 1; '
    'if [ "$2" = lines ]; then "$0" tail -n "+$3" -- "$1"; else "$0" tail -c "+$3" -- "$1"; fi '
    '| "$0" head -c "$4" | "$0" base64'
)
_WRITE = (
    'if [ -d "$1" ]; then echo "$1: Is a directory" >&2; exit 21; fi; '
    f'if [ -e "$1" ] && [ ! -f "$1" ]; then echo "$1: not a regular file" >&2; exit {NOT_REGULAR}; fi; '
    'if [ "$3" = 1 ]; then "$0" mkdir -p -- "$("$0" dirname -- "$1")" || exit 1; fi; '
    'new=0; [ -e "$1" ] || new=1; '
    '"$0" base64 -d > "$1" || exit 1; '
    'if [ -n "$2" ]; then "$0" chmod "$2" -- "$1" || exit 1; elif [ $new = 1 ]; then "$0" chmod 644 -- "$1"; fi; '
    'target=$("$0" readlink -f -- "$1") || target="$1"; '
    f'"$0" stat -c \'{STAT_FORMAT}\' -- "$target"'
)
_MKDIR = (
    'if [ -e "$1" ] && [ ! -d "$1" ]; then echo "$1: Not a directory" >&2; exit 20; fi; '
    'if [ ! -d "$1" ]; then "$0" mkdir -p -- "$1" || exit 1; [ -z "$2" ] || "$0" chmod "$2" -- "$1" || exit 1; fi; '
    f'"$0" stat -c \'{STAT_FORMAT}\' -- "$1"'
)
_LIST = (
    'if [ ! -d "$1" ]; then if [ -e "$1" ]; then echo "$1: Not a directory" >&2; exit 20; fi; '
    '"$0" ls -d -- "$1" >/dev/null || exit 1; fi; '
    '"$0" ls -d -- "$1"/. >/dev/null || exit 1; '
    '"$0" find "$1" -mindepth 1 $2 -print 2>/dev/null | while IFS= read -r p; do '
    f'"$0" stat -c \'{STAT_FORMAT}\' -- "$p" 2>/dev/null || continue; '
    'if [ -L "$p" ]; then printf "L|%s\\n" "$("$0" readlink -- "$p")"; fi; done'
)


def _kind(mode: int) -> FileType:
    if statmod.S_ISREG(mode):
        return "file"
    if statmod.S_ISDIR(mode):
        return "directory"
    if statmod.S_ISLNK(mode):
        return "symlink"
    return "other"


def _parse_stat(line: str, path: str | None = None) -> FileInfo:
    """A FileInfo from one line of :data:`STAT_FORMAT` (``path``: the name to give it, default the line's)."""
    raw_mode, size, mtime, name = line.split("|", 3)
    mode = int(raw_mode, 16)
    return FileInfo(
        path=path or name,
        type=_kind(mode),
        size=int(size),
        mode=f"{statmod.S_IMODE(mode):04o}",
        mtime=datetime.fromtimestamp(int(mtime), UTC).isoformat(),
    )


@dataclass(frozen=True)
class InMachineFiles:
    """File operations of one machine's non-root user, each one command inside the machine as that user."""

    docker: DockerBackend
    machine_id: str
    user: str  # Docker's user ("1000:1000")
    user_name: str

    async def _run(
        self, script: str, args: list[str], *, stdin: bytes | None = None, cap: int = OUTPUT_SLACK
    ) -> ExecResult:
        argv = ["sh", "-c", script, TOOLBOX_MOUNT, *args]  # "$0" is the toolbox: its applets, not the image's
        return await run_toolbox(
            self.docker, self.machine_id, self.user, argv, timeout=TIMEOUT, output_cap=cap, stdin=stdin
        )

    def _failed(self, result: ExecResult, path: str, what: str) -> SpinupError:
        detail = (result.stderr or result.stdout).strip()
        lowered = detail.lower()
        failure = classify_failure(detail)
        if failure == "no toolbox":
            return failure_error(f"{what} {path}", result, self.user_name)
        if result.timed_out:
            return SpinupError(f"Cannot {what} {path}: it did not answer in {TIMEOUT:.0f} s (a FIFO or a device?).")
        if result.exit_code == 21 or lowered.endswith("is a directory"):
            return IsADirectory(path)
        if result.exit_code == 20 or lowered.endswith("not a directory"):
            return NotADirectory(path)
        if result.exit_code == NOT_REGULAR:
            kind = "a FIFO, a device or a socket"
            return InvalidInput(f"{path} is not a regular file ({kind}): Spinup will not {what} it.")
        if failure == "permission denied":
            return PermissionDenied(path, what, self.user_name)
        if "no such file" in lowered or "can't open" in lowered or "doesn't exist" in lowered:
            return PathNotFound(path)
        return SpinupError(f"Cannot {what} {path}: {detail[-500:]}")

    async def stat(self, path: str) -> FileInfo:
        """The entry ``path`` as the agent's user looks it up (a symlink as itself, with the target it names)."""
        result = await self._run(_STAT, [path])
        if result.exit_code != 0:
            raise self._failed(result, path, "look up")
        lines = result.stdout.splitlines()
        info = _parse_stat(lines[0], path)
        if info.type == "symlink" and len(lines) > 1:
            info = FileInfo(info.path, info.type, info.size, info.mode, info.mtime, lines[1])
        return info

    async def read(self, path: str, unit: str, offset: int, most: int) -> tuple[bytes, int, bool]:
        """At most ``most`` bytes of the regular file ``path`` from ``offset`` (bytes, or lines skipped), its size,
        and whether the file ends within them."""
        result = await self._run(_READ, [path, unit, str(offset + 1), str(most + 1)], cap=most * 4 // 3 + OUTPUT_SLACK)
        if result.exit_code != 0:
            raise self._failed(result, path, "read")
        size_line, _, encoded = result.stdout.partition("\n")
        try:
            data = pybase64.b64decode(encoded.replace("\n", ""), validate=True)
        except binascii.Error as exc:
            raise SpinupError(f"Cannot read {path}: the machine's answer was cut short ({exc}).") from exc
        return data[:most], int(size_line), len(data) <= most

    async def write(self, path: str, data: bytes, perm: int | None, create_parents: bool) -> FileInfo:
        """Create or replace the file ``path`` as the agent's user (written in place, through a symlink); the
        info of the file written."""
        mode = f"{perm:o}" if perm is not None else ""
        result = await self._run(_WRITE, [path, mode, "1" if create_parents else "0"], stdin=pybase64.b64encode(data))
        if result.exit_code != 0:
            raise self._failed(result, path, "write to")
        return _parse_stat(result.stdout.splitlines()[-1])  # the file written: a symlink's target

    async def mkdir(self, path: str, perm: int | None) -> FileInfo:
        """Create the directory ``path`` and missing parents as the agent's user; an existing one is fine."""
        result = await self._run(_MKDIR, [path, f"{perm:o}" if perm is not None else ""])
        if result.exit_code != 0:
            raise self._failed(result, path, "write to")
        return _parse_stat(result.stdout.splitlines()[-1], path)

    async def entries(
        self, path: str, recursive: bool, pattern: str | None, max_entries: int, max_bytes: int
    ) -> tuple[list[FileInfo], bool]:
        """The entries under the directory ``path`` as the agent's user lists them, sorted by path, and whether
        ``max_entries`` cut the list (past ``max_bytes`` of listing: :class:`LimitReached`)."""
        result = await self._run(_LIST, [path, "" if recursive else "-maxdepth 1"], cap=max_bytes)
        if result.exit_code != 0:
            raise self._failed(result, path, "list")
        if result.stdout_dropped:
            raise LimitReached(f"Listing {path} returns more than {max_bytes} bytes: list a smaller directory.")
        listed: list[FileInfo] = []
        for line in result.stdout.splitlines():
            if line.startswith("L|") and listed and listed[-1].type == "symlink":
                last = listed[-1]  # the target of the symlink on the line before
                listed[-1] = FileInfo(last.path, last.type, last.size, last.mode, last.mtime, line[2:])
                continue
            try:
                listed.append(_parse_stat(line))
            except ValueError:
                continue  # a name with a line break in it: not listed
        found = [
            info for info in listed if pattern is None or fnmatch.fnmatchcase(self._name(info, path, pattern), pattern)
        ]
        found.sort(key=lambda info: info.path)
        return found[:max_entries], len(found) > max_entries

    @staticmethod
    def _name(info: FileInfo, top: str, pattern: str) -> str:
        """What ``pattern`` is matched against: the path below ``top`` when it has a '/', else the name."""
        return posixpath.relpath(info.path, top) if "/" in pattern else posixpath.basename(info.path)
