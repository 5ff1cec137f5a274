"""Errors raised by the runtime.

Every error carries a message that says what was wrong and what to do next, because the
reader is usually a model deciding its next call. The hierarchy::

    SpinupError
    ├── InvalidInput           bad argument (name, path, size, option)
    ├── NotFound
    │   ├── AgentNotFound      no agent of that name
    │   ├── PathNotFound       no such file or directory in the machine
    │   └── ImageNotFound      the agent's base image is not in Docker
    ├── Conflict
    │   ├── AgentExists        the name is taken
    │   ├── IsADirectory       a file operation was given a directory
    │   ├── NotADirectory      a directory operation was given a file
    │   └── DirectoryNotEmpty  delete of a non-empty directory without recursive
    ├── PermissionDenied       the agent's user may not do this to that path
    ├── LimitReached           a policy limit (the disk quota) refuses the operation
    ├── DockerUnavailable      the daemon cannot be reached
    └── DockerFailure          the daemon refused an operation for another reason

Docker's own exceptions never leave ``runtime/``: ``runtime.docker`` translates them here.
"""

from __future__ import annotations


class SpinupError(Exception):
    """Base of every error the runtime raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidInput(SpinupError):
    """An argument was malformed or out of range."""


class NotFound(SpinupError):
    """Something named by the caller does not exist."""


class AgentNotFound(NotFound):
    """No agent has this name."""

    def __init__(self, name: str) -> None:
        super().__init__(
            f"No agent named '{name}'. List agents with agent_list (CLI: spinup agent list) "
            f"or create it with agent_create (CLI: spinup agent create {name})."
        )
        self.name = name


class PathNotFound(NotFound):
    """A path does not exist inside the machine."""

    def __init__(self, path: str) -> None:
        super().__init__(f"No such file or directory: {path}. Check the path with file_list on its parent directory.")
        self.path = path


class ImageNotFound(NotFound):
    """The base image is not present in the Docker daemon."""

    def __init__(self, image: str, default_image: str) -> None:
        if image == default_image:
            fix = "Build it locally with: spinup image build"
        else:
            fix = f"Pull or build it first (for example: docker pull {image}), or use the default {default_image}"
        super().__init__(f"Docker has no image '{image}'. {fix}.")
        self.image = image


class Conflict(SpinupError):
    """The request conflicts with the current state."""


class AgentExists(Conflict):
    """An agent with this name already exists."""

    def __init__(self, name: str) -> None:
        super().__init__(
            f"An agent named '{name}' already exists. Use it as is, pick another name, "
            f"or remove it first with agent_remove."
        )
        self.name = name


class IsADirectory(Conflict):
    """A file operation was given a directory."""

    def __init__(self, path: str) -> None:
        super().__init__(f"{path} is a directory, not a file. Use file_list to see what it contains.")
        self.path = path


class NotADirectory(Conflict):
    """A directory operation was given something that is not a directory."""

    def __init__(self, path: str) -> None:
        super().__init__(f"{path} is not a directory. Use file_stat or file_read on it instead.")
        self.path = path


class DirectoryNotEmpty(Conflict):
    """Refused to delete a non-empty directory without ``recursive``."""

    def __init__(self, path: str) -> None:
        super().__init__(f"{path} is a non-empty directory. Pass recursive=true to delete it and its contents.")
        self.path = path


class NotGranted(SpinupError):
    """An MCP client asked for a policy the operator does not let MCP clients grant."""


class PermissionDenied(SpinupError):
    """The agent's user lacks the permission an operation needs."""

    def __init__(self, path: str, action: str, user: str) -> None:
        super().__init__(
            f"Permission denied: the agent runs as '{user}', which may not {action} {path}. Work under "
            f"/workspace or /home/agent, or give the agent root (CLI: spinup agent policy NAME --user root)."
        )
        self.path = path


class LimitReached(SpinupError):
    """A policy limit refuses the operation until the agent is back under it."""


class DockerUnavailable(SpinupError):
    """The Docker daemon could not be reached."""

    def __init__(self, detail: str) -> None:
        super().__init__(
            f"Cannot reach the Docker daemon ({detail}). Start it (for example: dockerd --bridge=none "
            f"--iptables=false), check DOCKER_HOST, then run: spinup doctor"
        )


class DockerFailure(SpinupError):
    """The Docker daemon refused an operation."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status
