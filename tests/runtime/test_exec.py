"""Exec against the real daemon: streams, stdin, timeouts that kill the process group, output caps."""

from __future__ import annotations

import asyncio
import hashlib
import random
import re

import pytest

from spinup.runtime import ExecResult, Runtime
from spinup.runtime.errors import InvalidInput
from spinup.runtime.output import BoundedOutput

# There is no ps in the image: list every process's command line from /proc.
LIST_PROCESSES = "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null; echo; done"
MARKER = re.compile(r"\n\[\.\.\. (\d+) bytes dropped by spinup: output over the (\d+)-byte cap \.\.\.\]\n")
LIMIT = 60  # seconds any one test may take against the daemon


async def test_a_shell_string_runs_under_sh_and_its_exit_code_and_streams_come_back(
    runtime: Runtime, agent: str
) -> None:
    async with asyncio.timeout(LIMIT):
        result = await runtime.exec(agent, "echo out; echo err >&2; exit 3")
    assert isinstance(result, ExecResult)
    assert (result.exit_code, result.stdout, result.stderr, result.timed_out) == (3, "out\n", "err\n", False)
    assert (result.stdout_bytes, result.stderr_bytes, result.truncated) == (4, 4, False)
    assert result.duration_s >= 0


async def test_an_argv_list_is_run_as_is_without_a_shell(runtime: Runtime, agent: str) -> None:
    async with asyncio.timeout(LIMIT):
        result = await runtime.exec(agent, ["printf", "%s|%s", "a b", "$HOME; exit 9"])
        failing = await runtime.exec(agent, ["sh", "-c", "exit 255"])
    assert (result.exit_code, result.stdout) == (0, "a b|$HOME; exit 9")
    assert failing.exit_code == 255


async def test_env_and_cwd_are_honoured_and_the_default_cwd_is_the_workspace(runtime: Runtime, agent: str) -> None:
    async with asyncio.timeout(LIMIT):
        default = await runtime.exec(agent, "pwd")
        chosen = await runtime.exec(agent, ["sh", "-c", 'pwd; echo "$GREETING|$EMPTY|"'], cwd="/tmp",
                                    env={"GREETING": "hello there", "EMPTY": ""})
    assert default.stdout == "/workspace\n"
    assert chosen.stdout == "/tmp\nhello there||\n"


async def test_stdin_is_delivered_whole_and_then_closed(runtime: Runtime, agent: str) -> None:
    payload = bytes(range(256)) * 20_000  # 5 MB holding every byte value
    async with asyncio.timeout(LIMIT):
        echoed = await runtime.exec(agent, "cat", stdin=b"line one\nline two\n")
        counted = await runtime.exec(agent, "wc -c", stdin=payload)
        hashed = await runtime.exec(agent, "sha256sum", stdin=payload)
        empty = await runtime.exec(agent, "wc -c", stdin=b"")
    assert echoed.stdout == "line one\nline two\n", "cat ends, so its stdin was closed"
    assert counted.stdout.strip() == str(len(payload))
    assert hashed.stdout.split()[0] == hashlib.sha256(payload).hexdigest()
    assert empty.stdout.strip() == "0"


async def test_a_command_that_never_reads_its_stdin_returns_as_soon_as_it_exits(
    runtime: Runtime, agent: str
) -> None:
    # Regression: the stream's end was only seen once the unread stdin had been sent, which the
    # daemon never accepted: these calls hung for minutes.
    payload = b"x" * 5_000_000
    async with asyncio.timeout(LIMIT):
        quiet = await runtime.exec(agent, ["true"], stdin=payload)
        partial = await runtime.exec(agent, "head -c 10 >/dev/null; echo read ten; exit 4", stdin=payload)
    assert (quiet.exit_code, quiet.timed_out) == (0, False)
    assert (partial.exit_code, partial.stdout, partial.timed_out) == (4, "read ten\n", False)


async def test_a_timeout_kills_the_whole_process_group_and_says_so(runtime: Runtime, agent: str) -> None:
    async with asyncio.timeout(LIMIT):
        result = await runtime.exec(agent, "echo begun; sleep 300 & sleep 301 & wait", timeout=1)
        survivors = await runtime.exec(agent, LIST_PROCESSES)
    assert result.timed_out and result.exit_code is None
    assert "timed out" in result.stderr
    assert result.stdout == "begun\n", "output produced before the timeout is kept"
    assert survivors.exit_code == 0 and "sleep infinity" in survivors.stdout, "the listing sees processes"
    assert "sleep 300" not in survivors.stdout and "sleep 301" not in survivors.stdout


async def test_a_child_that_left_the_process_group_is_killed_by_the_marker_sweep(
    runtime: Runtime, agent: str
) -> None:
    command = (
        "setsid sh -c 'echo \"escaped $(cut -d\" \" -f5 /proc/$$/stat)\"; exec sleep 302' & "
        'echo "leader $$"; sleep 303'
    )
    async with asyncio.timeout(LIMIT):
        result = await runtime.exec(agent, command, timeout=1)
        survivors = await runtime.exec(agent, LIST_PROCESSES)
    assert result.timed_out and result.exit_code is None
    groups = dict(line.split() for line in result.stdout.splitlines())
    assert groups.keys() == {"leader", "escaped"} and groups["escaped"] != groups["leader"], (
        "the child runs in a process group of its own"
    )
    assert "sleep 302" not in survivors.stdout and "sleep 303" not in survivors.stdout


async def test_fifty_megabytes_of_output_are_capped_keeping_head_and_tail(runtime: Runtime, agent: str) -> None:
    cap = 1024 * 1024
    async with asyncio.timeout(LIMIT):
        result = await runtime.exec(agent, "echo FIRST; head -c 50000000 /dev/zero | tr '\\0' x; echo; echo LAST")
        after = await runtime.exec(agent, "echo still here")
    produced = 50_000_000 + len("FIRST\n") + len("\nLAST\n")
    assert result.exit_code == 0 and result.truncated
    assert (result.stdout_bytes, result.stdout_dropped) == (produced, produced - cap)
    marker = MARKER.search(result.stdout)
    assert marker is not None and (int(marker[1]), int(marker[2])) == (result.stdout_dropped, cap)
    kept = result.stdout.encode()
    assert len(kept) - len(marker[0]) == cap, "exactly the cap is kept besides the marker"
    assert result.stdout.startswith("FIRST\nxxx") and result.stdout.endswith("xxx\nLAST\n")
    assert after.stdout == "still here\n"


async def test_a_small_output_cap_applies_to_each_stream(runtime: Runtime, agent: str) -> None:
    async with asyncio.timeout(LIMIT):
        result = await runtime.exec(agent, "seq 1000; seq 500 >&2", output_cap=100)
    assert result.stdout_dropped == result.stdout_bytes - 100 > 0
    assert result.stderr_dropped == result.stderr_bytes - 100 > 0
    assert result.stdout.startswith("1\n2\n3\n") and result.stdout.endswith("999\n1000\n")
    assert result.stderr.endswith("499\n500\n")
    assert f"{result.stdout_dropped} bytes dropped" in result.stdout


async def test_binary_and_invalid_utf8_output_decode_with_replacement_characters(
    runtime: Runtime, agent: str
) -> None:
    async with asyncio.timeout(LIMIT):
        noise = await runtime.exec(agent, "head -c 4096 /dev/urandom; head -c 4096 /dev/urandom >&2")
        invalid = await runtime.exec(agent, "printf 'ok\\377\\376end'")
    assert noise.exit_code == 0 and isinstance(noise.stdout, str) and isinstance(noise.stderr, str)
    assert (noise.stdout_bytes, noise.stderr_bytes) == (4096, 4096)
    assert invalid.stdout == "ok\ufffd\ufffdend"


async def test_a_command_that_cannot_start_says_so_and_the_next_one_runs(runtime: Runtime, agent: str) -> None:
    async with asyncio.timeout(LIMIT):
        missing = await runtime.exec(agent, ["no-such-binary", "--flag"])
        bad_cwd = await runtime.exec(agent, "pwd", cwd="/no/such/dir")
        after = await runtime.exec(agent, "true")
    assert missing.exit_code in (126, 127) and "could not start" in missing.stderr
    assert "no-such-binary" in missing.stderr and missing.stdout == ""
    assert bad_cwd.exit_code in (126, 127) and "could not start" in bad_cwd.stderr
    assert "/no/such/dir" in bad_cwd.stderr
    assert after.exit_code == 0


async def test_a_command_that_ran_keeps_its_output_even_when_it_looks_like_a_start_failure(
    runtime: Runtime, agent: str
) -> None:
    # Regression: exit 127 plus these words on stdout used to be taken for Docker's start error.
    async with asyncio.timeout(LIMIT):
        result = await runtime.exec(agent, "echo 'cat: x: no such file or directory'; exit 127")
    assert (result.exit_code, result.stdout, result.stderr) == (127, "cat: x: no such file or directory\n", "")


@pytest.mark.parametrize(
    ("command", "options"),
    [
        ("", {}),
        ("   ", {}),
        ([], {}),
        ([""], {}),
        ("true", {"cwd": "relative/dir"}),
        ("true", {"env": {"BAD=NAME": "x"}}),
        ("true", {"env": {"": "x"}}),
        ("true", {"timeout": 0}),
        ("true", {"timeout": -5}),
        ("true", {"output_cap": -1}),
    ],
)
async def test_invalid_input_is_refused_before_anything_runs(
    runtime: Runtime, agent: str, command: str | list[str], options: dict[str, object]
) -> None:
    async with asyncio.timeout(LIMIT):
        with pytest.raises(InvalidInput):
            await runtime.exec(agent, command, **options)  # type: ignore[arg-type]


async def test_progress_is_reported_while_a_long_command_runs(
    runtime: Runtime, agent: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("spinup.runtime.exec.PROGRESS_INTERVAL", 0.2)
    ticks: list[tuple[float, int]] = []

    async def on_progress(elapsed: float, output_bytes: int) -> None:
        ticks.append((elapsed, output_bytes))

    async with asyncio.timeout(LIMIT):
        result = await runtime.exec(agent, "echo started; sleep 1.5; echo done", on_progress=on_progress)
    assert result.stdout == "started\ndone\n"
    assert ticks, "a command running past PROGRESS_INTERVAL reports progress"
    elapsed = [t for t, _ in ticks]
    assert elapsed == sorted(elapsed) and all(t > 0 for t in elapsed)
    assert all(0 <= size <= len("started\ndone\n") for _, size in ticks)


async def test_quick_commands_report_no_progress(runtime: Runtime, agent: str) -> None:
    ticks: list[float] = []

    async def on_progress(elapsed: float, output_bytes: int) -> None:
        ticks.append(elapsed)

    async with asyncio.timeout(LIMIT):
        await runtime.exec(agent, "true", on_progress=on_progress)
    assert ticks == []


# BoundedOutput: pure logic


def _reference(data: bytes, cap: int) -> tuple[bytes, bytes]:
    """What a cap keeps: everything under it, else its first half (rounded up) and last half."""
    if len(data) <= cap:
        return data, b""
    tail = cap // 2
    return data[: cap - tail], data[len(data) - tail :] if tail else b""


def test_bounded_output_keeps_everything_under_the_cap() -> None:
    out = BoundedOutput(10)
    out.write(b"hello")
    out.write(b"world")
    assert (out.text(), out.total, out.dropped, out.truncated) == ("helloworld", 10, 0, False)


def test_bounded_output_over_the_cap_keeps_head_and_tail_and_counts_the_rest_exactly() -> None:
    out = BoundedOutput(8)
    for chunk in (b"abcd", b"efgh", b"ijkl", b"mn", b"op"):
        out.write(chunk)
    assert (out.total, out.dropped, out.truncated) == (16, 8, True)
    assert out.text() == "abcd\n[... 8 bytes dropped by spinup: output over the 8-byte cap ...]\nmnop"


def test_bounded_output_with_an_odd_cap_gives_the_extra_byte_to_the_head() -> None:
    out = BoundedOutput(5)
    out.write(b"0123456789")
    assert out.dropped == 5
    text = out.text()
    assert text.startswith("012\n[...") and text.endswith("...]\n89")


def test_bounded_output_handles_many_small_chunks() -> None:
    out = BoundedOutput(1000)
    for index in range(100_000):
        out.write(b"%d\n" % (index % 10))
    assert (out.total, out.dropped) == (200_000, 199_000)
    text = out.text()
    assert text.startswith("0\n1\n2\n") and text.endswith("7\n8\n9\n")


def test_bounded_output_matches_a_reference_for_random_chunkings() -> None:
    rng = random.Random(1234)
    for cap in (0, 1, 2, 7, 64, 1000):
        for _ in range(50):
            data = bytes(rng.randrange(65, 91) for _ in range(rng.randrange(0, 3 * cap + 20)))
            out = BoundedOutput(cap)
            position = 0
            while position < len(data):
                step = rng.randrange(0, 2 * cap + 5)
                out.write(data[position : position + step])
                position += step
            head, tail = _reference(data, cap)
            assert out.total == len(data)
            assert out.dropped == len(data) - len(head) - len(tail)
            text = out.text()
            if out.dropped:
                assert text == f"{head.decode()}\n[... {out.dropped} bytes dropped by spinup: output over the " \
                               f"{cap}-byte cap ...]\n{tail.decode()}"
            else:
                assert text == data.decode()


def test_bounded_output_with_a_zero_cap_keeps_nothing_but_says_how_much_was_dropped() -> None:
    out = BoundedOutput(0)
    out.write(b"data")
    out.write(b"")
    assert (out.total, out.dropped, out.truncated) == (4, 4, True)
    assert MARKER.fullmatch(out.text()) is not None and "4 bytes dropped" in out.text()
    assert BoundedOutput(0).text() == ""


def test_bounded_output_refuses_a_negative_cap() -> None:
    with pytest.raises(ValueError):
        BoundedOutput(-1)
