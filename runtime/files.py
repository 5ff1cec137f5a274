"""Files in a machine, through the Docker archive API (nothing needed inside the image).

Move and delete have no archive-API form; they run the read-only toolbox (a static busybox
mounted into every machine), so they too work in images without shell tools.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import builtins
import fnmatch
import posixpath
import stat as statmod
import tarfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import IO, Any, Literal, TypeVar

from .config import TOOLBOX_MOUNT
from .docker import DockerBackend, PathStat
from .errors import (
    DirectoryNotEmpty,
    DockerFailure,
    InvalidInput,
    IsADirectory,
    NotADirectory,
    NotFound,
    PathNotFound,
    PermissionDenied,
    SpinupError,
)
from .exec import run_command
from .tarstream import with_tar_stream

FileType = Literal["file", "directory", "symlink", "other"]
Encoding = Literal["auto", "text", "base64"]
_CHUNK = 1024 * 1024
_OFF_LOOP_BYTES = 1024 * 1024
T = TypeVar("T")
_MAX_SYMLINK_HOPS = 16


@dataclass(frozen=True)
class FileInfo:
    """One entry of a machine's filesystem."""

    path: str
    type: FileType
    size: int
    mode: str  # octal permission bits, e.g. "0644"
    mtime: str  # ISO 8601, UTC
    link_target: str | None = None


@dataclass(frozen=True)
class FileContent:
    """What a read returned."""

    path: str
    content: str
    encoding: Literal["text", "base64"]
    size: int  # size of the whole file in bytes
    offset: int
    returned: int  # bytes (byte ranges) or lines (line ranges) returned
    unit: Literal["bytes", "lines"]
    eof: bool  # the read reached the end of the file


def normalize_path(path: str) -> str:
    """Validate an absolute machine path and normalize it (``/a/./b/../c`` -> ``/a/c``)."""
    if not isinstance(path, str) or not path.startswith("/"):
        raise InvalidInput(f"Paths must be absolute inside the machine (start with '/'), got {path!r}.")
    if "\0" in path:
        raise InvalidInput("Paths cannot contain NUL bytes.")
    return posixpath.normpath(path).replace("//", "/")


def _type_of_tar(member: tarfile.TarInfo) -> FileType:
    if member.isdir():
        return "directory"
    if member.issym():
        return "symlink"
    if member.isfile() or member.islnk():
        return "file"
    return "other"


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def _docker_time(value: str) -> str:
    """Docker's RFC 3339 time (nanoseconds, 'Z') as ISO 8601 like the rest of our results."""
    head = value.rstrip("Z").partition(".")[0]
    try:
        return datetime.fromisoformat(head).replace(tzinfo=UTC).isoformat()
    except ValueError:
        return value


def _info_from_stat(path: str, st: PathStat) -> FileInfo:
    if st.is_dir:
        kind: FileType = "directory"
    elif st.is_symlink:
        kind = "symlink"
    elif st.mode & ((1 << 26) | (1 << 25) | (1 << 24) | (1 << 21)):
        kind = "other"
    else:
        kind = "file"
    return FileInfo(
        path=path,
        type=kind,
        size=st.size,
        mode=f"{st.permissions:04o}",
        mtime=_docker_time(st.mtime),
        link_target=st.link_target or None,
    )


# Exit 0 when the user may do the action to $2 (run as that user by the toolbox's sh). For a path
# that does not exist yet, "write" asks whether its nearest existing ancestor takes new entries.
_ACCESS_SCRIPT = r"""
case "$1" in
  read) test -r "$2" ;;
  list) test -r "$2" && test -x "$2" ;;
  write)
    # (busybox resolves a dangling link's relative target from the cwd: start in the link's directory)
    cd "$(/.spinup/busybox dirname "$2")" 2>/dev/null && p=$(/.spinup/busybox readlink -f "$2") || p="$2"
    while [ ! -e "$p" ]; do p=$(/.spinup/busybox dirname "$p"); done
    if [ -d "$p" ]; then test -w "$p" && test -x "$p"; else test -w "$p"; fi ;;
esac
"""
_ACCESS_WORDS = {"read": "read", "list": "list", "write": "write to"}


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


class Files:
    """File operations on one machine, acting as the agent's user.

    New files and directories belong to ``owner`` (uid, gid). When ``check_access`` is set
    (a non-root agent) every operation first asks the machine whether ``user`` may do it, so
    the archive API, which acts as root, never lets the agent past its own permissions.
    """

    def __init__(
        self,
        docker: DockerBackend,
        machine_id: str,
        *,
        user: str = "0:0",
        owner: tuple[int, int] = (0, 0),
        check_access: bool = False,
        user_name: str = "root",
        redact: Callable[[bytes], bytes] | None = None,
        write_guard: Callable[[], Awaitable[None]] | None = None,
        on_written: Callable[[], None] | None = None,
        memo: AccessMemo | None = None,
    ) -> None:
        self.docker = docker
        self.machine_id = machine_id
        self.user = user
        self.owner = owner
        self.check_access = check_access
        self.user_name = user_name
        self._write_guard = write_guard
        self._memo = memo
        self._redact = redact
        self._on_written = on_written

    def _check_soon(self, path: str, action: Literal["read", "list", "write"]) -> asyncio.Task[None] | None:
        """Start the access check beside the operation's own calls (the shell's tests follow symlinks)."""
        return asyncio.create_task(self._require(path, action)) if self.check_access else None

    @staticmethod
    async def _passed(check: asyncio.Task[None] | None) -> None:
        if check is not None:
            await check

    @staticmethod
    def _drop(check: asyncio.Task[None] | None) -> None:
        """Cancel a check the operation no longer needs (it failed for another reason first)."""
        if check is None:
            return
        if not check.done():
            check.cancel()
        elif not check.cancelled():
            check.exception()  # retrieved: the operation's own error is the one reported

    async def _require(self, path: str, action: Literal["read", "list", "write"]) -> None:
        """Raise :class:`PermissionDenied` unless the agent's user may ``action`` ``path``."""
        if not self.check_access:
            return
        result = await run_command(
            self.docker,
            self.machine_id,
            [TOOLBOX_MOUNT, "sh", "-c", _ACCESS_SCRIPT, "access", action, path],
            cwd="/",
            user=self.user,
            timeout=60,
            output_cap=4096,
        )
        if result.exit_code != 0:
            if "could not start" in result.stderr:
                raise SpinupError(
                    f"Cannot check access to {path}: this machine has no Spinup toolbox at {TOOLBOX_MOUNT}."
                )
            raise PermissionDenied(path, _ACCESS_WORDS[action], self.user_name)

    async def stat(self, path: str) -> FileInfo:
        """Stat a path (a symlink is reported as itself, with the target it names, as listings show it)."""
        path = normalize_path(path)
        info = _info_from_stat(path, await self._stat(path))
        if info.type == "symlink":
            # Docker's stat gives the fully resolved target; a link's own text is in its tar entry.
            info = replace(info, link_target=await self._link_text(path) or info.link_target)
        return info

    async def _link_text(self, path: str) -> str | None:
        def linkname(tar: tarfile.TarFile) -> str | None:
            member = tar.next()
            return member.linkname if member is not None and member.issym() else None

        async with self.docker.get_archive(self.machine_id, path) as (_, content):
            return await with_tar_stream(content, linkname)

    async def _stat(self, path: str) -> PathStat:
        try:
            return await self.docker.path_stat(self.machine_id, path)
        except NotFound as exc:
            raise PathNotFound(path) from exc
        except DockerFailure as exc:
            # Docker answers 500 with no detail when a path goes through a file (ENOTDIR).
            parent = posixpath.dirname(path)
            if exc.status != 500 or parent == path:
                raise
            if not (await self._stat(parent)).is_dir:
                raise NotADirectory(parent) from exc
            raise

    async def _resolve(self, path: str) -> tuple[str, PathStat]:
        """Follow symlinks to the final path and its stat."""
        for _ in range(_MAX_SYMLINK_HOPS):
            st = await self._stat(path)
            if not st.is_symlink:
                return path, st
            path = normalize_path(posixpath.join(posixpath.dirname(path), st.link_target))
        raise InvalidInput(f"Too many levels of symbolic links at {path}.")

    async def exists(self, path: str) -> bool:
        """Whether the path exists (symlinks count as existing)."""
        try:
            await self._stat(normalize_path(path))
        except PathNotFound:
            return False
        return True

    async def read(
        self,
        path: str,
        *,
        offset: int = 0,
        limit: int | None = None,
        unit: Literal["bytes", "lines"] = "lines",
        encoding: Encoding = "auto",
    ) -> FileContent:
        """Read a file, or a range of it in lines or bytes.

        ``auto`` returns UTF-8 text when the bytes are valid UTF-8 and base64 otherwise.
        """
        if offset < 0 or (limit is not None and limit < 0):
            raise InvalidInput("offset and limit must be >= 0.")
        if encoding == "base64" and unit == "lines":
            unit = "bytes"
        path = normalize_path(path)
        real, st = await self._resolve(path)
        if st.is_dir:
            raise IsADirectory(path)
        # Where the agent is known to reach the file's directory, the file's own bits decide (no exec).
        quick = self.check_access and self._memo is not None and self._memo.known(self.machine_id, real)
        check = None if quick else self._check_soon(real, "read")
        try:
            data, returned, eof, size, owner = await self._read_range(path, real, offset, limit, unit)
            if quick and not self._bits_allow(owner, 4):
                await self._require(real, "read")  # perhaps a group the quick check does not know
            await self._passed(check)
        finally:
            self._drop(check)
        if self.check_access and self._memo is not None:
            self._memo.learn(self.machine_id, real)
        if self._redact is not None:
            data = self._redact(data)
        text, used = await _off_loop(_encode, data, encoding, size=len(data))
        return FileContent(
            path=path,
            content=text,
            encoding=used,
            size=size,
            offset=offset,
            returned=returned,
            unit=unit,
            eof=eof,
        )

    async def _read_range(
        self, path: str, real: str, offset: int, limit: int | None, unit: Literal["bytes", "lines"]
    ) -> tuple[bytes, int, bool, int, tuple[int, int, int]]:
        """The bytes (or lines) asked for, how many, whether the end was reached, the file's size, and its
        owner, group and mode."""
        owner: list[tuple[int, int, int]] = []

        def extract(tar: tarfile.TarFile) -> tuple[bytes, int, bool, int]:
            member = tar.next()
            if member is None or not member.isfile():
                raise InvalidInput(f"{path} is not a regular file; it cannot be read as content.")
            owner.append((member.uid, member.gid, member.mode))
            fh = tar.extractfile(member)
            assert fh is not None
            if unit == "bytes":
                _skip(fh, offset)
                data = fh.read() if limit is None else fh.read(limit)
                return data, len(data), offset + len(data) >= member.size, member.size
            lines: list[bytes] = []
            for index, line in enumerate(fh):
                if index < offset:
                    continue
                if limit is not None and len(lines) >= limit:
                    return b"".join(lines), len(lines), False, member.size
                lines.append(line)
            return b"".join(lines), len(lines), True, member.size

        async with self.docker.get_archive(self.machine_id, real) as (_, content):
            data, returned, eof, size = await with_tar_stream(content, extract)
        return data, returned, eof, size, owner[0]

    async def _may_write(self, target: str, *, exists: bool, parent_exists: bool) -> None:
        """Check a write of ``target``: from permission bits below a known directory, else in the machine."""
        if self._memo is not None and self._memo.known(self.machine_id, target) and (exists or parent_exists):
            decider = target if exists else posixpath.dirname(target)
            if self._bits_allow(await self._owner_of(decider), 2 if exists else 3):
                return
        await self._require(target, "write")
        if self._memo is not None:
            self._memo.learn(self.machine_id, target)

    async def _owner_of(self, path: str) -> tuple[int, int, int]:
        """Owner, group and mode of ``path``, from its archive's first header (the rest is not read)."""

        def first(tar: tarfile.TarFile) -> tuple[int, int, int]:
            member = tar.next()
            if member is None:
                raise PathNotFound(path)
            return member.uid, member.gid, member.mode

        async with self.docker.get_archive(self.machine_id, path) as (_, content):
            return await with_tar_stream(content, first)

    def _bits_allow(self, owner: tuple[int, int, int], want: int) -> bool:
        """Whether the permission bits grant ``want`` (4 read, 2 write, 1 search) to the agent's uid or gid."""
        uid, gid, mode = owner
        if uid == self.owner[0]:
            bits = mode >> 6
        elif gid == self.owner[1]:
            bits = mode >> 3
        else:
            bits = mode
        return bits & want == want

    async def write(
        self,
        path: str,
        content: str,
        *,
        encoding: Literal["text", "base64"] = "text",
        mode: str | int | None = None,
        create_parents: bool = True,
    ) -> FileInfo:
        """Create or replace a file. Missing parent directories are created (0755) unless told not to.

        A symlink is written through (like reads, and like ``>`` in a shell): the link stays, its
        target gets the content, and the returned info is the target's.
        """
        path = normalize_path(path)
        if path == "/":
            raise IsADirectory(path)
        perm = _parse_mode(mode)
        # With a memo the check waits for the resolved target: a known directory may spare it.
        check = self._check_soon(path, "write") if self._memo is None else None
        try:
            target = await self._write(path, content, encoding, perm, create_parents, check)
        finally:
            self._drop(check)
        return await self.stat(target)

    async def _write(
        self,
        path: str,
        content: str,
        encoding: Literal["text", "base64"],
        perm: int | None,
        create_parents: bool,
        check: asyncio.Task[None] | None,
    ) -> str:
        """Write the file once the access check passed; returns the path written (symlinks followed)."""
        data = await _off_loop(_decode, content, encoding, size=len(content))
        try:
            target, current = await self._resolve(path)
        except PathNotFound as exc:
            # A new file, or a link to a missing file: create it where the link points.
            target, current = exc.path, None
        if current is not None and current.is_dir:
            raise IsADirectory(path)
        if perm is None:
            perm = current.permissions if current is not None else 0o644
        parent = posixpath.dirname(target)
        missing: builtins.list[str] = []
        try:
            parent_stat = await self._stat(parent)
        except PathNotFound:
            if not create_parents:
                raise
            missing = await self._missing_ancestors(parent)
        else:
            if parent_stat.is_symlink:
                parent_stat = (await self._resolve(parent))[1]
            if not parent_stat.is_dir:
                raise NotADirectory(parent)
        if check is not None:
            await self._passed(check)
        elif self.check_access:
            await self._may_write(target, exists=current is not None, parent_exists=not missing)
        member = self._member(target, tarfile.REGTYPE, perm)
        member.size = len(data)
        await self._put([*(self._member(d, tarfile.DIRTYPE, 0o755) for d in missing), member], data)
        return target

    async def mkdir(self, path: str, *, mode: str | int | None = None) -> FileInfo:
        """Create a directory and any missing parents; an existing directory is fine."""
        path = normalize_path(path)
        try:
            current = await self._stat(path)
        except PathNotFound:
            current = None
        if current is not None:
            if current.is_symlink:
                try:
                    current = (await self._resolve(path))[1]
                except PathNotFound as exc:
                    raise NotADirectory(path) from exc
            if current.is_dir:
                return _info_from_stat(path, current)
            raise NotADirectory(path)
        perm = _parse_mode(mode)
        await self._require(path, "write")
        if self._memo is not None:
            self._memo.forget(self.machine_id)  # a new directory's mode may close what lies below it
        missing = await self._missing_ancestors(posixpath.dirname(path))
        members = [self._member(d, tarfile.DIRTYPE, 0o755) for d in missing]
        await self._put([*members, self._member(path, tarfile.DIRTYPE, 0o755 if perm is None else perm)])
        return await self.stat(path)

    def _member(self, path: str, kind: bytes, mode: int) -> tarfile.TarInfo:
        """A tar entry for ``path`` owned by the agent's user."""
        member = tarfile.TarInfo(path.lstrip("/"))
        member.type = kind
        member.mode = mode
        member.mtime = int(time.time())
        member.uid, member.gid = self.owner
        return member

    async def _missing_ancestors(self, directory: str) -> builtins.list[str]:
        """``directory`` and its ancestors that do not exist yet, outermost first.

        They go into the tar explicitly, owned by the agent: Docker would make them root's.
        """
        missing: builtins.list[str] = []
        while directory != "/":
            try:
                st = await self._stat(directory)
            except PathNotFound:
                missing.append(directory)
                directory = posixpath.dirname(directory)
                continue
            if st.is_symlink:
                st = (await self._resolve(directory))[1]
            if not st.is_dir:
                raise NotADirectory(directory)
            break
        return missing[::-1]

    async def _put(self, members: builtins.list[tarfile.TarInfo], payload: bytes = b"") -> None:
        """Extract entries at '/' (the last may carry ``payload``): streamed from memory, never copied whole."""

        async def tar_stream() -> AsyncIterator[bytes]:
            for member in members:
                yield member.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="surrogateescape")
            view = memoryview(payload)
            for start in range(0, len(view), _CHUNK):
                yield bytes(view[start : start + _CHUNK])
            yield b"\0" * (-len(payload) % tarfile.BLOCKSIZE) + b"\0" * (2 * tarfile.BLOCKSIZE)

        if self._write_guard is not None:
            await self._write_guard()
        try:
            await self.docker.put_archive(self.machine_id, "/", tar_stream())
        finally:
            if self._on_written is not None:
                self._on_written()

    async def list(
        self, path: str, *, recursive: bool = False, pattern: str | None = None, max_entries: int = 1000
    ) -> tuple[builtins.list[FileInfo], bool]:
        """Entries under a directory (not the directory itself), sorted by path.

        ``pattern`` is a glob matched against the entry's name, or against its path relative to
        ``path`` when it contains '/'. Returns the entries and whether ``max_entries`` cut the list.
        """
        if max_entries < 1:
            raise InvalidInput("max_entries must be >= 1.")
        path = normalize_path(path)
        check = self._check_soon(path, "list")
        try:
            entries, cut = await self._collect(path, recursive, pattern, max_entries)
            await self._passed(check)
        finally:
            self._drop(check)
        return entries, cut

    async def _collect(
        self, path: str, recursive: bool, pattern: str | None, max_entries: int
    ) -> tuple[builtins.list[FileInfo], bool]:
        real, st = await self._resolve(path)
        if not st.is_dir:
            raise NotADirectory(path)

        def collect(tar: tarfile.TarFile) -> tuple[list[FileInfo], bool]:
            entries: list[FileInfo] = []
            sizes: dict[str, int] = {}  # Docker sends a file's second hard link with size 0
            root: str | None = None
            for member in tar:
                if member.isfile():
                    sizes[member.name] = member.size
                name = member.name.rstrip("/")
                if root is None:
                    root = name  # the first member is the directory itself
                    continue
                rel = name[len(root) + 1 :] if name.startswith(root + "/") else name
                if not rel or (not recursive and "/" in rel):
                    continue
                target = rel if pattern and "/" in pattern else posixpath.basename(rel)
                if pattern and not fnmatch.fnmatchcase(target, pattern):
                    continue
                if len(entries) >= max_entries:
                    return entries, True
                entries.append(
                    FileInfo(
                        path=posixpath.join(path, rel),
                        type=_type_of_tar(member),
                        size=sizes.get(member.linkname, 0) if member.islnk() else member.size,
                        mode=f"{statmod.S_IMODE(member.mode):04o}",
                        mtime=_iso(member.mtime),
                        link_target=(member.linkname or None) if member.issym() else None,
                    )
                )
            return entries, False

        async with self.docker.get_archive(self.machine_id, real) as (_, content):
            entries, cut = await with_tar_stream(content, collect)
        entries.sort(key=lambda entry: entry.path)
        return entries, cut

    async def move(self, source: str, destination: str, *, overwrite: bool = False) -> FileInfo:
        """Move or rename a file or directory."""
        source, destination = normalize_path(source), normalize_path(destination)
        if source == "/":
            raise InvalidInput("Cannot move '/'.")
        await self._stat(source)
        if await self.exists(destination):
            if not overwrite:
                raise InvalidInput(
                    f"{destination} already exists. Pass overwrite=true to replace it, or choose another path."
                )
            replaced = await self._stat(destination)
            if replaced.is_dir:
                raise IsADirectory(destination)
            if replaced.is_symlink:
                # mv would move into the directory a link points to; the link itself is what goes.
                await self._toolbox(["rm", "-f", "--", destination], f"replace {destination}")
        parent = posixpath.dirname(destination)
        if not await self.exists(parent):
            await self.mkdir(parent)
        await self._toolbox(["mv", "-f", "--", source, destination], f"move {source} to {destination}")
        return await self.stat(destination)

    async def delete(self, path: str, *, recursive: bool = False) -> FileInfo:
        """Delete a file, symlink or empty directory; ``recursive`` deletes a directory tree."""
        path = normalize_path(path)
        if path == "/":
            raise InvalidInput("Refusing to delete '/'.")
        info = _info_from_stat(path, await self._stat(path))
        if info.type == "directory":
            if recursive:
                await self._toolbox(["rm", "-rf", "--", path], f"delete {path}")
            else:
                try:
                    await self._toolbox(["rmdir", "--", path], f"delete {path}")
                except SpinupError as exc:
                    if "not empty" in str(exc).lower():
                        raise DirectoryNotEmpty(path) from exc
                    raise
        else:
            await self._toolbox(["rm", "-f", "--", path], f"delete {path}")
        return info

    async def _toolbox(self, argv: builtins.list[str], what: str) -> None:
        result = await run_command(
            self.docker, self.machine_id, [TOOLBOX_MOUNT, *argv], cwd="/", user=self.user, timeout=120, output_cap=8192
        )
        if self._on_written is not None:
            self._on_written()
        if self._memo is not None:
            self._memo.forget(self.machine_id)
        if result.exit_code != 0:
            detail = (result.stderr or result.stdout).strip()
            if "could not start" in detail:
                raise SpinupError(
                    f"Cannot {what}: this machine has no Spinup toolbox at {TOOLBOX_MOUNT} "
                    f"(the host needs /bin/busybox from Debian's busybox-static; run spinup doctor)."
                )
            if "permission denied" in detail.lower():
                raise SpinupError(
                    f"Cannot {what}: {detail}. The agent runs as '{self.user_name}'; work under /workspace or "
                    f"/home/agent, or give the agent root (CLI: spinup agent policy NAME --user root)."
                )
            raise SpinupError(f"Cannot {what}: {detail}")


async def _off_loop(fn: Callable[..., T], *args: Any, size: int) -> T:
    """Run a CPU-heavy conversion in a thread when the payload is big, so other sessions keep going."""
    if size > _OFF_LOOP_BYTES:
        return await asyncio.to_thread(fn, *args)
    return fn(*args)


def _skip(fh: IO[bytes], count: int) -> None:
    while count > 0:
        chunk = fh.read(min(count, _CHUNK))
        if not chunk:
            return
        count -= len(chunk)


def _decode(content: str, encoding: str) -> bytes:
    if encoding == "text":
        return content.encode("utf-8", errors="surrogateescape")
    if encoding == "base64":
        try:
            return base64.b64decode(content, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidInput(f"content is not valid base64: {exc}. Encode the bytes with standard base64.") from exc
    raise InvalidInput(f"encoding must be 'text' or 'base64', got {encoding!r}.")


def _encode(data: bytes, encoding: Encoding) -> tuple[str, Literal["text", "base64"]]:
    if encoding == "base64":
        return base64.b64encode(data).decode("ascii"), "base64"
    if encoding == "text":
        return data.decode("utf-8", errors="replace"), "text"
    try:
        return data.decode("utf-8"), "text"
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii"), "base64"


def _parse_mode(mode: str | int | None) -> int | None:
    if mode is None:
        return None
    try:
        value = int(mode, 8) if isinstance(mode, str) else int(mode)
    except ValueError as exc:
        raise InvalidInput(f"mode must be octal like '0644' or '755', got {mode!r}.") from exc
    if not 0 <= value <= 0o7777:
        raise InvalidInput(f"mode must be between 0000 and 7777 (octal), got {mode!r}.")
    return value
