"""Machines: the container an agent currently runs in, and how one is made."""

from __future__ import annotations

import contextlib
import os
import secrets
from typing import Any

from .config import TOOLBOX_MOUNT, Settings
from .docker import AGENT_LABEL, MANAGED_LABEL
from .errors import SpinupError
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


def _host_dirs(settings: Settings, policy_cache: bool, root: bool) -> list[str]:
    """Bind mounts of the shared caches (read-write) and the local sources (read-only), made if missing.

    apt's archives are shared only with root machines (only they run apt); apt locks them itself.
    """
    binds = []
    settings.sources_dir.mkdir(parents=True, exist_ok=True)
    binds.append(f"{settings.sources_dir}:{SOURCES_MOUNT}:ro")
    if policy_cache:
        for manager in ("pip", "npm"):
            directory = settings.cache_dir / manager
            if not directory.exists():
                directory.mkdir(parents=True)
                with contextlib.suppress(PermissionError):
                    os.chown(directory, AGENT_UID, AGENT_UID)  # the agent user fills it
            binds.append(f"{directory}:{CACHE_MOUNT}/{manager}")
        if root:
            archives = settings.cache_dir / "apt"
            (archives / "partial").mkdir(parents=True, exist_ok=True)
            binds.append(f"{archives}:{APT_ARCHIVES}")
    return binds


def machine_config(agent: Agent, settings: Settings, image: str, image_env: list[str] | None = None) -> dict[str, Any]:
    """The Docker create config for ``agent``'s machine from ``image``.

    The machine's main process is the toolbox's ``sleep`` under Docker's init (tini), so it
    needs nothing from the image, reaps zombies, and stops at once. The agent's policy sets the
    user, capabilities, limits and network. Bind mounts: the read-only toolbox, the read-only
    local package sources, and (unless the policy says otherwise) the shared download caches.
    """
    if not os.path.exists(settings.toolbox_host_path):
        raise SpinupError(
            f"The machine toolbox {settings.toolbox_host_path} is missing on this host. "
            f"Install it with: apt-get install busybox-static (then run: spinup doctor)."
        )
    binds = [
        f"{settings.toolbox_host_path}:{TOOLBOX_MOUNT}:ro",
        *_host_dirs(settings, agent.policy.package_cache, is_root(agent.policy)),
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
