"""The shipped harness configs parse and point at commands Spinup has."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

from spinup.server.cli import build_parser

CONFIGS = Path(__file__).resolve().parent.parent / "harness-configs"


def test_claude_code_config_has_a_stdio_and_an_http_server() -> None:
    servers = json.loads((CONFIGS / "claude-code.mcp.json").read_text())["mcpServers"]
    assert servers["spinup"]["type"] == "stdio"
    build_parser().parse_args(servers["spinup"]["args"])
    assert servers["spinup-http"]["url"].endswith("/mcp")
    assert servers["spinup-http"]["headers"]["Authorization"] == "Bearer ${SPINUP_TOKEN}"


def test_codex_config_has_a_stdio_and_an_http_server() -> None:
    servers = tomllib.loads((CONFIGS / "codex.config.toml").read_text())["mcp_servers"]
    build_parser().parse_args(servers["spinup"]["args"])
    assert servers["spinup"]["tool_timeout_sec"] >= 600
    assert servers["spinup-http"]["bearer_token_env_var"] == "SPINUP_TOKEN"
