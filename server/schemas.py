"""Structured results of the MCP tools (each becomes a tool's output schema)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from spinup.runtime import Agent, AgentStatus, ExecResult, FileContent, FileInfo, Policy
from spinup.runtime.credentials import SecretInfo
from spinup.runtime.models import PackageEntry, Snapshot
from spinup.runtime.packages import InstallResult


class AgentInfo(BaseModel):
    """An agent: the durable object that outlives its machines."""

    name: str
    id: str
    image: str = Field(description="Base image the agent's machine is made from.")
    network: str = Field(description="Network policy: 'none' or 'host'.")
    policy: Policy = Field(description="Isolation: network, user (agent or root), cpus, memory, pids, disk, nofile.")
    state: str = Field(description="created, running, stopped, hibernated or missing (rebuilt on next use).")
    head_snapshot: str | None = Field(
        default=None, description="The latest snapshot; a lost machine comes back from it."
    )
    machine_id: str | None = Field(description="Short id of the Docker container embodying the agent now.")
    created_at: str

    @classmethod
    def of(cls, agent: Agent) -> AgentInfo:
        return cls(
            name=agent.name,
            id=agent.id,
            image=agent.image,
            network=agent.policy.network,
            policy=agent.policy,
            state=agent.state.value,
            machine_id=agent.machine_id[:12] if agent.machine_id else None,
            created_at=agent.created_at.isoformat(),
            head_snapshot=agent.head_snapshot,
        )


class AgentList(BaseModel):
    """All agents."""

    agents: list[AgentInfo]


class EventInfo(BaseModel):
    """Something that happened to an agent."""

    at: str
    kind: str
    detail: str


class AgentStatusResult(BaseModel):
    """An agent, what Docker says of its machine right now, and its recent events."""

    agent: AgentInfo
    machine_status: str = Field(description="Docker's state of the machine (running, exited, ...) or 'absent'.")
    policy: str = Field(description="The policy in one line, e.g. 'network=none user=agent ... memory=4g'.")
    disk_used: int | None = Field(description="Bytes the machine has written (its writable layer); null if absent.")
    packages: list[str] = Field(description="The package manifest as manager:name==version.")
    events: list[EventInfo]

    @classmethod
    def of(cls, status: AgentStatus) -> AgentStatusResult:
        machine = status.machine
        return cls(
            agent=AgentInfo.of(status.agent),
            machine_status=machine.status if machine else "absent",
            policy=status.agent.policy.describe(),
            disk_used=status.disk_used,
            packages=[f"{e.manager}:{e.name}=={e.version}" for e in status.packages],
            events=[EventInfo(at=e.at.isoformat(), kind=e.kind, detail=e.detail) for e in status.events],
        )


class ExecOutput(BaseModel):
    """What a command did. A non-zero exit_code is a normal result, not a tool error."""

    exit_code: int | None = Field(description="The command's exit status; null if it timed out.")
    stdout: str
    stderr: str
    timed_out: bool
    limit: str | None = Field(
        default=None, description="'memory' or 'pids' when that policy limit hit the command (stderr says more)."
    )
    duration_s: float
    stdout_truncated: bool = Field(description="True when stdout exceeded the cap; its middle was dropped.")
    stderr_truncated: bool
    stdout_dropped_bytes: int
    stderr_dropped_bytes: int

    @classmethod
    def of(cls, result: ExecResult) -> ExecOutput:
        return cls(
            exit_code=result.exit_code,
            stdout=result.stdout,
            stderr=result.stderr,
            timed_out=result.timed_out,
            limit=result.limit,
            duration_s=result.duration_s,
            stdout_truncated=result.stdout_dropped > 0,
            stderr_truncated=result.stderr_dropped > 0,
            stdout_dropped_bytes=result.stdout_dropped,
            stderr_dropped_bytes=result.stderr_dropped,
        )


class FileEntry(BaseModel):
    """A file, directory or symlink in the agent's machine."""

    path: str
    type: Literal["file", "directory", "symlink", "other"]
    size: int
    mode: str = Field(description="Permission bits in octal, e.g. '0644'.")
    mtime: str
    link_target: str | None = None

    @classmethod
    def of(cls, info: FileInfo) -> FileEntry:
        return cls(
            path=info.path,
            type=info.type,
            size=info.size,
            mode=info.mode,
            mtime=info.mtime,
            link_target=info.link_target,
        )


class FileListing(BaseModel):
    """Entries under a directory."""

    path: str
    entries: list[FileEntry]
    truncated: bool = Field(description="True when max_entries cut the list; narrow with pattern or a subpath.")


class FileRead(BaseModel):
    """Content read from a file."""

    path: str
    content: str
    encoding: Literal["text", "base64"] = Field(description="'text' (UTF-8) or 'base64' for binary data.")
    size: int = Field(description="Size of the whole file in bytes.")
    offset: int
    returned: int = Field(description="How many lines or bytes (see unit) were returned.")
    unit: Literal["bytes", "lines"]
    eof: bool = Field(description="True when the read reached the end of the file.")

    @classmethod
    def of(cls, content: FileContent) -> FileRead:
        return cls(
            path=content.path,
            content=content.content,
            encoding=content.encoding,
            size=content.size,
            offset=content.offset,
            returned=content.returned,
            unit=content.unit,
            eof=content.eof,
        )


class SnapshotInfo(BaseModel):
    """A snapshot: an immutable state of an agent's machine."""

    id: str
    agent_id: str
    parent_id: str | None
    label: str
    created_at: str
    base_image: str
    layers: int = Field(description="Spinup layers on top of the base image.")
    layer_bytes: int = Field(description="Compressed size of the layer this snapshot added.")
    layer_uncompressed_bytes: int
    paths_changed: int

    @classmethod
    def of(cls, snapshot: Snapshot) -> SnapshotInfo:
        return cls(
            id=snapshot.id,
            agent_id=snapshot.agent_id,
            parent_id=snapshot.parent_id,
            label=snapshot.label,
            created_at=snapshot.created_at.isoformat(),
            base_image=snapshot.base_image,
            layers=snapshot.layers,
            layer_bytes=snapshot.layer_size,
            layer_uncompressed_bytes=snapshot.layer_uncompressed,
            paths_changed=snapshot.paths_changed,
        )


class SnapshotCreated(BaseModel):
    """The result of snapshot_create."""

    snapshot: SnapshotInfo
    created: bool = Field(description="False when nothing had changed: the existing head is returned.")
    duration_s: float


class SnapshotList(BaseModel):
    """Snapshots, oldest first."""

    snapshots: list[SnapshotInfo]
    head: str | None = Field(default=None, description="The agent's current head snapshot, when one agent is listed.")


class RestoreResult(BaseModel):
    """The result of snapshot_restore."""

    agent: AgentInfo
    restored: str = Field(description="The snapshot the machine now runs from (the agent's new head).")
    saved_before_restore: str | None = Field(
        description="Snapshot of the work that was not yet snapshotted (restore it to undo); null if none."
    )
    duration_s: float


class DiffResult(BaseModel):
    """Paths that differ between two states (directories are listed only when removed)."""

    source: str
    target: str
    added: list[str]
    changed: list[str]
    removed: list[str]


class SecretEntry(BaseModel):
    """A stored credential: its name and a short fingerprint, never its value."""

    name: str
    fingerprint: str = Field(description="8 hex chars that change when the value changes; not derived from it alone.")
    created_at: str
    updated_at: str
    bound_to: list[str] = Field(description="Agents that get this credential (as an env var and/or a file).")

    @classmethod
    def of(cls, info: SecretInfo, bound_to: list[str]) -> SecretEntry:
        return cls(
            name=info.name,
            fingerprint=info.fingerprint,
            created_at=info.created_at,
            updated_at=info.updated_at,
            bound_to=bound_to,
        )


class SecretList(BaseModel):
    """Stored credentials (names and fingerprints only)."""

    secrets: list[SecretEntry]


class PackageInfo(BaseModel):
    """A package in the agent's manifest: what was asked for and what got installed."""

    manager: str
    name: str
    spec: str
    version: str
    installed_at: str

    @classmethod
    def of(cls, entry: PackageEntry) -> PackageInfo:
        return cls(
            manager=entry.manager,
            name=entry.name,
            spec=entry.spec,
            version=entry.version,
            installed_at=entry.installed_at.isoformat(),
        )


class AddedPackage(BaseModel):
    """A package an install added or changed (dependencies included)."""

    name: str
    version: str


class PackageInstallResult(BaseModel):
    """What an install did and the agent's manifest afterwards."""

    manager: str
    requested: list[str]
    added: list[AddedPackage] = Field(description="Every package new or changed, with its resolved version.")
    manifest: list[PackageInfo]
    duration_s: float

    @classmethod
    def of(cls, result: InstallResult) -> PackageInstallResult:
        return cls(
            manager=result.manager,
            requested=result.requested,
            added=[AddedPackage(name=p.name, version=p.version) for p in result.added],
            manifest=[PackageInfo.of(e) for e in result.manifest],
            duration_s=result.duration_s,
        )


class PackageManifest(BaseModel):
    """The agent's package manifest, and optionally one manager's part of it as a file."""

    packages: list[PackageInfo]
    export: str | None = Field(
        default=None, description="requirements.txt (pip), package.json (npm) or 'name=version' lines (apt)."
    )
