"""Who calls, and how it went: every MCP tool call is attributed to its client and recorded as an event.

A middleware around each inbound ``tools/call`` sets the runtime's actor (the client's name and
version from ``initialize``, the transport, a session id) for the call, so every event the call
causes names the client, then records one ``tool-call`` event with the outcome and duration.
"""

from __future__ import annotations

import logging
import time
import uuid
import weakref
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.shared.exceptions import MCPError
from mcp.types import CallToolResult
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import ValidationError

from spinup.runtime import Actor, Runtime, acting_as

log = logging.getLogger(__name__)

UNKNOWN_CLIENT = "unknown-client"
# Tools whose ``name`` argument names the agent they make (the others name it ``agent``).
CREATES_AGENT = frozenset({"agent_create", "snapshot_fork"})


@dataclass
class _CallNote:
    """What the tool wrapper tells the middleware about the call in progress."""

    internal_error: bool = False


_call_note: ContextVar[_CallNote | None] = ContextVar("spinup_call_note", default=None)


def note_internal_error() -> None:
    """Mark the tool call in progress as failed by a fault of Spinup's (not by bad input)."""
    note = _call_note.get()
    if note is not None:
        note.internal_error = True


class ToolCallRecorder:
    """Server middleware: attribute each tool call to its client and record it as a ``tool-call`` event."""

    def __init__(self, get_runtime: Callable[[], Runtime], transport: str, bound_agent: str | None) -> None:
        self.get_runtime = get_runtime
        self.transport = transport
        self.bound_agent = bound_agent
        self._sessions: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()

    def actor(self, ctx: ServerRequestContext[Any, Any]) -> Actor:
        """The client behind a request: its ``clientInfo``, this server's transport, a session id."""
        params = getattr(ctx.session, "client_params", None)
        info = getattr(params, "client_info", None)
        name = str(getattr(info, "name", "") or UNKNOWN_CLIENT)
        version = str(getattr(info, "version", "") or "")
        return Actor(name, version, self.transport, self._session_id(ctx))

    def _session_id(self, ctx: ServerRequestContext[Any, Any]) -> str:
        """The transport's session id (streamable HTTP), else one per connection; none for protocol
        2026-07-28, whose requests stand alone (no session exists to name)."""
        request = ctx.request
        headers = getattr(request, "headers", None)
        if headers is not None and headers.get("mcp-session-id"):
            return str(headers["mcp-session-id"])[:32]
        if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
            return ""
        try:
            return self._sessions.setdefault(ctx.session, uuid.uuid4().hex[:12])
        except TypeError:  # a session object that cannot be weakly referenced
            return ""

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        if ctx.method != "tools/call" or ctx.request_id is None:
            return await call_next(ctx)
        params = ctx.params or {}
        tool = str(params.get("name") or "?")[:100]
        arguments = params.get("arguments")
        key = "name" if tool in CREATES_AGENT else "agent"
        agent = arguments.get(key) if isinstance(arguments, dict) else None
        agent = agent if isinstance(agent, str) else self.bound_agent
        note = _CallNote()
        note_token = _call_note.set(note)
        started = time.monotonic()
        outcome, error = "ok", ""
        try:
            with acting_as(self.actor(ctx)):
                try:
                    result = await call_next(ctx)
                except (MCPError, ValidationError) as exc:
                    outcome, error = "rejected", str(exc)
                    raise
                except BaseException as exc:
                    outcome, error = "internal-error", type(exc).__name__
                    raise
                if isinstance(result, CallToolResult) and result.is_error:
                    outcome = "internal-error" if note.internal_error else "error"
                    error = _text_of(result)
                elif isinstance(result, dict) and result.get("isError") is True:
                    outcome = "internal-error" if note.internal_error else "error"
                return result
        finally:
            _call_note.reset(note_token)
            self._record(ctx, tool, agent, outcome, time.monotonic() - started, error)

    def _record(
        self, ctx: ServerRequestContext[Any, Any], tool: str, agent: str | None, outcome: str, took: float, error: str
    ) -> None:
        try:
            runtime = self.get_runtime()
        except RuntimeError:
            return  # the runtime is not up (the lifespan has not run): nothing to record into
        try:
            with acting_as(self.actor(ctx)):
                runtime.record_call(tool, agent, outcome, took, error)
        except Exception:
            log.exception("recording the %s tool call failed", tool)


def _text_of(result: CallToolResult) -> str:
    return " ".join(getattr(block, "text", "") for block in result.content)[:500]
