"""The egress proxy's connections: HTTP requests and HTTPS ``CONNECT`` tunnels, decided per destination.

Each connection arrives on a listener inside one agent's network namespace, so the proxy knows
whose it is. It reads the first request head (h11 parses it), decides against the agent's
allowlist as it is *now* (a rule change applies to the next connection), and then either answers
403/502 with a body that names the destination, the rules and what to ask for, or connects to the
checked address from the host's namespace and relays bytes both ways:

- ``CONNECT host:port``: a tunnel (TLS stays end to end), unless the agent's policy intercepts
  that host, in which case the proxy terminates TLS with a certificate from the agent's own CA
  (see :mod:`.tls`) so it can add a credential header at the edge.
- ``GET http://host/...`` (absolute form): the request goes on in origin form with the proxy's
  hop-by-hop headers removed, ``Connection: close``, and any credential header bound for the host.

Every decision is recorded (an ``egress`` event when an allowed connection ends, with the bytes
each way; ``egress-refused`` / ``egress-failed`` at once, before the client hears the answer, so
a command that just failed finds its denial already recorded).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import h11

from .decide import Decision, Resolver, decide, resolve_on_host
from .rules import PRESETS, Rule, Scheme, expand

log = logging.getLogger(__name__)

HEAD_TIMEOUT = 30.0  # seconds for a client to send its request head
CONNECT_TIMEOUT = 10.0  # seconds to reach the destination
HEAD_LIMIT = 64 * 1024  # bytes of one request head
CHUNK = 256 * 1024
HOP_BY_HOP = {
    b"connection",
    b"keep-alive",
    b"proxy-authorization",
    b"proxy-authenticate",
    b"proxy-connection",
    b"te",
    b"trailer",
    b"upgrade",
}


@dataclass(frozen=True)
class EdgeHeader:
    """A header the proxy adds to requests for ``host`` (a name, '*.suffix' or address); ``value`` is secret."""

    host: str
    name: str
    value: str = field(repr=False)
    secret: str = ""  # the credential's name, for events


@dataclass(frozen=True)
class EgressView:
    """What the proxy needs to know about one agent, read fresh for every connection."""

    agent_id: str
    agent: str
    allow: tuple[str, ...]
    intercept: tuple[str, ...] = ()
    headers: tuple[EdgeHeader, ...] = ()

    def rules(self) -> list[Rule]:
        """The allowlist with its presets expanded (an entry that no longer parses allows nothing)."""
        rules: list[Rule] = []
        for entry in self.allow:
            try:
                rules += expand([entry])
            except ValueError:
                log.warning("agent %s: ignoring allowlist entry %r that does not parse", self.agent, entry)
        return rules

    def headers_for(self, host: str) -> list[EdgeHeader]:
        """The edge headers bound for ``host``."""
        return [h for h in self.headers if host_matches(h.host, host)]

    def intercepts(self, host: str) -> bool:
        """Whether the proxy terminates TLS for ``host`` (to add headers at the edge)."""
        return any(host_matches(pattern, host) for pattern in self.intercept)


def host_matches(pattern: str, host: str) -> bool:
    """Whether ``host`` is ``pattern`` (a name or address) or, for '*.suffix', one of its subdomains."""
    pattern, host = pattern.lower().strip("[]"), host.lower().strip("[]")
    return host.endswith(pattern[1:]) if pattern.startswith("*.") else host == pattern


ViewFn = Callable[[str], EgressView | None]
RecordFn = Callable[[str, str, str, dict[str, Any]], None]
TlsFn = Callable[[str, str], ssl.SSLContext]  # (agent id, host) -> a server context for intercepting host


class ProxyError(Exception):
    """A request the proxy answers itself (bad request, refused, unreachable)."""

    def __init__(self, status: int, reason: str, body: str) -> None:
        super().__init__(body)
        self.status = status
        self.reason = reason
        self.body = body


@dataclass
class _Request:
    method: str
    target: str
    headers: list[tuple[bytes, bytes]]
    http_version: bytes
    rest: bytes  # what the client sent after the head


@dataclass
class _Traffic:
    sent: int = 0  # bytes from the agent to the destination
    received: int = 0  # bytes from the destination to the agent


class EgressProxy:
    """Decides and relays the connections of every agent's listener."""

    def __init__(
        self,
        view: ViewFn,
        record: RecordFn,
        *,
        resolve: Resolver = resolve_on_host,
        tls: TlsFn | None = None,
        upstream_tls: ssl.SSLContext | None = None,
        max_connections: int = 256,
    ) -> None:
        self._view = view
        self._record = record
        self._resolve = resolve
        self._tls = tls
        self._upstream_tls = upstream_tls or ssl.create_default_context()
        self.max_connections = max_connections
        self.active: dict[str, int] = {}  # agent id -> connections being handled
        self.handled = 0

    async def handle(self, agent_id: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one connection from ``agent_id``'s machine, then close it."""
        self.active[agent_id] = self.active.get(agent_id, 0) + 1
        self.handled += 1
        try:
            if self.active[agent_id] > self.max_connections:
                raise ProxyError(
                    503,
                    "Service Unavailable",
                    f"Spinup's egress proxy already carries {self.max_connections} connections of this agent; "
                    f"close some and retry.",
                )
            await self._serve(agent_id, reader, writer)
        except ProxyError as exc:
            await _answer(writer, exc)
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError, ssl.SSLError) as exc:
            log.debug("egress connection of %s ended: %r", agent_id, exc)
        except Exception:
            log.exception("egress connection of %s failed", agent_id)
            with contextlib.suppress(Exception):
                await _answer(
                    writer, ProxyError(500, "Internal Server Error", "Spinup's egress proxy failed; see its log.")
                )
        finally:
            self.active[agent_id] -= 1
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, agent_id: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await read_head(reader)
        view = self._view(agent_id)
        if view is None:
            raise ProxyError(403, "Forbidden", "This machine's agent no longer has an allowlist; nothing is let out.")
        if request.method == "CONNECT":
            host, port = split_authority(request.target, None)
            await self._tunnel(view, host, port, request, reader, writer)
            return
        url = urlsplit(request.target)
        if url.scheme != "http" or not url.hostname:
            hint = (
                "send HTTPS through the proxy with CONNECT (set HTTPS_PROXY)"
                if url.scheme == "https"
                else "this is Spinup's egress proxy: send absolute-form requests (set HTTP_PROXY to it)"
            )
            raise ProxyError(400, "Bad Request", f"Cannot forward {request.method} {request.target[:200]!r}: {hint}.")
        host, port = url.hostname, url.port or 80
        decision = await self._decide(view, host, port, "http")
        started = time.monotonic()
        upstream_reader, upstream_writer = await self._connect(view, decision)
        traffic = _Traffic()
        try:
            send_request(upstream_writer, request, host, port, view.headers_for(host), traffic)
            await relay(reader, writer, upstream_reader, upstream_writer, traffic)
        finally:
            upstream_writer.close()
            writer.close()  # the agent hears the end before the event is written (the close runs first)
            asyncio.get_running_loop().call_soon(self._finished, view, decision, traffic, started, request.method)

    async def _tunnel(
        self,
        view: EgressView,
        host: str,
        port: int,
        request: _Request,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        decision = await self._decide(view, host, port, "https")
        intercept = view.intercepts(host) and self._tls is not None
        started = time.monotonic()
        upstream_reader, upstream_writer = await self._connect(view, decision, tls_host=host if intercept else None)
        traffic = _Traffic()
        try:
            writer.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            await writer.drain()
            if intercept:
                assert self._tls is not None
                await writer.start_tls(self._tls(view.agent_id, host))
                inner = await read_head(reader)
                send_request(upstream_writer, inner, host, port, view.headers_for(host), traffic)
            elif request.rest:  # sent before the tunnel's answer: it belongs to the tunnel
                upstream_writer.write(request.rest)
                traffic.sent += len(request.rest)
            await relay(reader, writer, upstream_reader, upstream_writer, traffic)
        finally:
            upstream_writer.close()
            writer.close()
            asyncio.get_running_loop().call_soon(self._finished, view, decision, traffic, started, "CONNECT", intercept)

    async def _decide(self, view: EgressView, host: str, port: int, scheme: Scheme) -> Decision:
        decision = await decide(view.rules(), host, port, scheme, self._resolve)
        if decision.allowed:
            return decision
        kind = "egress-refused" if decision.outcome == "refused" else "egress-failed"
        self._record(
            view.agent_id,
            kind,
            f"{scheme} {host}:{port}: {decision.reason}",
            {"host": host, "port": port, "scheme": scheme, "decision": decision.outcome, "reason": decision.reason},
        )
        if decision.outcome == "refused":
            raise ProxyError(403, "Forbidden", refusal_text(view, decision))
        raise ProxyError(502, "Bad Gateway", f"Spinup's egress proxy cannot reach {host}:{port}: {decision.reason}.")

    async def _connect(
        self, view: EgressView, decision: Decision, tls_host: str | None = None
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        assert decision.address is not None
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                if tls_host is None:
                    return await asyncio.open_connection(decision.address, decision.port, limit=CHUNK)
                return await asyncio.open_connection(
                    decision.address, decision.port, ssl=self._upstream_tls, server_hostname=tls_host, limit=CHUNK
                )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            if isinstance(exc, TimeoutError):
                why = f"no answer within {CONNECT_TIMEOUT:g}s"
            elif isinstance(exc, OSError) and exc.errno and not isinstance(exc, ssl.SSLError):
                why = os.strerror(exc.errno).lower()  # "connection refused", "network is unreachable"
            else:
                why = str(exc) or type(exc).__name__
            reason = f"connecting to {decision.address}:{decision.port} failed: {why}"
            self._record(
                view.agent_id,
                "egress-failed",
                f"{decision.scheme} {decision.host}:{decision.port}: {reason}",
                {
                    "host": decision.host,
                    "port": decision.port,
                    "scheme": decision.scheme,
                    "decision": "failed",
                    "reason": reason,
                    "address": decision.address,
                },
            )
            raise ProxyError(
                502, "Bad Gateway", f"Spinup's egress proxy cannot reach {decision.host}:{decision.port}: {reason}."
            ) from exc

    def _finished(
        self,
        view: EgressView,
        decision: Decision,
        traffic: _Traffic,
        started: float,
        method: str,
        intercepted: bool = False,
    ) -> None:
        took = time.monotonic() - started
        data: dict[str, Any] = {
            "host": decision.host,
            "port": decision.port,
            "scheme": decision.scheme,
            "method": method,
            "decision": "allowed",
            "rule": decision.rule,
            "address": decision.address,
            "bytes_sent": traffic.sent,
            "bytes_received": traffic.received,
            "duration_ms": round(took * 1000, 1),
        }
        headers = view.headers_for(decision.host) if decision.scheme == "http" or intercepted else []
        if headers:
            data["edge_credentials"] = sorted({h.secret for h in headers})
        if intercepted:
            data["intercepted"] = True
        self._record(
            view.agent_id,
            "egress",
            f"{decision.scheme} {decision.host}:{decision.port} allowed by {decision.rule}: "
            f"{traffic.sent} bytes out, {traffic.received} in, {took:.2f}s",
            data,
        )


async def read_head(reader: asyncio.StreamReader) -> _Request:
    """The first request head on a connection (and the bytes after it); a :class:`ProxyError` for garbage."""
    parser = h11.Connection(h11.SERVER, max_incomplete_event_size=HEAD_LIMIT)
    try:
        async with asyncio.timeout(HEAD_TIMEOUT):
            while True:
                event = parser.next_event()
                if event is h11.NEED_DATA:
                    data = await reader.read(CHUNK)
                    parser.receive_data(data)
                    if not data:
                        raise ConnectionResetError("the client closed before sending a request")
                    continue
                break
    except TimeoutError as exc:
        raise ProxyError(408, "Request Timeout", f"No request head within {HEAD_TIMEOUT:g}s.") from exc
    except h11.RemoteProtocolError as exc:
        raise ProxyError(400, "Bad Request", f"Spinup's egress proxy cannot read this request: {exc}.") from exc
    if not isinstance(event, h11.Request):
        raise ProxyError(400, "Bad Request", "Spinup's egress proxy expected an HTTP request.")
    rest, _closed = parser.trailing_data
    return _Request(
        method=event.method.decode("ascii", "replace"),
        target=event.target.decode("ascii", "replace"),
        headers=list(event.headers.raw_items()),
        http_version=event.http_version,
        rest=bytes(rest),
    )


def split_authority(target: str, default_port: int | None) -> tuple[str, int]:
    """``host`` and ``port`` of a CONNECT target (``host:port``, ``[v6]:port``)."""
    url = urlsplit(f"//{target}")
    try:
        port = url.port or default_port
    except ValueError:
        port = None
    if not url.hostname or port is None:
        raise ProxyError(400, "Bad Request", f"CONNECT needs host:port, got {target[:200]!r}.")
    return url.hostname, port


def origin_path(target: str) -> str:
    """The origin-form path (``/a?b``) of a request target in absolute or origin form."""
    if target.startswith("/"):
        return target
    url = urlsplit(target)
    return (url.path or "/") + (f"?{url.query}" if url.query else "")


def send_request(
    upstream: asyncio.StreamWriter, request: _Request, host: str, port: int, edge: list[EdgeHeader], traffic: _Traffic
) -> None:
    """Send ``request`` on towards its destination (head rewritten, then what followed it)."""
    data = forward_head(request, origin_path(request.target), host, port, edge) + request.rest
    upstream.write(data)
    traffic.sent += len(data)


def forward_head(request: _Request, path: str, host: str, port: int, edge: list[EdgeHeader]) -> bytes:
    """The request head sent on: origin form, no hop-by-hop headers, ``Connection: close``, edge headers set."""
    replaced = {h.name.lower().encode() for h in edge}
    lines = [f"{request.method} {path} HTTP/1.1".encode()]
    has_host = False
    for name, value in request.headers:
        lower = name.lower()
        if lower in HOP_BY_HOP or lower in replaced:
            continue
        has_host = has_host or lower == b"host"
        lines.append(name + b": " + value)
    if not has_host:
        lines.append(f"Host: {host}:{port}".encode() if port not in (80, 443) else f"Host: {host}".encode())
    lines += [f"{h.name}: {h.value}".encode() for h in edge]
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n"


async def relay(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    upstream_reader: asyncio.StreamReader,
    upstream_writer: asyncio.StreamWriter,
    traffic: _Traffic,
) -> None:
    """Copy both ways until the destination is done; the agent's half-close is passed on."""

    async def agent_to_destination() -> None:
        while data := await reader.read(CHUNK):
            traffic.sent += len(data)
            upstream_writer.write(data)
            await upstream_writer.drain()
        if upstream_writer.can_write_eof():
            with contextlib.suppress(OSError, RuntimeError):
                upstream_writer.write_eof()

    async def destination_to_agent() -> None:
        while data := await upstream_reader.read(CHUNK):
            traffic.received += len(data)
            writer.write(data)
            await writer.drain()

    outbound = asyncio.ensure_future(agent_to_destination())
    try:
        await destination_to_agent()
    finally:
        outbound.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError, OSError):
            await outbound


def refusal_text(view: EgressView, decision: Decision) -> str:
    """The body of a 403: the destination, why, the agent's rules, and what to ask the operator for."""
    rules = ", ".join(view.allow) if view.allow else "(no rules: nothing is let out)"
    suggestion = decision.host if decision.port in (80, 443) else f"{decision.host}:{decision.port}"
    return (
        f"Spinup's egress proxy refused {decision.scheme} {decision.host}:{decision.port}: {decision.reason}.\n"
        f"Agent '{view.agent}' may reach: {rules}.\n"
        f"To allow it, ask the operator to run: spinup agent policy {view.agent} --allow {suggestion}"
        f" (presets: {', '.join(sorted(PRESETS))}).\n"
    )


async def _answer(writer: asyncio.StreamWriter, error: ProxyError) -> None:
    body = error.body.encode()
    head = (
        f"HTTP/1.1 {error.status} {error.reason}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nX-Spinup-Egress: {error.status}\r\nConnection: close\r\n\r\n"
    ).encode()
    with contextlib.suppress(ConnectionError, OSError, RuntimeError):
        writer.write(head + body)
        await writer.drain()
