"""Health checks for ``spinup doctor``: each says what is wrong and how to fix it."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from .config import Settings
from .docker import API_VERSION, DockerBackend
from .errors import SpinupError
from .state import StateDB


@dataclass(frozen=True)
class Check:
    """One check's outcome."""

    name: str
    ok: bool
    detail: str
    fix: str = ""


async def diagnose(settings: Settings, docker: DockerBackend | None = None) -> list[Check]:
    """Run every check; never raises for a failing check."""
    checks: list[Check] = []
    own = docker is None
    docker = docker or DockerBackend(call_timeout=settings.docker_timeout, stream_idle=settings.docker_stream_idle)
    try:
        try:
            version = await docker.version()
        except SpinupError as exc:
            checks.append(Check("docker", False, str(exc), "Install docker.io and start dockerd; see README."))
            version = None
        if version is not None:
            api = version.api_version
            checks.append(Check("docker", True, f"Docker {version.version}, API {api}"))
            wanted = API_VERSION.lstrip("v")
            api_ok = tuple(int(x) for x in api.split(".")) >= tuple(int(x) for x in wanted.split("."))
            checks.append(
                Check("docker api", api_ok, f"daemon API {api}, Spinup uses {wanted}", "Upgrade the Docker daemon.")
            )
            has_image = await docker.image_exists(settings.default_image)
            checks.append(
                Check(
                    "base image",
                    has_image,
                    settings.default_image + (" present" if has_image else " missing"),
                    "Build it with: spinup image build",
                )
            )
    finally:
        if own:
            await docker.close()
    toolbox = Path(settings.toolbox_host_path).exists()  # noqa: ASYNC240 - one stat, local
    checks.append(
        Check(
            "toolbox",
            toolbox,
            settings.toolbox_host_path
            + (" present" if toolbox else " missing (machines, file_move and file_delete need it)"),
            "apt-get install busybox-static",
        )
    )
    try:
        db = StateDB(settings.db_path)
        checks.append(Check("state", True, f"{settings.db_path} (schema v{db.schema_version})"))
        db.close()
    except (OSError, RuntimeError) as exc:
        checks.append(Check("state", False, f"{settings.db_path}: {exc}", "Fix permissions or set SPINUP_HOME."))
    builder = shutil.which("mmdebstrap") is not None
    checks.append(
        Check(
            "image builder",
            builder,
            "mmdebstrap " + ("found" if builder else "not found (only needed to build the base image)"),
            "apt-get install mmdebstrap",
        )
    )
    return checks
