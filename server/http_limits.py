"""What one ``spinup serve`` accepts over HTTP: request bodies, MCP sessions, connections.

Each has a default a demanding single user never reaches and an environment variable to change it:

- ``SPINUP_HTTP_MAX_BODY`` (64m): a request body past it gets ``413`` before it is read (a 48 MB
  file in one ``file_write``, as base64, fits; read bigger files in ranges).
- ``SPINUP_HTTP_MAX_SESSIONS`` (1000): MCP sessions open at once; past it a new session is refused
  with ``503`` until one closes or idles out.
- ``SPINUP_HTTP_SESSION_IDLE`` (1800): seconds after which a session with no request is closed,
  so clients that never say goodbye do not pile up.
- ``SPINUP_HTTP_MAX_CONNECTIONS`` (1000): connections (and requests in progress) at once; past it
  uvicorn answers ``503``, so a flood of slow clients costs bounded memory and descriptors.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from spinup.runtime import SpinupError, parse_size

N = TypeVar("N", int, float)

DEFAULT_MAX_BODY = "64m"
DEFAULT_MAX_SESSIONS = 1000
DEFAULT_SESSION_IDLE = 1800.0
DEFAULT_MAX_CONNECTIONS = 1000
# Descriptors a server needs beyond one per connection: the state database, the Docker client's pool, logs.
SPARE_DESCRIPTORS = 256


@dataclass(frozen=True)
class HttpLimits:
    """The HTTP server's bounds (see the module docstring)."""

    max_body: int
    max_sessions: int
    session_idle: float
    max_connections: int

    @classmethod
    def from_env(cls) -> HttpLimits:
        """Read the limits from the environment; a clear error for a value that is not one."""
        return cls(
            max_body=_read("SPINUP_HTTP_MAX_BODY", DEFAULT_MAX_BODY, parse_size),
            max_sessions=_read("SPINUP_HTTP_MAX_SESSIONS", str(DEFAULT_MAX_SESSIONS), int),
            session_idle=_read("SPINUP_HTTP_SESSION_IDLE", str(DEFAULT_SESSION_IDLE), float),
            max_connections=_read("SPINUP_HTTP_MAX_CONNECTIONS", str(DEFAULT_MAX_CONNECTIONS), int),
        )


def _read(name: str, default: str, parse: Callable[[str], N]) -> N:
    text = os.environ.get(name) or default
    try:
        value = parse(text)
    except (ValueError, SpinupError) as exc:
        raise SpinupError(f"{name}={text!r} is not a valid value ({exc}); unset it for the default {default}.") from exc
    if not 0 < value < float("inf"):
        raise SpinupError(f"{name} must be a positive number, got {text!r}; unset it for the default {default}.")
    return value


def raise_descriptor_limit(connections: int) -> int:
    """Raise this process's soft descriptor limit toward its hard one, so ``connections`` fit; returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = connections + SPARE_DESCRIPTORS
    if soft != resource.RLIM_INFINITY and soft < wanted:
        soft = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return soft
