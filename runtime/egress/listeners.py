"""Listening sockets inside machines' network namespaces, made by a short-lived thread that enters one.

A socket keeps the namespace it was created in: a thread ``setns``es into the machine's network
namespace, creates, binds and listens, and exits; the event loop (in the host's namespace) then
accepts on it, and the proxy's outbound connections are made from the host.
"""

from __future__ import annotations

import errno
import socket
import threading

from ..errors import SpinupError
from ..ports import enter_netns

LOOPBACK = "127.0.0.1"
BACKLOG = 512


class ListenerUnavailable(SpinupError):
    """The proxy cannot listen inside a machine (no permission, port taken, machine gone)."""


def listen_in_netns(pid: int, port: int) -> socket.socket:
    """A non-blocking TCP socket listening on 127.0.0.1:``port`` in process ``pid``'s network namespace."""
    made: list[socket.socket] = []
    failed: list[BaseException] = []

    def make() -> None:
        try:
            enter_netns(f"/proc/{pid}/ns/net")
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((LOOPBACK, port))
                sock.listen(BACKLOG)
                sock.setblocking(False)
            except BaseException:
                sock.close()
                raise
            made.append(sock)
        except BaseException as exc:  # handed to the caller's thread below
            failed.append(exc)

    thread = threading.Thread(target=make, name=f"egress-listen-{pid}", daemon=True)
    thread.start()
    thread.join()
    if made:
        return made[0]
    exc = failed[0] if failed else RuntimeError("the listener thread made nothing")
    if isinstance(exc, PermissionError):
        raise ListenerUnavailable(
            f"Cannot enter the machine's network namespace ({exc.strerror}): allowlist networking needs Spinup to "
            f"run as root (CAP_SYS_ADMIN) on the Docker host."
        ) from exc
    if isinstance(exc, FileNotFoundError):
        raise ListenerUnavailable("The machine's first process is gone (the machine stopped).") from exc
    if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
        raise ListenerUnavailable(
            f"Port {port} on the machine's 127.0.0.1 is taken by a program inside it, so the egress proxy cannot "
            f"listen there: stop that program, or run Spinup with another SPINUP_EGRESS_PORT."
        ) from exc
    raise ListenerUnavailable(f"Cannot listen inside the machine: {exc}") from exc
