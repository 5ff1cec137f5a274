"""Machines: the container an agent currently runs in, and how one is made."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import Any

from .config import TOOLBOX_MOUNT, Settings
from .docker import AGENT_LABEL, MANAGED_LABEL
from .errors import SpinupError
from .host_mounts import guard_in_place, read_only_bind
from .models import Agent
from .policy import (
    AGENT_UID,
    APT_ARCHIVES,
    CACHE_MOUNT,
    SOURCES_MOUNT,
    WORKSPACE,
    exec_user,
    host_config,
    is_root,
    package_env,
    proxy_env,
    user_env,
)


def machine_labels(agent: Agent, settings: Settings) -> dict[str, str]:
    """Labels every machine carries, so it can be found (and cleaned up) by agent."""
    return {MANAGED_LABEL: "1", AGENT_LABEL: agent.id, "spinup.name": agent.name, **settings.label_extra}


def agent_cache_dir(settings: Settings, agent: Agent) -> Path:
    """The host directory holding this agent's own package download caches (pip, npm, apt)."""
    return settings.cache_dir / agent.id


def _host_dirs(settings: Settings, agent: Agent, root: bool) -> list[str]:
    """Bind mounts of the agent's own caches (read-write) and the local sources (read-only), made if missing.

    The caches belong to one agent, never shared: a file one agent puts in them (a doctored wheel,
    an npm tarball with its index entry, a .deb) reaches no other agent's installs. They live on
    the host, so they outlast the agent's machines and stay out of its snapshots; they go with
    the agent. apt's archives are mounted only into root machines (only they run apt).
    """
    binds = []
    views = settings.home / "mounts"  # read-only views of host directories (see host_mounts)
    settings.sources_dir.mkdir(parents=True, exist_ok=True)
    binds.append(read_only_bind(settings.sources_dir, SOURCES_MOUNT, views))
    if agent.policy.package_cache:
        settings.cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        guard_in_place(settings.cache_dir, views)  # one nosuid,nodev mount: every agent's caches are bound from it
        own = agent_cache_dir(settings, agent)
        for manager in ("pip", "npm"):
            directory = own / manager
            if not directory.exists():
                directory.mkdir(parents=True, mode=0o700)
                with contextlib.suppress(PermissionError):
                    os.chown(directory, AGENT_UID, AGENT_UID)  # the agent user fills it
            binds.append(f"{directory}:{CACHE_MOUNT}/{manager}")
        if root:
            archives = own / "apt"
            (archives / "partial").mkdir(parents=True, exist_ok=True)
            binds.append(f"{archives}:{APT_ARCHIVES}")
    return binds


def prepare_host_dirs(agent: Agent, settings: Settings) -> None:
    """Make sure the host directories a machine of ``agent`` binds are there with their flags (before a
    start of an existing machine: the host's nosuid,nodev mounts do not survive its reboot)."""
    _host_dirs(settings, agent, is_root(agent.policy))


def machine_config(agent: Agent, settings: Settings, image: str, image_env: list[str] | None = None) -> dict[str, Any]:
    """The Docker create config for ``agent``'s machine from ``image``.

    The machine's main process is the toolbox's ``sleep`` under Docker's init (tini), so it
    needs nothing from the image, reaps zombies, and stops at once. The agent's policy sets the
    user, capabilities, limits and network. Bind mounts: the read-only toolbox, the read-only
    local package sources, and (unless the policy says otherwise) the agent's own download caches.
    """
    if not os.path.exists(settings.toolbox_host_path):
        raise SpinupError(
            f"The machine toolbox {settings.toolbox_host_path} is missing on this host. "
            f"Install it with: apt-get install busybox-static (then run: spinup doctor)."
        )
    binds = [
        f"{settings.toolbox_host_path}:{TOOLBOX_MOUNT}:ro",
        *_host_dirs(settings, agent, is_root(agent.policy)),
    ]
    return {
        "Image": image,
        "Entrypoint": [TOOLBOX_MOUNT, "sleep", "infinity"],
        "Cmd": [],
        "Hostname": agent.name,
        "WorkingDir": WORKSPACE,
        "Labels": machine_labels(agent, settings),
        "User": exec_user(agent.policy),
        "Env": [
            f"SPINUP_AGENT={agent.name}",
            *user_env(agent.policy),
            *package_env(agent.policy, image_env or []),
            *proxy_env(agent.policy, settings.egress_port),
        ],
        "HostConfig": {
            "Init": True,
            "Binds": binds,
            "RestartPolicy": {"Name": "no"},
            **host_config(agent.policy),
        },
    }


def machine_name(agent: Agent) -> str:
    """A readable container name, unique even while an agent's old and new machines coexist."""
    return f"spinup-{agent.name}-{secrets.token_hex(4)}"
