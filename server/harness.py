"""Ready MCP configs for each harness: print them, or merge them into the harness's config file.

``spinup config HARNESS`` prints the snippet (stdio by default, streamable HTTP with
``--http URL``); ``--write`` merges it into the harness's file without touching its other
servers, after a timestamped backup. The shipped files in ``harness-configs/`` are the same
snippets with a placeholder command.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spinup.runtime import SpinupError
from spinup.runtime.errors import InvalidInput

SERVER_NAME = "spinup"
TOKEN_VAR = "SPINUP_TOKEN"


@dataclass(frozen=True)
class Harness:
    """How one harness names and stores its MCP servers."""

    name: str
    title: str
    path: str  # default config file (~ and relative paths resolved at write time)
    fmt: str  # "json" or "toml"
    stdio: Callable[[str, list[str]], dict[str, Any]]
    http: Callable[[str], dict[str, Any]]
    key: str = "mcpServers"  # where servers live in the file
    note: str = ""


def _bearer(prefix: str = "${", suffix: str = "}") -> dict[str, str]:
    return {"Authorization": f"Bearer {prefix}{TOKEN_VAR}{suffix}"}


HARNESSES: dict[str, Harness] = {
    h.name: h
    for h in (
        Harness(
            "claude-code", "Claude Code", ".mcp.json", "json",
            stdio=lambda cmd, args: {"type": "stdio", "command": cmd, "args": args, "env": {}},
            http=lambda url: {"type": "http", "url": url, "headers": _bearer()},
            note="Project servers need approval: run `claude` in the project and accept, or "
            "`claude mcp add -s local` instead. Long commands: export MCP_TOOL_TIMEOUT (ms).",
        ),
        Harness(
            "codex", "Codex CLI", "~/.codex/config.toml", "toml",
            stdio=lambda cmd, args: {
                "command": cmd, "args": args, "env_vars": ["SPINUP_HOME"],
                "startup_timeout_sec": 20, "tool_timeout_sec": 600,
            },
            http=lambda url: {"url": url, "bearer_token_env_var": TOKEN_VAR, "tool_timeout_sec": 600},
            key="mcp_servers",
            note="Codex passes few environment variables to stdio servers: list what Spinup needs in env_vars.",
        ),
        Harness(
            "gemini", "Gemini CLI", "~/.gemini/settings.json", "json",
            stdio=lambda cmd, args: {"command": cmd, "args": args, "env": {}, "timeout": 600000},
            http=lambda url: {"httpUrl": url, "headers": _bearer("$", ""), "timeout": 600000},
            note="Trust the project folder (~/.gemini/trustedFolders.json) or its servers stay disabled.",
        ),
        Harness(
            "cursor", "Cursor", ".cursor/mcp.json", "json",
            stdio=lambda cmd, args: {"command": cmd, "args": args, "env": {}},
            http=lambda url: {"url": url, "headers": _bearer("${env:", "}")},
        ),
        Harness(
            "vscode", "VS Code", ".vscode/mcp.json", "json",
            stdio=lambda cmd, args: {"type": "stdio", "command": cmd, "args": args},
            http=lambda url: {"type": "http", "url": url, "headers": _bearer("${env:", "}")},
            key="servers",
        ),
        Harness(
            "inspector", "MCP Inspector", "spinup.inspector.json", "json",
            stdio=lambda cmd, args: {"type": "stdio", "command": cmd, "args": args, "env": {}},
            http=lambda url: {"type": "streamable-http", "url": url},
            note="Use with: mcp-inspector --config FILE --server spinup (HTTP: add --header "
            "'Authorization: Bearer ...' in --cli mode).",
        ),
        Harness(
            "generic", "Any MCP client", "spinup.mcp.json", "json",
            stdio=lambda cmd, args: {"command": cmd, "args": args, "env": {}},
            http=lambda url: {"url": url, "headers": _bearer()},
        ),
    )
}


def spinup_command() -> str:
    """The absolute path of the running ``spinup`` executable (harnesses rarely share our PATH)."""
    found = shutil.which("spinup")
    argv0 = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0] else None
    if argv0 is not None and argv0.name == "spinup" and argv0.exists():
        return str(argv0)
    return found or "spinup"


def entry(harness: str, agent: str | None, http_url: str | None, command: str | None = None) -> dict[str, Any]:
    """The server entry for ``harness``: stdio running ``spinup mcp``, or HTTP to ``http_url``."""
    spec = get(harness)
    if http_url is not None:
        if not http_url.startswith(("http://", "https://")):
            raise InvalidInput(f"--http must be a URL like http://127.0.0.1:8765/mcp, got {http_url!r}.")
        return spec.http(http_url)
    args = ["mcp"] + (["--agent", agent] if agent else [])
    return spec.stdio(command or spinup_command(), args)


def get(harness: str) -> Harness:
    """The harness called ``harness``; a clear error naming the known ones otherwise."""
    spec = HARNESSES.get(harness)
    if spec is None:
        raise InvalidInput(f"Unknown harness {harness!r}. Known: {', '.join(HARNESSES)} (spinup config --list).")
    return spec


def render(harness: str, servers: dict[str, Any]) -> str:
    """A whole config document holding ``servers`` in the harness's format."""
    spec = get(harness)
    if spec.fmt == "toml":
        return "".join(_toml_table(f"{spec.key}.{name}", value) for name, value in servers.items())
    return json.dumps({spec.key: servers}, indent=2) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def _toml_table(name: str, table: dict[str, Any]) -> str:
    lines = [f"[{name}]"] + [f"{key} = {_toml_value(value)}" for key, value in table.items()]
    return "\n".join(lines) + "\n\n"


def write(harness: str, server: dict[str, Any], path: Path, name: str = SERVER_NAME) -> Path | None:
    """Merge ``server`` as ``name`` into the harness's config file; returns the backup made, if any.

    Other servers and settings are kept. A file that does not parse is left untouched.
    """
    spec = get(harness)
    original = path.read_text() if path.exists() else ""
    if spec.fmt == "toml":
        try:
            tomllib.loads(original)
        except tomllib.TOMLDecodeError as exc:
            raise SpinupError(f"{path} is not valid TOML ({exc}); fix it first. Nothing was changed.") from exc
        merged = _merge_toml(original, f"{spec.key}.{name}", server)
        tomllib.loads(merged)  # what we write must parse
    else:
        try:
            document = json.loads(original) if original.strip() else {}
        except json.JSONDecodeError as exc:
            raise SpinupError(f"{path} is not valid JSON ({exc}); fix it first. Nothing was changed.") from exc
        if not isinstance(document, dict):
            raise SpinupError(f"{path} does not hold a JSON object; fix it first. Nothing was changed.")
        document.setdefault(spec.key, {})[name] = server
        merged = json.dumps(document, indent=2) + "\n"
    backup = None
    if path.exists():
        backup = path.with_name(f"{path.name}.bak-{time.strftime('%Y%m%d-%H%M%S')}")
        shutil.copy2(path, backup)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".spinup-tmp")
    tmp.write_text(merged)
    tmp.replace(path)
    return backup


def _merge_toml(original: str, table: str, server: dict[str, Any]) -> str:
    """Replace (or append) ``[table]`` in a TOML text, keeping every other line as written."""
    out: list[str] = []
    skipping = False
    for line in original.splitlines(keepends=True):
        stripped = line.strip()
        if stripped.startswith("["):
            header = stripped.strip("[]").strip()
            skipping = header == table or header.startswith(table + ".")
        if not skipping:
            out.append(line)
    text = "".join(out).rstrip("\n")
    return (text + "\n\n" if text else "") + _toml_table(table, server)
