"""The shipped harness configs parse and match `spinup config`; `--write` merges safely, with a backup."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from spinup.server.cli import build_parser, main
from spinup.server.harness import HARNESSES

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


def parse(text: str, fmt: str) -> dict[str, Any]:
    return tomllib.loads(text) if fmt == "toml" else dict(json.loads(text))


def servers_of(harness: str, text: str) -> dict[str, Any]:
    spec = HARNESSES[harness]
    servers: dict[str, Any] = parse(text, spec.fmt)[spec.key]
    return servers


def spinup(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The installed `spinup` executable, as a harness or a user runs it."""
    return subprocess.run([SPINUP, *args], capture_output=True, text=True, cwd=cwd, timeout=60)


def config(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """`spinup config ...` in this process (fast); returns exit code, stdout, stderr."""
    code = main(["config", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_every_harness_has_a_shipped_config_and_every_shipped_config_a_harness() -> None:
    assert set(FILES) == set(HARNESSES)
    assert sorted(p.name for p in CONFIGS.iterdir() if p.suffix != ".md") == sorted(FILES.values())


@pytest.mark.parametrize("harness", sorted(FILES))
def test_a_shipped_config_parses_and_is_what_spinup_config_prints(harness: str) -> None:
    shipped = servers_of(harness, (CONFIGS / FILES[harness]).read_text())
    assert set(shipped) == {"spinup", "spinup-http"}
    build_parser().parse_args(shipped["spinup"]["args"])  # the stdio entry runs a real subcommand

    printed = spinup("config", harness, "--agent", "dev")
    assert printed.returncode == 0, printed.stderr
    stdio = servers_of(harness, printed.stdout)["spinup"]
    # The printed command is this installation's own executable, by absolute path.
    assert stdio["command"] == SPINUP
    assert stdio == {**shipped["spinup"], "command": SPINUP, "args": ["mcp", "--agent", "dev"]}

    over_http = spinup("config", harness, "--http", URL)
    assert over_http.returncode == 0, over_http.stderr
    assert servers_of(harness, over_http.stdout) == {"spinup": shipped["spinup-http"]}


def test_the_codex_config_passes_spinups_environment_and_long_tool_timeouts() -> None:
    servers = servers_of("codex", (CONFIGS / FILES["codex"]).read_text())
    assert "SPINUP_HOME" in servers["spinup"]["env_vars"] and "DOCKER_HOST" in servers["spinup"]["env_vars"]
    assert servers["spinup"]["startup_timeout_sec"] >= 10
    assert all(server["tool_timeout_sec"] >= 600 for server in servers.values())
    assert servers["spinup-http"]["bearer_token_env_var"] == "SPINUP_TOKEN"


def test_the_list_names_every_harness_with_its_file(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = config(capsys, "--list")
    assert code == 0
    lines = out.splitlines()
    assert [line.split()[0] for line in lines] == list(HARNESSES)
    assert all(line.endswith(spec.path) for line, spec in zip(lines, HARNESSES.values(), strict=True))


@pytest.mark.parametrize(
    "args",
    [
        ["emacs"],
        ["cursor", "--http", "localhost:8765"],
        ["cursor", "--agent", "Not A Name"],
        ["cursor", "--agent", "dev", "--http", URL],
        ["cursor", "--path", "somewhere.json"],
    ],
)
def test_bad_arguments_are_clear_errors(capsys: pytest.CaptureFixture[str], args: list[str]) -> None:
    code, out, err = config(capsys, *args)
    assert code == 2 and out == ""
    assert err.startswith("spinup: error: ") and len(err) > 40


@pytest.mark.parametrize(
    ("harness", "default"),
    [
        ("claude-code", "project/.mcp.json"),
        ("codex", "home/.codex/config.toml"),
        ("gemini", "home/.gemini/settings.json"),
        ("cursor", "project/.cursor/mcp.json"),
        ("vscode", "project/.vscode/mcp.json"),
    ],
)
def test_write_creates_the_harness_file_at_its_usual_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], harness: str, default: str
) -> None:
    (tmp_path / "project").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path / "project")
    code, out, err = config(capsys, harness, "--agent", "dev", "--write")
    assert code == 0, err
    assert out == ""  # messages go to stderr
    written = servers_of(harness, (tmp_path / default).read_text())
    assert written["spinup"]["args"][-3:] == ["mcp", "--agent", "dev"]
    assert list((tmp_path / default).parent.glob("*.bak-*")) == []  # nothing to back up


def test_write_merges_json_keeping_everything_else_and_backs_up_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / ".mcp.json"
    original = json.dumps({"mcpServers": {"other": {"command": "x"}, "spinup": {"command": "old"}}, "keep": [1, "ü"]})
    target.write_text(original)
    target.chmod(0o600)
    code, _, err = config(capsys, "claude-code", "--agent", "dev", "--write", "--path", str(target))
    assert code == 0, err
    merged = json.loads(target.read_text())
    assert merged["keep"] == [1, "ü"]
    assert list(merged["mcpServers"]) == ["other", "spinup"]
    assert merged["mcpServers"]["other"] == {"command": "x"}
    assert merged["mcpServers"]["spinup"]["args"][-3:] == ["mcp", "--agent", "dev"]
    assert target.stat().st_mode & 0o777 == 0o600
    [backup] = tmp_path.glob(".mcp.json.bak-*")
    assert backup.read_text() == original and str(backup) in err


def test_two_writes_in_one_second_keep_both_backups(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "mcp.json"
    target.write_text('{"mcpServers": {"first": {"command": "x"}}}')
    for agent in ("one", "two", "three"):
        code, _, err = config(capsys, "cursor", "--agent", agent, "--write", "--path", str(target))
        assert code == 0, err
    backups = sorted(tmp_path.glob("mcp.json.bak-*"), key=lambda p: p.stat().st_mtime_ns)
    assert len(backups) == 3
    assert "first" in backups[0].read_text() and "spinup" not in backups[0].read_text()


def test_write_through_a_symlinked_config_keeps_the_link(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    real = tmp_path / "dotfiles" / "settings.json"
    real.parent.mkdir()
    real.write_text('{"theme": "dark"}')
    link = tmp_path / "settings.json"
    link.symlink_to(real)
    code, _, err = config(capsys, "gemini", "--agent", "dev", "--write", "--path", str(link))
    assert code == 0, err
    assert link.is_symlink()
    assert json.loads(real.read_text())["theme"] == "dark" and "spinup" in json.loads(real.read_text())["mcpServers"]


CODEX_CONFIG = """\
# my Codex settings
model = "o3"

[mcp_servers.other]
command = "x"   # keep this comment

[mcp_servers.spinup]  # added by hand
command = "old"
args = ["--stale"]

[mcp_servers.spinup.env]
OLD = "1"

# notes about the profile below
[profiles.fast]
model = "o4-mini"
"""


def test_write_replaces_only_the_spinup_table_of_a_codex_config_in_place(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "config.toml"
    target.write_text(CODEX_CONFIG)
    code, _, err = config(capsys, "codex", "--agent", "dev", "--write", "--path", str(target))
    assert code == 0, err
    text = target.read_text()
    merged = tomllib.loads(text)
    assert merged["model"] == "o3" and merged["profiles"] == {"fast": {"model": "o4-mini"}}
    assert merged["mcp_servers"]["other"] == {"command": "x"}
    spinup_table = merged["mcp_servers"]["spinup"]
    assert spinup_table["args"][-3:] == ["mcp", "--agent", "dev"] and "env" not in spinup_table
    assert spinup_table["tool_timeout_sec"] == 600
    # The table is replaced where it was; the lines around it stay as written, comments included.
    assert text.startswith(CODEX_CONFIG[: CODEX_CONFIG.index("[mcp_servers.spinup]")])
    assert text.endswith('= 600\n\n# notes about the profile below\n[profiles.fast]\nmodel = "o4-mini"\n')
    assert text.index("[mcp_servers.other]") < text.index("[mcp_servers.spinup]") < text.index("[profiles.fast]")
    assert "added by hand" not in text and "OLD" not in text


def test_write_appends_the_table_to_a_codex_config_without_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "config.toml"
    target.write_text('model = "o3"\n')
    code, _, err = config(capsys, "codex", "--http", URL, "--write", "--path", str(target))
    assert code == 0, err
    assert tomllib.loads(target.read_text()) == {
        "model": "o3",
        "mcp_servers": {"spinup": {"url": URL, "bearer_token_env_var": "SPINUP_TOKEN", "tool_timeout_sec": 600}},
    }


@pytest.mark.parametrize(
    ("harness", "content"),
    [
        ("cursor", "{not json"),
        ("vscode", '{"servers": {}, // a comment\n}'),
        ("claude-code", '{"mcpServers": ["a list"]}'),
        ("generic", "[]"),
        ("codex", "[broken"),
        ("codex", '[mcp_servers]\nspinup = { command = "inline" }\n'),
        ("codex", '[mcp_servers]\nspinup.command = "dotted"\n'),
        ("codex", 'mcp_servers = "not a table"\n'),
    ],
)
def test_a_file_that_cannot_be_merged_is_refused_and_left_untouched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], harness: str, content: str
) -> None:
    target = tmp_path / "config"
    target.write_text(content)
    code, out, err = config(capsys, harness, "--agent", "dev", "--write", "--path", str(target))
    assert code == 2 and out == ""
    assert str(target) in err and "Nothing was changed" in err
    assert target.read_text() == content
    assert list(tmp_path.iterdir()) == [target]  # no backup, no temporary file


def test_a_path_that_is_not_a_readable_text_file_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00")
    for target in (tmp_path, binary):
        code, _, err = config(capsys, "cursor", "--write", "--path", str(target))
        assert code == 2 and "--path" in err
    assert binary.read_bytes() == b"\xff\xfe\x00" and sorted(tmp_path.iterdir()) == [binary]


def test_the_config_command_prints_nothing_but_the_snippet_on_stdout() -> None:
    result = spinup("config", "codex", "--agent", "dev")
    assert result.returncode == 0
    assert tomllib.loads(result.stdout)["mcp_servers"]["spinup"]["command"] == SPINUP
    assert "note:" in result.stderr and "env_vars" in result.stderr


def test_without_a_spinup_executable_the_snippet_runs_this_python(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["pytest"])
    monkeypatch.setenv("PATH", str(tmp_path))  # no spinup there
    code, out, _ = config(capsys, "generic", "--agent", "dev")
    assert code == 0
    stdio = servers_of("generic", out)["spinup"]
    assert stdio["command"] == sys.executable
    assert stdio["args"] == ["-m", "spinup.server", "mcp", "--agent", "dev"]
