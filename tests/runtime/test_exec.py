"""Exec against the real daemon: streams, stdin, timeouts that kill the process group, caps."""

from __future__ import annotations

import hashlib

import pytest

from spinup.runtime import Runtime
from spinup.runtime.errors import InvalidInput
from spinup.runtime.output import BoundedOutput

LIST_PROCESSES = "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null; echo; done"


async def test_argv_and_shell_commands_return_exit_code_and_separate_streams(runtime: Runtime, agent: str) -> None:
    shell = await runtime.exec(agent, "echo out; echo err >&2; exit 3")
    assert (shell.exit_code, shell.stdout, shell.stderr, shell.timed_out) == (3, "out\n", "err\n", False)
    argv = await runtime.exec(agent, ["printf", "%s|%s", "a b", "$HOME"])
    assert argv.stdout == "a b|$HOME", "an argv list is not interpreted by a shell"


async def test_cwd_env_and_the_default_working_directory(runtime: Runtime, agent: str) -> None:
    assert (await runtime.exec(agent, "pwd")).stdout == "/workspace\n"
    result = await runtime.exec(agent, "pwd; echo $GREETING", cwd="/tmp", env={"GREETING": "hello there"})
    assert result.stdout == "/tmp\nhello there\n"


async def test_stdin_is_delivered_whole_and_then_closed(runtime: Runtime, agent: str) -> None:
    payload = bytes(range(256)) * 20_000  # 5 MB, every byte value
    result = await runtime.exec(agent, "sha256sum", stdin=payload)
    assert result.stdout.split()[0] == hashlib.sha256(payload).hexdigest()
    assert (await runtime.exec(agent, "wc -l", stdin=b"")).stdout.strip() == "0"


async def test_a_command_that_leaves_its_input_unread_still_returns_at_once(runtime: Runtime, agent: str) -> None:
    payload = b"y" * 5_000_000
    ignored = await runtime.exec(agent, "true", stdin=payload, timeout=30)
    assert (ignored.exit_code, ignored.timed_out) == (0, False)
    partial = await runtime.exec(agent, "head -c 10", stdin=payload, timeout=30)
    assert (partial.exit_code, partial.stdout, partial.timed_out) == (0, "y" * 10, False)


async def test_a_timeout_kills_the_whole_process_group_and_says_so(runtime: Runtime, agent: str) -> None:
    result = await runtime.exec(agent, "sleep 300 & sleep 301 & wait", timeout=1)
    assert result.timed_out and result.exit_code is None
    assert "timed out after 1s" in result.stderr
    survivors = await runtime.exec(agent, LIST_PROCESSES)
    assert "sleep 30" not in survivors.stdout


async def test_a_child_that_left_the_process_group_is_killed_too(runtime: Runtime, agent: str) -> None:
    result = await runtime.exec(agent, "setsid sleep 302 & sleep 303", timeout=1)
    assert result.timed_out
    survivors = await runtime.exec(agent, LIST_PROCESSES)
    assert "sleep 302" not in survivors.stdout and "sleep 303" not in survivors.stdout


async def test_huge_output_is_capped_keeping_head_and_tail(runtime: Runtime, agent: str) -> None:
    result = await runtime.exec(agent, "echo FIRST; head -c 50000000 /dev/zero | tr '\\0' x; echo; echo LAST")
    assert result.stdout_bytes == 50_000_000 + len("FIRST\n") + len("\nLAST\n")
    assert result.stdout_dropped == result.stdout_bytes - 1024 * 1024
    assert result.stdout.startswith("FIRST\n") and result.stdout.endswith("LAST\n")
    assert f"{result.stdout_dropped} bytes dropped" in result.stdout
    small = await runtime.exec(agent, "seq 1000", output_cap=100)
    assert small.stdout_dropped == small.stdout_bytes - 100
    assert (await runtime.exec(agent, "echo still here")).stdout == "still here\n"


async def test_binary_and_invalid_utf8_output_decode_with_replacement(runtime: Runtime, agent: str) -> None:
    result = await runtime.exec(agent, "printf 'ok\\377\\376end'; head -c 4096 /dev/urandom >&2")
    assert result.stdout == "ok\ufffd\ufffdend"
    assert isinstance(result.stderr, str) and result.stderr_bytes == 4096


async def test_a_command_that_cannot_start_says_why(runtime: Runtime, agent: str) -> None:
    missing = await runtime.exec(agent, ["no-such-binary", "--flag"])
    assert missing.exit_code in (126, 127) and "could not start" in missing.stderr
    assert "no-such-binary" in missing.stderr
    bad_cwd = await runtime.exec(agent, "pwd", cwd="/no/such/dir")
    assert bad_cwd.exit_code in (126, 127) and "/no/such/dir" in bad_cwd.stderr
    assert (await runtime.exec(agent, "true")).exit_code == 0


@pytest.mark.parametrize(
    ("command", "options"),
    [
        ("", {}),
        ([], {}),
        ("true", {"cwd": "relative/dir"}),
        ("true", {"env": {"BAD=NAME": "x"}}),
        ("true", {"timeout": 0}),
        ("true", {"output_cap": -1}),
    ],
)
async def test_invalid_requests_are_refused_before_anything_runs(
    runtime: Runtime, agent: str, command: str | list[str], options: dict[str, object]
) -> None:
    with pytest.raises(InvalidInput):
        await runtime.exec(agent, command, **options)  # type: ignore[arg-type]


async def test_progress_is_reported_while_a_command_runs(
    runtime: Runtime, agent: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("spinup.runtime.exec.PROGRESS_INTERVAL", 0.1)
    ticks: list[tuple[float, int]] = []

    async def on_progress(elapsed: float, output_bytes: int) -> None:
        ticks.append((elapsed, output_bytes))

    await runtime.exec(agent, "echo started; sleep 1", on_progress=on_progress)
    assert ticks and ticks[-1][1] == len("started\n")
    assert [t for t, _ in ticks] == sorted(t for t, _ in ticks)


def test_bounded_output_keeps_everything_under_the_cap() -> None:
    out = BoundedOutput(10)
    out.write(b"hello")
    out.write(b"world")
    assert (out.text(), out.total, out.dropped, out.truncated) == ("helloworld", 10, 0, False)


def test_bounded_output_keeps_head_and_tail_and_counts_the_rest() -> None:
    out = BoundedOutput(8)
    for chunk in (b"abcd", b"efgh", b"ijkl", b"mn", b"op"):
        out.write(chunk)
    assert out.total == 16 and out.dropped == 8
    text = out.text()
    assert text.startswith("abcd") and text.endswith("mnop") and "8 bytes dropped" in text


def test_bounded_output_handles_many_small_chunks_and_a_zero_cap() -> None:
    out = BoundedOutput(1000)
    for index in range(100_000):
        out.write(b"%d\n" % (index % 10))
    assert out.total == 200_000 and out.dropped == 199_000
    assert out.text().endswith("7\n8\n9\n")
    nothing = BoundedOutput(0)
    nothing.write(b"data")
    assert nothing.dropped == 4 and "4 bytes dropped" in nothing.text()
