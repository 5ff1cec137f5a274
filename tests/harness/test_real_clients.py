"""The real harness clients against Spinup: MCP Inspector's CLI over stdio and HTTP, Claude Code's
`mcp list`, and a swap of harness on one agent. The clients come from npm at pinned versions
(scripts/npm-clients); under CI=true a missing client is a failure, never a skip."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from conftest import docker_cli, held_open, unique_name
from spinup.runtime import Settings

ROOT = Path(__file__).resolve().parent.parent.parent
SPINUP = str(Path(sys.executable).with_name("spinup"))


@pytest.fixture(scope="session")
def npm_bin() -> Path:
    """Where the npm-installed clients' executables are."""
    result = subprocess.run([str(ROOT / "scripts" / "npm-clients")], capture_output=True, text=True)
    if result.returncode != 0:
        message = f"cannot install the npm clients: {result.stderr.strip()[-500:]}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return Path(result.stdout.strip())


def hello_wheel() -> tuple[str, bytes]:
    """A tiny, valid pure-Python wheel built in memory (no build tools, no network)."""
    files = {
        "hello_spinup/__init__.py": b"def hi() -> str:\n    return 'hi from a wheel'\n",
        "hello_spinup-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: hello-spinup\nVersion: 1.0\n",
        "hello_spinup-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: spinup-tests\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
    }
    rows = [
        f"{name},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},{len(data)}"
        for name, data in files.items()
    ]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as wheel:
        for name, data in files.items():
            wheel.writestr(name, data)
        wheel.writestr("hello_spinup-1.0.dist-info/RECORD", "\n".join([*rows, "hello_spinup-1.0.dist-info/RECORD,,"]))
    return "hello_spinup-1.0-py3-none-any.whl", buffer.getvalue()


def env_for(settings: Settings, **extra: str) -> dict[str, str]:
    return {**os.environ, "SPINUP_HOME": str(settings.home), "DOCKER_API_VERSION": "1.41", **extra}


async def run(argv: list[str], env: dict[str, str], cwd: Path | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, env=env, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
    )
    async with asyncio.timeout(120):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def inspector(
    npm_bin: Path, env: dict[str, str], target: list[str], *args: str, tool_error: bool = False
) -> dict[str, Any]:
    """Run the Inspector CLI; a tool error makes it exit non-zero, which ``tool_error`` expects."""
    code, out, err = await run([str(npm_bin / "mcp-inspector"), "--cli", *target, *args], env)
    assert (code != 0) if tool_error else (code == 0), err + out
    result: dict[str, Any] = json.loads(out)
    return result


def cleanup(name: str) -> None:
    ids = docker_cli("ps", "-aq", "--filter", f"label=spinup.name={name}").stdout.split()
    if ids:
        docker_cli("rm", "-f", *ids, check=False)


async def test_inspector_lists_tools_and_calls_them_over_stdio(npm_bin: Path, settings: Settings) -> None:
    name = unique_name("insp")
    target = [SPINUP, "mcp", "--agent", name]
    env = env_for(settings)
    try:
        listed = await inspector(npm_bin, env, target, "--method", "tools/list")
        assert {"exec", "file_write", "file_read", "snapshot_create"} <= {t["name"] for t in listed["tools"]}
        ran = await inspector(npm_bin, env, target, "--method", "tools/call", "--tool-name", "exec",
                              "--tool-arg", "command=echo from inspector")
        assert ran["structuredContent"]["stdout"] == "from inspector\n"
        await inspector(npm_bin, env, target, "--method", "tools/call", "--tool-name", "file_write",
                        "--tool-arg", "path=/workspace/i.txt", "--tool-arg", "content=written")
        read = await inspector(npm_bin, env, target, "--method", "tools/call", "--tool-name", "file_read",
                               "--tool-arg", "path=/workspace/i.txt")
        assert read["structuredContent"]["content"] == "written"
        failed = await inspector(npm_bin, env, target, "--method", "tools/call", "--tool-name", "file_read",
                                 "--tool-arg", "path=/workspace/none", tool_error=True)
        assert failed["isError"] is True and "file_list" in failed["content"][0]["text"]
    finally:
        await run([SPINUP, "agent", "rm", name], env)
        cleanup(name)


async def test_the_shipped_inspector_config_is_usable_as_is(npm_bin: Path, settings: Settings) -> None:
    env = env_for(settings, PATH=f"{Path(SPINUP).parent}:{os.environ['PATH']}")
    config = ["--config", str(ROOT / "harness-configs" / "inspector.config.json"), "--server", "spinup"]
    listed = await inspector(npm_bin, env, config, "--method", "tools/list")
    exec_tool = next(t for t in listed["tools"] if t["name"] == "exec")
    assert "agent" not in exec_tool["inputSchema"].get("properties", {}), "the shipped stdio entry binds an agent"


async def test_claude_code_connects_to_spinup_with_an_isolated_home(
    npm_bin: Path, settings: Settings, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home)}
    env.pop("ANTHROPIC_API_KEY", None)
    add = [str(npm_bin / "claude"), "mcp", "add", "spinup", "-e", f"SPINUP_HOME={settings.home}",
           "-e", "DOCKER_API_VERSION=1.41", "--", SPINUP, "mcp", "--agent", unique_name("cc")]
    code, out, err = await run(add, env, cwd=home)
    assert code == 0, err + out
    code, out, err = await run([str(npm_bin / "claude"), "mcp", "list"], env, cwd=home)
    assert code == 0, err + out
    line = next(line for line in out.splitlines() if line.startswith("spinup:"))
    assert "Connected" in line, out


async def test_a_file_and_a_package_made_through_one_client_are_seen_through_another(
    npm_bin: Path, settings: Settings
) -> None:
    name = unique_name("swap")
    wheel_name, wheel = hello_wheel()
    env = env_for(settings)
    try:
        stdio = StdioServerParameters(command=SPINUP, args=["mcp", "--agent", name], env={
            "SPINUP_HOME": str(settings.home), "DOCKER_API_VERSION": "1.41", "PATH": os.environ["PATH"]})
        async with held_open(Client(stdio)) as first:
            await first.call_tool("file_write", {"path": "/workspace/notes.md", "content": "from the first harness"})
            await first.call_tool("file_write", {"path": f"/workspace/{wheel_name}",
                                                 "content": base64.b64encode(wheel).decode(), "encoding": "base64"})
            installed = await first.call_tool("exec", {
                "command": f"python3 -m venv /home/agent/.venv && "
                           f"/home/agent/.venv/bin/pip install -q --no-index /workspace/{wheel_name}",
                "timeout": 300,
            })
            assert installed.structured_content and installed.structured_content["exit_code"] == 0, installed.content
        # The first server process has exited; a second harness reaches the same agent over HTTP.
        port_probe = await run([sys.executable, "-c", "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); "
                                "print(s.getsockname()[1])"], env)
        port = port_probe[1].strip()
        token = "swap-token"
        server = await asyncio.create_subprocess_exec(
            SPINUP, "serve", "--port", port, env={**env, "SPINUP_TOKEN": token},
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            async with asyncio.timeout(30):
                while True:
                    try:
                        _, writer = await asyncio.open_connection("127.0.0.1", int(port))
                        writer.close()
                        break
                    except OSError:
                        await asyncio.sleep(0.1)
            url = [f"http://127.0.0.1:{port}/mcp", "--transport", "http", "--header", f"Authorization: Bearer {token}"]
            notes = await inspector(npm_bin, env, url, "--method", "tools/call", "--tool-name", "file_read",
                                    "--tool-arg", f"agent={name}", "--tool-arg", "path=/workspace/notes.md")
            assert notes["structuredContent"]["content"] == "from the first harness"
            await inspector(npm_bin, env, url, "--method", "tools/call", "--tool-name", "file_write",
                            "--tool-arg", f"agent={name}", "--tool-arg", "path=/workspace/reply.md",
                            "--tool-arg", "content=from the second harness")
            reply = await inspector(npm_bin, env, url, "--method", "tools/call", "--tool-name", "file_read",
                                    "--tool-arg", f"agent={name}", "--tool-arg", "path=/workspace/reply.md")
            assert reply["structuredContent"]["content"] == "from the second harness"
            probe = "command=/home/agent/.venv/bin/python -c 'import hello_spinup; print(hello_spinup.hi())'"
            imported = await inspector(npm_bin, env, url, "--method", "tools/call", "--tool-name", "exec",
                                       "--tool-arg", f"agent={name}", "--tool-arg", probe)
            assert imported["structuredContent"]["stdout"] == "hi from a wheel\n"
        finally:
            server.terminate()
            async with asyncio.timeout(15):
                await server.wait()
    finally:
        await run([SPINUP, "agent", "rm", name], env)
        cleanup(name)
