"""Shipped harness configs parse, match what `spinup config` prints, and --write merges safely."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from spinup.server.cli import build_parser
from spinup.server.harness import HARNESSES, entry

CONFIGS = Path(__file__).resolve().parent.parent / "harness-configs"
SPINUP = str(Path(sys.executable).with_name("spinup"))
URL = "http://127.0.0.1:8765/mcp"
FILES = {
    "claude-code": "claude-code.mcp.json",
    "codex": "codex.config.toml",
    "gemini": "gemini.settings.json",
    "cursor": "cursor.mcp.json",
    "vscode": "vscode.mcp.json",
    "inspector": "inspector.config.json",
    "generic": "generic.json",
}


def load(path: Path) -> dict[str, Any]:
    return tomllib.loads(path.read_text()) if path.suffix == ".toml" else json.loads(path.read_text())


def spinup(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SPINUP, *args], capture_output=True, text=True, cwd=cwd)


def test_every_harness_has_a_shipped_config() -> None:
    assert set(FILES) == set(HARNESSES)
    assert sorted(p.name for p in CONFIGS.iterdir() if p.suffix != ".md") == sorted(FILES.values())


@pytest.mark.parametrize("harness", sorted(FILES))
def test_a_shipped_config_parses_and_matches_spinup_config(harness: str) -> None:
    spec = HARNESSES[harness]
    servers = load(CONFIGS / FILES[harness])[spec.key]
    assert servers["spinup"] == entry(harness, "my-agent", None, command="spinup")
    assert servers["spinup-http"] == entry(harness, None, URL)
    build_parser().parse_args(servers["spinup"]["args"])  # the stdio entry runs a real subcommand
    printed = spinup("config", harness, "--agent", "my-agent")
    assert printed.returncode == 0, printed.stderr
    document = tomllib.loads(printed.stdout) if spec.fmt == "toml" else json.loads(printed.stdout)
    key = spec.key
    assert document[key]["spinup"]["args"] == ["mcp", "--agent", "my-agent"]
    assert Path(document[key]["spinup"]["command"]).name == "spinup"
    over_http = spinup("config", harness, "--http", URL)
    http_doc = tomllib.loads(over_http.stdout) if spec.fmt == "toml" else json.loads(over_http.stdout)
    assert http_doc[key]["spinup"] == servers["spinup-http"]


def test_the_list_names_every_harness() -> None:
    listing = spinup("config", "--list").stdout
    assert all(name in listing for name in HARNESSES)


def test_unknown_harness_and_bad_url_are_clear_errors() -> None:
    unknown = spinup("config", "emacs")
    assert unknown.returncode == 2 and "Known:" in unknown.stderr
    bad = spinup("config", "cursor", "--http", "localhost:8765")
    assert bad.returncode == 2 and "URL" in bad.stderr


def test_write_merges_json_keeping_other_servers_and_backs_up(tmp_path: Path) -> None:
    target = tmp_path / ".mcp.json"
    target.write_text(json.dumps({"mcpServers": {"other": {"command": "x"}}, "keep": True}))
    result = spinup("config", "claude-code", "--agent", "dev", "--write", "--path", str(target))
    assert result.returncode == 0, result.stderr
    merged = json.loads(target.read_text())
    assert merged["keep"] is True and merged["mcpServers"]["other"] == {"command": "x"}
    assert merged["mcpServers"]["spinup"]["args"] == ["mcp", "--agent", "dev"]
    backups = list(tmp_path.glob(".mcp.json.bak-*"))
    assert len(backups) == 1 and "other" in backups[0].read_text()


def test_write_merges_toml_replacing_only_the_spinup_table(tmp_path: Path) -> None:
    target = tmp_path / "config.toml"
    target.write_text('model = "o3"\n\n[mcp_servers.other]\ncommand = "x"\n\n[mcp_servers.spinup]\ncommand = "old"\n')
    assert spinup("config", "codex", "--agent", "dev", "--write", "--path", str(target)).returncode == 0
    merged = tomllib.loads(target.read_text())
    assert merged["model"] == "o3" and merged["mcp_servers"]["other"] == {"command": "x"}
    assert merged["mcp_servers"]["spinup"]["args"] == ["mcp", "--agent", "dev"]
    assert merged["mcp_servers"]["spinup"]["tool_timeout_sec"] == 600


@pytest.mark.parametrize(("harness", "content"), [("cursor", "{not json"), ("codex", "[broken")])
def test_a_malformed_file_is_left_untouched(tmp_path: Path, harness: str, content: str) -> None:
    target = tmp_path / "config"
    target.write_text(content)
    result = spinup("config", harness, "--write", "--path", str(target))
    assert result.returncode == 2 and "Nothing was changed" in result.stderr
    assert target.read_text() == content and list(tmp_path.iterdir()) == [target]
