"""File operations on one machine as the agent's user: stat, read, write, mkdir, list, move, delete.

Each is a short sequence over the other modules: normalize and look up the path (``paths``),
check the agent may act (``access``), then read or extract a tar (``archive``) or, for move
and delete, run the toolbox (``toolbox``). On a local daemon a non-root agent's stat, read, write,
mkdir and list skip the check and the archive: they are done from the host as the agent's user,
on one descriptor (``as_agent``).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import functools
import io
import posixpath
import tarfile
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import replace
from typing import Any, Concatenate, Literal, ParamSpec, TypeVar, cast

from ..ceilings import Ceilings
from ..docker import DockerBackend
from ..errors import InvalidInput, IsADirectory, LimitReached, NotADirectory, PathNotFound
from ..models import format_size
from .access import AccessCheck, FileAccess, drop, passed
from .archive import MachineArchive, new_member, read_part
from .as_agent import AgentFiles, off_thread
from .encodings import decode, encode, off_loop, parse_mode
from .in_machine import InMachineFiles
from .paths import MachinePaths, normalize_path
from .results import Encoding, FileContent, FileInfo, info_from_stat
from .toolbox import failure_error, run_toolbox

P = ParamSpec("P")
R = TypeVar("R")


def _guarded(
    method: Callable[Concatenate[Files, P], Coroutine[Any, Any, R]],
) -> Callable[Concatenate[Files, P], Coroutine[Any, Any, R]]:
    """Run a public operation inside the ``guard`` given to :class:`Files` (the agent's machine lock)."""

    @functools.wraps(method)
    async def guarded(self: Files, *args: P.args, **kwargs: P.kwargs) -> R:
        async with self._guard():
            return self._shown(await method(self, *args, **kwargs))

    return guarded


def _redact_names(value: object, redact: Callable[[str], str]) -> object:
    """``value`` (what a file operation returned) with ``redact`` applied to every path and link target."""
    if isinstance(value, FileInfo):
        target = redact(value.link_target) if value.link_target is not None else None
        return replace(value, path=redact(value.path), link_target=target)
    if isinstance(value, FileContent):
        return replace(value, path=redact(value.path))
    if isinstance(value, list):
        return [_redact_names(item, redact) for item in value]
    if isinstance(value, tuple):
        return tuple(_redact_names(item, redact) for item in value)
    return value


class Files:
    """File operations on one machine, acting as the agent's user.

    New files and directories belong to ``access.owner`` (uid, gid). For a non-root agent, stat,
    read, write, mkdir and list act as the agent's user: from the host with ``as_agent`` (a local
    daemon), else as one command inside the machine with ``in_machine`` (a remote daemon). Without
    either, each operation first asks the machine whether ``access.user`` may do it before the
    archive API, which acts as root, does it.
    """

    def __init__(
        self,
        docker: DockerBackend,
        machine_id: str,
        access: FileAccess | None = None,
        *,
        redact: Callable[[bytes], bytes] | None = None,
        write_guard: Callable[[], Awaitable[None]] | None = None,
        on_written: Callable[[], None] | None = None,
        record: Callable[[str, str, dict[str, Any]], None] | None = None,
        ceilings: Ceilings | None = None,
        as_agent: Callable[[], Awaitable[AgentFiles]] | None = None,
        in_machine: InMachineFiles | None = None,
        guard: Callable[[], contextlib.AbstractAsyncContextManager[None]] | None = None,
    ) -> None:
        self.docker = docker
        # Held around each operation: keeps the machine from being frozen, stopped or replaced meanwhile.
        self._guard = guard or contextlib.nullcontext
        self.machine_id = machine_id
        self.access = access or FileAccess()
        self._paths = MachinePaths(docker, machine_id)
        self._archive = MachineArchive(docker, machine_id)
        self._check = AccessCheck(docker, machine_id, self.access, self._archive)
        self._redact = redact
        self._write_guard = write_guard
        self._on_written = on_written
        # Told of each change a caller made: (event kind, detail, data), e.g. ("file-written", ...).
        self._record = record or (lambda kind, detail, data: None)
        self.ceilings = ceilings or Ceilings()
        # A non-root agent on a local daemon: reads and writes as its user from the host (no check, no race).
        self._as_agent = as_agent
        # A non-root agent on a remote daemon: each operation one command inside the machine as its user.
        self._in_machine = in_machine

    def _shown(self, result: R) -> R:
        """``result`` with credential values in its paths and link targets redacted (file names are the agent's)."""
        redact = self._redact
        if redact is None:
            return result

        def redact_text(text: str) -> str:
            return redact(text.encode(errors="surrogateescape")).decode(errors="surrogateescape")

        return cast(R, _redact_names(result, redact_text))

    @_guarded
    async def stat(self, path: str) -> FileInfo:
        """Stat a path (a symlink is reported as itself, with the target it names, as listings show it)."""
        path = normalize_path(path)
        if self._as_agent is not None:
            host = await self._as_agent()
            return await off_thread(lambda: host.stat(path))
        if self._in_machine is not None:
            return await self._in_machine.stat(path)
        check = None if self._check.known(path) else self._check.soon(path, "stat")
        try:
            try:
                info = await self._info(path)
            except BaseException:
                await passed(check)  # where the agent's user cannot look, that is the answer, not what root found
                raise
            await passed(check)
        finally:
            drop(check)
        self._check.learn(path)
        return info

    async def _info(self, path: str) -> FileInfo:
        """Stat a normalized path as the archive API sees it (no access check: callers checked already)."""
        info = info_from_stat(path, await self._paths.stat(path))
        if info.type == "symlink":
            # Docker's stat gives the fully resolved target; a link's own text is in its tar entry.
            info = replace(info, link_target=await self._archive.link_text(path) or info.link_target)
        return info

    @_guarded
    async def exists(self, path: str) -> bool:
        """Whether the path exists (symlinks count as existing); :class:`PermissionDenied` where the agent's
        user cannot look it up."""
        path = normalize_path(path)
        if self._as_agent is not None or self._in_machine is not None:
            try:
                await self.stat(path)
            except PathNotFound:
                return False
            return True
        if not self._check.known(path):
            await self._check.require(path, "stat")
        return await self._paths.exists(path)

    @_guarded
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
        if self._as_agent is not None:
            data, returned, eof, size = await self._read_as_agent(await self._as_agent(), path, offset, limit, unit)
        elif self._in_machine is not None:
            data, returned, eof, size = await self._read_in_machine(self._in_machine, path, offset, limit, unit)
        else:
            data, returned, eof, size = await self._read_as_root(path, offset, limit, unit)
        if self._redact is not None:
            data = self._redact(data)
        text, used = await off_loop(encode, data, encoding, size=len(data))
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

    async def _read_as_agent(
        self, host: AgentFiles, path: str, offset: int, limit: int | None, unit: Literal["bytes", "lines"]
    ) -> tuple[bytes, int, bool, int]:
        """Read through one descriptor the kernel opened as the agent's user."""
        check_size = self.ceilings.check_read

        def consume(fh: Any, size: int) -> tuple[bytes, int, bool, int]:
            return (*read_part(fh, size, offset, limit, unit, check_size), size)

        return await off_thread(lambda: host.read(path, consume))

    async def _read_in_machine(
        self, machine: InMachineFiles, path: str, offset: int, limit: int | None, unit: Literal["bytes", "lines"]
    ) -> tuple[bytes, int, bool, int]:
        """Read by one command inside the machine as the agent's user, at most the read ceiling."""
        most = self.ceilings.read_bytes if limit is None or unit == "lines" else min(limit, self.ceilings.read_bytes)
        raw, size, ends = await machine.read(path, unit, offset, most)
        if unit == "bytes":
            self.ceilings.check_read(
                max(size - offset, 0) if limit is None else min(limit, len(raw)), limit is not None
            )
        data, returned, eof = read_part(io.BytesIO(raw), len(raw), 0, limit, unit, self.ceilings.check_read)
        if not ends and len(data) >= len(raw):  # the lines asked for run past the ceiling
            self.ceilings.check_read(len(raw) + 1, limit is not None)
        return data, returned, eof and ends, size

    async def _read_as_root(
        self, path: str, offset: int, limit: int | None, unit: Literal["bytes", "lines"]
    ) -> tuple[bytes, int, bool, int]:
        """Read through the archive API (as root), checked first when the agent is not root."""
        real, st = await self._paths.resolve(path)
        if st.is_dir:
            raise IsADirectory(path)
        # Where the agent is known to reach the file's directory, the file's own bits decide (no exec).
        quick = self._check.known(real)
        check = None if quick else self._check.soon(real, "read")
        try:
            data, returned, eof, size, owner = await self._archive.read_range(
                path, real, offset, limit, unit, self.ceilings.check_read
            )
            if quick and not self._check.bits_allow(owner, 4):
                await self._check.require(real, "read")  # perhaps a group the quick check does not know
            await passed(check)
        finally:
            drop(check)
        self._check.learn(real)
        return data, returned, eof, size

    @_guarded
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
        perm = parse_mode(mode)
        if self._as_agent is not None:
            host = await self._as_agent()
            return await self._write_as_user(
                lambda data: off_thread(lambda: host.write(path, data, perm, create_parents)), content, encoding
            )
        if self._in_machine is not None:
            machine = self._in_machine
            return await self._write_as_user(
                lambda data: machine.write(path, data, perm, create_parents), content, encoding
            )
        # With a memo the check waits for the resolved target: a known directory may spare it.
        check = self._check.soon(path, "write") if self.access.memo is None else None
        try:
            target = await self._write(path, content, encoding, perm, create_parents, check)
        finally:
            drop(check)
        info = await self._info(target)
        self._record("file-written", f"{target} ({info.size} bytes)", {"path": target, "size": info.size})
        return info

    async def _write_as_user(
        self, write: Callable[[bytes], Awaitable[FileInfo]], content: str, encoding: Literal["text", "base64"]
    ) -> FileInfo:
        """Write as the agent's user (the kernel checks each step): from the host through one descriptor, or
        by one command inside the machine."""
        data = await off_loop(decode, content, encoding, size=len(content))
        if self._write_guard is not None:
            await self._write_guard()
        try:
            info = await write(data)
        finally:
            if self._on_written is not None:
                self._on_written()
        self._record("file-written", f"{info.path} ({info.size} bytes)", {"path": info.path, "size": info.size})
        return info

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
        data = await off_loop(decode, content, encoding, size=len(content))
        try:
            target, current = await self._paths.resolve(path)
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
            parent_stat = await self._paths.stat(parent)
        except PathNotFound:
            if not create_parents:
                raise
            missing = await self._paths.missing_ancestors(parent)
        else:
            if parent_stat.is_symlink:
                parent_stat = (await self._paths.resolve(parent))[1]
            if not parent_stat.is_dir:
                raise NotADirectory(parent)
        if check is not None:
            await passed(check)
        elif self.access.check_access:
            await self._check.may_write(target, exists=current is not None, parent_exists=not missing)
        member = self._member(target, tarfile.REGTYPE, perm)
        member.size = len(data)
        await self._put([*(self._member(d, tarfile.DIRTYPE, 0o755) for d in missing), member], data)
        return target

    @_guarded
    async def mkdir(self, path: str, *, mode: str | int | None = None) -> FileInfo:
        """Create a directory and any missing parents; an existing directory is fine."""
        path = normalize_path(path)
        if self._as_agent is not None or self._in_machine is not None:
            perm, machine = parse_mode(mode), self._in_machine
            if self._write_guard is not None:
                await self._write_guard()
            try:
                if machine is not None:
                    return await machine.mkdir(path, perm)
                assert self._as_agent is not None
                host = await self._as_agent()
                return await off_thread(lambda: host.mkdir(path, perm))
            finally:
                self._check.forget()  # a new directory's mode may close what lies below it
                if self._on_written is not None:
                    self._on_written()
        try:
            current = await self._paths.stat(path)
        except PathNotFound:
            current = None
        if current is not None:
            if current.is_symlink:
                try:
                    current = (await self._paths.resolve(path))[1]
                except PathNotFound as exc:
                    raise NotADirectory(path) from exc
            if current.is_dir:
                return info_from_stat(path, current)
            raise NotADirectory(path)
        perm = parse_mode(mode)
        await self._check.require(path, "write")
        self._check.forget()  # a new directory's mode may close what lies below it
        missing = await self._paths.missing_ancestors(posixpath.dirname(path))
        members = [self._member(d, tarfile.DIRTYPE, 0o755) for d in missing]
        await self._put([*members, self._member(path, tarfile.DIRTYPE, 0o755 if perm is None else perm)])
        return await self._info(path)

    def _member(self, path: str, kind: bytes, mode: int) -> tarfile.TarInfo:
        """A tar entry for ``path`` owned by the agent's user."""
        return new_member(path, kind, mode, self.access.owner)

    async def _put(self, members: builtins.list[tarfile.TarInfo], payload: bytes = b"") -> None:
        """Extract entries at '/' (the last may carry ``payload``), within the quota, reporting the change."""
        if self._write_guard is not None:
            await self._write_guard()
        try:
            await self._archive.put(members, payload)
        finally:
            if self._on_written is not None:
                self._on_written()

    @_guarded
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
        if self._as_agent is not None:
            host, most = await self._as_agent(), self.ceilings.list_bytes
            return await off_thread(lambda: host.entries(path, recursive, pattern, max_entries, most, self._walk_past))
        if self._in_machine is not None:
            return await self._in_machine.entries(path, recursive, pattern, max_entries, self.ceilings.list_bytes)
        check = self._check.soon(path, "list")
        try:
            real, st = await self._paths.resolve(path)
            if not st.is_dir:
                raise NotADirectory(path)
            entries, cut = await self._archive.entries(
                path, real, recursive, pattern, max_entries, self.ceilings.list_bytes, self.ceilings.list_past
            )
            await passed(check)
        finally:
            drop(check)
        return entries, cut

    def _walk_past(self, path: str) -> LimitReached:
        """The error for a listing as the agent whose walk passes the ceiling (entries and their contents)."""
        return LimitReached(
            f"Listing {path} walks more than {format_size(self.ceilings.list_bytes)} of entries and file contents "
            f"(counted as the archive API would send them): this server's ceiling "
            f"({self.ceilings.setting('list_bytes')}). List a smaller directory, or without recursive, or run "
            f"`find {path} -maxdepth 1 -printf '%y %s %p\\n'` with exec."
        )

    @_guarded
    async def move(self, source: str, destination: str, *, overwrite: bool = False) -> FileInfo:
        """Move or rename a file or directory."""
        source, destination = normalize_path(source), normalize_path(destination)
        if source == "/":
            raise InvalidInput("Cannot move '/'.")
        await self._paths.stat(source)
        if await self._paths.exists(destination):
            if not overwrite:
                raise InvalidInput(
                    f"{destination} already exists. Pass overwrite=true to replace it, or choose another path."
                )
            replaced = await self._paths.stat(destination)
            if replaced.is_dir:
                raise IsADirectory(destination)
            if replaced.is_symlink:
                # mv would move into the directory a link points to; the link itself is what goes.
                await self._toolbox(["rm", "-f", "--", destination], f"replace {destination}")
        parent = posixpath.dirname(destination)
        if not await self._paths.exists(parent):
            await self.mkdir(parent)
        await self._toolbox(["mv", "-f", "--", source, destination], f"move {source} to {destination}")
        self._record("file-moved", f"{source} -> {destination}", {"path": source, "destination": destination})
        return await self._info(destination)

    @_guarded
    async def delete(self, path: str, *, recursive: bool = False) -> FileInfo:
        """Delete a file, symlink or empty directory; ``recursive`` deletes a directory tree."""
        path = normalize_path(path)
        if path == "/":
            raise InvalidInput("Refusing to delete '/'.")
        info = info_from_stat(path, await self._paths.stat(path))
        if info.type == "directory":
            if recursive:
                await self._toolbox(["rm", "-rf", "--", path], f"delete {path}")
            else:
                await self._toolbox(["rmdir", "--", path], f"delete {path}", directory=path)
        else:
            await self._toolbox(["rm", "-f", "--", path], f"delete {path}")
        self._record("file-deleted", f"{path} ({info.type})", {"path": path, "type": info.type, "size": info.size})
        return info

    async def _toolbox(self, argv: builtins.list[str], what: str, *, directory: str | None = None) -> None:
        """Run a toolbox applet that changes the machine's files; raise the error its failure means."""
        result = await run_toolbox(self.docker, self.machine_id, self.access.user, argv, timeout=120, output_cap=8192)
        if self._on_written is not None:
            self._on_written()
        self._check.forget()
        if result.exit_code != 0:
            raise failure_error(what, result, self.access.user_name, directory=directory)
