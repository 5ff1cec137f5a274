"""Prometheus metrics of a running server, fed by the runtime's events and served at ``/metrics``.

Every label value comes from a fixed set (tool names the server registered, outcomes, exec states,
event kinds, agent states); anything else is counted as ``other``, so no value an agent or a
client chose (a command, an argument, an error text, a credential) can reach a label.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Awaitable, Callable, Collection, Iterable, Iterator
from typing import Any

from mcp.server.transport_security import TransportSecurityMiddleware, TransportSecuritySettings
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response

from spinup.runtime import Event, Runtime

OTHER = "other"
OUTCOMES = frozenset({"ok", "error", "internal-error", "rejected"})
EXEC_STATES = frozenset({"exited", "timed-out", "killed", "lost"})
AGENT_STATES = ("running", "paused", "stopped", "hibernated", "missing", "created")
EVENT_KINDS = frozenset(
    {
        "created",
        "removed",
        "image-changed",
        "policy-changed",
        "machine-created",
        "machine-recreated",
        "machine-rehydrated",
        "machine-restored",
        "machine-started",
        "machine-stopped",
        "machine-hibernated",
        "machine-missing",
        "machine-unpaused",
        "machine-removed",
        "paused",
        "resumed",
        "killed",
        "idle",
        "exec",
        "exec-killed",
        "tool-call",
        "file-written",
        "file-moved",
        "file-deleted",
        "snapshot-created",
        "snapshot-restored",
        "forked",
        "rebuilt",
        "rebuild-rolled-back",
        "packages-installed",
        "packages-removed",
        "secret-bound",
        "secret-unbound",
        "secret-used",
        "process-started",
        "process-exited",
        "process-lost",
        "process-signalled",
        "port-forwarded",
        "port-closed",
        "port-refused",
    }
)
# Seconds: from a quick status call to a long command (exec timeouts go up to an hour).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600)
SNAPSHOT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)


def bucket(value: object, known: Collection[str]) -> str:
    """``value`` when it is one of ``known``, else ``other``."""
    return value if isinstance(value, str) and value in known else OTHER


def _number(value: object) -> float | None:
    """A finite non-negative number from an event's data, or None (missing, wrong type, negative)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
        return None
    return float(value)


class _AgentsCollector(Collector):
    """``spinup_agents{state}``, counted from the state database at scrape time."""

    def __init__(self, runtime: Callable[[], Runtime | None]) -> None:
        self._runtime = runtime

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "spinup_agents", "Agents by state (a paused agent counts as paused only).", labels=["state"]
        )
        runtime = self._runtime()
        if runtime is not None:  # no runtime open (not started, or closed): no samples rather than zeros
            counts = dict.fromkeys(AGENT_STATES, 0)
            for agent in runtime.list_agents():
                state = "paused" if agent.paused_at is not None else bucket(str(agent.state), AGENT_STATES)
                if state in counts:
                    counts[state] += 1
            for state, count in counts.items():
                family.add_metric([state], count)
        yield family


class SpinupMetrics:
    """The server's metrics, in a registry of their own (not the process-wide default one)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._lock = threading.Lock()
        self._runtime: Runtime | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._tools: frozenset[str] = frozenset()
        r = self.registry
        self.tool_calls = Counter("spinup_tool_calls", "MCP tool calls.", ["tool", "outcome"], registry=r)
        self.tool_call_duration = Histogram(
            "spinup_tool_call_duration_seconds",
            "MCP tool call duration.",
            ["tool"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.errors = Counter("spinup_errors", "MCP tool calls that did not succeed.", ["tool"], registry=r)
        self.execs = Counter("spinup_execs", "Commands run in machines, by how they ended.", ["state"], registry=r)
        self.exec_duration = Histogram(
            "spinup_exec_duration_seconds", "Command duration.", buckets=DURATION_BUCKETS, registry=r
        )
        self.snapshots = Counter("spinup_snapshots", "Snapshots taken.", registry=r)
        self.snapshot_bytes = Counter("spinup_snapshot_bytes", "Compressed bytes of the snapshots' layers.", registry=r)
        self.snapshot_duration = Histogram(
            "spinup_snapshot_duration_seconds", "Snapshot duration.", buckets=SNAPSHOT_BUCKETS, registry=r
        )
        self.restores = Counter("spinup_restores", "Agents restored to a snapshot.", registry=r)
        self.restore_duration = Histogram(
            "spinup_restore_duration_seconds", "Restore duration.", buckets=SNAPSHOT_BUCKETS, registry=r
        )
        self.events = Counter("spinup_events", "Events recorded, by kind.", ["kind"], registry=r)
        r.register(_AgentsCollector(lambda: self._runtime))

    def attach(self, runtime: Runtime, tools: Iterable[str]) -> None:
        """Count ``runtime``'s events from now on; ``tools`` are the tool names kept as label values."""
        with self._lock:
            self._detach()
            self._tools = frozenset(tools)
            self._runtime = runtime
            self._unsubscribe = runtime.on_event(self.observe)

    def detach(self) -> None:
        """Stop counting the attached runtime's events (before it closes)."""
        with self._lock:
            self._detach()

    def _detach(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
        self._unsubscribe = None
        self._runtime = None

    def observe(self, event: Event) -> None:
        """Count one event (called from whichever thread recorded it)."""
        data: dict[str, Any] = event.data if isinstance(event.data, dict) else {}
        self.events.labels(kind=bucket(event.kind, EVENT_KINDS)).inc()
        if event.kind == "tool-call":
            tool = bucket(data.get("tool"), self._tools)
            outcome = bucket(data.get("outcome"), OUTCOMES)
            self.tool_calls.labels(tool=tool, outcome=outcome).inc()
            if outcome != "ok":
                self.errors.labels(tool=tool).inc()
            duration_ms = _number(data.get("duration_ms"))
            if duration_ms is not None:
                self.tool_call_duration.labels(tool=tool).observe(duration_ms / 1000)
        elif event.kind == "exec":
            self.execs.labels(state=bucket(data.get("state"), EXEC_STATES)).inc()
            duration = _number(data.get("duration_s"))
            if duration is not None:
                self.exec_duration.observe(duration)
        elif event.kind == "snapshot-created":
            self.snapshots.inc()
            size = _number(data.get("bytes"))
            if size is not None:
                self.snapshot_bytes.inc(size)
            duration = _number(data.get("duration_s"))
            if duration is not None:
                self.snapshot_duration.observe(duration)
        elif event.kind == "snapshot-restored":
            self.restores.inc()
            duration = _number(data.get("duration_s"))
            if duration is not None:
                self.restore_duration.observe(duration)

    def text(self) -> bytes:
        """The metrics in Prometheus text format."""
        return generate_latest(self.registry)

    def endpoint(self, security: TransportSecuritySettings | None = None) -> Callable[[Request], Awaitable[Response]]:
        """The ``GET /metrics`` handler; ``security`` applies the same Host/Origin checks as ``/mcp``."""
        guard = TransportSecurityMiddleware(security)

        async def metrics(request: Request) -> Response:
            refused = await guard.validate_request(request)
            if refused is not None:
                return refused
            return Response(self.text(), media_type=CONTENT_TYPE_LATEST)

        return metrics
