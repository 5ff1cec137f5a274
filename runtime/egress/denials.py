"""The egress refusals a command met, summed up for its result: which destinations, how often, why."""

from __future__ import annotations

from typing import Any

from ..models import Event

DENIAL_KINDS = ("egress-refused", "egress-failed")
MAX_LISTED = 20  # destinations listed in one result


def summarize_denials(events: list[Event]) -> list[dict[str, Any]]:
    """One entry per destination: ``host``, ``port``, ``count``, ``decision`` (refused/failed), the last ``reason``."""
    by_destination: dict[tuple[str, int], dict[str, Any]] = {}
    for event in events:
        if event.kind not in DENIAL_KINDS:
            continue
        host, port = str(event.data.get("host", "?")), int(event.data.get("port", 0))
        entry = by_destination.setdefault((host, port), {"host": host, "port": port, "count": 0})
        entry["count"] += 1
        entry["decision"] = event.data.get("decision", "refused")
        entry["reason"] = event.data.get("reason", event.detail)
    return list(by_destination.values())[:MAX_LISTED]
