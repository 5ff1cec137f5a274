"""What the dashboard shows of the runtime's records: states, one-line policies, sizes, JSON for live updates.

Only names, states, numbers and text the runtime already redacted reach a page; a credential's
value never does (bindings are shown by name).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from spinup.runtime import Agent, AgentOverview, AgentState, Event, Policy

from ..cli.monitor import duration_text, percent_text, size_text

UNKNOWN = "\u2013"  # an en dash: a value that cannot be read now
STATES = ("running", "paused", "stopped", "hibernated", "missing", "created", "unknown")


def display_state(agent: Agent, docker_state: str | None = None) -> str:
    """One of :data:`STATES`: Docker's state of the machine when known, the agent's record otherwise."""
    if agent.paused_at is not None or docker_state == "paused":
        return "paused"
    if docker_state is None or docker_state == "absent":
        if agent.state == AgentState.RUNNING and docker_state == "absent":
            return "missing"
        return agent.state.value
    if docker_state in ("running", "restarting"):
        return "running"
    if docker_state in ("exited", "created", "dead", "removing"):
        return "stopped"
    return "unknown"


def policy_line(policy: Policy) -> str:
    """The policy in one short line: ``net none · agent · 2 cpus · 4g · 1024 pids · disk 20g``."""
    def size(value: int) -> str:
        return size_text(value).replace(".0", "").lower()

    parts = [
        f"net {policy.network}",
        policy.user,
        f"{policy.cpus:g} cpus" if policy.cpus is not None else "all cpus",
        f"mem {size(policy.memory)}",
        f"{policy.pids} pids",
        f"disk {size(policy.disk)}" if policy.disk is not None else "disk unlimited",
    ]
    return " · ".join(parts)


def memory_line(used: int | None, limit: int | None) -> str:
    """``12.3M / 4.0G``, or what is known of it."""
    if used is None:
        return UNKNOWN
    return size_text(used) if limit is None else f"{size_text(used)} / {size_text(limit)}"


def iso(moment: datetime | None) -> str:
    """An ISO 8601 time for ``data-at`` attributes (the page shows it as "12 s ago")."""
    return moment.isoformat(timespec="seconds") if moment is not None else ""


def usage_json(row: AgentOverview) -> dict[str, Any]:
    """One agent's live values: raw numbers (sorting, sparklines) and the text shown."""
    use = row.usage
    event = row.last_event
    return {
        "state": display_state(row.agent, row.state),
        "cpu": use.cpu_percent,
        "cpu_text": UNKNOWN if use.cpu_percent is None else percent_text(use.cpu_percent),
        "mem": use.memory_bytes,
        "mem_limit": use.memory_limit,
        "mem_text": memory_line(use.memory_bytes, use.memory_limit),
        "pids": use.pids,
        "pids_text": UNKNOWN if use.pids is None else str(use.pids),
        "disk": use.disk_used,
        "disk_text": UNKNOWN if use.disk_used is None else size_text(use.disk_used),
        "store_text": size_text(use.store_bytes),
        "uptime_text": UNKNOWN if use.uptime_s is None else duration_text(use.uptime_s),
        "last_kind": event.kind if event is not None else "",
        "last_at": iso(event.at) if event is not None else "",
        "paused_by": row.agent.paused_by or "",
    }


def actor_text(actor: dict[str, str] | None) -> str:
    """``claude-code 2.1 over stdio``; empty for the runtime acting on its own."""
    if not actor:
        return ""
    text = f"{actor.get('client', '')} {actor.get('version', '')}".strip()
    transport = actor.get("transport")
    return f"{text} over {transport}" if transport else text


def event_json(event: Event, html: str) -> dict[str, Any]:
    """A new event for live pages, with its timeline row already rendered."""
    return {
        "id": event.id,
        "agent": event.agent,
        "kind": event.kind,
        "at": iso(event.at),
        "client": event.client or "",
        "html": html,
    }


def kind_group(kind: str) -> str:
    """The colour family of an event kind in the timeline."""
    if kind in ("exec", "exec-killed", "tool-call"):
        return "activity"
    if kind.startswith("snapshot") or kind in ("forked", "rebuilt", "machine-restored"):
        return "snapshot"
    if kind in ("paused", "resumed", "killed", "removed") or kind.endswith("-refused"):
        return "control"
    if kind.startswith(("process-", "port-")):
        return "process"
    if kind.startswith(("secret-", "policy")):
        return "security"
    if kind.startswith("file-") or kind.startswith("packages-"):
        return "files"
    return "lifecycle"


def exec_state(state: str, exit_code: int | None) -> str:
    """A command's outcome in a word: ``ok``, ``exit 3``, ``timed-out``, ``running``..."""
    if state == "exited":
        return "ok" if exit_code == 0 else f"exit {exit_code}"
    return state
