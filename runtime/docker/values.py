"""What the rest of the runtime reads from the Docker daemon, as typed values parsed from Docker's JSON."""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..errors import DockerFailure


@dataclass(frozen=True)
class MachineInfo:
    """What the runtime needs to know about a container."""

    id: str
    running: bool
    paused: bool
    status: str
    pid: int
    image: str
    image_id: str
    labels: dict[str, str]
    upper_dir: str | None  # overlay2 upper directory, when the daemon uses overlay2
    lower_dirs: tuple[str, ...] = ()  # overlay2 lower directories, top first: Docker's init layer, the image's
    started_at: str = ""  # when the container last started (Docker's RFC 3339 time)
    hostname_path: str = ""  # the host file Docker binds at the machine's /etc/hostname


def parse_machine(raw: dict[str, Any]) -> MachineInfo:
    """A container's inspect document as a :class:`MachineInfo`."""
    state = raw.get("State", {})
    graph = (raw.get("GraphDriver") or {}).get("Data") or {}
    return MachineInfo(
        id=raw["Id"],
        running=bool(state.get("Running")),
        paused=bool(state.get("Paused")),
        status=str(state.get("Status", "")),
        pid=int(state.get("Pid") or 0),
        image=str(raw.get("Config", {}).get("Image", "")),
        image_id=str(raw.get("Image", "")),
        labels=dict(raw.get("Config", {}).get("Labels") or {}),
        upper_dir=graph.get("UpperDir"),
        lower_dirs=tuple(part for part in str(graph.get("LowerDir") or "").split(":") if part),
        started_at=str(state.get("StartedAt", "")),
        hostname_path=str(raw.get("HostnamePath") or ""),
    )


@dataclass(frozen=True)
class MachineStats:
    """One reading of a machine's resource counters from Docker's stats API (None: not reported)."""

    read_ns: int | None  # when the daemon read them (nanoseconds since the epoch)
    cpu_ns: int | None  # CPU time used since the machine started
    memory: int | None  # in use, page cache the kernel can drop at once not counted (as ``docker stats``)
    memory_limit: int | None
    pids: int | None
    pids_limit: int | None


_RFC3339 = re.compile(r"^([0-9T:-]+?)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)?$")


def _epoch_ns(text: object) -> int | None:
    """Nanoseconds since the epoch of Docker's RFC 3339 time (all its digits kept); None when unset."""
    match = _RFC3339.match(text) if isinstance(text, str) and not text.startswith("0001-") else None
    if match is None:
        return None
    whole, fraction, zone = match.groups()
    try:
        moment = datetime.fromisoformat(whole + (zone or "Z"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp()) * 1_000_000_000 + int((fraction or "")[:9].ljust(9, "0"))


def parse_stats(raw: dict[str, Any]) -> MachineStats:
    """A one-shot stats document as :class:`MachineStats` (cgroup v1 and v2 daemons)."""
    cpu = (raw.get("cpu_stats") or {}).get("cpu_usage") or {}
    memory = raw.get("memory_stats") or {}
    pids = raw.get("pids_stats") or {}
    usage = memory.get("usage")
    inactive = (memory.get("stats") or {}).get("total_inactive_file", (memory.get("stats") or {}).get("inactive_file"))
    if isinstance(usage, int) and isinstance(inactive, int) and inactive < usage:
        usage -= inactive
    cpu_ns = cpu.get("total_usage")
    return MachineStats(
        read_ns=_epoch_ns(raw.get("read")),
        cpu_ns=int(cpu_ns) if isinstance(cpu_ns, int) else None,
        memory=int(usage) if isinstance(usage, int) else None,
        memory_limit=int(memory["limit"]) if memory.get("limit") else None,
        pids=int(pids["current"]) if isinstance(pids.get("current"), int) else None,
        pids_limit=int(pids["limit"]) if pids.get("limit") else None,  # 0 or absent: no limit
    )


@dataclass(frozen=True)
class ImageInfo:
    """An image: its id, platform, the runtime config machines inherit, and its layers' diff ids."""

    id: str
    architecture: str
    os: str
    config: dict[str, Any] = field(default_factory=dict)  # its runtime config (Env, Cmd, Labels, ...)
    diff_ids: tuple[str, ...] = ()
    size: int = 0  # bytes its layers hold, uncompressed

    @property
    def env(self) -> list[str]:
        """The image's environment, as ``KEY=value`` strings."""
        return list(self.config.get("Env") or [])

    @property
    def labels(self) -> dict[str, str]:
        """The image's labels."""
        return dict(self.config.get("Labels") or {})


def parse_image(raw: dict[str, Any]) -> ImageInfo:
    """An image's inspect document as an :class:`ImageInfo`."""
    return ImageInfo(
        id=str(raw.get("Id", "")),
        architecture=str(raw.get("Architecture") or "amd64"),
        os=str(raw.get("Os") or "linux"),
        config=dict(raw.get("Config") or {}),
        diff_ids=tuple((raw.get("RootFS") or {}).get("Layers") or ()),
        size=int(raw.get("Size") or 0),
    )


@dataclass(frozen=True)
class ExecState:
    """Where a command started with exec stands."""

    running: bool
    exit_code: int | None  # None while it runs
    pid: int  # 0 when it never started


def parse_exec(raw: dict[str, Any]) -> ExecState:
    """An exec's inspect document as an :class:`ExecState`."""
    code = raw.get("ExitCode")
    return ExecState(bool(raw.get("Running")), None if code is None else int(code), int(raw.get("Pid") or 0))


@dataclass(frozen=True)
class Change:
    """A path a container changed relative to its image: ``kind`` 0 modified, 1 added, 2 deleted."""

    path: str
    kind: int


def parse_changes(raw: list[dict[str, Any]] | None) -> list[Change]:
    """A container's changes document as :class:`Change` values."""
    return [Change(str(item.get("Path", "")), int(item.get("Kind", 0))) for item in raw or []]


@dataclass(frozen=True)
class DaemonVersion:
    """The daemon's version and the newest API version it speaks."""

    version: str
    api_version: str


def parse_version(raw: dict[str, Any]) -> DaemonVersion:
    """The daemon's version document as a :class:`DaemonVersion`."""
    return DaemonVersion(str(raw.get("Version", "?")), str(raw.get("ApiVersion", "?")))


@dataclass(frozen=True)
class PathStat:
    """Stat of a path inside a container, from the archive API's stat header."""

    name: str
    size: int
    mode: int  # Go os.FileMode bits
    mtime: str
    link_target: str

    # Go's os.FileMode type bits
    _DIR = 1 << 31
    _SYMLINK = 1 << 27

    @property
    def is_dir(self) -> bool:
        """The path is a directory."""
        return bool(self.mode & self._DIR)

    @property
    def is_symlink(self) -> bool:
        """The path is a symbolic link (reported as itself)."""
        return bool(self.mode & self._SYMLINK)

    @property
    def permissions(self) -> int:
        """The permission bits (setuid, setgid, sticky included)."""
        return self.mode & 0o7777


def parse_path_stat(header: str | None) -> PathStat:
    """The archive API's ``X-Docker-Container-Path-Stat`` header as a :class:`PathStat`."""
    if not header:
        raise DockerFailure("Docker returned no path stat header for an archive request")
    raw = json.loads(base64.b64decode(header))
    return PathStat(
        name=raw.get("name", ""),
        size=int(raw.get("size", 0)),
        mode=int(raw.get("mode", 0)),
        mtime=str(raw.get("mtime", "")),
        link_target=raw.get("linkTarget", "") or "",
    )
