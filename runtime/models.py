"""The runtime's records: agents, their policy, their events."""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

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


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(value: object) -> int:
    """Bytes from an int or a Docker-style size string: ``512m``, ``2g``, ``1.5GiB`` (binary units)."""
    if isinstance(value, bool):
        raise ValueError("a size is a number of bytes or a string like '512m' or '2g'")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        match = _SIZE_RE.match(value)
        if match:
            return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])
    raise ValueError(f"{value!r} is not a size: use bytes or a string like '512m', '2g' (binary units)")


def format_size(size: int) -> str:
    """A size in the largest binary unit that shows it exactly to one decimal: ``2g``, ``1.5m``, ``1000``."""
    for unit in ("t", "g", "m", "k"):
        factor = _SIZE_UNITS[unit]
        if size >= factor and (size * 10) % factor == 0:
            text = f"{size / factor:.1f}".removesuffix(".0")
            return f"{text}{unit}"
    return str(size)


def readable_size(size: int) -> str:
    """A size for people reading progress: ``80.9 MiB``, ``512 bytes``."""
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= factor:
            return f"{size / factor:.1f} {unit}"
    return f"{size} bytes"


Size = Annotated[int, BeforeValidator(parse_size)]

GiB = 1 << 30
MiB = 1 << 20


class Policy(BaseModel):
    """Isolation an agent runs under. Safe by default: no network, non-root, no capabilities, limits on."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    network: Literal["none", "allowlist", "host"] = Field(
        default="none",
        description="'none' (default, no network), 'allowlist' (only the hosts `allow` names, through Spinup's "
        "egress proxy) or 'host' (weaker: shares the host network).",
    )
    allow: tuple[str, ...] = Field(
        default=(),
        description="With network 'allowlist': rules like 'pypi.org', '*.github.com', 'https://api.example.com:8443', "
        "'127.0.0.1:8080', or presets ('pypi', 'npm', 'debian', 'github', 'anthropic', 'openai').",
    )
    intercept: tuple[str, ...] = Field(
        default=(),
        description="Hosts whose HTTPS the egress proxy terminates (with the agent's own CA) to add credential "
        "headers at the edge.",
    )
    user: Literal["agent", "root"] = Field(
        default="agent",
        description="Who commands and file tools act as: 'agent' (uid 1000, default) or 'root' (needed by apt; "
        "gets a small capability set, still no new privileges).",
    )
    cpus: float | None = Field(
        default=None, gt=0, le=1024, description="CPU cores the machine may use (fractional); null = all host cores."
    )
    memory: Size = Field(
        default=4 * GiB, ge=16 * MiB, description="Hard memory limit in bytes or '512m'/'4g'; swap is off."
    )
    pids: int = Field(default=1024, ge=16, le=1 << 22, description="Most processes and threads at once.")
    disk: Size | None = Field(
        default=20 * GiB, ge=MiB, description="Quota on what the machine writes (its writable layer); null = none."
    )
    nofile: int = Field(default=8192, ge=64, le=1 << 20, description="Open files per process (ulimit -n).")
    package_cache: bool = Field(
        default=True,
        description="Keep pip's and npm's download caches on the host for this agent alone, across its machines "
        "(false: in its home, so in its snapshots).",
    )
    self_control: bool = Field(
        default=False,
        description="Serve an MCP endpoint inside the machine (http://127.0.0.1:7390/mcp, its token in "
        "$SPINUP_CONTROL_TOKEN) through which what runs there snapshots, lists and restores this agent alone.",
    )

    @field_validator("allow", mode="before")
    @classmethod
    def _normalize_allow(cls, value: object) -> object:
        from .egress.rules import normalize  # the rule grammar lives with the proxy

        if isinstance(value, str):
            value = [value]
        if isinstance(value, (list, tuple)):
            try:
                return normalize(list(value))
            except InvalidInput as exc:
                raise ValueError(str(exc)) from exc
        return value

    @field_validator("intercept", mode="before")
    @classmethod
    def _normalize_intercept(cls, value: object) -> object:
        from .egress.rules import is_host_pattern

        if isinstance(value, str):
            value = [value]
        if isinstance(value, (list, tuple)):
            hosts: dict[str, None] = {}
            for host in value:
                if not isinstance(host, str) or not is_host_pattern(host.lower()):
                    raise ValueError(f"{host!r} is not a host name, '*.' wildcard or address to intercept")
                hosts[host.lower()] = None
            return tuple(hosts)
        return value

    @model_validator(mode="after")
    def _rules_need_allowlist(self) -> Policy:
        if self.network != "allowlist" and (self.allow or self.intercept):
            raise ValueError(
                f"allowlist rules and interception need network 'allowlist' (this policy's network is '{self.network}')"
            )
        if self.self_control and self.network == "host":
            raise ValueError(
                "self_control needs network 'none' or 'allowlist': its endpoint listens on the machine's own "
                "loopback, which under 'host' is the host's, open to every local user"
            )
        return self

    def updated(self, **changes: object) -> Policy:
        """This policy with ``changes`` applied (None values are ignored); raises :class:`InvalidInput`.

        ``cpus="all"`` lifts the CPU limit and ``disk="none"`` the disk quota. Rules in ``allow`` on a
        policy without network switch it to 'allowlist'.
        """
        values = self.model_dump()
        if changes.get("allow") and changes.get("network") is None and self.network == "none":
            values["network"] = "allowlist"
        for key, value in changes.items():
            if value is None:
                continue
            if isinstance(value, list):
                value = tuple(value)
            if (key, value) in {("cpus", "all"), ("disk", "none")}:
                value = None
            values[key] = value
        try:
            return Policy.model_validate(values)
        except ValidationError as exc:
            problems = "; ".join(
                (f"{'.'.join(map(str, e['loc']))}: " if e["loc"] else "")
                + str(e["msg"]).removeprefix("Value error, ").rstrip(".")
                for e in exc.errors()
            )
            raise InvalidInput(f"Invalid policy: {problems}.") from exc

    def describe(self) -> str:
        """One line for status output and events."""
        network = f"network={self.network}"
        if self.network == "allowlist":
            network += f" allow={','.join(self.allow) or '(nothing)'}"
            if self.intercept:
                network += f" intercept={','.join(self.intercept)}"
        parts = [
            network,
            f"user={self.user}",
            f"cpus={self.cpus if self.cpus is not None else 'all'}",
            f"memory={format_size(self.memory)}",
            f"pids={self.pids}",
            f"disk={format_size(self.disk) if self.disk is not None else 'unlimited'}",
            f"nofile={self.nofile}",
            f"package_cache={'host' if self.package_cache else 'home'}",
        ]
        if self.self_control:
            parts.append("self_control=on")
        return " ".join(parts)


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
    paused_at: datetime | None = Field(default=None, description="When a client paused the agent (None: not paused).")
    paused_by: str | None = Field(default=None, description="Who paused it, e.g. 'claude-code 2.1.0 over stdio'.")
    host: str | None = Field(
        default=None, description="The Docker daemon it was moved to (None: the daemon of the Spinup process)."
    )

    @property
    def network(self) -> str:
        """The network mode of the agent's policy."""
        return self.policy.network


class HeaderBinding(BaseModel):
    """A credential the egress proxy adds as a request header for one host; it never enters the machine."""

    model_config = ConfigDict(frozen=True)

    host: str = Field(description="A host name, '*.suffix' or address; any port.")
    name: str = Field(description="The header, e.g. 'Authorization'.")
    template: str = Field(
        description="The header's value, '{value}' standing for the credential's, e.g. 'Bearer {value}'."
    )

    def describe(self) -> str:
        """``host: Name: template`` (the template holds no value)."""
        return f"{self.host}: {self.name}: {self.template}"


class SecretBinding(BaseModel):
    """A credential given to an agent: as an environment variable, a file under /run/spinup/secrets, a header
    the egress proxy adds at the edge, or several of these."""

    model_config = ConfigDict(frozen=True)

    secret: str
    env: str | None = None
    file: str | None = None
    header: HeaderBinding | None = None


PackageManager = Literal["pip", "npm", "apt"]


class PackageEntry(BaseModel):
    """One package the agent asked for: how, what it resolved to, when."""

    model_config = ConfigDict(frozen=True)

    manager: PackageManager
    name: str
    spec: str = Field(description="As requested, e.g. 'requests>=2' or 'left-pad@1.3.0'.")
    version: str = Field(description="The version that was installed.")
    installed_at: datetime


class Event(BaseModel):
    """One thing that happened: to an agent (``agent_id`` set) or to the runtime as a whole."""

    model_config = ConfigDict(frozen=True)

    id: int
    agent_id: str | None
    agent: str | None = Field(default=None, description="The agent's name when the event was recorded.")
    at: datetime
    kind: str
    detail: str
    data: dict[str, Any] = Field(default_factory=dict, description="Small structured payload (redacted).")
    actor: dict[str, str] | None = Field(
        default=None, description="The client that caused it: client, version, transport, session."
    )

    @property
    def client(self) -> str | None:
        """The name of the client that caused the event, if a client did."""
        return self.actor.get("client") if self.actor else None


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

    @property
    def layer_bytes(self) -> int:
        """Compressed bytes of the layer this snapshot added."""
        return self.layer_size

    @property
    def layer_uncompressed_bytes(self) -> int:
        """Uncompressed bytes of the layer this snapshot added."""
        return self.layer_uncompressed
