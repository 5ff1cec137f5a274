"""The runtime's records: agents, their policy, their events."""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from .errors import InvalidInput

AGENT_NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


def validate_agent_name(name: str) -> str:
    """Return ``name`` if it is a valid agent name, else raise :class:`InvalidInput`."""
    if not isinstance(name, str) or not AGENT_NAME_RE.fullmatch(name):
        raise InvalidInput(
            f"Invalid agent name {name!r}: use 1-63 lowercase letters, digits and '-', "
            f"starting and ending with a letter or digit (for example 'my-agent')."
        )
    return name


class AgentState(StrEnum):
    """Where an agent's machine is, as last observed."""

    CREATED = "created"  # record exists, no machine yet
    RUNNING = "running"
    STOPPED = "stopped"
    MISSING = "missing"  # machine vanished; the next wake recreates it
    HIBERNATED = "hibernated"  # snapshotted and machine removed; the next wake rebuilds it


class Policy(BaseModel):
    """Isolation an agent runs under. Safe by default."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    network: Literal["none", "host"] = Field(
        default="none", description="'none' (default, no network) or 'host' (weaker: shares the host network)."
    )


class Agent(BaseModel):
    """The durable object: outlives every machine."""

    model_config = ConfigDict(frozen=True)

    id: str
    name: str
    image: str
    policy: Policy
    created_at: datetime
    machine_id: str | None
    state: AgentState
    head_snapshot: str | None = None


class Event(BaseModel):
    """One thing that happened to an agent."""

    model_config = ConfigDict(frozen=True)

    id: int
    agent_id: str
    at: datetime
    kind: str
    detail: str


class Snapshot(BaseModel):
    """An immutable, content-addressed state of an agent's machine (an OCI image in the store)."""

    model_config = ConfigDict(frozen=True)

    id: str
    agent_id: str
    parent_id: str | None
    label: str
    created_at: datetime
    manifest_digest: str
    machine_id: str = Field(description="The machine the snapshot was captured from.")
    base_image: str
    layers: int = Field(description="Spinup layers on top of the base image.")
    layer_size: int = Field(description="Compressed bytes of the layer this snapshot added.")
    layer_uncompressed: int
    paths_changed: int
