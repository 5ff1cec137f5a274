"""Machine paths: the rules a path must follow, and finding what a path is in a machine.

Lookups go through Docker's stat (nothing needed inside the image); symlinks are followed
by reading each link's target, at most ``MAX_SYMLINK_HOPS`` of them.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

from ..docker import DockerBackend, PathStat
from ..errors import DockerFailure, InvalidInput, NotADirectory, NotFound, PathNotFound

MAX_SYMLINK_HOPS = 16


def normalize_path(path: str) -> str:
    """Validate an absolute machine path and normalize it (``/a/./b/../c`` -> ``/a/c``)."""
    if not isinstance(path, str) or not path.startswith("/"):
        raise InvalidInput(f"Paths must be absolute inside the machine (start with '/'), got {path!r}.")
    if "\0" in path:
        raise InvalidInput("Paths cannot contain NUL bytes.")
    return posixpath.normpath(path).replace("//", "/")


@dataclass(frozen=True)
class MachinePaths:
    """What paths are in one machine: stat, symlinks followed, ancestors still missing."""

    docker: DockerBackend
    machine_id: str

    async def stat(self, path: str) -> PathStat:
        """Docker's stat of ``path`` (a symlink as itself); :class:`PathNotFound` when it is absent."""
        try:
            return await self.docker.path_stat(self.machine_id, path)
        except NotFound as exc:
            raise PathNotFound(path) from exc
        except DockerFailure as exc:
            # Docker answers 500 with no detail when a path goes through a file (ENOTDIR).
            parent = posixpath.dirname(path)
            if exc.status != 500 or parent == path:
                raise
            if not (await self.stat(parent)).is_dir:
                raise NotADirectory(parent) from exc
            raise

    async def resolve(self, path: str) -> tuple[str, PathStat]:
        """Follow symlinks to the final path and its stat."""
        for _ in range(MAX_SYMLINK_HOPS):
            st = await self.stat(path)
            if not st.is_symlink:
                return path, st
            path = normalize_path(posixpath.join(posixpath.dirname(path), st.link_target))
        raise InvalidInput(f"Too many levels of symbolic links at {path}.")

    async def exists(self, path: str) -> bool:
        """Whether the (normalized) path exists (symlinks count as existing)."""
        try:
            await self.stat(path)
        except PathNotFound:
            return False
        return True

    async def missing_ancestors(self, directory: str) -> list[str]:
        """``directory`` and its ancestors that do not exist yet, outermost first.

        They go into the tar explicitly, owned by the agent: Docker would make them root's.
        """
        missing: list[str] = []
        while directory != "/":
            try:
                st = await self.stat(directory)
            except PathNotFound:
                missing.append(directory)
                directory = posixpath.dirname(directory)
                continue
            if st.is_symlink:
                st = (await self.resolve(directory))[1]
            if not st.is_dir:
                raise NotADirectory(directory)
            break
        return missing[::-1]
