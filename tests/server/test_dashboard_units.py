"""Pure logic of the dashboard and the token: states, one-line policies, the same-origin rule, sessions,
the token file's rules."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
from starlette.requests import Request

from spinup.runtime import Agent, AgentState, InvalidInput, Policy, Settings
from spinup.server.dashboard.sessions import Sessions, same_origin
from spinup.server.dashboard.views import display_state, policy_line
from spinup.server.tokens import read_token_file, resolve_token, stored_token


def request(headers: dict[str, str], cookies: str = "") -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    if cookies:
        raw.append((b"cookie", cookies.encode()))
    return Request({"type": "http", "method": "POST", "path": "/", "headers": raw})


def agent(state: AgentState = AgentState.RUNNING, paused: bool = False) -> Agent:
    now = datetime.now(UTC)
    return Agent(
        id="a-1", name="x", image="img", policy=Policy(), created_at=now, machine_id="m", state=state,
        paused_at=now if paused else None,
    )


def test_the_state_shown_follows_docker_and_the_pause_record() -> None:
    assert display_state(agent(), "running") == "running"
    assert display_state(agent(paused=True), "running") == "paused"
    assert display_state(agent(), "paused") == "paused"
    assert display_state(agent(), "exited") == "stopped"
    assert display_state(agent(AgentState.HIBERNATED), "absent") == "hibernated"
    assert display_state(agent(), "absent") == "missing"
    assert display_state(agent(AgentState.STOPPED)) == "stopped"
    assert display_state(agent(), "unknown") == "unknown"


def test_a_policy_fits_one_line() -> None:
    assert policy_line(Policy()) == "net none · agent · all cpus · mem 4g · 1024 pids · disk 20g"
    assert "disk unlimited" in policy_line(Policy(disk=None, cpus=1.5))


def test_a_button_must_come_from_the_dashboards_own_origin() -> None:
    assert same_origin(request({"Host": "127.0.0.1:8765", "Origin": "http://127.0.0.1:8765"}))
    assert not same_origin(request({"Host": "127.0.0.1:8765"}))
    assert not same_origin(request({"Host": "127.0.0.1:8765", "Origin": "null"}))
    assert not same_origin(request({"Host": "127.0.0.1:8765", "Origin": "http://evil.example"}))
    assert not same_origin(request({"Host": "127.0.0.1:8765", "Origin": "http://127.0.0.1:8766"}))
    cross = {"Host": "127.0.0.1:8765", "Origin": "http://127.0.0.1:8765", "Sec-Fetch-Site": "cross-site"}
    assert not same_origin(request(cross))


def test_only_the_token_opens_a_session_and_the_cookie_is_strict() -> None:
    sessions = Sessions("the-right-token", 8765)
    assert sessions.login("wrong-token") is None
    session = sessions.login("the-right-token")
    assert session is not None and "the-right-token" not in session
    assert sessions.allows(request({}, f"{sessions.cookie}={session}"))
    assert not sessions.allows(request({}, f"{sessions.cookie}=forged"))
    assert not sessions.allows(request({}, f"spinup_session_9999={session}"))
    assert sessions.allows(request({"Authorization": "Bearer the-right-token"}))
    cookie = sessions.set_cookie(session)
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and cookie.startswith("spinup_session_8765=")
    assert session not in sessions.label(request({}, f"{sessions.cookie}={session}"))


def test_a_generated_token_is_private_kept_and_refused_when_others_can_read_it(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    made = stored_token(settings)
    assert made.source == "generated" and made.path is not None
    assert os.stat(made.path).st_mode & 0o777 == 0o600
    again = stored_token(settings)
    assert again.value == made.value and again.source == "file"
    os.chmod(made.path, 0o640)
    with pytest.raises(InvalidInput, match="chmod 600"):
        stored_token(settings)
    link = tmp_path / "link"
    link.symlink_to(made.path)
    with pytest.raises(InvalidInput):
        read_token_file(link)


def test_an_explicit_token_wins_and_a_short_one_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(home=tmp_path / "home")
    monkeypatch.setenv("SPINUP_TOKEN", "from-the-environment")
    assert resolve_token(settings, None, None).source == "env"
    assert resolve_token(settings, "from-the-option", None).value == "from-the-option"
    with pytest.raises(InvalidInput, match="too short"):
        resolve_token(settings, "short", None)
    assert not (settings.home / "http-token").exists()


def test_the_dashboard_owns_its_paths_only_and_never_one_with_dot_segments() -> None:
    from spinup.server.app import RuntimeHolder
    from spinup.server.dashboard import Dashboard

    dash = Dashboard(RuntimeHolder(Settings()), "a-token-of-ours", None, port=8765)
    for path in ("/", "/login", "/agents/a", "/stream", "/static/app.js", "/fragments/agents"):
        assert dash.owns(path), path
    for path in ("/mcp", "/metrics", "/static/../mcp", "/agents/a/../../mcp", "//mcp", "/agents", "/x"):
        assert not dash.owns(path), path
