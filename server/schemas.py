"""Structured results of the MCP tools (each becomes a tool's output schema).

Each result is read from the runtime's own value by attribute (``from_attributes``): a schema says
what a field means to a model and how it is shown (times as ISO 8601 text, machine ids short), and
names only what differs from the runtime's value.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from spinup.runtime import AgentStatus, Policy


def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _short_id(value: Any) -> Any:
    return value[:12] if isinstance(value, str) else value


IsoTime = Annotated[str, BeforeValidator(_iso)]
ShortId = Annotated[str | None, BeforeValidator(_short_id)]


class FromRuntime(BaseModel):
    """A result read from a runtime value by attribute."""

    model_config = ConfigDict(from_attributes=True)

    @classmethod
    def of(cls, value: Any, **extra: Any) -> Self:
        """The result for ``value`` (a runtime model or dataclass); ``extra`` gives fields it lacks."""
        if not extra:
            return cls.model_validate(value)
        fields = {name: getattr(value, name) for name in cls.model_fields if name not in extra and hasattr(value, name)}
        return cls.model_validate({**fields, **extra})


class AllowlistResult(BaseModel):
    """The hosts an agent may reach through the egress proxy."""

    agent: str
    network: str = Field(description="'allowlist' when the rules apply; 'none' or 'host' otherwise.")
    allow: list[str] = Field(description="Rules and presets, as the proxy reads them for each new connection.")


class AgentInfo(FromRuntime):
    """An agent: the durable object that outlives its machines."""

    name: str
    id: str
    image: str = Field(description="Base image the agent's machine is made from.")
    network: str = Field(description="Network policy: 'none', 'allowlist' (see policy.allow) or 'host'.")
    policy: Policy = Field(
        description="Isolation: network (and its allowlist), user (agent or root), cpus, memory, pids, disk, nofile."
    )
    state: str = Field(description="created, running, stopped, hibernated or missing (rebuilt on next use).")
    head_snapshot: str | None = Field(
        default=None, description="The latest snapshot; a lost machine comes back from it."
    )
    machine_id: ShortId = Field(description="Short id of the Docker container embodying the agent now.")
    created_at: IsoTime
    paused_at: IsoTime | None = Field(default=None, description="When a client paused it; null when not paused.")
    paused_by: str | None = Field(default=None, description="Who paused it (client, version, transport).")
    host: str | None = Field(
        default=None, description="The Docker daemon it was moved to (spinup agent move); null: the server's own."
    )


class AgentList(BaseModel):
    """All agents."""

    agents: list[AgentInfo]


class EventInfo(FromRuntime):
    """Something that happened to an agent (or to the runtime), and which client caused it."""

    id: int = Field(description="Increasing event id: pass it as `after` to read only newer events.")
    at: IsoTime
    agent: str | None = Field(default=None, description="The agent's name; null for runtime-wide events.")
    kind: str = Field(
        description="e.g. created, machine-started, paused, resumed, killed, exec, file-written, snapshot-created, "
        "packages-installed, secret-used, tool-call."
    )
    detail: str
    data: dict[str, Any] = Field(default_factory=dict, description="Structured payload (exec: id, exit_code, ...).")
    actor: dict[str, str] | None = Field(
        default=None, description="The client that caused it: client, version, transport, session."
    )


class ResourceUseInfo(FromRuntime):
    """What the agent's machine uses now; null where it cannot be read (CPU and memory of a stopped machine)."""

    cpu_percent: float | None = Field(description="CPU over a short window, in percent of one core (100 = one core).")
    memory_bytes: int | None = Field(description="Memory in use (reclaimable page cache not counted).")
    memory_limit: int | None = Field(description="The policy's memory limit in bytes; null: no limit.")
    pids: int | None = Field(description="Processes and threads running.")
    pids_limit: int | None = Field(description="The policy's limit on processes and threads; null: no limit.")
    disk_used: int | None = Field(description="Bytes the machine has written (its writable layer); null if absent.")
    store_bytes: int = Field(description="Compressed bytes the agent's snapshots added to the snapshot store.")
    uptime_s: float | None = Field(description="Seconds since the machine started; null unless it runs.")
    last_activity: IsoTime | None = Field(description="When the agent's newest event was recorded.")


class RunningExec(FromRuntime):
    """A command running in the agent's machine now."""

    id: str = Field(description="The exec id: kill it with exec_kill, read its output with exec_log.")
    command: str
    started_at: IsoTime


class AgentStatusResult(BaseModel):
    """An agent, what Docker says of its machine right now, what it uses, and its recent events."""

    agent: AgentInfo
    machine_status: str = Field(description="Docker's state of the machine (running, exited, ...) or 'absent'.")
    policy: str = Field(description="The policy in one line, e.g. 'network=none user=agent ... memory=4g'.")
    disk_used: int | None = Field(description="Bytes the machine has written (its writable layer); null if absent.")
    usage: ResourceUseInfo | None = Field(description="CPU, memory, pids, disk, store bytes, uptime, last activity.")
    paused_at: IsoTime | None = Field(description="When a client paused the agent; null when it is not paused.")
    paused_by: str | None = Field(description="Who paused it (client, version, transport).")
    running_execs: list[RunningExec] = Field(description="Commands running in the machine now, oldest first.")
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
            usage=ResourceUseInfo.of(status.usage) if status.usage is not None else None,
            paused_at=_iso(status.agent.paused_at),
            paused_by=status.agent.paused_by,
            running_execs=[RunningExec.of(record) for record in status.running_execs],
            packages=[f"{e.manager}:{e.name}=={e.version}" for e in status.packages],
            events=[EventInfo.of(e) for e in status.events],
        )


class NetworkDenial(BaseModel):
    """A destination the egress proxy did not let a command reach."""

    host: str
    port: int
    count: int = Field(description="Connections refused while the command ran.")
    decision: str = Field(description="'refused' (no rule allows it) or 'failed' (allowed, but unreachable).")
    reason: str


class ExecOutput(FromRuntime):
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
    id: str = Field(description="Exec id: read the output again with exec_log, or kill it while it runs.")
    killed_by: str | None = Field(default=None, description="Who killed the command by its exec id, if anyone.")
    network_denied: list[NetworkDenial] = Field(
        default_factory=list,
        description="Connections the egress proxy refused (or could not make) while the command ran: why a "
        "download failed. Ask the operator to allow the host (or use agent_allow, if granted).",
    )


class FileEntry(FromRuntime):
    """A file, directory or symlink in the agent's machine."""

    path: str
    type: Literal["file", "directory", "symlink", "other"]
    size: int
    mode: str = Field(description="Permission bits in octal, e.g. '0644'.")
    mtime: str
    link_target: str | None = None


class FileListing(BaseModel):
    """Entries under a directory."""

    path: str
    entries: list[FileEntry]
    truncated: bool = Field(description="True when max_entries cut the list; narrow with pattern or a subpath.")


class FileRead(FromRuntime):
    """Content read from a file."""

    path: str
    content: str
    encoding: Literal["text", "base64"] = Field(description="'text' (UTF-8) or 'base64' for binary data.")
    size: int = Field(description="Size of the whole file in bytes.")
    offset: int
    returned: int = Field(description="How many lines or bytes (see unit) were returned.")
    unit: Literal["bytes", "lines"]
    eof: bool = Field(description="True when the read reached the end of the file.")


class SnapshotInfo(FromRuntime):
    """A snapshot: an immutable state of an agent's machine."""

    id: str
    agent_id: str
    parent_id: str | None
    label: str
    created_at: IsoTime
    base_image: str
    layers: int = Field(description="Spinup layers on top of the base image.")
    layer_bytes: int = Field(description="Compressed size of the layer this snapshot added.")
    layer_uncompressed_bytes: int
    paths_changed: int


class SnapshotCreated(FromRuntime):
    """The result of snapshot_create."""

    snapshot: SnapshotInfo
    created: bool = Field(description="False when nothing had changed: the existing head is returned.")
    duration_s: float


class SnapshotPushed(BaseModel):
    """The result of snapshot_push."""

    snapshot: str
    ref: str
    digest: str = Field(description="The manifest digest: REPOSITORY@DIGEST names this snapshot for good.")


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


class DiffResult(FromRuntime):
    """Paths that differ between two states (directories are listed only when removed)."""

    source: str
    target: str
    added: list[str]
    changed: list[str]
    removed: list[str]


class SecretEntry(FromRuntime):
    """A stored credential: its name and a short fingerprint, never its value."""

    name: str
    fingerprint: str = Field(description="8 hex chars that change when the value changes; not derived from it alone.")
    created_at: str
    updated_at: str
    bound_to: list[str] = Field(description="Agents that get this credential (as an env var and/or a file).")


class SecretSummary(FromRuntime):
    """A stored credential as MCP clients see it: its name and bindings. No fingerprint: a model could store a
    guess under another name and compare."""

    name: str
    created_at: str
    updated_at: str
    bound_to: list[str] = Field(description="Agents that get this credential (as an env var and/or a file).")


class SecretList(BaseModel):
    """Stored credentials (names and bindings only)."""

    secrets: list[SecretSummary]


class PortForwardInfo(FromRuntime):
    """A port of an agent's machine reachable from the host's 127.0.0.1, for as long as this server runs."""

    agent: str
    port: int = Field(description="The port on the machine's own 127.0.0.1.")
    host_port: int = Field(description="The port on the host's 127.0.0.1 that reaches it.")
    url: str = Field(description="http://127.0.0.1:HOST_PORT, on the host where the Spinup server runs.")
    opened_at: IsoTime
    connections: int = Field(description="Connections accepted since it opened.")
    active: int = Field(description="Connections being relayed now.")
    bytes: int = Field(description="Bytes carried, both directions.")
    state: Literal["open", "closed"]
    reason: str | None = Field(default=None, description="Why it closed (machine stopped, killed, replaced, ...).")
    closed_at: IsoTime | None = None
    refused: int = Field(default=0, description="Connections the machine's port refused or did not answer.")
    last_error: str | None = Field(default=None, description="The latest failure to reach the machine's port.")
    last_error_at: IsoTime | None = None


class PortForwardList(BaseModel):
    """Forwards made by this server, open and recently closed, oldest first."""

    forwards: list[PortForwardInfo]


class PackageInfo(FromRuntime):
    """A package in the agent's manifest: what was asked for and what got installed."""

    manager: str
    name: str
    spec: str
    version: str
    installed_at: IsoTime


class AddedPackage(FromRuntime):
    """A package an install added or changed (dependencies included)."""

    name: str
    version: str


class PackageInstallResult(FromRuntime):
    """What an install did and the agent's manifest afterwards."""

    manager: str
    requested: list[str]
    added: list[AddedPackage] = Field(description="Every package new or changed, with its resolved version.")
    manifest: list[PackageInfo]
    duration_s: float


class PackageManifest(BaseModel):
    """The agent's package manifest, and optionally one manager's part of it as a file."""

    packages: list[PackageInfo]
    export: str | None = Field(
        default=None, description="requirements.txt (pip), package.json (npm) or 'name=version' lines (apt)."
    )


class EventPage(BaseModel):
    """Events, oldest first."""

    events: list[EventInfo]
    next_before: int | None = Field(
        description="Pass as `before` for the page of older events; null when there are none."
    )
    last_id: int | None = Field(description="Pass as `after` to get only events newer than this page.")


class ExecRecordInfo(FromRuntime):
    """A command run in an agent's machine."""

    id: str
    agent: str
    command: str
    cwd: str | None
    started_at: IsoTime
    state: str = Field(description="running, exited, timed-out, killed or lost (the server went away).")
    exit_code: int | None
    duration_s: float | None
    stdout_bytes: int | None
    stderr_bytes: int | None
    truncated: bool
    timed_out: bool
    limit: str | None
    killed_by: str | None
    actor: dict[str, str] | None = Field(description="The client that ran it.")


class ExecLogResult(BaseModel):
    """A past command and its output as it was returned (capped, credentials redacted)."""

    record: ExecRecordInfo
    stdout: str
    stderr: str
    output_kept: bool = Field(description="False when retention already dropped this command's output.")


class ProcessEntry(FromRuntime):
    """A background process and its state now."""

    id: str = Field(description="Process id (p-...): pass it to process_output, process_wait, process_signal.")
    name: str | None
    command: str
    cwd: str
    state: str = Field(description="running, exited, or lost (its machine stopped or restarted: see reason).")
    exit_code: int | None = Field(description="Exit status once exited (128+N when signal N ended it).")
    signal: str | None = Field(description="The signal that ended it (TERM, KILL, ...), if one did.")
    started_at: IsoTime
    ended_at: IsoTime | None
    reason: str | None
    stdout_bytes: int = Field(description="Bytes of stdout so far: read on from your last next_offset.")
    stderr_bytes: int


class ProcessList(BaseModel):
    """An agent's background processes, oldest first."""

    processes: list[ProcessEntry]


class ProcessRead(FromRuntime):
    """Output of one stream of a background process, from an offset."""

    process: ProcessEntry
    stream: str
    offset: int
    next_offset: int = Field(description="Pass as offset next time to read only what is new.")
    data: str = Field(description="The output (UTF-8; credential values redacted).")
    dropped_bytes: int = Field(description="Bytes before offset the output cap dropped: data starts that much later.")
    eof: bool = Field(description="True once the process has ended and everything was read.")


class ProcessWaited(BaseModel):
    """A process after process_wait."""

    process: ProcessEntry
    still_running: bool = Field(description="True when the timeout came first.")
