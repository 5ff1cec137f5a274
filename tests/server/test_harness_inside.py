"""A harness CLI inside the agent's machine: the real Claude Code, fetched on the host with `npm pack`
into the local sources and installed offline into a `network none` machine by `spinup harness install`;
its state, written inside, lives in the agent's home and survives stop, hibernate, restore and fork."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from tmux_panes import Tmux, panes

from conftest import server_env, sh, unique_name
from spinup.runtime import Runtime
from spinup.runtime.errors import SpinupError

SPINUP = str(Path(sys.executable).with_name("spinup"))
CLAUDE = "2.1.197"  # the version scripts/npm-clients pins (what npm picks on Node 20)


def _pack_claude_code(destination: Path) -> None:
    """The wrapper package and this host's native one, as `npm pack` writes them (from npm's cache once fetched)."""
    destination.mkdir(parents=True, exist_ok=True)
    specs = [f"@anthropic-ai/claude-code@{CLAUDE}", f"@anthropic-ai/claude-code-linux-x64@{CLAUDE}"]
    done = subprocess.run(
        ["npm", "pack", *specs, "--pack-destination", str(destination), "--loglevel=error"],
        capture_output=True, text=True, timeout=600, cwd=destination,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


async def _spinup(runtime: Runtime, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        SPINUP, *args, env={**server_env(runtime.settings), "HOME": os.environ.get("HOME", "/root")},
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 600)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
def tmux(runtime: Runtime) -> Iterator[Tmux]:
    with panes(server_env(runtime.settings)) as tmux:
        yield tmux


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the native package packed here is linux-x64")
async def test_claude_code_installed_inside_keeps_its_state_across_stop_hibernate_restore_and_fork(
    runtime: Runtime, agent: str, tmux: Tmux
) -> None:
    await asyncio.to_thread(_pack_claude_code, runtime.settings.sources_dir / "npm")

    code, out, err = await _spinup(runtime, "harness", "install", agent, "claude-code")
    assert code == 0, err
    assert f"added @anthropic-ai/claude-code {CLAUDE}" in out and f"spinup shell {agent} -- claude" in err
    assert {p.name for p in runtime.package_manifest(agent)} == {
        "@anthropic-ai/claude-code", "@anthropic-ai/claude-code-linux-x64",
    }  # fmt: skip
    code, out, _ = await _spinup(runtime, "run", agent, "--", "claude", "--version")
    assert code == 0 and f"{CLAUDE} (Claude Code)" in out
    tmux.start("claude", f"{SPINUP} shell {agent} -- claude --version")
    screen = await asyncio.to_thread(tmux.wait_for, "claude", "exited:0")
    assert f"{CLAUDE} (Claude Code)" in screen, "in a real terminal too"

    # Its state goes where Claude Code keeps it: the agent's home.
    code, out, err = await _spinup(runtime, "run", agent, "--", "claude", "mcp", "add", "first", "--", "echo", "hi")
    assert code == 0, out + err
    assert "first" in await sh(runtime, agent, "cat ~/.claude.json")

    await runtime.stop_agent(agent)
    assert "first" in await sh(runtime, agent, "cat ~/.claude.json")
    await runtime.stop_agent(agent, hibernate=True)
    assert runtime.get_agent(agent).machine_id is None
    assert f"{CLAUDE} (Claude Code)" in await sh(runtime, agent, "claude --version")
    assert "first" in await sh(runtime, agent, "cat ~/.claude.json")

    await sh(runtime, agent, "claude mcp add later -- true >/dev/null")
    later = (await runtime.snapshot(agent, "with two servers")).snapshot
    await sh(runtime, agent, "claude mcp remove first >/dev/null && claude mcp remove later >/dev/null")
    await runtime.restore(agent, later.id)
    state = await sh(runtime, agent, "cat ~/.claude.json")
    assert "first" in state and "later" in state

    forked = unique_name("fork")
    await runtime.fork(later.id, forked)
    assert "later" in await sh(runtime, forked, "cat ~/.claude.json")
    assert f"{CLAUDE} (Claude Code)" in await sh(runtime, forked, "claude --version")

    # Its login is a credential binding: in the environment, never in a file or a layer; redacted when shown.
    value = "sk-ant-" + secrets.token_hex(12)
    runtime.set_secret("anthropic", value)
    await runtime.install_harness(agent, "claude-code", credential="anthropic")
    assert (await runtime.exec(agent, "printenv ANTHROPIC_API_KEY")).stdout == "[REDACTED:anthropic]\n"
    assert (await sh(runtime, agent, "grep -rlF \"$ANTHROPIC_API_KEY\" ~ /workspace 2>/dev/null; true")) == ""

    # Under self_control the install points Claude Code at the agent's own control endpoint, which the real
    # client connects to while `spinup run` serves it; the token is read from the environment, never stored.
    await runtime.set_policy(agent, runtime.get_agent(agent).policy.updated(self_control=True))
    code, _, err = await _spinup(runtime, "harness", "install", agent, "claude-code")
    assert code == 0, err
    code, out, _ = await _spinup(runtime, "run", agent, "--", "claude", "mcp", "list")
    shown = re.sub(r"\x1b\[[0-9;?<>=]*[A-Za-z]|\x1b\][^\x07]*\x07|\x1b[78]|\x1b\([A-Z0-9]", " ", out)
    (line,) = [line for line in shown.splitlines() if "spinup:" in line] or [shown]
    assert "http://127.0.0.1:7390/mcp" in line and "✔" in line and "Connected" in line, shown
    assert runtime.control_token(agent) not in await sh(runtime, agent, "cat ~/.claude.json")


async def test_unknown_harnesses_missing_credentials_and_an_offline_install_fail_clearly(
    runtime: Runtime, agent: str
) -> None:
    code, _, err = await _spinup(runtime, "harness", "install", agent, "vim")
    assert code == 2 and "does not know a harness called 'vim'" in err and "claude-code" in err
    code, _, err = await _spinup(runtime, "harness", "install", agent, "codex", "--credential", "nope")
    assert code == 2 and "No credential named 'nope'" in err
    with pytest.raises(SpinupError, match="network policy is 'none'"):
        await runtime.install_harness(agent, "codex")  # no local tarball, no network
    assert runtime.package_manifest(agent) == [], "the manifest is unchanged"
    code, out, _ = await _spinup(runtime, "harness", "list")
    assert code == 0 and "ANTHROPIC_API_KEY" in out and "~/.codex" in out and "@google/gemini-cli" in out
