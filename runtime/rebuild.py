"""Rebuild: an agent moves to another base image, keeping its files and reinstalling its packages.

The old machine is snapshotted first (nothing is lost), a new machine is made from the new base,
``/workspace`` and the home directory are copied across (streamed through the archive API), and
the package manifest is replayed there: each package at the version it had, or as first
requested when that version is not available. What could not be reinstalled is reported.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from .docker import DockerBackend
from .errors import SpinupError
from .models import PackageEntry
from .policy import NPM_PREFIX, VENV

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
    entries: list[PackageEntry], install: Callable[[PackageEntry, str], Awaitable[str]]
) -> list[Reinstalled]:
    """Install each entry (pinned first, then as requested); ``install`` returns the version installed."""
    outcomes = []
    for entry in entries:
        error = ""
        for spec in dict.fromkeys([pinned(entry), entry.spec]):
            try:
                outcomes.append(Reinstalled(entry, await install(entry, spec)))
                break
            except SpinupError as exc:
                error = str(exc)
        else:
            outcomes.append(Reinstalled(entry, None, error[-1500:]))
    return outcomes
