"""Run a command in a machine: bounded output, stdin, a timeout that kills the process group."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from .config import TOOLBOX_MOUNT
from .docker import DockerBackend, ExecSession
from .errors import DockerUnavailable, InvalidInput, SpinupError
from .output import BoundedOutput
from .redact import Redactor

log = logging.getLogger(__name__)

ProgressCallback = Callable[[float, int], Awaitable[None]]
EXEC_MARKER = "SPINUP_EXEC_ID"
PROGRESS_INTERVAL = 2.0


@dataclass(frozen=True)
class ExecResult:
    """What a command did. A non-zero exit is data, not an error."""

    exit_code: int | None
    stdout: str
    stderr: str
    stdout_bytes: int
    stderr_bytes: int
    stdout_dropped: int
    stderr_dropped: int
    timed_out: bool
    duration_s: float
    limit: str | None = None  # "memory" or "pids" when that limit hit the command
    id: str = ""  # the exec id under which the runtime keeps the command's record and output
    killed_by: str | None = None  # who killed the command by its exec id, if someone did
    # Connections the egress proxy refused (or could not make) while the command ran: host, port, count, reason.
    network_denied: list[dict[str, Any]] = field(default_factory=list)

    @property
    def truncated(self) -> bool:
        """Some output was dropped (the middle of a stream beyond the cap)."""
        return self.stdout_dropped > 0 or self.stderr_dropped > 0

    @property
    def stdout_truncated(self) -> bool:
        """stdout exceeded the cap: its middle was dropped."""
        return self.stdout_dropped > 0

    @property
    def stderr_truncated(self) -> bool:
        """stderr exceeded the cap: its middle was dropped."""
        return self.stderr_dropped > 0

    @property
    def stdout_dropped_bytes(self) -> int:
        """Bytes of stdout dropped beyond the cap."""
        return self.stdout_dropped

    @property
    def stderr_dropped_bytes(self) -> int:
        """Bytes of stderr dropped beyond the cap."""
        return self.stderr_dropped


def build_argv(command: str | list[str]) -> list[str]:
    """A shell string runs under ``/bin/sh -c``; a list is run as is."""
    if isinstance(command, str):
        if not command.strip():
            raise InvalidInput("The command is empty. Pass a shell string like 'ls -la' or an argv list.")
        return ["/bin/sh", "-c", command]
    if not command or not all(isinstance(part, str) for part in command) or not command[0]:
        raise InvalidInput('The argv list must be non-empty strings, for example ["python3", "-V"].')
    return list(command)


def _validate(cwd: str | None, env: dict[str, str], timeout: float, output_cap: int) -> None:
    if cwd is not None and not cwd.startswith("/"):
        raise InvalidInput(f"cwd must be an absolute path inside the machine, got {cwd!r}.")
    for key in env:
        if not key or "=" in key or "\0" in key:
            raise InvalidInput(f"Invalid environment variable name {key!r}.")
    if not timeout > 0:
        raise InvalidInput(f"timeout must be a positive number of seconds, got {timeout}.")
    if output_cap < 0:
        raise InvalidInput(f"output cap must be >= 0 bytes, got {output_cap}.")


async def run_command(
    docker: DockerBackend,
    machine_id: str,
    command: str | list[str],
    *,
    cwd: str | None = None,
    env: dict[str, str] | None = None,
    stdin: bytes | None = None,
    timeout: float,
    output_cap: int,
    user: str = "",
    on_progress: ProgressCallback | None = None,
    redactor: Redactor | None = None,
    marker: str | None = None,
    on_created: Callable[[str], None] | None = None,
    guard: Callable[[], contextlib.AbstractAsyncContextManager[None]] | None = None,
    on_started: Callable[[], None] | None = None,
) -> ExecResult:
    """Run ``command`` in the machine and collect its result.

    On timeout the command's whole process group (and anything else carrying its exec marker)
    is killed, and the result says ``timed_out``. With a ``redactor``, credential values are
    replaced in both streams as they arrive (also when a value is split across chunks), before
    the output cap applies. ``marker`` (default: a new one) tags every process of the command, so
    :func:`kill_command` can find them; ``on_created`` is told Docker's exec id before it starts.
    ``guard`` (the agent's machine lock) is held while Docker sets the command up and starts it, and
    while a timed-out command is killed: no exec may reach a machine another call froze. ``on_started``
    is called once the command runs.
    """
    docker = docker.of(machine_id)  # the daemon the machine lives on
    env = dict(env or {})
    _validate(cwd, env, timeout, output_cap)
    argv = build_argv(command)
    marker = marker or uuid.uuid4().hex
    env[EXEC_MARKER] = marker
    out, err = BoundedOutput(output_cap), BoundedOutput(output_cap)
    started = time.monotonic()
    guarded = guard or contextlib.nullcontext
    timed_out = False
    ticker: asyncio.Task[None] | None = None
    running = False
    confirming: asyncio.Task[None] | None = None
    try:
        async with contextlib.AsyncExitStack() as attached:
            async with guarded():
                execution = await docker.exec_create(
                    machine_id, argv, env=env, workdir=cwd, user=user, stdin=stdin is not None
                )
                if on_created is not None:
                    on_created(execution.id)
                stream = await attached.enter_async_context(execution.attach())
            running = True
            if on_started is not None:
                # Docker answers the start before its runtime has made the process: told once it exists.
                confirming = asyncio.create_task(_once_started(docker, execution.id, on_started))
            ticker = asyncio.create_task(_tick(on_progress, started, out, err)) if on_progress else None
            try:
                async with asyncio.timeout(timeout):
                    await _pump(stream, stdin, out, err, redactor)
            except TimeoutError:
                timed_out = True
                async with guarded():
                    await kill_command(docker, machine_id, execution.id, marker, user)
        exit_code, pid = (None, 0) if timed_out else await _exit_status(docker, execution.id)
    except (DockerUnavailable, aiohttp.ClientError, ConnectionError) as exc:
        if running and not await _daemon_answers(docker):
            raise DockerUnavailable(
                "it went away while the command ran; the command may not have finished", docker.host
            ) from exc
        raise
    finally:
        for task in (ticker, confirming):
            if task is not None and not task.done():
                task.cancel()
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    stderr_text = err.text()
    if exit_code not in (0, None) and not await _machine_runs(docker, machine_id, exit_code):
        stderr_text += (
            ("\n" if stderr_text else "")
            + "[spinup: the machine stopped while the command ran (a stop, a kill or a Docker daemon restart); "
            "the next call starts it again]"
        )
    if timed_out:
        stderr_text += (
            ("\n" if stderr_text else "")
            + f"[spinup: command timed out after {timeout:g}s and was killed with its process group; "
            f"raise timeout or run it in the background]"
        )
    elif exit_code in (126, 127) and pid == 0 and not err.total:
        # The process never started (no pid): Docker wrote why (missing binary or cwd) to stdout.
        stderr_text, out = f"spinup: the command could not start: {out.text().strip()}", BoundedOutput(output_cap)
    return ExecResult(
        exit_code=exit_code,
        stdout=out.text(),
        stderr=stderr_text,
        stdout_bytes=out.total,
        stderr_bytes=err.total,
        stdout_dropped=out.dropped,
        stderr_dropped=err.dropped,
        timed_out=timed_out,
        duration_s=round(time.monotonic() - started, 4),
    )


async def _pump(
    stream: ExecSession, stdin: bytes | None, out: BoundedOutput, err: BoundedOutput, redactor: Redactor | None
) -> None:
    helpers = (
        [asyncio.create_task(stream.send_stdin(stdin)), asyncio.create_task(stream.drop_unread_stdin_at_eof())]
        if stdin is not None
        else []
    )
    scrub = {1: redactor.stream(), 2: redactor.stream()} if redactor else None
    try:
        while True:
            message = await stream.read()
            if message is None:
                break
            sink = err if message.stream == 2 else out
            sink.write(scrub[2 if message.stream == 2 else 1].feed(message.data) if scrub else message.data)
        if scrub:
            out.write(scrub[1].flush())
            err.write(scrub[2].flush())
    finally:
        for task in helpers:
            if not task.done():
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError, aiohttp.ClientConnectionError):
                await task


async def _tick(on_progress: ProgressCallback, started: float, out: BoundedOutput, err: BoundedOutput) -> None:
    while True:
        await asyncio.sleep(PROGRESS_INTERVAL)
        try:
            await on_progress(time.monotonic() - started, out.total + err.total)
        except Exception:
            log.exception("progress callback failed; no more progress for this command")
            return


# A signalled command's machine is looked at this many times, this far apart, to see whether it stopped.
STOPPED_LOOKS = 8
STOPPED_LOOK_INTERVAL = 0.05


async def _once_started(docker: DockerBackend, exec_id: str, on_started: Callable[[], None]) -> None:
    """Call ``on_started`` once Docker's exec has a process (or has already ended). If Docker cannot say, it is
    not called: the caller lets go when the command ends."""
    delay = 0.002
    while True:
        try:
            state = await docker.exec_inspect(exec_id)
        except SpinupError as exc:
            log.info("could not see whether exec %s started: %s", exec_id[:12], exc)
            return
        if state.pid > 0 or state.exit_code is not None:
            break
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)
    on_started()


async def _daemon_answers(docker: DockerBackend) -> bool:
    """Whether the Docker daemon answers now."""
    try:
        await docker.version()
    except DockerUnavailable:
        return False
    return True


async def _machine_runs(docker: DockerBackend, machine_id: str, exit_code: int) -> bool:
    """Whether the machine still runs after a command ended with ``exit_code``; :class:`DockerUnavailable` if
    the daemon went away meanwhile. A command killed by SIGTERM or SIGKILL may have gone with its machine's
    init a moment before Docker records the machine stopped: that is looked at a few times."""
    looks = STOPPED_LOOKS if exit_code in (128 + signal.SIGTERM, 128 + signal.SIGKILL) else 1
    for look in range(looks):
        try:
            info = await docker.inspect(machine_id)
        except DockerUnavailable as exc:
            raise DockerUnavailable("it went away while the command ran", docker.host) from exc
        if info is None or not info.running:
            return False
        if look + 1 < looks:
            await asyncio.sleep(STOPPED_LOOK_INTERVAL)
    return True


async def _exit_status(docker: DockerBackend, exec_id: str) -> tuple[int | None, int]:
    """The exit code (None if the command still runs) and the pid (0 if it never started)."""
    for _ in range(50):
        state = await docker.exec_inspect(exec_id)
        if not state.running:
            return state.exit_code, state.pid
        await asyncio.sleep(0.02)
    return None, state.pid


async def kill_command(docker: DockerBackend, machine_id: str, exec_id: str, marker: str, user: str) -> None:
    """Kill a command: its process group, then any process still carrying the exec marker (daemons
    that left the group). From the host when the daemon is local and Spinup may read other
    processes (root): nothing has to start in the machine, which one at its pids limit could not.
    Otherwise the marker sweep runs inside the machine from the toolbox."""
    docker = docker.of(machine_id)  # the daemon the machine lives on
    pid = (await docker.exec_inspect(exec_id)).pid
    if pid > 0 and docker.is_local and _belongs_to(pid, machine_id):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        except PermissionError:
            log.warning("not allowed to kill process group %d; sweeping inside the machine", pid)
    if docker.is_local and os.geteuid() == 0:
        await asyncio.to_thread(signal_marked, machine_id, marker, signal.SIGKILL)
        return
    sweep = (
        "for p in /proc/[0-9]*; do "
        f'if {TOOLBOX_MOUNT} tr "\\0" "\\n" < "$p/environ" 2>/dev/null '
        f'| {TOOLBOX_MOUNT} grep -qx "{EXEC_MARKER}={marker}"; '
        f'then {TOOLBOX_MOUNT} kill -9 "${{p#/proc/}}" 2>/dev/null; fi; done; true'
    )
    try:
        sweeper = await docker.exec_create(
            machine_id, [TOOLBOX_MOUNT, "sh", "-c", sweep], env={}, workdir="/", user=user, stdin=False
        )
        async with sweeper.attach() as stream:
            async with asyncio.timeout(10):
                while await stream.read() is not None:
                    pass
    except Exception:
        log.exception("sweep for the timed-out command's processes failed")


def signal_marked(machine_id: str, marker: str, number: int, inner_pid: int | None = None) -> int:
    """Blocking: signal, from the host, every process of the machine carrying ``marker`` (and the one
    whose pid inside the machine is ``inner_pid``). Walks the host's /proc for the machine's processes
    (by cgroup), so it needs nothing from the machine. Returns how many got the signal."""
    needle = f"{EXEC_MARKER}={marker}".encode()
    sent = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            if machine_id not in Path(f"/proc/{pid}/cgroup").read_text():
                continue
            environ = Path(f"/proc/{pid}/environ").read_bytes()[: 1 << 20]
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        inner = next((line.split()[-1] for line in status.splitlines() if line.startswith("NSpid:")), "")
        if needle in environ.split(b"\0") or (inner_pid is not None and inner == str(inner_pid)):
            try:
                os.kill(pid, number)
                sent += 1
            except ProcessLookupError:
                continue
    return sent


def _belongs_to(pid: int, machine_id: str) -> bool:
    """Whether host process ``pid`` runs in the machine (guards against pid reuse)."""
    try:
        with open(f"/proc/{pid}/cgroup") as fh:
            return machine_id in fh.read()
    except OSError:
        return False
