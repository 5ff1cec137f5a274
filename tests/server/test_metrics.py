"""Prometheus metrics: counted from a real runtime's events, served at /metrics by a real ``spinup serve``
behind its bearer token, and never holding a credential's value."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import httpx2
from http_servers import SESSION_DEADLINE, authorized, http_server
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from prometheus_client.parser import text_string_to_metric_families
from test_transports import failed_call, remove_agents, remove_leftovers

from conftest import call, unique_name
from spinup.runtime import Event, Runtime, Settings
from spinup.server.metrics import SpinupMetrics

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of a scrape, by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; 0 when it is absent (a counter not yet moved)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def scrape(metrics: SpinupMetrics) -> Samples:
    return parse(metrics.text().decode())


def agents(samples: Samples) -> dict[str, float]:
    return {dict(labels)["state"]: v for (name, labels), v in samples.items() if name == "spinup_agents"}


async def test_metrics_count_a_runtimes_events_and_its_agents_by_state(runtime: Runtime, agent: str) -> None:
    metrics = SpinupMetrics()
    metrics.attach(runtime, ["exec", "agent_status"])
    runtime.record_call("exec", agent, "ok", 0.25)
    runtime.record_call("agent_status", None, "error", 0.01)
    runtime.record_call("made_up", None, "strange", 0.01)
    assert (await runtime.exec(agent, "echo hi")).exit_code == 0
    assert (await runtime.exec(agent, "sleep 30", timeout=0.5)).timed_out
    await runtime.pause(agent)
    paused = scrape(metrics)
    assert agents(paused) == {"running": 0, "paused": 1, "stopped": 0, "hibernated": 0, "missing": 0, "created": 0}
    await runtime.resume(agent)
    await runtime.snapshot(agent)
    found = scrape(metrics)

    assert agents(found)["running"] == 1 and agents(found)["paused"] == 0
    assert value(found, "spinup_tool_calls_total", tool="exec", outcome="ok") == 1
    assert value(found, "spinup_tool_calls_total", tool="agent_status", outcome="error") == 1
    assert value(found, "spinup_tool_calls_total", tool="other", outcome="other") == 1
    assert value(found, "spinup_errors_total", tool="agent_status") == 1
    assert value(found, "spinup_errors_total", tool="other") == 1
    assert value(found, "spinup_errors_total", tool="exec") == 0
    assert value(found, "spinup_tool_call_duration_seconds_count", tool="exec") == 1
    assert value(found, "spinup_tool_call_duration_seconds_sum", tool="exec") == 0.25
    assert value(found, "spinup_execs_total", state="exited") == 1
    assert value(found, "spinup_execs_total", state="timed-out") == 1
    assert value(found, "spinup_exec_duration_seconds_count") == 2
    assert value(found, "spinup_exec_duration_seconds_sum") >= 0.5
    assert value(found, "spinup_snapshots_total") == 1
    assert value(found, "spinup_snapshot_bytes_total") > 0
    assert value(found, "spinup_snapshot_duration_seconds_count") == 1
    assert value(found, "spinup_events_total", kind="tool-call") == 3
    assert value(found, "spinup_events_total", kind="exec") == 2
    assert value(found, "spinup_events_total", kind="paused") == 1
    assert value(found, "spinup_events_total", kind="resumed") == 1

    metrics.detach()
    runtime.record_call("exec", agent, "ok", 0.1)
    after = scrape(metrics)
    assert value(after, "spinup_tool_calls_total", tool="exec", outcome="ok") == 1, "detached: no longer counted"
    assert agents(after) == {}, "no runtime attached: no agent counts rather than zeros"


def test_label_values_come_only_from_fixed_sets() -> None:
    secret = "sk-live-labelled-0123456789"
    metrics = SpinupMetrics()

    def event(kind: str, **data: Any) -> Event:
        return Event(id=1, agent_id=None, at=datetime.now(UTC), kind=kind, detail=secret, data=data)

    metrics.observe(event("tool-call", tool=secret, outcome=secret, duration_ms=5.0, error=secret))
    metrics.observe(event("exec", state=secret, command=f"echo {secret}", duration_s="1"))
    metrics.observe(event("snapshot-created", bytes=-5, duration_s=float("nan")))
    metrics.observe(event(secret))
    for kind in ("process-started", "port-forwarded", "snapshot-restored"):
        metrics.observe(event(kind))
    text = metrics.text().decode()
    assert secret not in text
    found = parse(text)
    assert value(found, "spinup_tool_calls_total", tool="other", outcome="other") == 1
    assert value(found, "spinup_execs_total", state="other") == 1
    assert value(found, "spinup_exec_duration_seconds_count") == 0, "a duration that is not a number is dropped"
    assert value(found, "spinup_snapshots_total") == 1 and value(found, "spinup_snapshot_bytes_total") == 0
    assert value(found, "spinup_snapshot_duration_seconds_count") == 0
    assert value(found, "spinup_events_total", kind="other") == 1
    assert value(found, "spinup_events_total", kind="process-started") == 1
    assert value(found, "spinup_events_total", kind="port-forwarded") == 1


async def test_serve_exposes_metrics_behind_its_token_and_never_a_credential(settings: Settings) -> None:
    name = unique_name("metrics")
    token = "metrics-token"
    secret = "sk-live-metrics-0123456789abcdef"
    try:
        async with asyncio.timeout(SESSION_DEADLINE), http_server(settings, token=token) as url:
            metrics_url = url.removesuffix("/mcp") + "/metrics"
            async with httpx2.AsyncClient(timeout=30) as raw:
                assert (await raw.get(metrics_url)).status_code == 401
                wrong = await raw.get(metrics_url, headers={"Authorization": "Bearer nope"})
                assert wrong.status_code == 401
            async with authorized(token) as http:
                port = url.split(":")[2].split("/")[0]
                rebound = await http.get(metrics_url, headers={"Host": f"attacker.example:{port}"})
                assert rebound.status_code == 421, "the same Host checks as /mcp"
                async with Client(streamable_http_client(url, http_client=http)) as client:
                    try:
                        await call(client, "agent_create", name=name)
                        await call(client, "secret_set", name="API_KEY", value=secret)
                        operator = Runtime(settings)
                        try:
                            operator.bind_secret(name, "API_KEY")
                        finally:
                            await operator.close()
                        echoed = await call(client, "exec", agent=name, command="echo $API_KEY")
                        assert echoed["stdout"] == "[REDACTED:API_KEY]\n"
                        assert (await call(client, "exec", agent=name, command="exit 3"))["exit_code"] == 3
                        await call(client, "agent_status", agent=name)
                        await failed_call(client, "agent_status", agent="no-such-agent")
                        await failed_call(client, "file_read", agent=name, path=f"/workspace/{secret}")
                        await failed_call(client, f"tool_{secret}", agent=name)
                        snapshot = await call(client, "snapshot_create", agent=name)
                        await call(client, "snapshot_restore", agent=name, snapshot=snapshot["snapshot"]["id"])
                        response = await http.get(metrics_url)
                    finally:
                        await remove_agents(client, name)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        assert secret not in response.text
        found = parse(response.text)
    finally:
        remove_leftovers(name)

    assert agents(found) == {"running": 1, "paused": 0, "stopped": 0, "hibernated": 0, "missing": 0, "created": 0}
    assert value(found, "spinup_execs_total", state="exited") == 2
    assert value(found, "spinup_exec_duration_seconds_count") == 2
    assert value(found, "spinup_snapshots_total") >= 1
    assert value(found, "spinup_snapshot_bytes_total") > 0
    assert value(found, "spinup_restores_total") == 1
    assert value(found, "spinup_restore_duration_seconds_count") == 1
    assert value(found, "spinup_events_total", kind="created") == 1
    assert value(found, "spinup_events_total", kind="secret-used") >= 1
    assert value(found, "spinup_events_total", kind="machine-restored") == 1
    assert value(found, "spinup_tool_calls_total", tool="agent_create", outcome="ok") == 1
    assert value(found, "spinup_tool_calls_total", tool="exec", outcome="ok") == 2
    assert value(found, "spinup_tool_calls_total", tool="agent_status", outcome="ok") == 1
    assert value(found, "spinup_tool_calls_total", tool="agent_status", outcome="error") == 1
    assert value(found, "spinup_tool_calls_total", tool="file_read", outcome="error") == 1
    assert value(found, "spinup_errors_total", tool="agent_status") == 1
    assert value(found, "spinup_errors_total", tool="file_read") == 1
    assert value(found, "spinup_errors_total", tool="exec") == 0
    assert value(found, "spinup_tool_call_duration_seconds_count", tool="exec") == 2
    assert value(found, "spinup_tool_call_duration_seconds_count", tool="agent_create") == 1
    # A tool name the server does not have is the client's text: counted, under "other".
    assert (
        sum(v for (n, labels), v in found.items() if n == "spinup_tool_calls_total" and ("tool", "other") in labels)
        == 1
    )
    assert value(found, "spinup_errors_total", tool="other") == 1
    assert value(found, "spinup_tool_calls_total", tool="other", outcome="other") == 0, "every outcome is a known one"
