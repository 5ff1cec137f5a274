"""What a policy means for Docker: the user, capabilities, limits and mounts of a machine."""

from __future__ import annotations

from typing import Any

from .errors import InvalidInput, NotGranted
from .models import Policy

AGENT_USER = "agent"
AGENT_UID = 1000
AGENT_HOME = f"/home/{AGENT_USER}"
WORKSPACE = "/workspace"
SECRETS_DIR = "/run/spinup/secrets"
PROCESS_DIR = "/run/spinup/proc"  # background processes' output and exit status (in memory)
PROCESS_DIR_SIZE = "256m"
VENV = f"{AGENT_HOME}/.venv"  # pip installs go here; its bin is first on PATH
NPM_PREFIX = f"{AGENT_HOME}/.npm-global"  # npm's global prefix
CACHE_MOUNT = "/var/cache/spinup"  # shared pip and npm download caches
APT_ARCHIVES = "/var/cache/apt/archives"  # shared with root machines
SOURCES_MOUNT = "/spinup/sources"  # the operator's local package sources, read-only
SYSTEM_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"  # Debian's; update-ca-certificates rebuilds it
EGRESS_CA_FILE = "/usr/local/share/ca-certificates/spinup-egress-ca.crt"  # kept across update-ca-certificates
CA_BUNDLE_VARIABLES = (
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "PIP_CERT",
    "NODE_EXTRA_CA_CERTS",
    "CURL_CA_BUNDLE",
    "GIT_SSL_CAINFO",
)
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# An image labelled so has /workspace and the agent's home owned by the agent user already.
AGENT_DIRS_LABEL = "spinup.agent-dirs"

# A root policy gets Docker's default capability set minus NET_RAW (no raw sockets) and MKNOD (no
# device nodes, not even in the host directories it mounts): enough for apt and dpkg (chown, setuid
# to _apt, device-less installs), nothing that reaches the host. Overlay whiteouts need no MKNOD.
ROOT_CAPABILITIES = (
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "SETFCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "AUDIT_WRITE",
)


def is_root(policy: Policy) -> bool:
    """Whether commands and file tools act as root under ``policy``."""
    return policy.user == "root"


def owner(policy: Policy) -> tuple[int, int]:
    """The uid and gid that commands run as and that file tools give new files."""
    return (0, 0) if is_root(policy) else (AGENT_UID, AGENT_UID)


def exec_user(policy: Policy) -> str:
    """Docker's ``User`` for the machine and its execs."""
    uid, gid = owner(policy)
    return f"{uid}:{gid}"


def user_env(policy: Policy) -> list[str]:
    """The login environment of the policy's user (set on the machine, so every exec has it)."""
    if is_root(policy):
        return ["HOME=/root", "USER=root", "LOGNAME=root"]
    return [f"HOME={AGENT_HOME}", f"USER={AGENT_USER}", f"LOGNAME={AGENT_USER}"]


def package_env(policy: Policy, image_env: list[str]) -> list[str]:
    """PATH with the agent's venv and npm bin first, npm's prefix, and the shared caches when on."""
    path = next((entry[5:] for entry in image_env if entry.startswith("PATH=")), DEFAULT_PATH)
    env = [f"PATH={VENV}/bin:{NPM_PREFIX}/bin:{path}", f"NPM_CONFIG_PREFIX={NPM_PREFIX}"]
    if policy.package_cache:
        env += [f"PIP_CACHE_DIR={CACHE_MOUNT}/pip", f"npm_config_cache={CACHE_MOUNT}/npm"]
    return env


def proxy_env(policy: Policy, port: int) -> list[str]:
    """For an allowlist policy: every client's proxy settings pointing at the egress listener in the machine.

    curl, wget, pip, requests, git, apt and npm read these; Node's built-in ``fetch`` ignores them unless
    ``NODE_USE_ENV_PROXY=1`` (Node 24+), and any client that does not use a proxy gets "network unreachable".
    """
    if policy.network != "allowlist":
        return []
    url = f"http://127.0.0.1:{port}"
    local = "localhost,127.0.0.1,::1"
    return [
        *(f"{name}={url}" for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")),
        f"NO_PROXY={local}",
        f"no_proxy={local}",
        f"PIP_PROXY={url}",
        f"npm_config_proxy={url}",
        f"npm_config_https_proxy={url}",
        "GIT_CONFIG_COUNT=1",
        "GIT_CONFIG_KEY_0=http.proxy",
        f"GIT_CONFIG_VALUE_0={url}",
        "NODE_USE_ENV_PROXY=1",
        # The system bundle, which holds the agent's egress CA when the proxy intercepts a host: pip, requests,
        # Node and git otherwise read bundles of their own.
        *(f"{name}={SYSTEM_CA_BUNDLE}" for name in CA_BUNDLE_VARIABLES),
    ]


def docker_network(policy: Policy) -> str:
    """Docker's network mode: an allowlist machine has only ``lo`` (its way out is the egress listener)."""
    return "host" if policy.network == "host" else "none"


def host_config(policy: Policy) -> dict[str, Any]:
    """The HostConfig entries ``policy`` sets: network, capabilities, limits, the in-memory directories."""
    uid, gid = owner(policy)
    config: dict[str, Any] = {
        "NetworkMode": docker_network(policy),
        "CapDrop": ["ALL"],
        "CapAdd": list(ROOT_CAPABILITIES) if is_root(policy) else [],
        # Docker's default seccomp profile stays on (nothing here turns it off).
        "SecurityOpt": ["no-new-privileges"],
        "Memory": policy.memory,
        "MemorySwap": policy.memory,  # equal to Memory: no swap
        "PidsLimit": policy.pids,
        "Ulimits": [{"Name": "nofile", "Soft": policy.nofile, "Hard": policy.nofile}],
        # Bound credential files live here: in memory, never in the writable layer or a snapshot.
        "Tmpfs": {
            SECRETS_DIR: f"rw,nosuid,nodev,noexec,size=1m,mode=0700,uid={uid},gid={gid}",
            # Background processes' output: in memory, so never in a snapshot, and gone with the machine's run.
            PROCESS_DIR: f"rw,nosuid,nodev,noexec,size={PROCESS_DIR_SIZE},mode=0700,uid={uid},gid={gid}",
        },
    }
    if policy.cpus is not None:
        config["NanoCpus"] = int(policy.cpus * 1_000_000_000)
    return config


def check_granted(policy: Policy, grants: frozenset[str]) -> None:
    """Refuse a policy an MCP client may not ask for (see ``Settings.mcp_grants``)."""
    asked = [
        (grant, option)
        for grant, option, wanted in (
            ("host-network", "--network host", policy.network == "host"),
            ("root", "--user root", is_root(policy)),
            ("allowlist", "--allow RULE", bool(policy.allow)),
        )
        if wanted and grant not in grants
    ]
    if asked:
        names = ",".join(sorted({*grants, *(grant for grant, _ in asked)}))
        raise NotGranted(
            f"This Spinup server does not let MCP clients create agents with {' or '.join(o for _, o in asked)}. "
            f"The operator can create one with `spinup agent create NAME {' '.join(o for _, o in asked)}`, or "
            f"allow MCP clients to ask by starting the server with SPINUP_MCP_GRANTS={names}."
        )


def check_registry_granted(grants: frozenset[str]) -> None:
    """Refuse registry push and pull to an MCP client unless the operator granted ``registry``: a push sends an
    agent's files to a host the caller names."""
    if "registry" not in grants:
        names = ",".join(sorted({*grants, "registry"}))
        raise NotGranted(
            "This Spinup server does not let MCP clients push or pull snapshots. The operator can run "
            f"`spinup snapshot push` / `spinup agent pull`, or allow it with SPINUP_MCP_GRANTS={names}."
        )


def check_fits_host(policy: Policy, host_cpus: int) -> None:
    """Refuse a policy the host cannot give (Docker would refuse the machine)."""
    if policy.cpus is not None and policy.cpus > host_cpus:
        raise InvalidInput(
            f"The policy asks for {policy.cpus:g} CPUs but this host has {host_cpus}: "
            f"use cpus <= {host_cpus}, or leave cpus unset for all of them."
        )
    if policy.cpus is not None and policy.cpus < 0.01:
        raise InvalidInput("cpus must be at least 0.01.")
