"""Rebuild: an agent moves to another base image, keeping its files and reinstalling its packages.

The old machine is snapshotted first (nothing is lost), a new machine is made from the new base,
``/workspace`` and the home directory are copied across (streamed through the archive API), and
the package manifest is replayed there: each manager's packages in one install at the versions
they had; if that fails, one by one, each at its version or else as first requested. What could
not be reinstalled is reported.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from .docker import DockerBackend
from .errors import SpinupError
from .models import PackageEntry, PackageManager
from .policy import NPM_PREFIX, VENV

log = logging.getLogger(__name__)

CARRIED = ("/workspace", "/home/agent")
# Built for the old base (interpreter paths, native modules): reinstalled from the manifest instead.
NOT_CARRIED = (VENV, NPM_PREFIX)


@dataclass(frozen=True)
class Reinstalled:
    """How one manifest entry fared on the new base."""

    entry: PackageEntry
    version: str | None  # None: it could not be reinstalled
    error: str = ""


def pinned(entry: PackageEntry) -> str:
    """The spec that asks for exactly the recorded version."""
    separator = {"pip": "==", "npm": "@", "apt": "="}[entry.manager]
    return f"{entry.name}{separator}{entry.version}"


async def copy_directories(docker: DockerBackend, source: str, target: str) -> None:
    """Stream /workspace and the home directory from machine ``source`` into machine ``target``."""
    for path in CARRIED:
        async with docker.get_archive(source, path) as (_, content):

            async def chunks() -> AsyncIterator[bytes]:
                while chunk := await content.read(1 << 20):
                    yield chunk

            await docker.put_archive(target, path.rsplit("/", 1)[0] or "/", chunks())


async def replay(
    entries: list[PackageEntry], install: Callable[[PackageManager, list[str]], Awaitable[dict[str, str]]]
) -> list[Reinstalled]:
    """Install the entries, each manager's in one go at their recorded versions; when that fails, one by one
    (pinned first, then as requested). ``install`` returns the manifest's versions by name afterwards."""
    outcomes = []
    for manager in dict.fromkeys(entry.manager for entry in entries):
        group = [entry for entry in entries if entry.manager == manager]
        try:
            versions = await install(manager, [pinned(entry) for entry in group])
        except SpinupError as exc:
            log.info("reinstalling %d %s packages in one go failed (%s); trying one by one", len(group), manager, exc)
        else:
            outcomes += [Reinstalled(entry, versions.get(entry.name)) for entry in group]
            continue
        for entry in group:
            error = ""
            for spec in dict.fromkeys([pinned(entry), entry.spec]):
                try:
                    outcomes.append(Reinstalled(entry, (await install(manager, [spec])).get(entry.name)))
                    break
                except SpinupError as exc:
                    error = str(exc)
            else:
                outcomes.append(Reinstalled(entry, None, error[-1500:]))
    return outcomes
