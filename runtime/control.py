"""The control endpoint of a ``self_control`` agent: where it listens in the machine, and its token.

The endpoint is an MCP server bound to the agent, reached from inside the machine at
``http://127.0.0.1:7390/mcp``: a listener placed in the machine's network namespace from the host
(as the egress proxy's), so it needs no network, no mount and nothing in the image. A harness
inside speaks MCP over HTTP natively; its bearer token is in every command's environment
(``$SPINUP_CONTROL_TOKEN``) and kept 0600 in the state directory, never in a layer.
"""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass
from pathlib import Path

from .egress.listeners import ListenerUnavailable, listen_in_netns
from .ports import netns_inode
from .token_files import stored_token_file

CONTROL_PORT = 7390
CONTROL_URL = f"http://127.0.0.1:{CONTROL_PORT}/mcp"
TOKEN_ENV = "SPINUP_CONTROL_TOKEN"
URL_ENV = "SPINUP_CONTROL_URL"


def control_token(home: Path, agent_id: str) -> str:
    """The agent's control token (made on first use, 0600 under ``home/control``; every process reads the same)."""
    return stored_token_file(home / "control" / f"{agent_id}.token")[0]


def forget_token(home: Path, agent_id: str) -> None:
    """Remove a removed agent's control token."""
    (home / "control" / f"{agent_id}.token").unlink(missing_ok=True)


@dataclass(frozen=True)
class ControlListener:
    """A socket listening on 127.0.0.1:7390 inside one machine, for the caller to serve its endpoint on."""

    machine_id: str
    pid: int  # the machine's first process when the socket was placed
    netns: int  # the inode of its network namespace then
    sock: socket.socket

    def alive(self) -> bool:
        """Whether the machine still runs in that namespace (a restart gives it a new one)."""
        return netns_inode(self.pid) == self.netns


def listen_in_machine(machine_id: str, pid: int) -> ControlListener | None:
    """A listener on 127.0.0.1:7390 in the machine whose first process is ``pid``; None when another Spinup
    process already serves it there."""
    netns = netns_inode(pid)
    if netns is None:
        return None
    try:
        return ControlListener(machine_id, pid, netns, listen_in_netns(pid, CONTROL_PORT))
    except ListenerUnavailable as exc:
        cause = exc.__cause__
        if isinstance(cause, OSError) and cause.errno == errno.EADDRINUSE:
            return None  # served by another process (or a program inside took the port: its own business)
        raise
