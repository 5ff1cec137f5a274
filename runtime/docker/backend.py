"""The Docker backend: the one place that talks to the daemon through aiodocker.

Raw Docker JSON and ``aiodocker.DockerError`` stop here; callers get typed values
(:mod:`.values`) and :mod:`runtime.errors`. Every call has a deadline: ``call_timeout`` for a
request and its answer, ``stream_idle`` between two chunks of a stream (image load and save,
archives, walks of a writable layer); a command's output stream is bounded by the command's own
timeout instead. A call that misses its deadline raises :class:`~runtime.errors.DockerTimeout`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp
from aiodocker.exceptions import DockerError

from ..config import DEFAULT_DOCKER_STREAM_IDLE, DEFAULT_DOCKER_TIMEOUT
from ..errors import DockerFailure, DockerTimeout, DockerUnavailable, NotFound
from .execs import Execution
from .values import (
    Change,
    DaemonVersion,
    ExecState,
    ImageInfo,
    MachineInfo,
    MachineStats,
    PathStat,
    parse_changes,
    parse_exec,
    parse_image,
    parse_machine,
    parse_path_stat,
    parse_stats,
    parse_version,
)

MANAGED_LABEL = "spinup.managed"
AGENT_LABEL = "spinup.agent"
API_VERSION = "v1.41"
PAUSED_WAIT = 120.0  # seconds an exec waits for a machine paused by a snapshot
CALL_TIMEOUT = DEFAULT_DOCKER_TIMEOUT
STREAM_IDLE = DEFAULT_DOCKER_STREAM_IDLE
CONNECT_TIMEOUT = 10.0


@contextmanager
def translate_docker_errors(what: str, seconds: float = CALL_TIMEOUT, host: str = "") -> Iterator[None]:
    """Turn aiodocker, connection and deadline errors raised inside the block into Spinup errors."""
    try:
        yield
    except DockerError as exc:
        if exc.status == 900:
            raise DockerUnavailable(exc.message, host or _docker_host()) from exc
        if exc.status == 404:
            raise NotFound(f"{what}: {exc.message}") from exc
        raise DockerFailure(f"{what} failed: Docker said: {exc.message}", exc.status) from exc
    except TimeoutError as exc:  # aiohttp's deadlines (its ServerTimeoutError is a TimeoutError too)
        raise DockerTimeout(what, seconds, host or _docker_host()) from exc
    except (aiohttp.ClientConnectionError, FileNotFoundError, ConnectionError) as exc:
        raise DockerUnavailable(str(exc) or type(exc).__name__, host or _docker_host()) from exc


def _docker_host() -> str:
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


class DockerBackend:
    """Typed, error-translating access to the Docker daemon, every call under a deadline.

    Machines moved to other daemons are reached through the same object: with ``locate`` (a machine id
    to the address of the daemon it lives on, None for this one) every call about a machine goes to
    its own daemon, and the calls that make machines or images take that daemon's address (``host``).
    """

    def __init__(
        self,
        client: aiodocker.Docker | None = None,
        *,
        url: str | None = None,
        call_timeout: float = CALL_TIMEOUT,
        stream_idle: float = STREAM_IDLE,
        locate: Callable[[str], str | None] | None = None,
    ) -> None:
        self._client = client
        self._owns_client = client is None
        self._url = url
        self.call_timeout = call_timeout
        self.stream_idle = stream_idle
        self._cpus: int | None = None
        self.locate = locate
        self._others: dict[str, DockerBackend] = {}  # daemon address -> its backend
        self._homes: dict[str, str | None] = {}  # machine id -> the address of its daemon (None: this one)

    def at(self, host: str | None) -> DockerBackend:
        """The backend of the daemon at ``host`` (this one for None or its own address), made on first use."""
        if host is None or host == self.host:
            return self
        backend = self._others.get(host)
        if backend is None:
            backend = DockerBackend(url=host, call_timeout=self.call_timeout, stream_idle=self.stream_idle)
            self._others[host] = backend
        return backend

    def of(self, machine_id: str) -> DockerBackend:
        """The backend of the daemon machine ``machine_id`` lives on."""
        if self.locate is None:
            return self
        if machine_id not in self._homes:
            self._homes[machine_id] = self.locate(machine_id)
        return self.at(self._homes[machine_id])

    def forget(self, machine_id: str) -> None:
        """Drop what is known of a removed machine's daemon."""
        self._homes.pop(machine_id, None)

    def _elsewhere(self, machine_id: str) -> DockerBackend | None:
        """The backend of the machine's daemon when it is another one than this."""
        backend = self.of(machine_id)
        return None if backend is self else backend

    def _other(self, host: str | None) -> DockerBackend | None:
        """The backend of the daemon at ``host`` when it is another one than this."""
        backend = self.at(host)
        return None if backend is self else backend

    @property
    def client(self) -> aiodocker.Docker:
        """The aiodocker client (made on first use); its requests default to the call deadline."""
        if self._client is None:
            with translate_docker_errors("connect to Docker", self.call_timeout):
                self._client = aiodocker.Docker(
                    url=self._url,
                    api_version=API_VERSION,
                    timeout=aiohttp.ClientTimeout(total=self.call_timeout, sock_connect=CONNECT_TIMEOUT),
                )
        return self._client

    @property
    def host(self) -> str:
        """Where the daemon is reached, for messages."""
        return self._url or _docker_host()

    def _calling(self, what: str, seconds: float | None = None) -> contextlib.AbstractContextManager[None]:
        """Translate the errors of one call whose deadline is ``seconds`` (default: the call deadline)."""
        return translate_docker_errors(what, self.call_timeout if seconds is None else seconds, self.host)

    def _streaming(self) -> aiohttp.ClientTimeout:
        """The deadline of a stream: no total, ``stream_idle`` between chunks."""
        return aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT, sock_read=self.stream_idle)

    async def close(self) -> None:
        """Close the HTTP session if this backend created it (and those of the other daemons reached)."""
        for other in self._others.values():
            await other.close()
        self._others.clear()
        if self._client is not None and self._owns_client:
            await self._client.close()
            self._client = None

    # daemon

    async def version(self, host: str | None = None) -> DaemonVersion:
        """The daemon's version and API version (of the daemon at ``host``, default this one)."""
        if (other := self._other(host)) is not None:
            return await other.version()
        with self._calling("Ask Docker for its version"):
            return parse_version(await self.client.version())

    @property
    def is_local(self) -> bool:
        """True when the daemon is reached over a local unix socket (so host /proc is its /proc)."""
        url = str(getattr(self.client, "docker_host", ""))
        return url.startswith("unix://")

    # images

    async def image_exists(self, ref: str, *, host: str | None = None) -> bool:
        """Whether Docker has the image ``ref``."""
        if (other := self._other(host)) is not None:
            return await other.image_exists(ref)
        try:
            with self._calling(f"Inspect image {ref}"):
                await self.client.images.inspect(ref)
        except NotFound:
            return False
        return True

    async def image_inspect(self, ref: str, *, host: str | None = None) -> ImageInfo:
        """The image's id, platform, runtime config and layer diff ids."""
        if (other := self._other(host)) is not None:
            return await other.image_inspect(ref)
        with self._calling(f"Inspect image {ref}"):
            return parse_image(await self.client.images.inspect(ref))

    async def remove_image(self, ref: str, *, force: bool = True, host: str | None = None) -> None:
        """Remove an image tag; an absent image is fine."""
        if (other := self._other(host)) is not None:
            return await other.remove_image(ref, force=force)
        try:
            with self._calling(f"Remove image {ref}"):
                await self.client.images.delete(ref, force=force)
        except NotFound:
            return

    async def tag_image(self, ref: str, repo: str, tag: str) -> None:
        """Tag the image ``ref`` as ``repo:tag``."""
        with self._calling(f"Tag image {ref} as {repo}:{tag}"):
            await self.client.images.tag(ref, repo, tag=tag)

    async def load_image(self, tar_stream: AsyncIterator[bytes], *, host: str | None = None) -> None:
        """Load a ``docker save``-format tar stream into the daemon."""
        if (other := self._other(host)) is not None:
            return await other.load_image(tar_stream)
        await self._post_tar("images/load", {"quiet": "1"}, tar_stream, "Load image")

    async def _post_tar(self, path: str, params: dict[str, Any], tar_stream: AsyncIterator[bytes], what: str) -> None:
        """Stream a tar body to the daemon and fail on any error line of its JSON progress answer."""
        with self._calling(what, self.stream_idle):
            async with self.client._query(
                path,
                method="POST",
                params=params,
                data=tar_stream,
                headers={"Content-Type": "application/x-tar"},
                timeout=self._streaming(),
            ) as response:
                body = await response.text()
        for line in body.splitlines():
            if '"error"' in line:
                raise DockerFailure(f"{what} failed: {json.loads(line).get('error')}")

    async def save_image(self, ref: str, destination: Path, *, host: str | None = None) -> int:
        """Stream ``docker save`` of an image to a file (atomically); returns the bytes written."""
        if (other := self._other(host)) is not None:
            return await other.save_image(ref, destination)
        tmp = destination.with_name(destination.name + ".part")
        written = 0
        with self._calling(f"Save image {ref}", self.stream_idle):
            async with self.client._query(f"images/{ref}/get", method="GET", timeout=self._streaming()) as response:
                with open(tmp, "wb") as fh:  # noqa: ASYNC230 - sequential local writes of streamed chunks
                    async for chunk in response.content.iter_chunked(1024 * 1024):
                        fh.write(chunk)
                        written += len(chunk)
                    fh.flush()
                    os.fsync(fh.fileno())
        os.replace(tmp, destination)
        return written

    @asynccontextmanager
    async def export_image(self, ref: str, *, host: str | None = None) -> AsyncIterator[aiohttp.StreamReader]:
        """Stream ``docker save`` of one image (its tar body, read as it comes)."""
        if (other := self._other(host)) is not None:
            async with other.export_image(ref) as content:
                yield content
            return
        with self._calling(f"Save image {ref}", self.stream_idle):
            async with self.client._query(f"images/{ref}/get", method="GET", timeout=self._streaming()) as response:
                yield response.content

    async def pause(self, container_id: str) -> None:
        """Freeze every process of a running container."""
        if (other := self._elsewhere(container_id)) is not None:
            return await other.pause(container_id)
        with self._calling(f"Pause machine {container_id[:12]}"):
            await self.client.containers.container(container_id).pause()

    async def import_image(self, tar_stream: AsyncIterator[bytes], ref: str, changes: list[str]) -> str:
        """Import a rootfs tar stream as image ``ref``; returns the image id."""
        repo, _, tag = ref.rpartition(":") if ":" in ref.split("/")[-1] else (ref, "", "latest")
        params: dict[str, Any] = {"fromSrc": "-", "repo": repo, "tag": tag}
        if changes:
            params["changes"] = "\n".join(changes)
        await self._post_tar("images/create", params, tar_stream, f"Import of {ref}")
        return (await self.image_inspect(ref)).id

    # containers

    async def create_container(
        self, config: dict[str, Any], name: str | None = None, *, host: str | None = None
    ) -> str:
        """Create a container from a full config (on the daemon at ``host``, default this one); returns its id."""
        if (other := self._other(host)) is not None:
            machine_id = await other.create_container(config, name)
            self._homes[machine_id] = host
            return machine_id
        with self._calling("Create machine"):
            container = await self.client.containers.create(config, name=name)
            return str(container.id)

    async def inspect(self, container_id: str) -> MachineInfo | None:
        """The container's state, or None if it does not exist."""
        if (other := self._elsewhere(container_id)) is not None:
            return await other.inspect(container_id)
        try:
            with self._calling(f"Inspect machine {container_id[:12]}"):
                raw = await self.client.containers.container(container_id).show()
        except NotFound:
            return None
        return parse_machine(raw)

    async def update_limits(self, container_id: str, limits: dict[str, Any]) -> None:
        """Change a running container's resource limits (``Memory``, ``MemorySwap``, ``NanoCpus``, ``PidsLimit``)."""
        if (other := self._elsewhere(container_id)) is not None:
            return await other.update_limits(container_id, limits)
        with self._calling(f"Update the limits of machine {container_id[:12]}"):
            await self.client._query_json(f"containers/{container_id}/update", method="POST", data=limits)

    async def rename(self, container_id: str, name: str) -> None:
        """Give a container another name."""
        if (other := self._elsewhere(container_id)) is not None:
            return await other.rename(container_id, name)
        with self._calling(f"Rename machine {container_id[:12]}"):
            await self.client.containers.container(container_id).rename(name)

    async def writable_size(self, container_id: str) -> int:
        """Bytes in the container's writable layer, as Docker measures them (walks the layer: slow)."""
        if (other := self._elsewhere(container_id)) is not None:
            return await other.writable_size(container_id)
        # Docker walks the whole writable layer to answer: a stream's deadline, not a call's.
        with self._calling(f"Measure machine {container_id[:12]}", self.stream_idle):
            raw = await self.client._query_json(
                f"containers/{container_id}/json", method="GET", params={"size": "1"}, timeout=self._streaming()
            )
        return int(raw.get("SizeRw") or 0)

    async def stats(self, container_id: str) -> MachineStats:
        """One reading of the machine's CPU, memory and pids counters (Docker's one-shot stats: no wait)."""
        if (other := self._elsewhere(container_id)) is not None:
            return await other.stats(container_id)
        with self._calling(f"Read the resource use of machine {container_id[:12]}"):
            raw = await self.client._query_json(
                f"containers/{container_id}/stats", method="GET", params={"stream": "false", "one-shot": "true"}
            )
        return parse_stats(raw)

    async def cpu_count(self, host: str | None = None) -> int:
        """CPUs the daemon's host has (asked once per backend)."""
        if (other := self._other(host)) is not None:
            return await other.cpu_count()
        if self._cpus is None:
            with self._calling("Ask Docker about its host"):
                info = await self.client.system.info()
            self._cpus = int(info.get("NCPU") or os.cpu_count() or 1)
        return self._cpus

    async def container_changes(self, container_id: str) -> list[Change]:
        """Paths the container added, modified or deleted relative to its image."""
        if (other := self._elsewhere(container_id)) is not None:
            return await other.container_changes(container_id)
        with self._calling(f"List changes of machine {container_id[:12]}", self.stream_idle):
            result = await self.client._query_json(
                f"containers/{container_id}/changes", method="GET", timeout=self._streaming()
            )
        return parse_changes(result)

    async def start(self, container_id: str) -> None:
        """Start a stopped container."""
        if (other := self._elsewhere(container_id)) is not None:
            return await other.start(container_id)
        with self._calling(f"Start machine {container_id[:12]}"):
            await self.client.containers.container(container_id).start()

    async def unpause(self, container_id: str) -> None:
        """Resume a paused container."""
        if (other := self._elsewhere(container_id)) is not None:
            return await other.unpause(container_id)
        with self._calling(f"Unpause machine {container_id[:12]}"):
            await self.client.containers.container(container_id).unpause()

    async def stop(self, container_id: str, grace_seconds: int = 5) -> None:
        """Stop a container, killing it after ``grace_seconds``."""
        if (other := self._elsewhere(container_id)) is not None:
            return await other.stop(container_id, grace_seconds)
        with self._calling(f"Stop machine {container_id[:12]}"):
            await self.client.containers.container(container_id).stop(t=grace_seconds)

    async def kill(self, container_id: str) -> None:
        """SIGKILL every process of a container now (also a paused one); it stops, its files stay."""
        if (other := self._elsewhere(container_id)) is not None:
            return await other.kill(container_id)
        with self._calling(f"Kill machine {container_id[:12]}"):
            await self.client.containers.container(container_id).kill(signal="SIGKILL")

    async def remove(self, container_id: str) -> None:
        """Force-remove a container; a container that is already gone is fine."""
        if (other := self._elsewhere(container_id)) is not None:
            return await other.remove(container_id)
        try:
            with self._calling(f"Remove machine {container_id[:12]}"):
                await self.client.containers.container(container_id).delete(force=True, v=True)
        except NotFound:
            return

    async def list_by_label(self, label: str, *, host: str | None = None) -> list[str]:
        """Ids of all containers (running or not) carrying ``label`` (``key`` or ``key=value``)."""
        if (other := self._other(host)) is not None:
            found = await other.list_by_label(label)
            self._homes.update(dict.fromkeys(found, host))
            return found
        with self._calling("List machines"):
            containers = await self.client.containers.list(all=True, filters={"label": [label]})
        return [str(c.id) for c in containers]

    async def list_machines(self, label: str) -> list[tuple[str, dict[str, str], bool]]:
        """(id, labels, running) of all containers carrying ``label`` (``key`` or ``key=value``)."""
        with self._calling("List machines"):
            containers = await self.client.containers.list(all=True, filters={"label": [label]})
        return [(str(c.id), dict(c["Labels"] or {}), c["State"] == "running") for c in containers]

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
        tty: bool = False,
    ) -> Execution:
        """Create an exec instance (not started); ``tty`` gives it a terminal (its output is then one raw stream).

        A machine paused for a snapshot takes no exec: wait (up to ``PAUSED_WAIT`` seconds) for the
        snapshot to finish rather than fail a command that arrived at the wrong moment.
        """
        if (other := self._elsewhere(container_id)) is not None:
            return await other.exec_create(
                container_id, argv, env=env, workdir=workdir, user=user, stdin=stdin, tty=tty
            )
        container = self.client.containers.container(container_id)
        deadline = asyncio.get_running_loop().time() + PAUSED_WAIT
        delay = 0.02
        while True:
            try:
                with self._calling("Start command"):
                    execution = await container.exec(
                        argv,
                        stdin=stdin,
                        stdout=True,
                        stderr=True,
                        tty=tty,
                        user=user,
                        environment=env,
                        workdir=workdir,
                    )
                    return Execution(execution)
            except DockerFailure as exc:
                # Docker answers 409 both for a paused machine and for a stopped one: ask which it is.
                if exc.status != 409 or asyncio.get_running_loop().time() > deadline:
                    raise
                machine = await self.inspect(container_id)
                if machine is None or not (machine.paused or machine.running):
                    raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

    async def exec_inspect(self, exec_id: str, machine_id: str | None = None) -> ExecState:
        """Whether the command runs, its exit code and its pid (``machine_id``: the machine it runs in, when it
        may be on another daemon)."""
        if machine_id is not None and (other := self._elsewhere(machine_id)) is not None:
            return await other.exec_inspect(exec_id)
        with self._calling("Inspect command"):
            return parse_exec(await self.client._query_json(f"exec/{exec_id}/json", method="GET"))

    # archive

    async def path_stat(self, container_id: str, path: str) -> PathStat:
        """Stat ``path`` in the container (a symlink is reported as itself)."""
        if (other := self._elsewhere(container_id)) is not None:
            return await other.path_stat(container_id, path)
        # aiodocker cannot read HEAD errors (no body), so this request is made directly.
        client = self.client
        url = client._canonicalize_url(f"containers/{container_id}/archive")
        with self._calling(f"Stat {path}"):
            try:
                async with client.session.head(url, params={"path": path}) as response:
                    if response.status == 404:
                        raise DockerError(404, f"no such path {path} (or no such machine)")
                    if response.status >= 400:
                        raise DockerError(response.status, response.reason or "archive stat failed")
                    return parse_path_stat(response.headers.get("X-Docker-Container-Path-Stat"))
            except aiohttp.ClientConnectionError as exc:
                raise DockerError(900, str(exc)) from exc

    @asynccontextmanager
    async def get_archive(self, container_id: str, path: str) -> AsyncIterator[tuple[PathStat, aiohttp.StreamReader]]:
        """Stream a tar of ``path`` out of the container, with the path's stat."""
        if (other := self._elsewhere(container_id)) is not None:
            async with other.get_archive(container_id, path) as found:
                yield found
            return
        with self._calling(f"Read {path}", self.stream_idle):
            async with self.client._query(
                f"containers/{container_id}/archive",
                method="GET",
                params={"path": path},
                # aiohttp asks for gzip by default, which makes the daemon compress what we unpack at once.
                headers={"Accept-Encoding": "identity"},
                timeout=self._streaming(),
            ) as response:
                stat = parse_path_stat(response.headers.get("X-Docker-Container-Path-Stat"))
                yield stat, response.content

    async def put_archive(self, container_id: str, path: str, tar: AsyncIterator[bytes] | bytes) -> None:
        """Extract a tar (bytes or a stream of chunks) into directory ``path`` of the container."""
        if (other := self._elsewhere(container_id)) is not None:
            return await other.put_archive(container_id, path, tar)
        with self._calling(f"Write into {path}", self.stream_idle):
            async with self.client._query(
                f"containers/{container_id}/archive",
                method="PUT",
                params={"path": path, "noOverwriteDirNonDir": "true"},
                data=tar,
                headers={"Content-Type": "application/x-tar"},
                timeout=self._streaming(),
            ) as response:
                await response.read()
