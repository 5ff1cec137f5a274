"""The real harness clients against Spinup: the MCP Inspector CLI over stdio and over HTTP with the
bearer token, the shipped Inspector config, Claude Code (`claude mcp add`, and a project's
`.mcp.json` written by `spinup config`), Codex (`codex app-server` calling tools, from the config
`spinup config codex --write` makes), Gemini CLI (`gemini mcp list`), and a swap of harness on
one agent. Codex and Gemini run in a network namespace of their own with only loopback: they
reach Spinup and nothing else.

The clients come from npm at pinned versions (scripts/npm-clients). Under CI (CI=true) a client
that cannot be installed fails the run; elsewhere these tests skip. Every server gets this test's
SPINUP_HOME and DOCKER_API_VERSION explicitly, every client an isolated HOME, and every agent a
test names is removed afterwards, with any container still labelled with its name.
"""

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
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from http_servers import free_port, processes_with, stop_process
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from conftest import docker_cli, held_open, unique_name
from spinup.runtime import Settings

ROOT = Path(__file__).resolve().parent.parent.parent
SPINUP = str(Path(sys.executable).with_name("spinup"))
CONFIGS = ROOT / "harness-configs"
TOKEN = "harness-test-token"
CONNECTED = "✔ Connected"


# the clients ------------------------------------------------------------------------------------


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def install_npm_clients() -> tuple[Path | None, str]:
    """Run scripts/npm-clients; the folder of the clients' executables, or why there is none."""
    try:
        result = subprocess.run([str(ROOT / "scripts" / "npm-clients")], capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"scripts/npm-clients did not run: {exc}"
    if result.returncode != 0:
        return None, f"scripts/npm-clients failed: {result.stderr.strip()[-800:]}"
    bin_dir = Path(result.stdout.strip())
    missing = [name for name in ("mcp-inspector", "claude", "codex", "gemini") if not (bin_dir / name).exists()]
    if missing:
        return None, f"scripts/npm-clients printed {bin_dir}, which lacks {', '.join(missing)}"
    return bin_dir, ""


@pytest.fixture(scope="session")
def npm_bin() -> Path:
    """The folder holding `mcp-inspector` and `claude`; a failure, not a skip, under CI."""
    bin_dir, problem = install_npm_clients()
    if bin_dir is None:
        if in_ci():
            pytest.fail(f"{problem} (CI is set: the harness tests must run; Node 20+ and npm are required)")
        pytest.skip(problem)
    return bin_dir


# processes --------------------------------------------------------------------------------------


def server_env(settings: Settings) -> dict[str, str]:
    """What every Spinup server this file starts is given, explicitly."""
    return {"SPINUP_HOME": str(settings.home), "DOCKER_API_VERSION": "1.41"}


def client_env(home: Path, **extra: str) -> dict[str, str]:
    """Our environment for a client, with an isolated HOME and no stray credentials or Spinup settings."""
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPINUP_", "ANTHROPIC_", "XDG_"))}
    return env | {
        "HOME": str(home),
        "DISABLE_AUTOUPDATER": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "MCP_INSPECTOR_SECRET_STORE": "memory",
        **extra,
    }


async def run(
    argv: list[str], env: dict[str, str], cwd: Path | None = None, timeout: float = 120
) -> tuple[int, str, str]:
    """Run a process to completion within ``timeout`` seconds (killed otherwise): exit code, stdout, stderr."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        env=env,
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        async with asyncio.timeout(10):
            await proc.wait()
        raise AssertionError(f"{' '.join(argv[:3])} ... did not finish within {timeout}s") from None
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@asynccontextmanager
async def serving(settings: Settings, *args: str, token: str | None = TOKEN) -> AsyncIterator[str]:
    """`spinup serve` on a free loopback port (bearer token ``token``); yields its /mcp URL once it answers."""
    port = free_port()
    env = {"PATH": os.environ["PATH"], **server_env(settings)} | ({"SPINUP_TOKEN": token} if token else {})
    proc = await asyncio.create_subprocess_exec(
        SPINUP,
        "serve",
        "--port",
        str(port),
        *args,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        async with asyncio.timeout(30):
            while True:
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                except OSError:
                    assert proc.returncode is None, "spinup serve exited before it answered"
                    await asyncio.sleep(0.1)
                    continue
                writer.close()
                await writer.wait_closed()
                break
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        await stop_process(proc)


@asynccontextmanager
async def agent_named(settings: Settings, prefix: str) -> AsyncIterator[str]:
    """A fresh agent name; the agent (if a server created it) and its containers go afterwards."""
    name = unique_name(prefix)
    try:
        yield name
    finally:
        await run([SPINUP, "agent", "rm", name], {**os.environ, **server_env(settings)}, timeout=60)
        ids = docker_cli("ps", "-aq", "--filter", f"label=spinup.name={name}").stdout.split()
        if ids:
            docker_cli("rm", "-f", *ids, check=False)


async def agents_in(settings: Settings) -> set[str]:
    """The agents in this test's state directory."""
    code, out, err = await run([SPINUP, "agent", "list", "--json"], {**os.environ, **server_env(settings)})
    assert code == 0, err
    return {agent["name"] for agent in json.loads(out)}


async def wait_until(condition: Callable[[], bool], seconds: float, what: str) -> None:
    """Check ``condition`` every 0.1 s until it holds; fail after ``seconds``."""
    for _ in range(int(seconds * 10)):
        if condition():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"waited {seconds}s for {what}")


def server_processes(agent: str) -> list[int]:
    """Pids of running `spinup mcp --agent <agent>` processes."""
    return processes_with(b"mcp", agent.encode())


# the Inspector ----------------------------------------------------------------------------------


def inspector_stdio(settings: Settings, *command: str) -> list[str]:
    """Inspector arguments for a stdio server: 2.x gives it only HOME, PATH and a few more, so pass ours."""
    return ["-e", f"SPINUP_HOME={settings.home}", "-e", "DOCKER_API_VERSION=1.41", *command]


def bearer(token: str = TOKEN) -> list[str]:
    return ["--header", f"Authorization: Bearer {token}"]


async def inspector(npm_bin: Path, env: dict[str, str], *args: str, tool_error: bool = False) -> dict[str, Any]:
    """`mcp-inspector --cli ARGS` and its JSON result; a tool error exits non-zero, which ``tool_error`` expects."""
    code, out, err = await run([str(npm_bin / "mcp-inspector"), "--cli", *args], env)
    assert (code != 0) if tool_error else (code == 0), f"exit {code}\n{out}\n{err}"
    result: dict[str, Any] = json.loads(out)
    return result


def call(tool: str, **arguments: str) -> list[str]:
    return ["--method", "tools/call", "--tool-name", tool, *(f"--tool-arg={k}={v}" for k, v in arguments.items())]


async def exercise(npm_bin: Path, env: dict[str, str], target: list[str], where: str) -> None:
    """List the tools, then exec, file_write and file_read through the Inspector on a bound server."""
    listed = await inspector(npm_bin, env, *target, "--method", "tools/list")
    tools = {tool["name"]: tool for tool in listed["tools"]}
    assert {"exec", "file_write", "file_read", "snapshot_create", "snapshot_restore"} <= set(tools)
    assert "agent" not in tools["exec"]["inputSchema"]["properties"], "a bound server takes no agent argument"
    assert "outputSchema" in tools["exec"]

    ran = await inspector(npm_bin, env, *target, *call("exec", command=f"echo from {where} | tr a-z A-Z"))
    assert ran["structuredContent"]["stdout"] == f"FROM {where.upper()}\n"
    assert ran["structuredContent"]["exit_code"] == 0
    await inspector(npm_bin, env, *target, *call("file_write", path=f"/workspace/{where}.txt", content=where))
    read = await inspector(npm_bin, env, *target, *call("file_read", path=f"/workspace/{where}.txt"))
    assert read["structuredContent"]["content"] == where
    missing = await inspector(npm_bin, env, *target, *call("file_read", path="/workspace/none"), tool_error=True)
    assert missing["isError"] is True and "file_list" in missing["content"][0]["text"]


async def test_the_inspector_lists_tools_and_calls_exec_and_files_over_stdio(
    npm_bin: Path, settings: Settings, tmp_path: Path
) -> None:
    env = client_env(tmp_path / "home")
    async with agent_named(settings, "insp") as name:
        await exercise(npm_bin, env, inspector_stdio(settings, SPINUP, "mcp", "--agent", name), "stdio")
        assert name in await agents_in(settings)  # the server used this test's state directory
    assert not (tmp_path / "home" / ".local" / "share" / "spinup").exists()


async def test_the_inspector_calls_tools_over_http_with_the_bearer_token(
    npm_bin: Path, settings: Settings, tmp_path: Path
) -> None:
    env = client_env(tmp_path / "home")
    async with agent_named(settings, "insp-http") as name, serving(settings, "--agent", name) as url:
        await exercise(npm_bin, env, [url, "--transport", "http", *bearer()], "http")
        for refused in ([], bearer("wrong-token")):
            code, out, err = await run(
                [
                    str(npm_bin / "mcp-inspector"),
                    "--cli",
                    url,
                    "--transport",
                    "http",
                    *refused,
                    "--method",
                    "tools/list",
                ],
                env,
            )
            assert code != 0 and "auth" in (out + err).lower(), f"exit {code}\n{out}\n{err}"


async def test_the_shipped_inspector_config_works_as_is(npm_bin: Path, settings: Settings, tmp_path: Path) -> None:
    # The shipped stdio entry runs `spinup` from PATH and binds the agent "my-agent"; list only, so
    # that no agent of that shared name is ever created.
    env = client_env(tmp_path / "home", PATH=f"{Path(SPINUP).parent}{os.pathsep}{os.environ['PATH']}")
    shipped = CONFIGS / "inspector.config.json"
    listed = await inspector(
        npm_bin,
        env,
        "--config",
        str(shipped),
        "--server",
        "spinup",
        *inspector_stdio(settings),
        "--method",
        "tools/list",
    )
    exec_tool = next(tool for tool in listed["tools"] if tool["name"] == "exec")
    assert "agent" not in exec_tool["inputSchema"]["properties"]

    async with serving(settings) as url:
        config = tmp_path / "inspector.json"
        config.write_text(shipped.read_text().replace("http://127.0.0.1:8765/mcp", url))
        agents = await inspector(
            npm_bin, env, "--config", str(config), "--server", "spinup-http", *bearer(), *call("agent_list")
        )
        assert agents["structuredContent"] == {"agents": []}


# Claude Code ------------------------------------------------------------------------------------


async def claude_mcp_list(npm_bin: Path, env: dict[str, str], cwd: Path) -> dict[str, str]:
    """`claude mcp list` (it connects to each server): each server's name and its status line."""
    code, out, err = await run([str(npm_bin / "claude"), "mcp", "list"], env, cwd=cwd)
    assert code == 0, f"exit {code}\n{out}\n{err}"
    return {line.split(":", 1)[0]: line for line in out.splitlines() if line.startswith("spinup")}


async def test_claude_code_connects_to_spinup_added_with_claude_mcp_add(
    npm_bin: Path, settings: Settings, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    claude = str(npm_bin / "claude")
    env = client_env(home)  # no SPINUP_HOME here: `-e` must bring it to the server
    async with agent_named(settings, "cc") as name, serving(settings) as url:
        add = [
            claude,
            "mcp",
            "add",
            "spinup",
            "-e",
            f"SPINUP_HOME={settings.home}",
            "-e",
            "DOCKER_API_VERSION=1.41",
            "--",
            SPINUP,
            "mcp",
            "--agent",
            name,
        ]
        code, out, err = await run(add, env, cwd=home)
        assert code == 0, err + out
        # Single-quoted in a shell: Claude Code stores ${SPINUP_TOKEN} and expands it when it connects.
        add_http = [
            claude,
            "mcp",
            "add",
            "--transport",
            "http",
            "spinup-http",
            url,
            "-H",
            "Authorization: Bearer ${SPINUP_TOKEN}",
        ]
        code, out, err = await run(add_http, env, cwd=home)
        assert code == 0, err + out
        assert TOKEN not in (home / ".claude.json").read_text()

        status = await claude_mcp_list(npm_bin, env | {"SPINUP_TOKEN": TOKEN}, home)
        assert CONNECTED in status["spinup"] and CONNECTED in status["spinup-http"], status
        wrong = await claude_mcp_list(npm_bin, env | {"SPINUP_TOKEN": "wrong-token"}, home)
        assert CONNECTED in wrong["spinup"] and CONNECTED not in wrong["spinup-http"], wrong
    assert not (home / ".local" / "share" / "spinup").exists()


async def test_claude_code_runs_the_project_mcp_json_spinup_config_writes_once_approved(
    npm_bin: Path, settings: Settings, tmp_path: Path
) -> None:
    home, project = tmp_path / "home", tmp_path / "project"
    project.mkdir()
    # Claude Code gives a stdio server its own environment: Spinup's variables come from there.
    env = client_env(home, SPINUP_TOKEN=TOKEN, **server_env(settings))
    async with agent_named(settings, "ccp") as name, serving(settings) as url:
        code, _, err = await run([SPINUP, "config", "claude-code", "--agent", name, "--write"], env, cwd=project)
        assert code == 0, err
        code, printed, err = await run([SPINUP, "config", "claude-code", "--http", url], env)
        assert code == 0, err
        mcp_json = project / ".mcp.json"
        document = json.loads(mcp_json.read_text())
        document["mcpServers"]["spinup-http"] = json.loads(printed)["mcpServers"]["spinup"]
        mcp_json.write_text(json.dumps(document))

        pending = await claude_mcp_list(npm_bin, env, project)
        assert all("Pending approval" in line for line in pending.values()) and len(pending) == 2, pending

        # What accepting the trust dialog and the project's servers records (harness-configs/README.md).
        state_file = home / ".claude.json"
        state = json.loads(state_file.read_text())
        state.setdefault("projects", {}).setdefault(str(project), {})["hasTrustDialogAccepted"] = True
        state_file.write_text(json.dumps(state))
        (project / ".claude").mkdir()
        (project / ".claude" / "settings.local.json").write_text(json.dumps({"enableAllProjectMcpServers": True}))

        approved = await claude_mcp_list(npm_bin, env, project)
        assert CONNECTED in approved["spinup"] and CONNECTED in approved["spinup-http"], approved


# Codex and Gemini CLI ---------------------------------------------------------------------------


def offline(argv: list[str]) -> list[str]:
    """``argv`` in a network namespace of its own with only loopback up (root): a client that would
    phone home reaches nothing but this host's Spinup (over a Unix socket or 127.0.0.1 inside it)."""
    return ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$@"', "offline", *argv]


class AppServer:
    """``codex app-server``: JSON-RPC, one message per line, on its stdin and stdout."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self._next = 0

    async def request(self, method: str, params: dict[str, Any], timeout: float = 120) -> dict[str, Any]:
        """Send a request and return its result (notifications in between are skipped); fail on an error."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._next += 1
        ident = self._next
        self.proc.stdin.write(
            (json.dumps({"jsonrpc": "2.0", "id": ident, "method": method, "params": params}) + "\n").encode()
        )
        await self.proc.stdin.drain()
        async with asyncio.timeout(timeout):
            while True:
                line = await self.proc.stdout.readline()
                assert line, f"codex app-server closed its output during {method}"
                message = json.loads(line)
                if message.get("id") == ident:
                    assert "error" not in message, message
                    result: dict[str, Any] = message["result"]
                    return result

    async def notify(self, method: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps({"jsonrpc": "2.0", "method": method}) + "\n").encode())
        await self.proc.stdin.drain()


@asynccontextmanager
async def codex_app_server(npm_bin: Path, env: dict[str, str], cwd: Path) -> AsyncIterator[AppServer]:
    proc = await asyncio.create_subprocess_exec(
        *offline([str(npm_bin / "codex"), "app-server"]),
        env=env,
        cwd=cwd,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        limit=16 * 1024 * 1024,
    )
    try:
        yield AppServer(proc)
    finally:
        await stop_process(proc)


async def test_codex_app_server_calls_spinup_tools_from_the_config_spinup_config_writes(
    npm_bin: Path, settings: Settings, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    env = client_env(home, SPINUP_HOME=str(settings.home))  # env_vars in the config bring it to the server
    code, out, err = await run([SPINUP, "config", "codex", "--write"], env, cwd=home)
    assert code == 0, err + out
    async with agent_named(settings, "codex") as name, codex_app_server(npm_bin, env, home) as codex:
        await codex.request("initialize", {"clientInfo": {"name": "spinup-test", "version": "1"}})
        await codex.notify("initialized")
        thread = (await codex.request("thread/start", {}))["thread"]["id"]

        async def tool(tool_name: str, **arguments: Any) -> dict[str, Any]:
            said = await codex.request(
                "mcpServer/tool/call",
                {"server": "spinup", "threadId": thread, "tool": tool_name, "arguments": arguments},
            )
            assert said["isError"] is False, said
            structured: dict[str, Any] = said["structuredContent"]
            return structured

        await tool("agent_create", name=name)
        ran = await tool("exec", agent=name, command="echo from codex | tr a-z A-Z")
        assert ran["stdout"] == "FROM CODEX\n" and ran["exit_code"] == 0
        await tool("file_write", agent=name, path="/workspace/codex.txt", content="written by codex")
        assert (await tool("file_read", agent=name, path="/workspace/codex.txt"))["content"] == "written by codex"
    assert name not in await agents_in(settings)


async def test_gemini_cli_reports_spinup_connected_from_the_config_spinup_config_writes(
    npm_bin: Path, settings: Settings, tmp_path: Path
) -> None:
    home, project = tmp_path / "home", tmp_path / "project"
    project.mkdir()
    env = client_env(home, SPINUP_HOME=str(settings.home), GEMINI_CLI_NO_RELAUNCH="true")
    code, out, err = await run([SPINUP, "config", "gemini", "--write"], env, cwd=project)
    assert code == 0, err + out
    # Gemini CLI disables the servers of a folder it does not trust; a user trusts it when asked.
    (home / ".gemini" / "trustedFolders.json").write_text(json.dumps({str(project): "TRUST_FOLDER"}))
    code, out, err = await run(offline([str(npm_bin / "gemini"), "mcp", "list"]), env, cwd=project, timeout=180)
    assert code == 0, err + out
    line = next((line for line in (out + err).splitlines() if "spinup" in line), "")  # it prints to stderr
    assert "Connected" in line and "Disconnected" not in line, out + err


# a harness swap ---------------------------------------------------------------------------------


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


async def test_a_file_and_a_package_made_through_one_harness_are_there_through_another(
    npm_bin: Path, settings: Settings, tmp_path: Path
) -> None:
    wheel_name, wheel = hello_wheel()
    async with agent_named(settings, "swap") as name:
        # Harness one: the Python MCP client, over stdio, bound to the agent.
        stdio = StdioServerParameters(
            command=SPINUP, args=["mcp", "--agent", name], env={"PATH": os.environ["PATH"], **server_env(settings)}
        )
        async with held_open(Client(stdio)) as first:
            wrote = await first.call_tool("file_write", {"path": "/workspace/notes.md", "content": "from harness one"})
            assert not wrote.is_error, wrote.content
            await first.call_tool(
                "file_write",
                {"path": f"/workspace/{wheel_name}", "content": base64.b64encode(wheel).decode(), "encoding": "base64"},
            )
            installed = await first.call_tool(
                "exec",
                {
                    "command": "python3 -m venv /home/agent/.venv && "
                    f"/home/agent/.venv/bin/pip install -q --no-index /workspace/{wheel_name}",
                    "timeout": 300,
                },
            )
            assert installed.structured_content and installed.structured_content["exit_code"] == 0, installed.content
            assert server_processes(name), "the stdio server should be running now"
        await wait_until(lambda: not server_processes(name), 15, "the stdio server to exit")

        # Harness two: the Inspector CLI, over HTTP with the token, on an unbound server.
        env = client_env(tmp_path / "home")
        async with serving(settings) as url:
            target = [url, "--transport", "http", *bearer()]
            notes = await inspector(npm_bin, env, *target, *call("file_read", agent=name, path="/workspace/notes.md"))
            assert notes["structuredContent"]["content"] == "from harness one"
            probe = "/home/agent/.venv/bin/python -c 'import hello_spinup; print(hello_spinup.hi())'"
            imported = await inspector(npm_bin, env, *target, *call("exec", agent=name, command=probe))
            assert imported["structuredContent"]["stdout"] == "hi from a wheel\n"
            listed = await inspector(
                npm_bin,
                env,
                *target,
                *call("exec", agent=name, command="/home/agent/.venv/bin/pip list --format=freeze"),
            )
            assert "hello-spinup==1.0" in listed["structuredContent"]["stdout"]
            await inspector(
                npm_bin,
                env,
                *target,
                *call("file_write", agent=name, path="/workspace/reply.md", content="from harness two"),
            )
            reply = await inspector(npm_bin, env, *target, *call("file_read", agent=name, path="/workspace/reply.md"))
            assert reply["structuredContent"]["content"] == "from harness two"
