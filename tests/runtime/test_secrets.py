"""Credentials against the real daemon: usable by commands, never seen in results, layers, logs or the DB."""

from __future__ import annotations

import base64
import logging
import os
import subprocess
import sys
import urllib.parse
from dataclasses import replace
from pathlib import Path

import pytest
import zstandard

from conftest import unique_name
from spinup.runtime import Runtime, Settings
from spinup.runtime.credentials import CredentialKeyError, SecretNotFound
from spinup.runtime.errors import InvalidInput, PathNotFound

TOKEN = "ghp_Sup3rSecretT0ken/with+odd=chars&more"
REDACTED = "[REDACTED:GH_TOKEN]"


def _everything_in(path: Path) -> bytes:
    """Every byte under ``path``, zstd layers decompressed."""
    data = bytearray()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        raw = file.read_bytes()
        data += raw
        if raw[:4] == b"\x28\xb5\x2f\xfd":
            data += zstandard.ZstdDecompressor().decompressobj().decompress(raw)
    return bytes(data)


@pytest.fixture
async def bound(runtime: Runtime, agent: str) -> str:
    runtime.set_secret("GH_TOKEN", TOKEN)
    runtime.bind_secret(agent, "GH_TOKEN", env="GH_TOKEN", file="gh/token")
    return agent


async def test_a_bound_secret_is_usable_but_every_form_of_it_is_redacted(runtime: Runtime, bound: str) -> None:
    result = await runtime.exec(
        bound,
        'printenv GH_TOKEN; cat /run/spinup/secrets/gh/token; echo; printf %s "$GH_TOKEN" | base64 -w0; echo; '
        "python3 -c \"import os, urllib.parse; print(urllib.parse.quote(os.environ['GH_TOKEN'], safe=''))\"; "
        'printf %s "$GH_TOKEN" | cut -c1-9; sleep 0.3; printf %s "$GH_TOKEN" | cut -c10-; '
        'echo "to stderr $GH_TOKEN" >&2; test "$(cat /run/spinup/secrets/gh/token)" = "$GH_TOKEN" && echo same',
    )
    assert result.exit_code == 0, result.stderr
    assert TOKEN not in result.stdout + result.stderr
    assert base64.b64encode(TOKEN.encode()).decode() not in result.stdout
    assert urllib.parse.quote(TOKEN, safe="") not in result.stdout
    lines = result.stdout.splitlines()
    assert lines[:4] == [REDACTED] * 4
    assert result.stderr == f"to stderr {REDACTED}\n"
    assert lines[-1] == "same"
    files = await runtime.files(bound)
    await runtime.exec(bound, 'printf "key=%s\\n" "$GH_TOKEN" > /workspace/config')
    assert (await files.read("/workspace/config")).content == f"key={REDACTED}\n"
    as_base64 = await files.read("/workspace/config", encoding="base64")
    assert base64.b64decode(as_base64.content) == f"key={REDACTED}\n".encode()


async def test_a_value_split_across_output_chunks_is_still_redacted(runtime: Runtime, bound: str) -> None:
    half = len(TOKEN) // 2
    command = f'printf %s "{TOKEN[:half]}"; sleep 0.5; printf %s "{TOKEN[half:]}"'
    result = await runtime.exec(bound, ["sh", "-c", command])
    assert result.stdout == REDACTED


async def test_secrets_stay_out_of_snapshots_events_the_db_and_logs(
    runtime: Runtime, bound: str, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await runtime.exec(bound, "cat /run/spinup/secrets/gh/token > /dev/null; printenv GH_TOKEN > /dev/null")
    await runtime.snapshot(bound, label="with a secret bound")
    missing = await runtime.exec(bound, ["ls", f"/nonexistent/{TOKEN}"])
    assert TOKEN not in missing.stderr and REDACTED in missing.stderr
    logging.getLogger("spinup.test").warning("something mentioned %s", TOKEN)
    with pytest.raises(PathNotFound) as failure:
        await (await runtime.files(bound)).read(f"/workspace/{TOKEN}")
    assert TOKEN in str(failure.value)  # the runtime's own error; the server and CLI redact it (tested there)
    assert runtime.redact(str(failure.value)).count(REDACTED) == 1
    runtime._db.record_event(runtime.get_agent(bound).id, "note", f"user said {TOKEN}")
    assert all(TOKEN not in e.detail for e in runtime.events(bound, 100))
    assert TOKEN not in caplog.text and REDACTED in caplog.text
    assert (settings.home / "store" / "index.json").exists()
    everything = _everything_in(settings.home)
    assert TOKEN.encode() not in everything
    assert base64.b64encode(TOKEN.encode()) not in everything


async def test_another_agent_sees_none_of_them(runtime: Runtime, bound: str) -> None:
    other = unique_name("other")
    await runtime.create_agent(other)
    result = await runtime.exec(other, "printenv GH_TOKEN; ls -A /run/spinup/secrets; echo done")
    assert result.stdout == "done\n"
    snoop = await runtime.exec(other, "cat /proc/*/environ 2>/dev/null | tr '\\0' '\\n' | grep -c GH_TOKEN; true")
    assert snoop.stdout.strip() == "0"


async def test_secret_files_come_back_after_a_restart_and_follow_changes(runtime: Runtime, bound: str) -> None:
    await runtime.stop_agent(bound)
    back = await runtime.exec(bound, "cat /run/spinup/secrets/gh/token")
    assert back.stdout == REDACTED
    runtime.set_secret("GH_TOKEN", "a-new-value-1234")
    changed = await runtime.exec(bound, 'cat /run/spinup/secrets/gh/token; echo; echo "$GH_TOKEN"')
    assert changed.stdout == "[REDACTED:GH_TOKEN]\n[REDACTED:GH_TOKEN]\n"
    length = await runtime.exec(bound, "wc -c < /run/spinup/secrets/gh/token")
    assert length.stdout.strip() == str(len("a-new-value-1234"))
    runtime.unbind_secret(bound, "GH_TOKEN")
    gone = await runtime.exec(bound, "ls -A /run/spinup/secrets; printenv GH_TOKEN; echo end")
    assert gone.stdout == "end\n"


async def test_binding_errors_are_clear(runtime: Runtime, agent: str) -> None:
    with pytest.raises(SecretNotFound, match="No credential named"):
        runtime.bind_secret(agent, "MISSING")
    runtime.set_secret("ONE", "value-one")
    with pytest.raises(InvalidInput, match="plain relative name"):
        runtime.bind_secret(agent, "ONE", file="../../etc/passwd")
    with pytest.raises(InvalidInput, match="environment variable"):
        runtime.bind_secret(agent, "ONE", env="BAD-NAME")
    assert runtime.bind_secret(agent, "ONE").env == "ONE"
    runtime.set_secret("TWO", "value-two")
    with pytest.raises(InvalidInput, match="already gets ONE"):
        runtime.bind_secret(agent, "TWO", env="ONE")


async def test_a_wrong_master_key_is_a_clear_error_and_overwrites_nothing(
    runtime: Runtime, bound: str, settings: Settings
) -> None:
    before = settings.credentials_path.read_bytes()
    wrong = base64.urlsafe_b64encode(os.urandom(32)).decode()
    other = Runtime(replace(settings, master_key=wrong))
    try:
        with pytest.raises(CredentialKeyError, match="does not open"):
            await other.exec(bound, "true")
        with pytest.raises(CredentialKeyError):
            other.set_secret("GH_TOKEN", "replacement-value")
    finally:
        await other.close()
    assert settings.credentials_path.read_bytes() == before
    assert (await runtime.exec(bound, "printenv GH_TOKEN")).stdout == REDACTED + "\n"


def test_the_cli_reads_values_from_stdin_and_never_prints_them(tmp_path: Path) -> None:
    env = {**os.environ, "SPINUP_HOME": str(tmp_path / "home")}
    spinup = [sys.executable, "-m", "spinup.server"]
    stored = subprocess.run(
        [*spinup, "secret", "set", "NPM_TOKEN"], input="npm_abcdef123456\n", capture_output=True, text=True, env=env
    )
    assert stored.returncode == 0, stored.stderr
    listed = subprocess.run([*spinup, "secret", "list"], capture_output=True, text=True, env=env)
    assert "NPM_TOKEN" in listed.stdout and "npm_abcdef123456" not in listed.stdout + stored.stdout + stored.stderr
    key_file = tmp_path / "home" / "master.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    old_key = key_file.read_bytes()
    rotated = subprocess.run([*spinup, "secret", "rotate-key"], capture_output=True, text=True, env=env)
    assert rotated.returncode == 0, rotated.stderr
    assert key_file.read_bytes() != old_key
    failed = subprocess.run(
        [*spinup, "secret", "bind", "no-such-agent", "NPM_TOKEN"], capture_output=True, text=True, env=env
    )
    assert failed.returncode == 2 and "No agent named" in failed.stderr
    echoed = subprocess.run([*spinup, "agent", "show", "npm_abcdef123456"], capture_output=True, text=True, env=env)
    assert echoed.returncode == 2 and "Invalid agent name" in echoed.stderr
    assert "npm_abcdef123456" not in echoed.stderr and "[REDACTED:NPM_TOKEN]" in echoed.stderr
    removed = subprocess.run([*spinup, "secret", "rm", "NPM_TOKEN"], capture_output=True, text=True, env=env)
    assert removed.returncode == 0
    assert (
        "NPM_TOKEN" not in subprocess.run([*spinup, "secret", "list"], capture_output=True, text=True, env=env).stdout
    )
