"""The tar feed: GNU tar archiving layer members as the walk names them.

File contents are archived by GNU tar (fast, exact for modes, owners, times and hard links). The
walk names each member to tar as soon as it is decided, so archiving and compression run while
the walk goes on; tar's output is pumped into a byte sink (``sink.py``) on a thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

from .oci import XATTR_NAMESPACES
from .sink import ByteSink
from .walk import Member

_CHUNK = 1024 * 1024
_NAMES_BATCH = 64 * 1024  # bytes of member names handed to tar at a time
_NAMES_PIPE = 1024 * 1024  # room in tar's name pipe, so the walk rarely waits for tar


# POSIX (pax) format, so extended attributes travel as SCHILY.xattr records (which Docker applies):
# the agent's own (user.*), file capabilities and ACLs (XATTR_NAMESPACES). Never trusted.*
# (overlayfs keeps its bookkeeping there). Times stay whole seconds in the ustar header: a pax
# record per file for sub-second times would add 1 KiB to every entry.
_FORMAT = (
    "--format=posix",
    "--pax-option=delete=atime,delete=ctime,delete=mtime",
    "--xattrs",
    *(f"--xattrs-include={pattern}" for pattern in XATTR_NAMESPACES),
    # Holes are found with SEEK_HOLE and recorded as a map, not read: a machine's 16 TiB sparse file
    # costs a capture its data only (Docker still writes the holes out on load: see the disk quota).
    "--sparse",
)


def _bre_escape(text: str) -> str:
    """``text`` as a literal in a POSIX basic regular expression delimited by '/'."""
    return "".join("\\" + char if char in "\\.[]*^$/" else char for char in text)


class TarFeed:
    """GNU tar archiving layer members as they are named, its output pumped into a sink on a thread.

    Paths are relative to the upper directory and passed verbatim (NUL-separated, so names
    starting with '-' are names). A marker is an empty file made in a scratch directory and named
    by its absolute path; ``--transform`` removes the scratch prefix, so it lands in its place.
    Members read from other layer directories (``sources``, for a squash) are named the same way.
    """

    def __init__(
        self,
        upper: Path,
        out: ByteSink,
        on_bytes: Callable[[int], None] | None = None,
        sources: Sequence[Path] = (),
    ) -> None:
        self._scratch = Path(tempfile.mkdtemp(prefix="spinup-markers-"))
        # A file, not a pipe: tar may warn a lot (a socket, a vanished file) and must never block on it.
        self._errors: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._pump_error: BaseException | None = None
        scratch_prefix = str(self._scratch).lstrip("/") + "/"  # tar drops the leading '/' first
        try:
            self._proc = subprocess.Popen(
                [
                    "tar", "--create", "--file=-", "--numeric-owner", *_FORMAT, "--no-recursion",
                    "--directory", str(upper), f"--transform=s/^{_bre_escape(scratch_prefix)}//SH",
                    # Hard links between members read from a source name it the same way: 'S' only.
                    *(f"--transform=s/^{_bre_escape(str(source).lstrip('/') + '/')}//S" for source in sources),
                    # Every name taken as it is: never an option, never unquoted.
                    "--null", "--verbatim-files-from", "--no-unquote", "--files-from=-",
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._errors,
            )  # fmt: skip
        except BaseException:
            self._errors.close()
            shutil.rmtree(self._scratch, ignore_errors=True)
            raise
        assert self._proc.stdin is not None and self._proc.stdout is not None
        with contextlib.suppress(OSError):  # larger pipes are an optimisation only
            fcntl.fcntl(self._proc.stdin.fileno(), fcntl.F_SETPIPE_SZ, _NAMES_PIPE)
            fcntl.fcntl(self._proc.stdout.fileno(), fcntl.F_SETPIPE_SZ, _NAMES_PIPE)
        self._pump = threading.Thread(target=self._copy_out, args=(out, on_bytes), name="layer-tar", daemon=True)
        self._pump.start()

    def _copy_out(self, out: ByteSink, on_bytes: Callable[[int], None] | None) -> None:
        assert self._proc.stdout is not None
        try:
            while chunk := self._proc.stdout.read(_CHUNK):
                out.write(chunk)
                if on_bytes is not None:
                    on_bytes(out.size)
        except BaseException as exc:  # handed to the walking thread in finish()
            self._pump_error = exc
            self._proc.kill()

    def add(self, member: Member) -> None:
        """Name the next member to tar."""
        if member.marker:
            path = self._scratch / member.name
            path.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
            name = os.fsencode(path)
        elif member.source:
            name = os.fsencode(os.path.join(member.source, member.name))
        else:
            name = os.fsencode(member.name)
        self._pending.append(name + b"\0")
        self._pending_size += len(name) + 1
        if self._pending_size >= _NAMES_BATCH:
            self._flush()

    def _flush(self) -> None:
        assert self._proc.stdin is not None
        if self._pending:
            try:
                self._proc.stdin.write(b"".join(self._pending))
            except BrokenPipeError:
                self.finish()  # raises why tar stopped reading: the sink's error or tar's own
                raise
            self._pending.clear()
            self._pending_size = 0

    def end_names(self) -> None:
        """Tell tar there are no more members."""
        assert self._proc.stdin is not None
        self._flush()
        self._proc.stdin.close()

    def finish(self) -> None:
        """Wait until tar's whole archive has reached the sink; raise if tar failed."""
        self._pump.join()
        self._proc.wait()
        if self._pump_error is not None:
            raise self._pump_error
        self._raise_failure()

    def _raise_failure(self) -> None:
        # Exit 1 means "some files changed while being read": the snapshot is still consistent
        # for every file tar finished; anything else is a failure.
        if self._proc.returncode not in (0, 1, None):
            self._errors.seek(0)
            stderr = self._errors.read().decode(errors="replace").strip()
            raise OSError(f"tar failed with exit code {self._proc.returncode}: {stderr[-2000:]}")

    def close(self) -> None:
        """Stop tar if it still runs and remove the scratch directory (safe to call twice)."""
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        for stream in (self._proc.stdin, self._proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        if self._pump.is_alive():
            self._pump.join()
        self._errors.close()
        shutil.rmtree(self._scratch, ignore_errors=True)

    def __enter__(self) -> TarFeed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
