"""The Docker backend: the one place that talks to the daemon through aiodocker.

Raw Docker JSON and ``aiodocker.DockerError`` stop here; callers get typed values and
:mod:`runtime.errors`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp
from aiodocker.exceptions import DockerError

from .errors import DockerFailure, DockerUnavailable, NotFound

MANAGED_LABEL = "spinup.managed"
AGENT_LABEL = "spinup.agent"
API_VERSION = "v1.41"
PAUSED_WAIT = 120.0  # seconds an exec waits for a machine paused by a snapshot


@contextmanager
def translate_docker_errors(what: str) -> Iterator[None]:
    """Turn aiodocker and connection errors raised inside the block into Spinup errors."""
    try:
        yield
    except DockerError as exc:
        if exc.status == 900:
            raise DockerUnavailable(exc.message) from exc
        if exc.status == 404:
            raise NotFound(f"{what}: {exc.message}") from exc
        raise DockerFailure(f"{what} failed: Docker said: {exc.message}", exc.status) from exc
    except (aiohttp.ClientConnectionError, FileNotFoundError, ConnectionError) as exc:
        raise DockerUnavailable(str(exc)) from exc


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
        return bool(self.mode & self._DIR)

    @property
    def is_symlink(self) -> bool:
        return bool(self.mode & self._SYMLINK)

    @property
    def permissions(self) -> int:
        return self.mode & 0o7777


def _parse_path_stat(header: str | None) -> PathStat:
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


class DockerBackend:
    """Typed, error-translating access to the Docker daemon."""

    def __init__(self, client: aiodocker.Docker | None = None) -> None:
        self._client = client
        self._owns_client = client is None

    @property
    def client(self) -> aiodocker.Docker:
        if self._client is None:
            with translate_docker_errors("connect to Docker"):
                self._client = aiodocker.Docker(api_version=API_VERSION)
        return self._client

    async def close(self) -> None:
        """Close the HTTP session if this backend created it."""
        if self._client is not None and self._owns_client:
            await self._client.close()
            self._client = None

    # daemon

    async def version(self) -> dict[str, Any]:
        """The daemon's version document."""
        with translate_docker_errors("Ask Docker for its version"):
            result: dict[str, Any] = await self.client.version()
            return result

    @property
    def is_local(self) -> bool:
        """True when the daemon is reached over a local unix socket (so host /proc is its /proc)."""
        url = str(getattr(self.client, "docker_host", ""))
        return url.startswith("unix://")

    # images

    async def image_exists(self, ref: str) -> bool:
        """Whether Docker has the image ``ref``."""
        try:
            with translate_docker_errors(f"Inspect image {ref}"):
                await self.client.images.inspect(ref)
        except NotFound:
            return False
        return True

    async def image_inspect(self, ref: str) -> dict[str, Any]:
        """The image's inspect document (id, config, rootfs diff ids)."""
        with translate_docker_errors(f"Inspect image {ref}"):
            result: dict[str, Any] = await self.client.images.inspect(ref)
            return result

    async def remove_image(self, ref: str) -> None:
        """Remove an image tag; an absent image is fine."""
        try:
            with translate_docker_errors(f"Remove image {ref}"):
                await self.client.images.delete(ref, force=True)
        except NotFound:
            return

    async def load_image(self, tar_stream: AsyncIterator[bytes]) -> None:
        """Load a ``docker save``-format tar stream into the daemon."""
        await self._post_tar("images/load", {"quiet": "1"}, tar_stream, "Load image")

    async def _post_tar(self, path: str, params: dict[str, Any], tar_stream: AsyncIterator[bytes], what: str) -> None:
        """Stream a tar body to the daemon and fail on any error line of its JSON progress answer."""
        with translate_docker_errors(what):
            async with self.client._query(
                path,
                method="POST",
                params=params,
                data=tar_stream,
                headers={"Content-Type": "application/x-tar"},
                timeout=aiohttp.ClientTimeout(total=None),
            ) as response:
                body = await response.text()
        for line in body.splitlines():
            if '"error"' in line:
                raise DockerFailure(f"{what} failed: {json.loads(line).get('error')}")

    async def save_image(self, ref: str, destination: Path) -> int:
        """Stream ``docker save`` of an image to a file (atomically); returns the bytes written."""
        tmp = destination.with_name(destination.name + ".part")
        written = 0
        with translate_docker_errors(f"Save image {ref}"):
            async with self.client._query(
                f"images/{ref}/get", method="GET", timeout=aiohttp.ClientTimeout(total=None)
            ) as response:
                with open(tmp, "wb") as fh:  # noqa: ASYNC230 - sequential local writes of streamed chunks
                    async for chunk in response.content.iter_chunked(1024 * 1024):
                        fh.write(chunk)
                        written += len(chunk)
                    fh.flush()
                    os.fsync(fh.fileno())
        os.replace(tmp, destination)
        return written

    async def pause(self, container_id: str) -> None:
        """Freeze every process of a running container."""
        with translate_docker_errors(f"Pause machine {container_id[:12]}"):
            await self.client.containers.container(container_id).pause()

    async def import_image(self, tar_stream: AsyncIterator[bytes], ref: str, changes: list[str]) -> str:
        """Import a rootfs tar stream as image ``ref``; returns the image id."""
        repo, _, tag = ref.rpartition(":") if ":" in ref.split("/")[-1] else (ref, "", "latest")
        params: dict[str, Any] = {"fromSrc": "-", "repo": repo, "tag": tag}
        if changes:
            params["changes"] = "\n".join(changes)
        await self._post_tar("images/create", params, tar_stream, f"Import of {ref}")
        info = await self.image_inspect(ref)
        return str(info["Id"])

    # containers

    async def create_container(self, config: dict[str, Any], name: str | None = None) -> str:
        """Create a container from a full config; returns its id."""
        with translate_docker_errors("Create machine"):
            container = await self.client.containers.create(config, name=name)
            return str(container.id)

    async def inspect(self, container_id: str) -> MachineInfo | None:
        """The container's state, or None if it does not exist."""
        try:
            with translate_docker_errors(f"Inspect machine {container_id[:12]}"):
                raw = await self.client.containers.container(container_id).show()
        except NotFound:
            return None
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
        )

    async def writable_size(self, container_id: str) -> int:
        """Bytes in the container's writable layer, as Docker measures them (walks the layer: slow)."""
        with translate_docker_errors(f"Measure machine {container_id[:12]}"):
            raw = await self.client._query_json(f"containers/{container_id}/json", method="GET", params={"size": "1"})
        return int(raw.get("SizeRw") or 0)

    async def cpu_count(self) -> int:
        """CPUs the daemon's host has."""
        with translate_docker_errors("Ask Docker about its host"):
            info = await self.client.system.info()
        return int(info.get("NCPU") or os.cpu_count() or 1)

    async def container_changes(self, container_id: str) -> list[dict[str, Any]]:
        """Paths the container added (1), modified (0) or deleted (2) relative to its image."""
        with translate_docker_errors(f"List changes of machine {container_id[:12]}"):
            result = await self.client._query_json(f"containers/{container_id}/changes", method="GET")
        return list(result or [])

    async def start(self, container_id: str) -> None:
        """Start a stopped container."""
        with translate_docker_errors(f"Start machine {container_id[:12]}"):
            await self.client.containers.container(container_id).start()

    async def unpause(self, container_id: str) -> None:
        """Resume a paused container."""
        with translate_docker_errors(f"Unpause machine {container_id[:12]}"):
            await self.client.containers.container(container_id).unpause()

    async def stop(self, container_id: str, grace_seconds: int = 5) -> None:
        """Stop a container, killing it after ``grace_seconds``."""
        with translate_docker_errors(f"Stop machine {container_id[:12]}"):
            await self.client.containers.container(container_id).stop(t=grace_seconds)

    async def remove(self, container_id: str) -> None:
        """Force-remove a container; a container that is already gone is fine."""
        try:
            with translate_docker_errors(f"Remove machine {container_id[:12]}"):
                await self.client.containers.container(container_id).delete(force=True, v=True)
        except NotFound:
            return

    async def list_by_label(self, label: str) -> list[str]:
        """Ids of all containers (running or not) carrying ``label`` (``key`` or ``key=value``)."""
        with translate_docker_errors("List machines"):
            containers = await self.client.containers.list(all=True, filters={"label": [label]})
        return [str(c.id) for c in containers]

    # exec

    async def exec_create(
        self,
        container_id: str,
        argv: list[str],
        *,
        env: dict[str, str],
        workdir: str | None,
        user: str,
        stdin: bool,
    ) -> aiodocker.execs.Exec:
        """Create an exec instance (not started).

        A machine paused for a snapshot takes no exec: wait (up to ``PAUSED_WAIT`` seconds) for the
        snapshot to finish rather than fail a command that arrived at the wrong moment.
        """
        container = self.client.containers.container(container_id)
        deadline = asyncio.get_running_loop().time() + PAUSED_WAIT
        delay = 0.02
        while True:
            try:
                with translate_docker_errors("Start command"):
                    return await container.exec(
                        argv,
                        stdin=stdin,
                        stdout=True,
                        stderr=True,
                        tty=False,
                        user=user,
                        environment=env,
                        workdir=workdir,
                    )
            except DockerFailure as exc:
                if exc.status != 409 or "paused" not in str(exc) or asyncio.get_running_loop().time() > deadline:
                    raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

    async def exec_inspect(self, exec_id: str) -> dict[str, Any]:
        """Exec state: ``Running``, ``ExitCode``, ``Pid``."""
        with translate_docker_errors("Inspect command"):
            result: dict[str, Any] = await self.client._query_json(f"exec/{exec_id}/json", method="GET")
            return result

    # archive

    async def path_stat(self, container_id: str, path: str) -> PathStat:
        """Stat ``path`` in the container (a symlink is reported as itself)."""
        # aiodocker cannot read HEAD errors (no body), so this request is made directly.
        client = self.client
        url = client._canonicalize_url(f"containers/{container_id}/archive")
        with translate_docker_errors(f"Stat {path}"):
            try:
                async with client.session.head(url, params={"path": path}) as response:
                    if response.status == 404:
                        raise DockerError(404, f"no such path {path} (or no such machine)")
                    if response.status >= 400:
                        raise DockerError(response.status, response.reason or "archive stat failed")
                    return _parse_path_stat(response.headers.get("X-Docker-Container-Path-Stat"))
            except aiohttp.ClientConnectionError as exc:
                raise DockerError(900, str(exc)) from exc

    @asynccontextmanager
    async def get_archive(self, container_id: str, path: str) -> AsyncIterator[tuple[PathStat, aiohttp.StreamReader]]:
        """Stream a tar of ``path`` out of the container, with the path's stat."""
        with translate_docker_errors(f"Read {path}"):
            async with self.client._query(
                f"containers/{container_id}/archive",
                method="GET",
                params={"path": path},
                # aiohttp asks for gzip by default, which makes the daemon compress what we unpack at once.
                headers={"Accept-Encoding": "identity"},
                timeout=aiohttp.ClientTimeout(total=None),
            ) as response:
                stat = _parse_path_stat(response.headers.get("X-Docker-Container-Path-Stat"))
                yield stat, response.content

    async def put_archive(self, container_id: str, path: str, tar: AsyncIterator[bytes] | bytes) -> None:
        """Extract a tar (bytes or a stream of chunks) into directory ``path`` of the container."""
        with translate_docker_errors(f"Write into {path}"):
            async with self.client._query(
                f"containers/{container_id}/archive",
                method="PUT",
                params={"path": path, "noOverwriteDirNonDir": "true"},
                data=tar,
                headers={"Content-Type": "application/x-tar"},
                timeout=aiohttp.ClientTimeout(total=None),
            ) as response:
                await response.read()
