"""Ready MCP configs for each harness: ``spinup config`` prints them or merges them into the harness's file.

``spinup config HARNESS`` prints the harness's snippet: a stdio server running ``spinup mcp``
(``--agent NAME`` binds it to one agent), or with ``--http URL`` an entry for ``spinup serve``
that sends the bearer token from ``$SPINUP_TOKEN``. ``--write`` merges the entry into the
harness's config file: every other server and setting is kept, the file is first copied to
``<file>.bak-<time>``, and a file that does not parse is refused and left as it is.
``harness-configs/`` ships the same snippets with the placeholder command ``spinup``.

TOML is written here rather than through a library: Codex's ``config.toml`` is the user's own
file, so only the ``[mcp_servers.spinup]`` table is replaced, in place, and every other line
(comments included) stays as written. The result is parsed back and compared with what was
meant; anything else is refused with the snippet to paste by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spinup.runtime import InvalidInput, Settings, validate_agent_name

from .tokens import token_path

SERVER_NAME = "spinup"
TOKEN_VAR = "SPINUP_TOKEN"
TOOL_TIMEOUT_S = 600  # exec's default timeout: a harness should wait at least this long for a tool
# What Spinup reads from its environment (state directory, Docker daemon). Harnesses that filter a
# stdio server's environment (Codex) must be told to pass these on; unset ones are skipped.
SPINUP_ENV_VARS = ["SPINUP_HOME", "XDG_DATA_HOME", "DOCKER_HOST", "DOCKER_CONTEXT"]

Entry = dict[str, Any]


@dataclass(frozen=True)
class Harness:
    """How one harness declares an MCP server, and where it keeps them."""

    name: str
    title: str
    path: str  # default config file for --write; ~ and relative paths resolve when writing
    fmt: str  # "json" or "toml"
    stdio: Callable[[str, list[str]], Entry]  # (command, args) -> server entry
    http: Callable[[str], Entry]  # url -> server entry
    key: str = "mcpServers"  # the object (JSON) or table (TOML) holding the servers
    note: str = ""


def _bearer(reference: str) -> dict[str, str]:
    """An Authorization header whose token the harness expands from ``$SPINUP_TOKEN``."""
    return {"Authorization": f"Bearer {reference}"}


HARNESSES: dict[str, Harness] = {
    h.name: h
    for h in (
        Harness(
            "claude-code",
            "Claude Code",
            ".mcp.json",
            "json",
            stdio=lambda cmd, args: {"type": "stdio", "command": cmd, "args": args, "env": {}},
            http=lambda url: {"type": "http", "url": url, "headers": _bearer("${SPINUP_TOKEN}")},
            note="Claude Code asks before it starts a project's .mcp.json servers: run `claude` in the project "
            "and approve them (or use `claude mcp add spinup -- <command> <args>` for a local server). "
            "Long commands: export MCP_TOOL_TIMEOUT=600000 (ms), at least exec's timeout.",
        ),
        Harness(
            "codex",
            "Codex CLI",
            "~/.codex/config.toml",
            "toml",
            stdio=lambda cmd, args: {
                "command": cmd,
                "args": args,
                "env_vars": list(SPINUP_ENV_VARS),
                "startup_timeout_sec": 20,
                "tool_timeout_sec": TOOL_TIMEOUT_S,
            },
            http=lambda url: {"url": url, "bearer_token_env_var": TOKEN_VAR, "tool_timeout_sec": TOOL_TIMEOUT_S},
            key="mcp_servers",
            note="Codex passes a stdio server only a few environment variables: env_vars names the ones "
            "Spinup reads. tool_timeout_sec bounds one tool call (default 60 s in Codex).",
        ),
        Harness(
            "gemini",
            "Gemini CLI",
            "~/.gemini/settings.json",
            "json",
            stdio=lambda cmd, args: {"command": cmd, "args": args, "env": {}, "timeout": TOOL_TIMEOUT_S * 1000},
            http=lambda url: {
                "httpUrl": url,
                "headers": _bearer("$SPINUP_TOKEN"),
                "timeout": TOOL_TIMEOUT_S * 1000,
            },
            note="Gemini CLI disables the servers of a folder it does not trust: trust it when asked "
            "(~/.gemini/trustedFolders.json). timeout is in milliseconds.",
        ),
        Harness(
            "cursor",
            "Cursor",
            ".cursor/mcp.json",
            "json",
            stdio=lambda cmd, args: {"command": cmd, "args": args, "env": {}},
            http=lambda url: {"url": url, "headers": _bearer("${env:SPINUP_TOKEN}")},
        ),
        Harness(
            "vscode",
            "VS Code",
            ".vscode/mcp.json",
            "json",
            stdio=lambda cmd, args: {"type": "stdio", "command": cmd, "args": args},
            http=lambda url: {"type": "http", "url": url, "headers": _bearer("${env:SPINUP_TOKEN}")},
            key="servers",
        ),
        Harness(
            "inspector",
            "MCP Inspector",
            "spinup.inspector.json",
            "json",
            stdio=lambda cmd, args: {"type": "stdio", "command": cmd, "args": args, "env": {}},
            http=lambda url: {"type": "streamable-http", "url": url},
            note="mcp-inspector --config FILE --server spinup [--cli --method tools/list]. Inspector 2.x passes a "
            "stdio server only HOME, PATH and a few more: add -e SPINUP_HOME=... if you set it. Over HTTP add "
            '--header "Authorization: Bearer $SPINUP_TOKEN" (Inspector 2.x; 0.15 cannot send a token).',
        ),
        Harness(
            "generic",
            "Any MCP client",
            "spinup.mcp.json",
            "json",
            stdio=lambda cmd, args: {"command": cmd, "args": args, "env": {}},
            http=lambda url: {"url": url, "headers": _bearer("${SPINUP_TOKEN}")},
        ),
    )
}


def get(harness: str) -> Harness:
    """The harness called ``harness``; an error naming the known ones otherwise."""
    spec = HARNESSES.get(harness)
    if spec is None:
        raise InvalidInput(f"Unknown harness {harness!r}. Known: {', '.join(HARNESSES)} (see: spinup config --list).")
    return spec


def spinup_command() -> list[str]:
    """How a harness should start this Spinup: an absolute path, since harnesses rarely share our PATH.

    The running ``spinup`` executable if that is what runs; else the one on PATH; else this
    interpreter with ``-m spinup.server``.
    """
    argv0 = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0] else None
    if argv0 is not None and argv0.name == "spinup" and os.access(argv0, os.X_OK):
        return [str(argv0)]
    found = shutil.which("spinup")
    if found:
        return [str(Path(found).resolve())]
    return [sys.executable, "-m", "spinup.server"]


def entry(harness: str, agent: str | None, http_url: str | None, command: list[str] | None = None) -> Entry:
    """The server entry for ``harness``: stdio running ``spinup mcp [--agent NAME]``, or HTTP to ``http_url``.

    ``command`` replaces :func:`spinup_command` (the shipped files use ``["spinup"]``).
    """
    spec = get(harness)
    if http_url is not None:
        if agent is not None:
            raise InvalidInput(
                "--agent binds a stdio server; over HTTP the server decides: start it with "
                "`spinup serve --agent NAME`, or leave it unbound and pass `agent` to each tool."
            )
        if not http_url.startswith(("http://", "https://")):
            raise InvalidInput(f"--http takes a URL such as http://127.0.0.1:8765/mcp, not {http_url!r}.")
        return spec.http(http_url)
    program, *prefix = command or spinup_command()
    args = [*prefix, "mcp"] + (["--agent", validate_agent_name(agent)] if agent is not None else [])
    return spec.stdio(program, args)


def render(harness: str, servers: dict[str, Entry]) -> str:
    """A config document holding ``servers`` in the harness's format."""
    spec = get(harness)
    if spec.fmt == "toml":
        return "\n".join(_toml_table((spec.key, name), server) for name, server in servers.items())
    return json.dumps({spec.key: servers}, indent=2) + "\n"


def write(harness: str, server: Entry, path: Path, name: str = SERVER_NAME) -> Path | None:
    """Merge ``server`` as ``name`` into the harness's config file at ``path``; return the backup made.

    Other servers and settings are kept; the file is backed up first (``None``: there was no
    file). A file that does not parse, or that cannot be merged exactly, is left untouched.
    """
    spec = get(harness)
    target = path.expanduser()
    if target.is_symlink():  # a dotfile managed elsewhere: write through the link, keep the link
        target = target.resolve()
    try:
        original = target.read_text(encoding="utf-8") if target.exists() else ""
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(
            f"Cannot read {target} ({exc}); name another file with --path. Nothing was changed."
        ) from exc
    if spec.fmt == "toml":
        merged = _merge_toml(original, (spec.key, name), server, target, harness)
    else:
        merged = _merge_json(original, spec.key, name, server, target, harness)
    try:
        backup = _backup(target) if target.exists() else None
        _replace(target, merged)
    except OSError as exc:
        raise InvalidInput(f"Cannot write {target} ({exc}); pass another file with --path.") from exc
    return backup


# JSON -------------------------------------------------------------------------------------------


def _merge_json(original: str, key: str, name: str, server: Entry, path: Path, harness: str) -> str:
    try:
        document = json.loads(original) if original.strip() else {}
    except json.JSONDecodeError as exc:
        raise InvalidInput(
            f"{path} is not valid JSON (line {exc.lineno}: {exc.msg}; comments and trailing commas are not "
            f"supported). Fix it, or paste the output of `spinup config {harness}` by hand. Nothing was changed."
        ) from exc
    if not isinstance(document, dict) or not isinstance(document.get(key, {}), dict):
        raise InvalidInput(
            f"{path} does not hold a JSON object with a {key!r} object; fix it, or paste the output of "
            f"`spinup config {harness}` by hand. Nothing was changed."
        )
    document[key] = {**document.get(key, {}), name: server}
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


# TOML -------------------------------------------------------------------------------------------


def _toml_key(key: str) -> str:
    bare = key and all(c.isascii() and (c.isalnum() or c in "-_") for c in key)
    return key if bare else json.dumps(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string literal is a valid TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def _toml_table(path: tuple[str, ...], table: Entry) -> str:
    lines = [f"[{'.'.join(_toml_key(k) for k in path)}]"]
    lines += [f"{_toml_key(key)} = {_toml_value(value)}" for key, value in table.items()]
    return "\n".join(lines) + "\n"


def _header_path(line: str) -> tuple[str, ...] | None:
    """The key path of a table header line (``[a.b]``, ``[[a.b]]``, quoted keys, a trailing comment)."""
    text = line.strip()
    if not text.startswith("["):
        return None
    try:
        node: Any = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return None  # e.g. a line inside a multi-line array
    path: list[str] = []
    while isinstance(node, dict) and len(node) == 1:
        key, node = next(iter(node.items()))
        path.append(key)
        if isinstance(node, list) and node:
            node = node[-1]
    return tuple(path) if path and node == {} else None


def _merge_toml(original: str, table: tuple[str, ...], server: Entry, path: Path, harness: str) -> str:
    """``original`` with ``[table]`` (and its sub-tables) replaced in place, or appended."""
    snippet = _toml_table(table, server)
    try:
        expected = tomllib.loads(original)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput(
            f"{path} is not valid TOML ({exc}). Fix it, or paste the output of `spinup config {harness}` by hand. "
            "Nothing was changed."
        ) from exc
    parent = expected.setdefault(table[0], {})
    if not isinstance(parent, dict):
        raise InvalidInput(f"{path}: {table[0]} is not a table; fix it first. Nothing was changed.")
    parent[table[1]] = server

    out: list[str] = []
    held: list[str] = []  # comments and blank lines at the end of the old table: they may introduce the next one
    skipping = replaced = False
    for line in original.splitlines(keepends=True):
        header = _header_path(line)
        if header is not None:
            ours = header[: len(table)] == table
            if skipping and not ours:
                # Comments right above the next header belong to it. The snippet already ends
                # with a blank line, so blank lines before those comments go.
                while held and not held[0].strip():
                    held.pop(0)
                out.extend(held)
            held = []
            if ours and not replaced:
                out.append(snippet + "\n")
                replaced = True
            skipping = ours
        elif skipping:
            stripped = line.strip()
            held = [*held, line] if not stripped or stripped.startswith("#") else []
            continue
        if not skipping:
            out.append(line)
    if not replaced:
        text = "".join(out).rstrip("\n")
        out = [text + "\n\n" if text else "", snippet]
    merged = "".join(out).rstrip("\n") + "\n"

    try:
        ok = tomllib.loads(merged) == expected
    except tomllib.TOMLDecodeError:
        ok = False
    if not ok:
        raise InvalidInput(
            f"{path} defines [{'.'.join(table)}] in a form spinup config does not edit (an inline table or dotted "
            f"keys). Replace that definition by hand with:\n{snippet}Nothing was changed."
        )
    return merged


# files ------------------------------------------------------------------------------------------


def _backup(path: Path) -> Path:
    """Copy ``path`` to ``<path>.bak-<time>`` (never over an earlier backup)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    backup = path.with_name(f"{path.name}.bak-{stamp}")
    n = 1
    while backup.exists():
        backup = path.with_name(f"{path.name}.bak-{stamp}-{n}")
        n += 1
    shutil.copy2(path, backup)
    return backup


def _replace(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (temp file, fsync, rename), keeping the file's permissions."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = path.stat().st_mode & 0o7777 if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# command line -----------------------------------------------------------------------------------


def register_config_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``spinup config`` to the ``spinup`` command line."""
    config = sub.add_parser(
        "config",
        help="print or install the MCP config for a harness (Claude Code, Codex, Gemini, ...)",
        description="Print the MCP server entry for a harness (stdio by default, HTTP with --http), "
        "or merge it into the harness's config file with --write (after a backup).",
    )
    config.add_argument("harness", nargs="?", help="one of: " + ", ".join(HARNESSES))
    config.add_argument("--list", action="store_true", help="list the harnesses and their config files")
    config.add_argument("--agent", help="bind the stdio server to this agent (created on first use)")
    config.add_argument("--http", metavar="URL", help="an entry for `spinup serve` at URL (token from $SPINUP_TOKEN)")
    config.add_argument("--write", action="store_true", help="merge into the harness's config file (backed up first)")
    config.add_argument("--path", metavar="FILE", help="with --write: the file to write (default: the harness's own)")
    config.set_defaults(func=run_config_command)


def run_config_command(args: argparse.Namespace) -> int:
    """``spinup config``: the snippet on stdout; with ``--write``, the merge (messages on stderr)."""
    if args.list or not args.harness:
        for spec in HARNESSES.values():
            print(f"{spec.name:<12} {spec.title:<15} {spec.path}")
        return 0
    spec = get(args.harness)
    if args.path and not args.write:
        raise InvalidInput("--path names the file --write writes; add --write (or drop --path to print).")
    server = entry(args.harness, args.agent, args.http)
    if args.write:
        path = Path(args.path or spec.path).expanduser()
        backup = write(args.harness, server, path)
        print(
            f"spinup config: wrote the {SERVER_NAME!r} server into {path}"
            + (f" (previous file: {backup})" if backup else ""),
            file=sys.stderr,
        )
    else:
        sys.stdout.write(render(args.harness, {SERVER_NAME: server}))
    if spec.note:
        print(f"note: {spec.note}", file=sys.stderr)
    if args.http:
        print(f"note: {token_hint()}", file=sys.stderr)
    return 0


def token_hint() -> str:
    """How a harness gets the token of ``spinup serve``: from ``$SPINUP_TOKEN``, set from the state directory's
    token file when the server generated it."""
    path = token_path(Settings())
    return (
        f"the entry sends the bearer token from ${TOKEN_VAR}. spinup serve generates one into {path} when given "
        f'none: export {TOKEN_VAR}="$(cat {path})" before starting the harness.'
    )
