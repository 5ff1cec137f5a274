"""Who is acting: the client behind the current call, attached to every event it causes.

The server sets the actor around each MCP tool call (the client's name and version from
``initialize``, the transport, a session id) and the CLI sets its own, so the runtime records
who did what without knowing anything about MCP.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Actor:
    """The client making a call: ``client`` names it (``claude-code``, ``spinup-cli``, ...)."""

    client: str
    version: str = ""
    transport: str = ""
    session: str = ""

    def describe(self) -> str:
        """``claude-code 2.1.0 over stdio``: for error messages and tables."""
        text = f"{self.client} {self.version}".strip()
        return f"{text} over {self.transport}" if self.transport else text

    def as_dict(self) -> dict[str, str]:
        """The actor as JSON-ready fields (empty ones left out)."""
        return {key: value for key, value in asdict(self).items() if value}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Actor | None:
        """The actor stored by :meth:`as_dict`, or None."""
        if not data or not data.get("client"):
            return None
        return cls(**{key: str(data.get(key, "")) for key in ("client", "version", "transport", "session")})


_current: ContextVar[Actor | None] = ContextVar("spinup_actor", default=None)


def current_actor() -> Actor | None:
    """The actor of the call in progress, or None (the runtime acting on its own, e.g. idle hibernation)."""
    return _current.get()


@contextmanager
def acting_as(actor: Actor | None) -> Iterator[None]:
    """Attribute everything done inside the block to ``actor``."""
    token = _current.set(actor)
    try:
        yield
    finally:
        _current.reset(token)
