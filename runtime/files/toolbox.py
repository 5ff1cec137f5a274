"""The toolbox: the static busybox mounted read-only in every machine, for what the archive API cannot do.

Its applets run through exec as the agent's user (move, delete, the access check). A failed
applet exits 1 whatever went wrong, so a failure is told apart by the error text busybox
prints at the end of each line (``rm: can't remove '/x': Permission denied``), or by exec's
own note when the toolbox binary could not start at all.
"""

from __future__ import annotations

from typing import Literal

from ..config import TOOLBOX_MOUNT
from ..docker import DockerBackend
from ..errors import DirectoryNotEmpty, SpinupError
from ..exec import ExecResult, run_command

ToolboxFailure = Literal["no toolbox", "permission denied", "not empty", "other"]


async def run_toolbox(
    docker: DockerBackend,
    machine_id: str,
    user: str,
    argv: list[str],
    *,
    timeout: float,
    output_cap: int,
    stdin: bytes | None = None,
) -> ExecResult:
    """Run the toolbox applet ``argv`` in the machine as ``user``, from '/' (fed ``stdin`` when given)."""
    return await run_command(
        docker,
        machine_id,
        [TOOLBOX_MOUNT, *argv],
        cwd="/",
        user=user,
        stdin=stdin,
        timeout=timeout,
        output_cap=output_cap,
    )


def classify_failure(detail: str) -> ToolboxFailure:
    """What a failed toolbox command's output says went wrong.

    ``no toolbox``: exec could not start the binary (exec's "could not start" note);
    ``permission denied`` (EACCES) and ``not empty`` (ENOTEMPTY): the error text busybox puts at
    the end of a line, so a path that merely contains those words does not count.
    """
    if "could not start" in detail:
        return "no toolbox"
    endings = [line.rstrip().lower() for line in detail.splitlines()]
    if any(line.endswith("permission denied") for line in endings):
        return "permission denied"
    if any(line.endswith("directory not empty") for line in endings):
        return "not empty"
    return "other"


def failure_error(what: str, result: ExecResult, user_name: str, *, directory: str | None = None) -> SpinupError:
    """The error for a toolbox command that failed to ``what`` (e.g. "delete /x").

    ``directory`` names the directory an ``rmdir`` was to remove: its "not empty" failure is then
    :class:`DirectoryNotEmpty`.
    """
    detail = (result.stderr or result.stdout).strip()
    failure = classify_failure(detail)
    if failure == "no toolbox":
        return SpinupError(
            f"Cannot {what}: this machine has no Spinup toolbox at {TOOLBOX_MOUNT} "
            f"(the host needs /bin/busybox from Debian's busybox-static; run spinup doctor)."
        )
    if failure == "permission denied":
        return SpinupError(
            f"Cannot {what}: {detail}. The agent runs as '{user_name}'; work under /workspace or "
            f"/home/agent, or give the agent root (CLI: spinup agent policy NAME --user root)."
        )
    if failure == "not empty" and directory is not None:
        return DirectoryNotEmpty(directory)
    return SpinupError(f"Cannot {what}: {detail}")
