"""Errors raised by the runtime.

Every error carries a message that says what was wrong and what to do next, because the
reader is usually a model deciding its next call. The hierarchy::

    SpinupError                (defined in spinup.snapshot.errors, the lowest layer)
    ├── StoreError             the snapshot store (spinup.snapshot.errors: missing, corrupt, unsafe)
    ├── InvalidInput           bad argument (name, path, size, option)
    ├── NotFound
    │   ├── AgentNotFound      no agent of that name
    │   ├── PathNotFound       no such file or directory in the machine
    │   ├── ImageNotFound      the agent's base image is not in Docker
    │   ├── SecretNotFound     no credential of that name
    │   └── ExecNotFound       no recorded command with that exec id
    ├── Conflict
    │   ├── AgentExists        the name is taken
    │   ├── IsADirectory       a file operation was given a directory
    │   ├── NotADirectory      a directory operation was given a file
    │   ├── DirectoryNotEmpty  delete of a non-empty directory without recursive
    │   ├── AgentPaused        a client paused the agent: nothing runs until it is resumed
    │   └── WrongState         pause of a stopped agent, resume of a running one, kill of a finished exec
    ├── PermissionDenied       the agent's user may not do this to that path
    ├── LimitReached           a policy limit (the disk quota) refuses the operation
    ├── ForwardUnavailable     port forwarding cannot work here (remote daemon, not root, no machine)
    ├── NotGranted             an MCP client asked for a policy the operator did not grant
    ├── ForeignSnapshot        a snapshot of another agent where the agent's own is needed
    ├── OutsideBinding         a server bound to one agent was asked about another
    ├── CredentialKeyError     the master key is missing, malformed or not the store's
    ├── PackageError           a package manager refused or failed
    ├── DockerUnavailable      the daemon cannot be reached
    └── DockerFailure          the daemon refused an operation for another reason
        └── DockerTimeout      the daemon did not answer within its deadline

Docker's own exceptions never leave ``runtime/``: ``runtime.docker`` translates them here.
"""

from __future__ import annotations

# The root and the store's errors, re-exported: one tree from the snapshot store to the tools.
from spinup.snapshot.errors import SpinupError as SpinupError
from spinup.snapshot.errors import StoreError as StoreError


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


class AgentPaused(Conflict):
    """A client paused the agent; calls that need its machine fail at once until it is resumed."""

    def __init__(self, name: str, since: str, by: str | None) -> None:
        who = f" by {by}" if by else ""
        super().__init__(
            f"Agent '{name}' is paused (since {since}{who}): its processes are frozen and nothing runs in it. "
            f"Resume it with agent_resume (CLI: spinup resume {name}), or stop or kill it."
        )
        self.name = name


class AgentBusy(Conflict):
    """Another call (in this or another Spinup process) held the agent's lock for longer than the wait."""

    def __init__(self, name: str, waited: float) -> None:
        super().__init__(
            f"Agent '{name}' is busy: another call (in this or another Spinup process sharing this state "
            f"directory) has held it for over {waited:g}s, for example a long snapshot or restore. Try again "
            f"when it is done (spinup events {name} shows what runs), or raise SPINUP_LOCK_WAIT."
        )
        self.name = name


class MachineReplaced(Conflict):
    """The agent's machine was replaced between the wake and the call's first Docker request."""

    def __init__(self, name: str) -> None:
        super().__init__(
            f"The machine of agent '{name}' was replaced during this call (a restore, a rebuild, a policy change "
            f"or a stop); nothing was done in the new one. Call again."
        )
        self.name = name


class WrongState(Conflict):
    """The agent or command is not in a state the operation applies to."""


class NotGranted(SpinupError):
    """An MCP client asked for a policy the operator does not let MCP clients grant."""


class ForeignSnapshot(SpinupError):
    """A snapshot of another agent was given where the agent's own (or the one it was forked from) is needed."""


class OutsideBinding(SpinupError):
    """A server bound to one agent was asked to see or act on another agent or its snapshots."""

    def __init__(self, bound: str, what: str) -> None:
        super().__init__(
            f"This server is bound to agent '{bound}' and sees only it: {what} is not visible here. Use a server "
            f"started without --agent (or the CLI) to work with other agents."
        )
        self.bound = bound


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


class ForwardUnavailable(SpinupError):
    """A port cannot be forwarded here: the daemon is not local, Spinup is not root, or no machine runs."""


class DockerUnavailable(SpinupError):
    """The Docker daemon could not be reached."""

    def __init__(self, detail: str, host: str) -> None:
        super().__init__(
            f"Docker is not reachable at {host} ({detail}). Start the daemon (for example: dockerd --bridge=none "
            f"--iptables=false), check DOCKER_HOST, then run: spinup doctor"
        )
        self.host = host


class StateDiskFull(SpinupError):
    """The state database's filesystem ran out of space: the change was not recorded."""

    def __init__(self, path: str, free: int | None) -> None:
        left = f", {free} bytes free" if free is not None else ""
        super().__init__(
            f"The disk of Spinup's state database is full ({path}{left}): this change was not recorded and "
            f"nothing recorded before is lost. Free space on that disk (spinup snapshot gc; old exec logs under "
            f"SPINUP_HOME/exec-logs) or move SPINUP_HOME to a bigger disk, then try again."
        )
        self.path = path


class DockerFailure(SpinupError):
    """The Docker daemon refused an operation."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class DockerTimeout(DockerFailure):
    """The Docker daemon did not answer within its deadline (a hung or overloaded daemon)."""

    def __init__(self, what: str, seconds: float, host: str) -> None:
        super().__init__(
            f"Docker did not answer in {seconds:g} s ({what}). Is the daemon at {host} hung or overloaded? "
            f"Check with: docker info. A slow host can allow more with SPINUP_DOCKER_TIMEOUT (seconds)."
        )
        self.seconds = seconds


class SecretNotFound(NotFound):
    """No credential has this name."""

    def __init__(self, name: str) -> None:
        super().__init__(f"No credential named '{name}'. List them with: spinup secret list")
        self.name = name


class CredentialKeyError(SpinupError):
    """The master key is missing, malformed, or not the one the store was written with."""


class PackageError(SpinupError):
    """A package manager refused or failed; the message carries its own words."""


class ExecNotFound(NotFound):
    """No recorded command has this id (for this agent)."""

    def __init__(self, exec_id: str, agent: str) -> None:
        super().__init__(
            f"No command with exec id '{exec_id}' for agent '{agent}' (old outputs are trimmed). List recent "
            f"commands with agent_events kind=exec (CLI: spinup logs {agent})."
        )
