"""Build the default base image locally, with no registry: a Debian rootfs from mmdebstrap.

mmdebstrap writes the rootfs as a tar on its stdout; that stream goes straight into Docker's
image import (no temporary file). The import lands under a throwaway tag first and is tagged
``ref`` only once both mmdebstrap and Docker have succeeded, so a failed build never leaves a
half image under ``ref``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import shutil
import signal
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence

from .config import DEFAULT_IMAGE
from .docker import DockerBackend
from .errors import DockerFailure, InvalidInput, SpinupError
from .policy import AGENT_DIRS_LABEL, AGENT_UID, AGENT_USER, WORKSPACE

log = logging.getLogger(__name__)

BASE_PACKAGES = ("python3", "python3-pip", "python3-venv", "git", "ca-certificates", "tar", "nodejs", "npm")
IMAGE_CHANGES = [
    'CMD ["/bin/bash"]',
    "ENV LANG=C.UTF-8",
    f"WORKDIR {WORKSPACE}",
    # The image already has the agent user's home and workspace: machines need no setup put.
    f"LABEL {AGENT_DIRS_LABEL}={AGENT_UID}",
]

_CHUNK = 1 << 20
_STDERR_TAIL = 30
_KILL_GRACE = 10.0
_PACKAGE_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]*(:[a-z0-9-]+)?$")
_SUITE_RE = re.compile(r"^[a-z][a-z0-9-]*$")
_REF_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*(:[0-9]+)?(/[a-z0-9][a-z0-9._-]*)*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?$")


class _BuildFailed(Exception):
    """mmdebstrap exited non-zero; raised inside the upload to abort it."""

    def __init__(self, returncode: int | None) -> None:
        super().__init__(f"mmdebstrap exited with status {returncode}")


def _split_ref(ref: str) -> tuple[str, str]:
    """``repo:tag`` -> (repo, tag); a ref without a tag gets ``latest``."""
    repo, sep, tag = ref.rpartition(":")
    if sep and "/" not in tag:
        return repo, tag
    return ref, "latest"


def _validate(ref: str, suite: str, mirror: str, extra_packages: Sequence[str]) -> None:
    if not _REF_RE.match(ref):
        raise InvalidInput(f"Invalid image reference {ref!r}. Use a lowercase name like {DEFAULT_IMAGE}.")
    if not _SUITE_RE.match(suite):
        raise InvalidInput(f"Invalid Debian suite {suite!r}. Use a suite name like bookworm.")
    if not re.match(r"^(https?|file)://\S+$", mirror):
        raise InvalidInput(f"Invalid mirror {mirror!r}. Use a URL like http://deb.debian.org/debian.")
    bad = [p for p in extra_packages if not _PACKAGE_RE.match(p)]
    if bad:
        raise InvalidInput(f"Invalid Debian package name(s): {', '.join(map(repr, bad))}.")


def mmdebstrap_command(suite: str, mirror: str, packages: Sequence[str]) -> list[str]:
    """The mmdebstrap argv that writes the base rootfs as a tar to stdout."""
    return [
        "mmdebstrap",
        "--variant=minbase",
        "--format=tar",
        f"--include={','.join(packages)}",
        f'--customize-hook=chroot "$1" useradd -m -d /home/{AGENT_USER} -u {AGENT_UID} -s /bin/bash {AGENT_USER}',
        f'--customize-hook=mkdir -p "$1{WORKSPACE}" && chown {AGENT_UID}:{AGENT_UID} "$1{WORKSPACE}"',
        suite,
        "-",
        mirror,
    ]


async def _pump_stderr(stream: asyncio.StreamReader, tail: deque[str], on_line: Callable[[str], None] | None) -> None:
    """Split stderr into lines (``\\n`` or ``\\r``), keep the last ones, pass each to ``on_line``."""
    buffer = b""
    while True:
        chunk = await stream.read(65536)
        if chunk:
            buffer += chunk
            *lines, buffer = re.split(rb"[\r\n]", buffer)
        else:
            lines, buffer = [buffer], b""
        for raw in lines:
            line = raw.decode("utf-8", "replace").rstrip()
            if not line:
                continue
            tail.append(line)
            if on_line is not None:
                try:
                    on_line(line)
                except Exception:  # a broken progress callback must not stall the build
                    log.exception("on_line callback failed; progress output disabled")
                    on_line = None
        if not chunk:
            return


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


async def _drain(stream: asyncio.StreamReader) -> None:
    """Read ``stream`` to EOF, discarding the data."""
    while True:
        try:
            if not await stream.read(_CHUNK):
                return
        except RuntimeError:  # the aborted upload still has a read pending; let it finish
            await asyncio.sleep(0.05)


async def _stop(proc: asyncio.subprocess.Process, stdout: asyncio.StreamReader) -> None:
    """Stop mmdebstrap and its children if still running, and reap it.

    SIGTERM first (mmdebstrap then removes its temporary directory), SIGKILL after a grace period.
    Its stdout is drained meanwhile: a full pipe would keep it (and ``wait()``) from finishing.
    """
    if proc.returncode is None:
        _signal_group(proc.pid, signal.SIGTERM)
    drain = asyncio.create_task(_drain(stdout))
    try:
        try:
            await asyncio.wait_for(proc.wait(), _KILL_GRACE)
        except TimeoutError:
            _signal_group(proc.pid, signal.SIGKILL)
            try:
                await asyncio.wait_for(proc.wait(), _KILL_GRACE)
            except TimeoutError:
                log.warning("mmdebstrap (pid %s) did not exit after SIGKILL", proc.pid)
    finally:
        drain.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await drain


async def _finish(task: asyncio.Task[None]) -> None:
    """Wait briefly for the stderr reader to reach EOF, else cancel it."""
    with contextlib.suppress(TimeoutError, asyncio.CancelledError):
        await asyncio.wait_for(task, _KILL_GRACE)


async def _remove_image(docker: DockerBackend, ref: str) -> None:
    """Remove tag ``ref``, and its image only if no other tag points at it; ignore if absent."""
    try:
        await docker.remove_image(ref, force=False)
    except SpinupError as exc:
        log.warning("could not remove temporary image %s: %s", ref, exc)


async def build_base_image(
    docker: DockerBackend,
    ref: str = DEFAULT_IMAGE,
    *,
    suite: str = "bookworm",
    mirror: str = "http://deb.debian.org/debian",
    extra_packages: Sequence[str] = (),
    on_line: Callable[[str], None] | None = None,
) -> str:
    """Build ``ref`` from a Debian ``suite`` rootfs with mmdebstrap and import it; return the image id.

    Progress (mmdebstrap's stderr, line by line) goes to ``on_line``. Raises :class:`SpinupError`
    when mmdebstrap is not installed, :class:`DockerFailure` (with the end of mmdebstrap's output)
    when the build fails; ``ref`` is only (re)tagged after a complete, successful build.
    """
    _validate(ref, suite, mirror, extra_packages)
    if shutil.which("mmdebstrap") is None:
        raise SpinupError(
            "mmdebstrap is not installed (not found on PATH); it builds the base image from Debian "
            "packages without a registry. Install it with: apt-get install mmdebstrap, then retry "
            "spinup image build."
        )
    packages = list(dict.fromkeys([*BASE_PACKAGES, *extra_packages]))
    argv = mmdebstrap_command(suite, mirror, packages)
    repo, tag = _split_ref(ref)
    staging = f"{repo}:spinup-build-{secrets.token_hex(4)}"

    def say(message: str) -> None:
        if on_line is not None:
            on_line(message)

    say(f"spinup: building {ref} from Debian {suite} ({mirror}) with mmdebstrap")
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            # mmdebstrap sends SIGHUP to its whole process group when writing the tarball fails;
            # its own session keeps that away from us and from the caller's shell.
            start_new_session=True,
        )
    except FileNotFoundError as exc:
        raise SpinupError("mmdebstrap could not be started. Install it with: apt-get install mmdebstrap") from exc
    assert proc.stdout is not None and proc.stderr is not None
    stdout = proc.stdout
    tail: deque[str] = deque(maxlen=_STDERR_TAIL)
    stderr_task = asyncio.create_task(_pump_stderr(proc.stderr, tail, on_line))

    async def rootfs() -> AsyncIterator[bytes]:
        while chunk := await stdout.read(_CHUNK):
            yield chunk
        # Hold back the end of the request body until mmdebstrap's verdict is known: on failure,
        # abort the upload so Docker never completes an import of a partial rootfs.
        if await proc.wait() != 0:
            raise _BuildFailed(proc.returncode)

    def failure(rc: int) -> DockerFailure:
        detail = "\n".join(tail) or "(no output)"
        return DockerFailure(
            f"Building {ref} failed: mmdebstrap exited with status {rc}; {ref} was left unchanged. "
            f"Check that {mirror} is reachable and the package names are right. "
            f"Last lines of its output:\n{detail}"
        )

    try:
        try:
            image_id = await docker.import_image(rootfs(), staging, IMAGE_CHANGES)
        except Exception:
            # mmdebstrap exited by itself (we have not stopped it yet): its error is the real one.
            rc = proc.returncode
            await _stop(proc, stdout)
            if rc:
                await _finish(stderr_task)
                raise failure(rc) from None
            raise
        rc = await proc.wait()
        await _finish(stderr_task)
        if rc != 0:
            raise failure(rc)
        say(f"spinup: tagging {image_id} as {ref}")
        await docker.tag_image(staging, repo, tag)
    finally:
        await _stop(proc, stdout)
        await _finish(stderr_task)
        await _remove_image(docker, staging)
    say(f"spinup: built {ref}")
    return image_id
