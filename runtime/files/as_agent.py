"""A non-root agent's file reads and writes, done from the host as the agent's user on one descriptor.

The archive API acts as root, so checking access first and then doing the I/O through it leaves
a window: a job of the agent that swaps a checked directory for a symlink (to ``/root``, ``/etc``)
would let the root-side I/O reach what the agent's user cannot. Here there is no separate check.
A worker thread of this process takes the agent's uid and gid as its filesystem credentials
(``setfsuid``/``setfsgid``/``setgroups`` as raw syscalls: they change only the calling thread,
and a non-zero fsuid drops the thread's file capabilities), then opens the path with ``openat2``
from a descriptor of the machine's root (``/proc/<pid>/root``) with ``RESOLVE_IN_ROOT``: the
kernel resolves every component as the machine sees it (its symlinks work, none leads out of
its root), checks each step as the agent's user, and returns the very file it checked. All I/O
then goes through that descriptor, still as the agent's user.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import errno
import fnmatch
import os
import platform
import posixpath
import stat as statmod
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, TypeVar

from spinup.snapshot.faults import FaultHook, no_faults

from ..errors import InvalidInput, IsADirectory, NotADirectory, PathNotFound, PermissionDenied, SpinupError
from .results import FileInfo, FileType

T = TypeVar("T")

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.syscall.restype = ctypes.c_long
# (setgroups, setfsuid, setfsgid) per architecture; openat2 has one number everywhere.
_SYSCALLS = {"x86_64": (116, 122, 123), "aarch64": (159, 151, 152)}
_SYS_OPENAT2 = 437
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08
_RESOLVE_IN_ROOT = 0x10
_CHUNK = 1024 * 1024
# Crash-test point (SPINUP_CRASH_AT): a replacing write's new content is written, not yet renamed in.
FILE_REPLACING = "file-replacing"
_COMMON = os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK  # a FIFO in a file's place never blocks

# The threads that take an agent's credentials do nothing else.
_workers = ThreadPoolExecutor(max_workers=4, thread_name_prefix="spinup-as-agent")


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def as_agent_supported() -> bool:
    """Whether this host can act as an agent's user (Linux on a known architecture, Spinup as root)."""
    return platform.machine() in _SYSCALLS and os.geteuid() == 0


def _call(number: int, *args: object) -> int:
    return int(_libc.syscall(ctypes.c_long(number), *args))


@contextlib.contextmanager
def _acting_as(uid: int, gid: int) -> Iterator[None]:
    """This thread's filesystem credentials are ``uid``/``gid`` (no other groups) inside the block."""
    setgroups, setfsuid, setfsgid = _SYSCALLS[platform.machine()]
    before = os.getgroups()
    own = (ctypes.c_uint * 1)(gid)
    if _call(setgroups, ctypes.c_size_t(1), own) != 0:
        raise SpinupError(f"Cannot act as the agent's user: setgroups failed ({os.strerror(ctypes.get_errno())}).")
    try:
        _call(setfsgid, ctypes.c_uint(gid))
        _call(setfsuid, ctypes.c_uint(uid))
        current = _call(setfsuid, ctypes.c_uint(0xFFFFFFFF)), _call(setfsgid, ctypes.c_uint(0xFFFFFFFF))
        if current != (uid, gid):
            raise SpinupError(f"Cannot act as the agent's user: the thread's credentials are {current}.")
        yield
    finally:
        _call(setfsuid, ctypes.c_uint(os.geteuid()))
        _call(setfsgid, ctypes.c_uint(os.getegid()))
        old = (ctypes.c_uint * max(len(before), 1))(*before)
        if _call(setgroups, ctypes.c_size_t(len(before)), old) != 0:
            raise SpinupError("Cannot restore this thread's groups after acting as the agent's user.")


def _openat2(root: int, path: str, flags: int, mode: int = 0, resolve: int = 0) -> int:
    """Open the machine path ``path`` below the machine's ``root`` descriptor, resolved as the machine sees it
    (or as ``resolve`` says)."""
    extra = os.O_CLOEXEC if flags & os.O_PATH else _COMMON  # openat2 refuses other flags beside O_PATH
    how = _OpenHow(flags | extra, mode, resolve or _RESOLVE_IN_ROOT | _RESOLVE_NO_MAGICLINKS)
    rel = os.fsencode(path.lstrip("/") or ".")
    fd = _call(_SYS_OPENAT2, ctypes.c_int(root), ctypes.c_char_p(rel), ctypes.byref(how), ctypes.sizeof(how))
    if fd < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), path)
    return fd


@contextlib.contextmanager
def _machine_root(pid: int, machine_id: str) -> Iterator[int]:
    """A descriptor of the root of the machine whose init is host pid ``pid`` (checked to be that machine)."""
    try:
        proc = os.open(f"/proc/{pid}", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise SpinupError(f"The machine stopped while its files were used ({exc.strerror}); try again.") from exc
    try:
        root = os.open("root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=proc)
        try:
            # The descriptor stays on that process: were the pid reused since, this read fails or names another.
            cgroup_fd = os.open("cgroup", os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc)
            try:
                cgroup = os.read(cgroup_fd, 65536)
            finally:
                os.close(cgroup_fd)
            if machine_id.encode() not in cgroup:
                raise OSError(errno.ESRCH, "another process holds the machine's pid")
        except BaseException:
            os.close(root)
            raise
    except OSError as exc:
        raise SpinupError(f"The machine stopped while its files were used ({exc.strerror}); try again.") from exc
    finally:
        os.close(proc)
    try:
        yield root
    finally:
        os.close(root)


def _error(exc: OSError, path: str, action: str, user_name: str) -> SpinupError:
    """The error an ``OSError`` of an open or a write of ``path`` means."""
    code = exc.errno
    if code in (errno.EACCES, errno.EPERM):
        return PermissionDenied(path, action, user_name)
    if code == errno.ENOENT:
        return PathNotFound(path)
    if code == errno.EISDIR:
        return IsADirectory(path)
    if code == errno.ENOTDIR:
        return NotADirectory(posixpath.dirname(path))
    if code == errno.ELOOP:
        return InvalidInput(f"Too many levels of symbolic links at {path}.")
    if code == errno.ENXIO:
        return InvalidInput(f"{path} is not a regular file; it cannot be {action} as content.")
    return SpinupError(f"Cannot {action} {path}: {exc.strerror}.")


def _regular(fd: int, path: str, action: str) -> os.stat_result:
    st = os.fstat(fd)
    if statmod.S_ISDIR(st.st_mode):
        raise IsADirectory(path)
    if not statmod.S_ISREG(st.st_mode):
        raise InvalidInput(f"{path} is not a regular file; it cannot be {action} as content.")
    return st


def _make_parents(root: int, directory: str) -> None:
    """Create ``directory`` and its missing ancestors (0755), each in its parent as the machine resolves it."""
    parts = [part for part in directory.split("/") if part]
    for i in range(len(parts)):
        try:
            os.close(_openat2(root, "/".join(parts[: i + 1]), os.O_PATH | os.O_DIRECTORY))
            continue
        except FileNotFoundError:
            pass
        parent = _openat2(root, "/".join(parts[:i]), os.O_PATH | os.O_DIRECTORY)
        try:
            try:
                os.mkdir(parts[i], 0o755, dir_fd=parent)
            except FileExistsError:
                continue
            os.chmod(parts[i], 0o755, dir_fd=parent)  # whatever this process's umask
        finally:
            os.close(parent)


def _where(fd: int, fallback: str) -> str:
    """The machine path the kernel names for ``fd`` (symlinks followed), or ``fallback``."""
    try:
        named = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return fallback
    return named if named.startswith("/") and not named.endswith(" (deleted)") else fallback


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    written = 0
    while written < len(view):
        written += os.write(fd, view[written : written + _CHUNK])


def _names(directory: int, name: str, st: os.stat_result) -> bool:
    """Whether ``name`` in ``directory`` is the file ``st`` (not a symlink, not another file)."""
    try:
        found = os.stat(name, dir_fd=directory, follow_symlinks=False)
    except OSError:
        return False
    return (found.st_dev, found.st_ino) == (st.st_dev, st.st_ino)


def _unnamed_file(directory: int, mode: int) -> tuple[int, str | None]:
    """A new file in ``directory`` for the agent's user: unnamed (``O_TMPFILE``, so nothing is left if the
    process dies) where the filesystem allows it, else under a hidden name; (descriptor, that name or None)."""
    try:
        return os.open(".", os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, mode, dir_fd=directory), None
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            raise
    name = f".spinup-write-{os.urandom(6).hex()}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    return os.open(name, flags, mode, dir_fd=directory), name


def _info(path: str, st: os.stat_result) -> FileInfo:
    return FileInfo(
        path=path,
        type="directory" if statmod.S_ISDIR(st.st_mode) else "file",
        size=st.st_size,
        mode=f"{statmod.S_IMODE(st.st_mode):04o}",
        mtime=datetime.fromtimestamp(int(st.st_mtime), UTC).isoformat(),
    )


@dataclass(frozen=True)
class AgentFiles:
    """Reads and writes of one machine's files as the agent's user (uid, gid), from the host."""

    pid: int
    machine_id: str
    owner: tuple[int, int]
    user_name: str
    fault: FaultHook = no_faults  # crash-safety tests only (SPINUP_CRASH_AT)

    def read(self, path: str, consume: Callable[[IO[bytes], int], T]) -> T:
        """Open the regular file ``path`` as the agent's user and return ``consume(file, size)``."""
        with _machine_root(self.pid, self.machine_id) as root, _acting_as(*self.owner):
            try:
                fd = _openat2(root, path, os.O_RDONLY)
            except OSError as exc:
                raise _error(exc, path, "read", self.user_name) from exc
            try:
                size = _regular(fd, path, "read").st_size
            except BaseException:
                os.close(fd)
                raise
            with os.fdopen(fd, "rb", buffering=_CHUNK) as fh:
                return consume(fh, size)

    def write(self, path: str, data: bytes, perm: int | None, create_parents: bool) -> FileInfo:
        """Create or replace the file ``path`` as the agent's user (a symlink is written through); its info.

        ``perm`` None keeps an existing file's mode and gives a new one 0644. An existing file of the
        agent's own with one link is replaced whole (the content goes to an unnamed file in its
        directory, renamed over it): a reader, or a Spinup process killed halfway, sees the old
        content or the new, never a mix. Any other file is written in place.
        """
        with _machine_root(self.pid, self.machine_id) as root, _acting_as(*self.owner):
            try:
                if create_parents:
                    _make_parents(root, posixpath.dirname(path))
                try:
                    fd, created = _openat2(root, path, os.O_WRONLY), False
                except FileNotFoundError:
                    try:
                        fd, created = _openat2(root, path, os.O_WRONLY | os.O_CREAT, 0o600), True
                    except FileNotFoundError as exc:  # a directory on the way is missing
                        raise PathNotFound(posixpath.dirname(path)) from exc
            except OSError as exc:
                raise _error(exc, path, "write to", self.user_name) from exc
            try:
                st = _regular(fd, path, "written")
                want = perm if perm is not None else (0o644 if created else statmod.S_IMODE(st.st_mode))
                where = _where(fd, "")
                if not created and where and st.st_nlink == 1 and (st.st_uid, st.st_gid) == self.owner:
                    replaced = self._replace(root, where, st, data, want)
                    if replaced is not None:
                        return replaced
                try:
                    if statmod.S_IMODE(st.st_mode) != want:
                        os.fchmod(fd, want)  # as the agent: only its own files
                    os.ftruncate(fd, 0)
                    _write_all(fd, data)
                except OSError as exc:
                    raise _error(exc, path, "write to", self.user_name) from exc
                return _info(_where(fd, path), os.fstat(fd))
            finally:
                os.close(fd)

    def _replace(self, root: int, path: str, current: os.stat_result, data: bytes, mode: int) -> FileInfo | None:
        """Put ``data`` in a new file of ``path``'s directory and rename it over ``path``; None when the
        directory takes no new file from the agent (then the caller writes in place)."""
        directory, name = posixpath.split(path)
        try:
            parent = _openat2(root, directory, os.O_PATH | os.O_DIRECTORY)
        except OSError:
            return None
        try:
            if not _names(parent, name, current):
                return None  # the kernel's name for the file is not its place in the machine (a mount)
            try:
                fd, temp = _unnamed_file(parent, mode)
            except OSError as exc:
                if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                    return None
                raise _error(exc, path, "write to", self.user_name) from exc
            try:
                try:
                    os.fchmod(fd, mode)  # whatever this process's umask
                    _write_all(fd, data)
                    self.fault(FILE_REPLACING)
                    if temp is None:
                        temp = f".{name[:200]}.spinup-{os.urandom(4).hex()}"
                        os.link(f"/proc/self/fd/{fd}", temp, dst_dir_fd=parent, follow_symlinks=True)
                    os.rename(temp, name, src_dir_fd=parent, dst_dir_fd=parent)
                    temp = None
                except OSError as exc:
                    raise _error(exc, path, "write to", self.user_name) from exc
                return _info(path, os.fstat(fd))
            finally:
                os.close(fd)
                if temp is not None:
                    with contextlib.suppress(OSError):
                        os.unlink(temp, dir_fd=parent)
        finally:
            os.close(parent)

    def stat(self, path: str) -> FileInfo:
        """The entry ``path`` as the agent's user looks it up (a symlink as itself, with the target it names)."""
        with _machine_root(self.pid, self.machine_id) as root, _acting_as(*self.owner):
            try:
                fd = _openat2(root, path, os.O_PATH | os.O_NOFOLLOW)
            except OSError as exc:
                raise _error(exc, path, "look up", self.user_name) from exc
            try:
                st = os.fstat(fd)
                link = os.readlink("", dir_fd=fd) if statmod.S_ISLNK(st.st_mode) else None  # the link itself
            finally:
                os.close(fd)
        return FileInfo(
            path=path,
            type=_kind(st.st_mode),
            size=st.st_size,
            mode=f"{statmod.S_IMODE(st.st_mode):04o}",
            mtime=datetime.fromtimestamp(int(st.st_mtime), UTC).isoformat(),
            link_target=link,
        )

    def mkdir(self, path: str, perm: int | None) -> FileInfo:
        """Create the directory ``path`` and missing parents (0755) as the agent's user; an existing one is fine."""
        parent_dir, name = posixpath.split(path)
        with _machine_root(self.pid, self.machine_id) as root, _acting_as(*self.owner):
            try:
                created = False
                if name:
                    _make_parents(root, parent_dir)
                    parent = _openat2(root, parent_dir, os.O_PATH | os.O_DIRECTORY)
                    try:
                        os.mkdir(name, 0o700, dir_fd=parent)  # opened up below, once it is known to be ours
                        created = True
                    except FileExistsError:
                        pass
                    finally:
                        os.close(parent)
                fd = _openat2(root, path, os.O_PATH | os.O_DIRECTORY)
            except OSError as exc:
                if exc.errno == errno.ENOTDIR or (exc.errno == errno.ENOENT and name and not created):
                    raise NotADirectory(path) from exc  # a file, or a link to nothing, holds the name
                raise _error(exc, path, "write to", self.user_name) from exc
            try:
                if created:
                    try:
                        os.chmod(f"/proc/self/fd/{fd}", 0o755 if perm is None else perm)
                    except OSError as exc:
                        raise _error(exc, path, "write to", self.user_name) from exc
                return _info(path, os.fstat(fd))
            finally:
                os.close(fd)

    def entries(
        self,
        path: str,
        recursive: bool,
        pattern: str | None,
        max_entries: int,
        max_bytes: int,
        too_big: Callable[[str], Exception],
    ) -> tuple[list[FileInfo], bool]:
        """The entries under the directory ``path`` as the agent's user lists them, sorted by path, and
        whether ``max_entries`` cut the list. Subdirectories it cannot open are listed, not walked.

        The walk is bounded as the archive API's stream would be: past ``max_bytes`` of what that tar
        would hold (a 512-byte header and the contents of each entry), ``too_big(path)`` is raised.
        """
        with _machine_root(self.pid, self.machine_id) as root, _acting_as(*self.owner):
            try:
                top = _openat2(root, path, os.O_RDONLY | os.O_DIRECTORY)
            except OSError as exc:
                if exc.errno == errno.ENOTDIR:
                    raise NotADirectory(path) from exc
                raise _error(exc, path, "list", self.user_name) from exc
            try:
                return _walk(top, path, recursive, pattern, max_entries, max_bytes, too_big)
            finally:
                os.close(top)


def _listing(fd: int) -> list[tuple[str, os.stat_result, str | None]]:
    """The directory open at ``fd``: each name (sorted), its lstat, and a symlink's target."""
    found = []
    with os.scandir(fd) as it:
        for entry in it:
            st = entry.stat(follow_symlinks=False)
            link = os.readlink(entry.name, dir_fd=fd) if statmod.S_ISLNK(st.st_mode) else None
            found.append((entry.name, st, link))
    found.sort(key=lambda item: item[0])
    return found


def _kind(mode: int) -> FileType:
    if statmod.S_ISDIR(mode):
        return "directory"
    if statmod.S_ISLNK(mode):
        return "symlink"
    return "file" if statmod.S_ISREG(mode) else "other"


def _walk(
    top: int,
    path: str,
    recursive: bool,
    pattern: str | None,
    max_entries: int,
    max_bytes: int,
    too_big: Callable[[str], Exception],
) -> tuple[list[FileInfo], bool]:
    """Depth first, in name order (as Docker's tar of the subtree), one open directory at a time."""
    entries: list[FileInfo] = []
    streamed = 512
    stack = [iter(_listing(top))]
    prefixes = [""]
    while stack:
        item = next(stack[-1], None)
        if item is None:
            stack.pop()
            prefixes.pop()
            continue
        name, st, link = item
        rel = prefixes[-1] + name
        kind = _kind(st.st_mode)
        size = st.st_size if kind == "file" else 0
        streamed += 512 + size + (-size % 512)
        if streamed > max_bytes:
            raise too_big(path)
        target = rel if pattern and "/" in pattern else name
        if not pattern or fnmatch.fnmatchcase(target, pattern):
            if len(entries) >= max_entries:
                entries.sort(key=lambda entry: entry.path)
                return entries, True
            entries.append(
                FileInfo(
                    path=posixpath.join(path, rel),
                    type=kind,
                    size=size,
                    mode=f"{statmod.S_IMODE(st.st_mode):04o}",
                    mtime=datetime.fromtimestamp(int(st.st_mtime), UTC).isoformat(),
                    link_target=link,
                )
            )
        if recursive and kind == "directory":
            try:
                # Below the listed directory, never through a symlink put in a directory's place.
                fd = _openat2(top, rel, os.O_RDONLY | os.O_DIRECTORY, resolve=_RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS)
            except OSError:
                continue  # its user cannot open it (or it is gone): listed, not walked
            try:
                listing = _listing(fd)
            except OSError:
                continue
            finally:
                os.close(fd)
            stack.append(iter(listing))
            prefixes.append(rel + "/")
    entries.sort(key=lambda entry: entry.path)
    return entries, False


async def off_thread(call: Callable[[], T]) -> T:
    """Run ``call`` on a thread kept for acting as agents."""
    return await asyncio.get_running_loop().run_in_executor(_workers, call)
