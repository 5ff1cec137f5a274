"""Every tool through the real MCP client, in memory: results, schemas, errors, bound mode."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from mcp import Client

from conftest import call, fails, held_open, unique_name
from package_sources import make_wheel
from spinup.runtime import Runtime, Settings
from spinup.server.app import build_server

EXPECTED_TOOLS = {
    "agent_create",
    "agent_allow",
    "agent_list",
    "agent_status",
    "agent_stop",
    "agent_remove",
    "exec",
    "file_read",
    "file_write",
    "file_list",
    "file_stat",
    "file_mkdir",
    "file_move",
    "file_delete",
    "snapshot_create",
    "snapshot_list",
    "snapshot_restore",
    "snapshot_fork",
    "snapshot_diff",
    "snapshot_delete",
    "snapshot_push",
    "agent_pull",
    "secret_set",
    "secret_list",
    "package_install",
    "package_remove",
    "package_list",
    "agent_events",
    "exec_log",
    "agent_pause",
    "agent_resume",
    "agent_kill",
    "exec_kill",
    "process_start",
    "process_list",
    "process_output",
    "process_wait",
    "process_signal",
    "process_remove",
    "port_forward",
    "port_list",
    "port_close",
}


@pytest.fixture
async def agent_name(client: Client) -> str:
    name = unique_name("mcp")
    await call(client, "agent_create", name=name)
    return name


async def test_every_tool_is_listed_with_a_description_output_schema_and_annotations(client: Client) -> None:
    tools = {t.name: t for t in (await client.list_tools()).tools}
    assert set(tools) == EXPECTED_TOOLS
    for tool in tools.values():
        assert tool.description and len(tool.description) > 20
        assert tool.output_schema is not None
        assert tool.annotations is not None
    assert tools["file_read"].annotations.read_only_hint is True  # type: ignore[union-attr]
    assert tools["agent_remove"].annotations.destructive_hint is True  # type: ignore[union-attr]
    assert tools["file_mkdir"].annotations.idempotent_hint is True  # type: ignore[union-attr]
    assert tools["exec"].annotations.read_only_hint is False  # type: ignore[union-attr]
    assert "agent" in tools["exec"].input_schema["required"]
    assert tools["agent_events"].annotations.read_only_hint is True  # type: ignore[union-attr]
    assert tools["exec_log"].annotations.read_only_hint is True  # type: ignore[union-attr]
    assert tools["agent_kill"].annotations.destructive_hint is True  # type: ignore[union-attr]
    assert tools["exec_kill"].annotations.destructive_hint is True  # type: ignore[union-attr]
    assert tools["agent_pause"].annotations.idempotent_hint is True  # type: ignore[union-attr]
    assert tools["agent_pause"].annotations.destructive_hint is False  # type: ignore[union-attr]


async def test_agent_tools_create_list_status_stop_and_remove(client: Client) -> None:
    name = unique_name("mcp")
    created = await call(client, "agent_create", name=name)
    assert created["state"] == "running" and created["network"] == "none"
    listed = await call(client, "agent_list")
    assert name in [a["name"] for a in listed["agents"]]
    stopped = await call(client, "agent_stop", agent=name)
    assert stopped["state"] == "stopped"
    status = await call(client, "agent_status", agent=name)
    assert status["machine_status"] == "exited"
    assert [e["kind"] for e in status["events"] if e["kind"] != "tool-call"][-1] == "machine-stopped"
    removed = await call(client, "agent_remove", agent=name)
    assert removed["name"] == name
    assert name not in [a["name"] for a in (await call(client, "agent_list"))["agents"]]


async def test_agent_create_takes_a_policy_and_status_shows_it(client: Client) -> None:
    name = unique_name("pol")
    created = await call(client, "agent_create", name=name, memory="256m", pids=128, cpus=0.5)
    assert created["policy"]["memory"] == 256 << 20 and created["policy"]["user"] == "agent"
    status = await call(client, "agent_status", agent=name)
    assert "memory=256m" in status["policy"] and "pids=128" in status["policy"] and "user=agent" in status["policy"]
    assert status["disk_used"] >= 0
    whoami = await call(client, "exec", agent=name, command="id -u")
    assert whoami["stdout"] == "1000\n" and whoami["limit"] is None
    assert "Invalid policy" in await fails(client, "agent_create", name=unique_name("pol"), memory="lots")
    assert "CPUs" in await fails(client, "agent_create", name=unique_name("pol"), cpus=512)
    await call(client, "agent_remove", agent=name)


async def test_agent_create_grants_only_what_the_operator_allows(client: Client, settings: Settings) -> None:
    """By default a model may ask for neither root nor the host's network."""
    described = {t.name: t for t in (await client.list_tools()).tools}["agent_create"].input_schema["properties"]
    assert "not granted" in described["network"]["description"]
    assert "not granted" in described["user"]["description"]
    name = unique_name("grant")
    refused = await fails(client, "agent_create", name=name, network="host")
    assert "does not let MCP clients create agents with --network host" in refused
    assert "spinup agent create NAME --network host" in refused and "SPINUP_MCP_GRANTS=host-network" in refused
    assert "--user root" in await fails(client, "agent_create", name=name, user="root")
    assert name not in [a["name"] for a in (await call(client, "agent_list"))["agents"]]
    rooting = Settings(home=settings.home, label_extra=settings.label_extra, mcp_grants=frozenset({"root"}))
    async with held_open(Client(build_server(rooting))) as root_allowed:
        described = {t.name: t for t in (await root_allowed.list_tools()).tools}["agent_create"]
        assert "'root' (needed for apt)" in described.input_schema["properties"]["user"]["description"]
        rooted = await call(root_allowed, "agent_create", name=name, user="root")
        assert rooted["policy"]["user"] == "root"
        await call(root_allowed, "agent_remove", agent=name)

    allowed = Settings(home=settings.home, label_extra=settings.label_extra, mcp_grants=frozenset({"host-network"}))
    async with held_open(Client(build_server(allowed))) as operator_allowed:
        described = {t.name: t for t in (await operator_allowed.list_tools()).tools}["agent_create"]
        assert "shares the host network" in described.input_schema["properties"]["network"]["description"]
        assert "not granted" in described.input_schema["properties"]["user"]["description"]
        hosted = await call(operator_allowed, "agent_create", name=name, network="host")
        assert hosted["policy"]["network"] == "host"
        assert "--user root" in await fails(operator_allowed, "agent_create", name=unique_name("grant"), user="root")
        await call(operator_allowed, "agent_remove", agent=name)


async def test_exec_returns_exit_code_and_separate_streams(client: Client, agent_name: str) -> None:
    out = await call(client, "exec", agent=agent_name, command="echo out; echo err >&2; exit 7")
    assert (out["exit_code"], out["stdout"], out["stderr"], out["timed_out"]) == (7, "out\n", "err\n", False)
    argv = await call(client, "exec", agent=agent_name, command=["printf", "%s", "a b"], cwd="/tmp")
    assert argv["stdout"] == "a b"
    fed = await call(client, "exec", agent=agent_name, command="tr a-z A-Z", stdin="shout", env={"X": "1"})
    assert fed["stdout"] == "SHOUT"


async def test_exec_sends_progress_when_the_client_asks_for_it(
    client: Client, agent_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("spinup.runtime.exec.PROGRESS_INTERVAL", 0.1)
    updates: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        updates.append((progress, total, message))

    result = await client.call_tool(
        "exec", {"agent": agent_name, "command": "sleep 1", "timeout": 30}, progress_callback=on_progress
    )
    assert not result.is_error
    assert updates, "no progress notification arrived"
    assert updates[0][1] == 30 and "running" in (updates[0][2] or "")


async def test_snapshot_create_reports_what_it_archives(
    client: Client, agent_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("spinup.server.tools.common.REPORT_INTERVAL", 0.0)
    write = "for i in 1 2 3; do head -c 20971520 /dev/urandom > /workspace/big$i; done"
    await call(client, "exec", agent=agent_name, command=write)
    messages: list[str] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        messages.append(message or "")

    result = await client.call_tool("snapshot_create", {"agent": agent_name}, progress_callback=on_progress)
    assert not result.is_error
    walked = [m for m in messages if m.startswith("archiving ")]
    assert len(walked) == 1 and walked[0].endswith("changed paths (60.0 MiB)"), messages
    assert any(m.endswith("of about 60.0 MiB archived") for m in messages[messages.index(walked[0]) :]), messages


async def test_binary_and_huge_output_keep_the_protocol_intact(client: Client, agent_name: str) -> None:
    binary = await call(client, "exec", agent=agent_name, command="head -c 2048 /dev/urandom; printf '\\377'")
    assert isinstance(binary["stdout"], str)
    big = await call(client, "exec", agent=agent_name, command="head -c 50000000 /dev/zero", max_output_bytes=65536)
    assert big["stdout_truncated"] is True and big["stdout_dropped_bytes"] == 50_000_000 - 65536
    assert (await call(client, "exec", agent=agent_name, command="echo next"))["stdout"] == "next\n"


async def test_file_tools_round_trip(client: Client, agent_name: str) -> None:
    written = await call(client, "file_write", agent=agent_name, path="/workspace/pkg/mod.py", content="x = 1\n")
    assert written["type"] == "file" and written["size"] == 6
    read = await call(client, "file_read", agent=agent_name, path="/workspace/pkg/mod.py")
    assert (read["content"], read["encoding"], read["eof"]) == ("x = 1\n", "text", True)
    raw = bytes(range(256))
    await call(
        client,
        "file_write",
        agent=agent_name,
        path="/workspace/b.bin",
        content=base64.b64encode(raw).decode(),
        encoding="base64",
        mode="0600",
    )
    binary = await call(client, "file_read", agent=agent_name, path="/workspace/b.bin")
    assert binary["encoding"] == "base64" and base64.b64decode(binary["content"]) == raw
    stat = await call(client, "file_stat", agent=agent_name, path="/workspace/b.bin")
    assert stat["mode"] == "0600" and stat["size"] == 256
    await call(client, "file_mkdir", agent=agent_name, path="/workspace/new/deep")
    listing = await call(client, "file_list", agent=agent_name, path="/workspace", recursive=True)
    paths = {e["path"]: e["type"] for e in listing["entries"]}
    assert paths["/workspace/pkg/mod.py"] == "file" and paths["/workspace/new/deep"] == "directory"
    moved = await call(client, "file_move", agent=agent_name, source="/workspace/pkg", destination="/workspace/lib")
    assert moved["type"] == "directory"
    assert (await call(client, "file_read", agent=agent_name, path="/workspace/lib/mod.py"))["content"] == "x = 1\n"
    await call(client, "file_delete", agent=agent_name, path="/workspace/lib", recursive=True)
    names = [e["path"] for e in (await call(client, "file_list", agent=agent_name, path="/workspace"))["entries"]]
    assert "/workspace/lib" not in names and "/workspace/b.bin" in names


@pytest.mark.parametrize(
    ("tool", "arguments", "words"),
    [
        ("exec", {"agent": "no-such-agent", "command": "true"}, "agent_create"),
        ("agent_create", {"name": "Bad_Name"}, "lowercase"),
        ("agent_create", {"name": "img-missing", "image": "spinup-test/absent:1"}, "docker pull"),
        ("exec", {"agent": "@@", "command": "true"}, "Invalid agent name"),
        ("exec", {"command": "true"}, "agent"),
        ("exec", {"agent": "no-such-agent", "command": "true", "timeout": -5}, "greater than 0"),
        ("file_read", {"agent": "no-such-agent", "path": "relative/path"}, "agent"),
    ],
)
async def test_bad_input_is_a_tool_error_and_the_server_keeps_serving(
    client: Client, tool: str, arguments: dict[str, Any], words: str
) -> None:
    assert words in await fails(client, tool, **arguments)
    assert "agents" in await call(client, "agent_list")


async def test_file_errors_say_what_to_do(client: Client, agent_name: str) -> None:
    assert "file_list" in await fails(client, "file_read", agent=agent_name, path="/workspace/missing.txt")
    assert "is a directory" in await fails(client, "file_read", agent=agent_name, path="/workspace")
    assert "absolute" in await fails(client, "file_read", agent=agent_name, path="workspace/x")
    await call(client, "file_write", agent=agent_name, path="/workspace/full/x", content="x")
    assert "recursive" in await fails(client, "file_delete", agent=agent_name, path="/workspace/full")
    assert "root" in await fails(client, "file_write", agent=agent_name, path="/etc/x", content="x")
    assert "already exists" in await fails(client, "agent_create", name=agent_name)
    assert (await call(client, "exec", agent=agent_name, command="true"))["exit_code"] == 0


async def test_a_command_that_cannot_start_is_reported_as_a_result(client: Client, agent_name: str) -> None:
    missing = await call(client, "exec", agent=agent_name, command=["no-such-binary"])
    assert missing["exit_code"] in (126, 127) and "could not start" in missing["stderr"]
    timed = await call(client, "exec", agent=agent_name, command="sleep 30", timeout=0.5)
    assert timed["timed_out"] is True and timed["exit_code"] is None and "timed out" in timed["stderr"]


async def test_a_bound_server_needs_no_agent_argument_and_creates_it_on_first_use(settings: Settings) -> None:
    name = unique_name("bound")
    async with Client(build_server(settings, agent=name)) as bound:
        tools = {t.name: t for t in (await bound.list_tools()).tools}
        assert "agent" not in tools["exec"].input_schema.get("properties", {})
        assert "agent" not in tools["file_read"].input_schema.get("properties", {})
        result = await call(bound, "exec", command="hostname")
        assert result["stdout"].strip() == name
        await call(bound, "file_write", path="/workspace/x.txt", content="bound")
        assert (await call(bound, "file_read", path="/workspace/x.txt"))["content"] == "bound"
        status = await call(bound, "agent_status")
        assert status["agent"]["name"] == name
        await call(bound, "agent_remove", agent=name)


async def test_the_guide_is_served_as_instructions_and_as_a_resource(client: Client) -> None:
    resource = await client.read_resource("spinup://guide")
    text = resource.contents[0].text  # type: ignore[union-attr]
    assert "exec" in text and "/workspace" in text
    assert "snapshot_create" in text and "snapshot_restore" in text, "the guide teaches snapshot-before-risk"


async def test_snapshot_tools_save_diff_restore_fork_and_delete(client: Client, agent_name: str) -> None:
    await call(client, "file_write", agent=agent_name, path="/workspace/state.txt", content="v1")
    first = await call(client, "snapshot_create", agent=agent_name, label="v1")
    assert first["created"] is True and first["snapshot"]["label"] == "v1"
    again = await call(client, "snapshot_create", agent=agent_name)
    assert again["created"] is False and again["snapshot"]["id"] == first["snapshot"]["id"]
    await call(client, "file_write", agent=agent_name, path="/workspace/state.txt", content="v2")
    await call(client, "file_write", agent=agent_name, path="/workspace/new.txt", content="n")
    live = await call(client, "snapshot_diff", agent=agent_name)
    assert live["changed"] == ["/workspace/state.txt"] and live["added"] == ["/workspace/new.txt"]
    restored = await call(client, "snapshot_restore", agent=agent_name, snapshot=first["snapshot"]["id"])
    saved = restored["saved_before_restore"]
    assert saved and restored["agent"]["head_snapshot"] == first["snapshot"]["id"]
    assert (await call(client, "file_read", agent=agent_name, path="/workspace/state.txt"))["content"] == "v1"
    listed = await call(client, "snapshot_list", agent=agent_name)
    assert [s["id"] for s in listed["snapshots"]] == [first["snapshot"]["id"], saved]
    fork_name = unique_name("fork")
    fork = await call(client, "snapshot_fork", snapshot=saved, name=fork_name)
    assert fork["head_snapshot"] == saved
    assert (await call(client, "file_read", agent=fork_name, path="/workspace/state.txt"))["content"] == "v2"
    refused = await fails(client, "snapshot_delete", snapshot=first["snapshot"]["id"])
    assert "parent" in refused or "head" in refused
    assert "snapshot_list" in await fails(client, "snapshot_restore", agent=agent_name, snapshot="s-000000000000")
    await call(client, "agent_remove", agent=fork_name)


async def test_removing_an_agent_deletes_its_snapshots_unless_a_fork_builds_on_them(client: Client) -> None:
    lone, parent, fork = unique_name("lone"), unique_name("parent"), unique_name("fork")
    for name in (lone, parent):
        await call(client, "agent_create", name=name)
        await call(client, "file_write", agent=name, path="/workspace/f", content=name)
    gone = (await call(client, "snapshot_create", agent=lone))["snapshot"]["id"]
    kept = (await call(client, "snapshot_create", agent=parent))["snapshot"]["id"]
    await call(client, "snapshot_fork", snapshot=kept, name=fork)
    await call(client, "agent_remove", agent=lone)
    await call(client, "agent_remove", agent=parent)
    assert "No snapshot" in await fails(client, "snapshot_fork", snapshot=gone, name=unique_name("late"))
    listed = await call(client, "snapshot_list", agent=fork)
    assert listed["head"] == kept
    assert (await call(client, "file_read", agent=fork, path="/workspace/f"))["content"] == parent
    await call(client, "agent_remove", agent=fork)


async def test_secrets_set_through_mcp_are_listed_bound_used_and_never_shown(
    client: Client, agent_name: str, settings: Settings
) -> None:
    value = "sk-live-0123456789abcdef"
    created = await call(client, "secret_set", name="API_KEY", value=value)
    assert created["name"] == "API_KEY" and "fingerprint" not in created and value not in str(created)
    assert "already exists" in await fails(client, "secret_set", name="API_KEY", value="another-value")
    assert "GITHUB_TOKEN" in await fails(client, "secret_set", name="bad name", value="whatever")
    operator = Runtime(settings)
    try:
        operator.bind_secret(agent_name, "API_KEY")
    finally:
        await operator.close()
    listed = await call(client, "secret_list")
    assert listed["secrets"][0]["bound_to"] == [agent_name] and value not in str(listed)
    used = await call(client, "exec", agent=agent_name, command="printenv API_KEY; echo $API_KEY | rev | rev")
    assert used["stdout"] == "[REDACTED:API_KEY]\n[REDACTED:API_KEY]\n"
    error = await fails(client, "file_read", agent=agent_name, path=f"/workspace/{value}")
    assert value not in error and "[REDACTED:API_KEY]" in error


async def test_packages_install_list_export_and_remove_through_mcp(
    client: Client, agent_name: str, settings: Settings
) -> None:
    make_wheel(settings.sources_dir / "pip", "spinup-mcp-demo", "0.3")
    installed = await call(client, "package_install", agent=agent_name, manager="pip", packages=["spinup-mcp-demo"])
    assert installed["added"] == [{"name": "spinup-mcp-demo", "version": "0.3"}]
    listed = await call(client, "package_list", agent=agent_name, export="pip")
    assert [p["name"] for p in listed["packages"]] == ["spinup-mcp-demo"] and listed[
        "export"
    ] == "spinup-mcp-demo==0.3\n"
    status = await call(client, "agent_status", agent=agent_name)
    assert status["packages"] == ["pip:spinup-mcp-demo==0.3"]
    error = await fails(client, "package_install", agent=agent_name, manager="apt", packages=["jq"])
    assert "needs root" in error
    missing = await fails(client, "package_install", agent=agent_name, manager="pip", packages=["not-there-at-all"])
    assert "network policy is 'none'" in missing
    removed = await call(client, "package_remove", agent=agent_name, manager="pip", packages=["spinup-mcp-demo"])
    assert removed["packages"] == []


async def test_an_unexpected_error_names_its_type_not_its_text_and_the_server_keeps_serving(
    client: Client, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(self: Runtime) -> list[Any]:
        raise RuntimeError("internal detail /var/lib/spinup/secret-path")

    monkeypatch.setattr(Runtime, "list_agents", broken)
    text = await fails(client, "agent_list")
    assert "Internal error in agent_list (RuntimeError)" in text and "server's log" in text
    assert "secret-path" not in text
    assert "secret-path" in caplog.text, "the details go to the log"
    monkeypatch.undo()
    assert "agents" in await call(client, "agent_list")
