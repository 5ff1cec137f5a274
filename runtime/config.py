"""Where Spinup keeps its state and the defaults it runs with."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .ceilings import Ceilings
from .errors import InvalidInput

DEFAULT_IMAGE = "spinup/base:bookworm"
DEFAULT_OUTPUT_CAP = 1024 * 1024
DEFAULT_EXEC_TIMEOUT = 600.0
DEFAULT_DOCKER_TIMEOUT = 60.0  # seconds a Docker request may take, its answer included
DEFAULT_DOCKER_STREAM_IDLE = 300.0  # seconds a Docker stream may go without a byte
DEFAULT_LOCK_WAIT = 900.0  # seconds a call waits for another's hold on the same agent (SPINUP_LOCK_WAIT)
DEFAULT_EVENTS_KEEP = 10_000  # events kept per agent (SPINUP_EVENTS_KEEP)
DEFAULT_EVENTS_MAX_AGE_DAYS = 30.0  # events older than this are trimmed (SPINUP_EVENTS_MAX_AGE_DAYS)
DEFAULT_EXEC_LOGS_KEEP = 200  # exec outputs kept per agent (SPINUP_EXEC_LOGS_KEEP)
DEFAULT_EXEC_LOGS_BYTES = 64 * 1024 * 1024  # compressed exec output kept per agent (SPINUP_EXEC_LOGS_BYTES)
TOOLBOX_HOST_PATH = "/bin/busybox"
TOOLBOX_MOUNT = "/.spinup/busybox"


# What an MCP client may put in an agent's policy beyond the defaults, if the operator allows it
# (SPINUP_MCP_GRANTS). The CLI is the operator's and is never limited by this.
MCP_GRANTS = ("host-network", "root", "registry", "allowlist")
DEFAULT_MCP_GRANTS = "none"  # a model gets root (apt), the host network, registries or allowlist rules only if granted


DEFAULT_WARM_POOL = "2"
DEFAULT_BASE_CACHE_GRACE = 3600.0


POOL_SHAPES = ("root", "host", "allowlist")  # what a spare may be made as besides the default policy, in key order


def pool_key(image: str, shape: str) -> str:
    """A ``Settings.warm_pool`` key: the image (``""`` for the default one), then ``+TAG`` per shape tag."""
    return f"{image}+{shape}" if shape else image


def split_pool_key(key: str) -> tuple[str, str]:
    """A ``Settings.warm_pool`` key's image (``""``: the default one) and shape (``"root+allowlist"``; ``""``)."""
    image, _, shape = key.partition("+")  # '+' is in no image reference
    return image, shape


def parse_warm_pool(text: str) -> dict[str, int]:
    """``SPINUP_WARM_POOL``: spare machines kept ready, ``N`` for the default base image or
    ``IMAGE=N,IMAGE=N`` per base image (``0``: none), each key with optional shape tags for spares of
    another policy (``+root=1``, ``IMAGE+host=1``, ``+root+allowlist=1``); keys ``""`` mean the default image."""
    pool: dict[str, int] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        key, _, count = part.rpartition("=") if "=" in part else ("", "", part)
        try:
            number = int(count)
        except ValueError:
            number = -1
        if not 0 <= number <= 64:
            raise InvalidInput(
                f"SPINUP_WARM_POOL has {part!r}: give a count from 0 to 64 (spares of the default base image), "
                f"or IMAGE=COUNT pairs separated by commas, e.g. spinup/base:bookworm=2,+root=1."
            )
        image, shape = split_pool_key(key.strip())
        tags = [tag.strip() for tag in shape.split("+")] if "+" in key else []
        unknown = [tag for tag in tags if tag not in POOL_SHAPES]
        if unknown or ("host" in tags and "allowlist" in tags) or len(set(tags)) != len(tags):
            raise InvalidInput(
                f"SPINUP_WARM_POOL has {part!r}: a shape is made of the tags {', '.join(POOL_SHAPES)} "
                f"(at most one network: host or allowlist), e.g. +root=1 or spinup/base:bookworm+root+allowlist=1."
            )
        pool[pool_key(image.strip(), "+".join(t for t in POOL_SHAPES if t in tags))] = number
    return pool


DOCKER_URL_SCHEMES = ("unix://", "tcp://", "http://", "https://")


def parse_docker_hosts(text: str) -> dict[str, str]:
    """``SPINUP_DOCKER_HOSTS``: named Docker daemons an agent may move to, ``NAME=URL`` pairs separated by
    commas (URL as in ``DOCKER_HOST``: ``unix:///path`` or ``tcp://host:port``)."""
    hosts: dict[str, str] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, _, url = part.partition("=")
        if not name.strip() or not url.strip().startswith(DOCKER_URL_SCHEMES):
            raise InvalidInput(
                f"SPINUP_DOCKER_HOSTS has {part!r}: give NAME=URL pairs separated by commas, the URL as in "
                f"DOCKER_HOST (e.g. build=unix:///run/docker-build.sock or gpu=tcp://10.0.0.5:2376)."
            )
        hosts[name.strip()] = url.strip()
    return hosts


def parse_grants(text: str) -> frozenset[str]:
    """``SPINUP_MCP_GRANTS``: a comma-separated list of :data:`MCP_GRANTS`, or ``all``, or ``none``."""
    words = {word.strip().lower() for word in text.split(",") if word.strip()}
    if words <= {"none"}:
        return frozenset()
    if words == {"all"}:
        return frozenset(MCP_GRANTS)
    unknown = words - set(MCP_GRANTS)
    if unknown:
        raise InvalidInput(
            f"SPINUP_MCP_GRANTS names {', '.join(sorted(unknown))}: use a comma-separated list of "
            f"{', '.join(MCP_GRANTS)}, or 'all', or 'none'."
        )
    return frozenset(words)


def default_base_cache() -> Path | None:
    """The host-wide base cache: ``$SPINUP_BASE_CACHE`` (empty or ``off``: none), else for root
    ``/var/cache/spinup/base-images`` (whatever ``$HOME`` a server was started with), else
    ``$XDG_CACHE_HOME/spinup/base-images``, else ``~/.cache/spinup/base-images``."""
    explicit = os.environ.get("SPINUP_BASE_CACHE")
    if explicit is not None:
        return None if explicit.strip().lower() in ("", "off", "none") else Path(explicit).expanduser()
    if os.geteuid() == 0:
        return Path("/var/cache/spinup/base-images")
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "spinup" / "base-images"


DEFAULT_EGRESS_PORT = 3128
DEFAULT_EGRESS_MAX_CONNECTIONS = 256


def default_home() -> Path:
    """The state directory: ``$SPINUP_HOME``, else ``$XDG_DATA_HOME/spinup``, else ``~/.local/share/spinup``."""
    explicit = os.environ.get("SPINUP_HOME")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base / "spinup"


@dataclass(frozen=True)
class Settings:
    """Runtime settings; every field has a safe default."""

    home: Path = field(default_factory=default_home)
    default_image: str = DEFAULT_IMAGE
    output_cap: int = DEFAULT_OUTPUT_CAP
    exec_timeout: float = DEFAULT_EXEC_TIMEOUT
    toolbox_host_path: str = TOOLBOX_HOST_PATH
    zstd_level: int = 3
    # A snapshot holding this many layers of its own is followed by a squashed one (a single layer
    # relative to the base image): Docker refuses images deeper than 125 layers, and every layer
    # costs a little on each file lookup in the machine.
    max_layers: int = 40
    # How snapshots read a machine's changes: "auto" (overlay upper dir when readable, else the
    # Docker API) or "api" (always the Docker API).
    capture_mode: str = field(default_factory=lambda: os.environ.get("SPINUP_CAPTURE", "auto"))
    # Hibernate agents unused for this many seconds (snapshot, then remove the machine). 0 = never.
    idle_timeout: float = field(default_factory=lambda: float(os.environ.get("SPINUP_IDLE_TIMEOUT", "0") or 0))
    label_extra: dict[str, str] = field(default_factory=dict)
    # Deadlines of Docker calls (seconds): a request and its answer; a stream (image load/save,
    # archives) between two chunks. A command's output is bounded by the command's own timeout.
    docker_timeout: float = field(
        default_factory=lambda: float(os.environ.get("SPINUP_DOCKER_TIMEOUT") or DEFAULT_DOCKER_TIMEOUT)
    )
    docker_stream_idle: float = field(
        default_factory=lambda: float(os.environ.get("SPINUP_DOCKER_STREAM_IDLE") or DEFAULT_DOCKER_STREAM_IDLE)
    )
    # How long a call waits for another call on the same agent, in any Spinup process sharing the state
    # directory (a snapshot or restore holds the agent for its whole length).
    lock_wait: float = field(default_factory=lambda: float(os.environ.get("SPINUP_LOCK_WAIT") or DEFAULT_LOCK_WAIT))
    # Spare machines a server keeps created and started ahead of need, per base image ("" is the default image).
    docker_hosts: dict[str, str] = field(
        default_factory=lambda: parse_docker_hosts(os.environ.get("SPINUP_DOCKER_HOSTS", ""))
    )
    warm_pool: dict[str, int] = field(
        default_factory=lambda: parse_warm_pool(os.environ.get("SPINUP_WARM_POOL", DEFAULT_WARM_POOL))
    )
    # Policies MCP clients may ask agent_create for: network=host ("host-network"), user=root ("root").
    mcp_grants: frozenset[str] = field(
        default_factory=lambda: parse_grants(os.environ.get("SPINUP_MCP_GRANTS", DEFAULT_MCP_GRANTS))
    )
    # The credential store's key: base64 of 32 bytes. Unset: a 0600 key file in the state directory.
    master_key: str | None = field(default_factory=lambda: os.environ.get("SPINUP_MASTER_KEY") or None, repr=False)
    # Retention of the event log (per agent, and by age) and of exec outputs (per agent).
    events_keep: int = field(default_factory=lambda: int(os.environ.get("SPINUP_EVENTS_KEEP") or DEFAULT_EVENTS_KEEP))
    events_max_age_days: float = field(
        default_factory=lambda: float(os.environ.get("SPINUP_EVENTS_MAX_AGE_DAYS") or DEFAULT_EVENTS_MAX_AGE_DAYS)
    )
    exec_logs_keep: int = field(
        default_factory=lambda: int(os.environ.get("SPINUP_EXEC_LOGS_KEEP") or DEFAULT_EXEC_LOGS_KEEP)
    )
    exec_logs_bytes: int = field(
        default_factory=lambda: int(os.environ.get("SPINUP_EXEC_LOGS_BYTES") or DEFAULT_EXEC_LOGS_BYTES)
    )
    # The egress proxy of allowlist machines: the port it listens on inside each machine (127.0.0.1), and
    # how many connections of one agent it carries at once.
    egress_port: int = field(default_factory=lambda: int(os.environ.get("SPINUP_EGRESS_PORT") or DEFAULT_EGRESS_PORT))
    egress_max_connections: int = field(
        default_factory=lambda: int(os.environ.get("SPINUP_EGRESS_MAX_CONNECTIONS") or DEFAULT_EGRESS_MAX_CONNECTIONS)
    )
    # Names the egress proxy resolves itself, "name=address,...", before asking the host's resolver.
    egress_resolve: str = field(default_factory=lambda: os.environ.get("SPINUP_EGRESS_RESOLVE", ""))
    # A CA file the egress proxy trusts, besides the system's, when it intercepts a host's HTTPS.
    egress_upstream_ca: str = field(default_factory=lambda: os.environ.get("SPINUP_EGRESS_UPSTREAM_CA", ""))
    # The most one request may ask of the host (SPINUP_MAX_*, SPINUP_MCP_MAX_*, SPINUP_STORE_QUOTA).
    ceilings: Ceilings = field(default_factory=Ceilings.from_env)
    # Where base images' layers are stored once per host (an OCI image layout), hard-linked into every
    # state directory's snapshot store on the same filesystem. None: each store keeps its own copy.
    base_cache: Path | None = field(default_factory=default_base_cache)
    # Seconds a base image no state directory's store links to stays in the base cache (gc removes it after).
    base_cache_grace: float = field(
        default_factory=lambda: float(os.environ.get("SPINUP_BASE_CACHE_GRACE") or DEFAULT_BASE_CACHE_GRACE)
    )
    # Crash-safety tests only (SPINUP_CRASH_AT): a snapshot fault point (see spinup.snapshot.faults) at
    # which the process kills itself with SIGKILL. Empty: none.
    crash_at: str = field(default_factory=lambda: os.environ.get("SPINUP_CRASH_AT", ""))

    @property
    def cache_dir(self) -> Path:
        """Package download caches, one directory per agent (pip, npm, apt)."""
        return self.home / "cache"

    @property
    def sources_dir(self) -> Path:
        """Local package sources mounted read-only into machines: ``pip/``, ``npm/``, ``apt/`` below it."""
        explicit = os.environ.get("SPINUP_SOURCES")
        return Path(explicit).expanduser() if explicit else self.home / "sources"

    @property
    def credentials_path(self) -> Path:
        """The encrypted credential store."""
        return self.home / "credentials.json"

    @property
    def master_key_path(self) -> Path:
        """The credential store's key file (when SPINUP_MASTER_KEY is not set)."""
        return self.home / "master.key"

    @property
    def egress_dir(self) -> Path:
        """The egress daemon's lock, control socket and log."""
        return self.home / "egress"

    @property
    def db_path(self) -> Path:
        """The SQLite database holding agents and events."""
        return self.home / "state.db"

    @property
    def exec_logs_dir(self) -> Path:
        """Compressed, redacted output of past commands, one directory per agent (beside the database)."""
        return self.home / "exec-logs"
