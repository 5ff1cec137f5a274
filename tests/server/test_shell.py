"""`spinup shell` driven through a real terminal (tmux: send-keys, capture-pane), and `spinup run`.

A tmux server of this module's own runs the CLI in a pane, so the shell gets a real TTY on this
side: raw keys (Ctrl-C, Ctrl-D) reach the machine, its window size follows the pane's, and the exit
status comes back to the pane's shell.
"""

from __future__ import annotations

import asyncio
import secrets
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tmux_panes import Tmux, panes

from conftest import server_env, sh
from spinup.runtime import Runtime

SPINUP = str(Path(sys.executable).with_name("spinup"))


@pytest.fixture
def tmux(runtime: Runtime) -> Iterator[Tmux]:
    with panes(server_env(runtime.settings)) as tmux:
        yield tmux


async def _in_thread(function: Callable[..., str], *args: str) -> str:
    return await asyncio.to_thread(function, *args)


async def test_a_shell_in_a_terminal_runs_commands_follows_resizes_and_passes_ctrl_c_and_the_exit_status(
    runtime: Runtime, agent: str, tmux: Tmux
) -> None:
    value = "tok-" + secrets.token_hex(8)
    runtime.set_secret("shell_token", value)
    tmux.start("one", f"{SPINUP} shell {agent}")
    await _in_thread(tmux.wait_for, "one", f"agent@{agent}:/workspace$")

    tmux.keys("one", "echo hi-$((6*7)); id -u; tty", "Enter")
    screen = await _in_thread(tmux.wait_for, "one", "/dev/pts/", "hi-$((6*7))")
    assert "hi-42\n1000\n" in screen

    tmux.keys("one", "stty size", "Enter")
    await _in_thread(tmux.wait_for, "one", "25 90", "stty size")
    tmux("resize-window", "-t", "one", "-x", "100", "-y", "30")
    tmux.keys("one", "clear; stty size", "Enter")
    await _in_thread(tmux.wait_for, "one", "30 100", "stty size")

    tmux.keys("one", "sleep 300", "Enter")
    await _in_thread(tmux.wait_for, "one", "sleep 300")
    started = time.monotonic()
    tmux.keys("one", "C-c")
    tmux.keys("one", "echo after-$((1+1))", "Enter")
    await _in_thread(tmux.wait_for, "one", "after-2", "echo after-")
    assert time.monotonic() - started < 10, "Ctrl-C reached the sleep"

    # What the terminal shows is redacted: the value printed in two halves comes out as its name.
    tmux.keys("one", f"clear; printf '%s%s\\n' {value[:7]} {value[7:]}", "Enter")
    screen = await _in_thread(tmux.wait_for, "one", "[REDACTED:shell_token]")
    assert value not in screen

    tmux.keys("one", "echo $SPINUP_AGENT > /workspace/from-shell; exit 7", "Enter")
    await _in_thread(tmux.wait_for, "one", "exited:7")
    assert await sh(runtime, agent, "cat /workspace/from-shell") == f"{agent}\n"

    tmux.start("two", f"{SPINUP} shell {agent}")
    await _in_thread(tmux.wait_for, "two", f"agent@{agent}:/workspace$")
    tmux.keys("two", "C-d")
    await _in_thread(tmux.wait_for, "two", "exited:0")


async def test_a_shell_ends_with_a_message_when_its_machine_stops_and_nothing_is_lost(
    runtime: Runtime, agent: str, tmux: Tmux
) -> None:
    tmux.start("one", f"{SPINUP} shell {agent}")
    await _in_thread(tmux.wait_for, "one", f"agent@{agent}:/workspace$")
    tmux.keys("one", "echo typed > /workspace/typed && echo written", "Enter")
    await _in_thread(tmux.wait_for, "one", "written", "&& echo written")

    await runtime.stop_agent(agent)

    screen = await _in_thread(tmux.wait_for, "one", "exited:255")
    assert f"the machine of agent '{agent}' stopped, so the terminal ended" in screen
    assert await sh(runtime, agent, "cat /workspace/typed") == "typed\n"


async def test_without_a_terminal_shell_says_so_and_runs_piped_input_and_run_gives_a_command_a_tty(
    runtime: Runtime, agent: str
) -> None:
    env = server_env(runtime.settings)

    async def spinup(*args: str, stdin: bytes = b"") -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            SPINUP, *args, env=env, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(stdin), 120)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    code, out, err = await spinup("shell", agent, stdin=b"echo piped-$((2*3)); id -u\nexit 4\n")
    assert (code, out) == (4, "piped-6\n1000\n")
    assert "this side has no terminal" in err

    code, out, _ = await spinup("run", agent, "--", "sh", "-c", "tty; printf 'a\\nb\\n'; exit 3")
    assert code == 3
    assert out.startswith("/dev/pts/") and out.endswith("a\r\nb\r\n"), "a terminal's line endings"

    code, _, err = await spinup("run", agent)
    assert code == 2 and "No command given" in err
    code, _, err = await spinup("shell", "no-such-agent", stdin=b"true\n")
    assert code == 2 and "no-such-agent" in err
