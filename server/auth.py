"""Bearer-token protection for the HTTP transport."""

from __future__ import annotations

import hmac
import ipaddress
import json
from collections.abc import Callable

from mcp.server.transport_security import TransportSecuritySettings
from starlette.types import ASGIApp, Receive, Scope, Send

from .tokens import TOKEN_VAR


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` exposes the server to this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def url_host(host: str) -> str:
    """``host`` as it appears in a URL or a Host header: an IPv6 address in brackets."""
    host = host.strip("[]")
    return f"[{host}]" if ":" in host else host


def rebinding_protection(host: str) -> TransportSecuritySettings | None:
    """DNS-rebinding protection for a loopback bind; ``None`` (no Host/Origin checks) for other hosts.

    The SDK turns it on by itself only for 127.0.0.1, localhost and ::1; every loopback address
    (127.0.0.2, ...) gets it, so a web page cannot reach the server (or its dashboard) through a rebound name.
    """
    if not is_loopback(host):
        return None
    names = list(dict.fromkeys(["127.0.0.1", "localhost", "[::1]", url_host(host)]))
    return TransportSecuritySettings(
        allowed_hosts=[f"{name}:*" for name in names], allowed_origins=[f"http://{name}:*" for name in names]
    )


def bearer_matches(headers: dict[bytes, bytes], expected: bytes) -> bool:
    """Whether ``headers`` carry ``Authorization: Bearer <expected>`` (scheme case-insensitive, RFC 7235; the
    token compared in constant time)."""
    supplied = headers.get(b"authorization", b"")
    scheme, _, credentials = supplied.partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(credentials.strip(), expected)


async def refuse(send: Send, status: int, error: str, description: str, extra: list[tuple[bytes, bytes]]) -> None:
    """Answer a request with a small JSON error."""
    body = json.dumps({"error": error, "error_description": description}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
                *extra,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BearerAuth:
    """ASGI middleware: HTTP requests must carry ``Authorization: Bearer <token>``, except those
    ``passes(path)`` hands on (the dashboard's, which checks its own session cookie).

    With no token (``--no-auth``, loopback only) every request goes on unless ``unsafe()`` names a
    reason to refuse (an agent with network=host shares this loopback)."""

    def __init__(
        self,
        app: ASGIApp,
        token: str | None,
        passes: Callable[[str], bool] = lambda path: False,
        unsafe: Callable[[], str | None] = lambda: None,
    ) -> None:
        if token is not None and not token:
            raise ValueError("an empty bearer token protects nothing")
        self.app = app
        self._expected = token.encode() if token else None
        self._passes = passes
        self._unsafe = unsafe

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self._expected is None:
            reason = self._unsafe()
            if reason is not None:
                await refuse(send, 403, "unsafe_without_token", reason, [])
                return
            await self.app(scope, receive, send)
            return
        if self._passes(str(scope.get("path", ""))) or bearer_matches(dict(scope.get("headers") or []), self._expected):
            await self.app(scope, receive, send)
            return
        await refuse(
            send,
            401,
            "unauthorized",
            f"send Authorization: Bearer <{TOKEN_VAR}> (the token spinup serve printed, also in its state directory)",
            [(b"www-authenticate", b'Bearer realm="spinup"')],
        )
