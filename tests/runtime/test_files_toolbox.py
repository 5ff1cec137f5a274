"""What a failed toolbox command means: told apart by busybox's error text, not by the path it names."""

from __future__ import annotations

import asyncio

import pytest

from spinup.runtime import Runtime
from spinup.runtime.errors import DirectoryNotEmpty, SpinupError
from spinup.runtime.exec import ExecResult
from spinup.runtime.files.toolbox import classify_failure, failure_error

LIMIT = 60  # seconds any one test may take against the daemon


def failed(stderr: str, stdout: str = "") -> ExecResult:
    """A toolbox command that exited 1 with this output."""
    return ExecResult(
        exit_code=1,
        stdout=stdout,
        stderr=stderr,
        stdout_bytes=len(stdout),
        stderr_bytes=len(stderr),
        stdout_dropped=0,
        stderr_dropped=0,
        timed_out=False,
        duration_s=0.01,
    )


@pytest.mark.parametrize(
    ("detail", "failure"),
    [
        ("spinup: the command could not start: OCI runtime exec failed: no such file or directory", "no toolbox"),
        ("rm: can't remove '/etc/hostname': Permission denied", "permission denied"),
        ("mv: can't rename '/a': Permission denied\n", "permission denied"),
        ("rmdir: '/workspace/d': Directory not empty", "not empty"),
        ("rm: can't remove '/x/f': Permission denied\nrm: can't remove '/x': Directory not empty", "permission denied"),
        ("rmdir: '/workspace/d': Device or resource busy", "other"),
        ("", "other"),
    ],
)
def test_a_failure_is_classified_by_the_error_text_busybox_prints(detail: str, failure: str) -> None:
    assert classify_failure(detail) == failure


def test_a_path_that_contains_the_words_does_not_decide_the_failure() -> None:
    assert classify_failure("rmdir: '/workspace/permission denied': Directory not empty") == "not empty"
    assert classify_failure("rmdir: '/workspace/not empty/permission denied/x': Read-only file system") == "other"


def test_only_an_rmdir_that_found_its_directory_not_empty_is_directory_not_empty() -> None:
    not_empty = failed("rmdir: '/workspace/d': Directory not empty")
    rmdir = failure_error("delete /workspace/d", not_empty, "agent", directory="/workspace/d")
    assert isinstance(rmdir, DirectoryNotEmpty)
    other = failure_error("delete /workspace/d", not_empty, "agent")
    assert type(other) is SpinupError
    assert str(other) == "Cannot delete /workspace/d: rmdir: '/workspace/d': Directory not empty"


def test_a_permission_failure_names_the_agent_user_and_the_way_out() -> None:
    denied = failed("rm: can't remove '/etc/hostname': Permission denied")
    error = failure_error("delete /etc/hostname", denied, "agent")
    assert type(error) is SpinupError
    assert "Permission denied. The agent runs as 'agent'" in str(error) and "--user root" in str(error)


def test_a_missing_toolbox_says_what_the_host_needs() -> None:
    error = failure_error("move /a to /b", failed("spinup: the command could not start: exec failed"), "root")
    assert "no Spinup toolbox" in str(error) and "busybox-static" in str(error)


def test_stdout_is_the_detail_when_stderr_is_empty() -> None:
    error = failure_error("delete /x", failed("", stdout="rm: can't remove '/x': Permission denied"), "agent")
    assert "Cannot delete /x: rm: can't remove '/x': Permission denied." in str(error)


async def test_the_real_toolbox_prints_the_error_texts_the_classification_reads(runtime: Runtime, agent: str) -> None:
    async with asyncio.timeout(LIMIT):
        await runtime.exec(agent, "mkdir -p /workspace/d && touch /workspace/d/f")
        rmdir = await runtime.exec(agent, ["/.spinup/busybox", "rmdir", "--", "/workspace/d"])
        rm = await runtime.exec(agent, ["/.spinup/busybox", "rm", "-f", "--", "/etc/hostname"])
    assert rmdir.exit_code == 1 and classify_failure(rmdir.stderr) == "not empty"
    assert rm.exit_code == 1 and classify_failure(rm.stderr) == "permission denied"
