"""``spinup mcp`` (stdio) and ``spinup serve`` (streamable HTTP): the MCP server for harnesses."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from spinup.runtime import Settings, SpinupError

from ..auth import BearerAuth, is_loopback, rebinding_protection, url_host
from .common import SubParsers


def serve_stdio(args: argparse.Namespace) -> int:
    """Serve MCP over stdio until the client closes it."""
    from ..app import build_server

    build_server(Settings(), agent=args.agent, transport="stdio").run()
    return 0


def serve_http(args: argparse.Namespace) -> int:
    """Serve MCP over streamable HTTP; a bearer token is required off loopback."""
    import uvicorn

    from ..app import build_server
    from ..metrics import SpinupMetrics

    token = args.token or os.environ.get("SPINUP_TOKEN") or None
    if not is_loopback(args.host) and not token:
        raise SpinupError(
            f"Refusing to serve on non-loopback host {args.host} without a bearer token. "
            f"Set SPINUP_TOKEN (or pass --token), or bind 127.0.0.1."
        )
    settings = Settings() if args.idle_timeout is None else Settings(idle_timeout=args.idle_timeout)
    metrics = SpinupMetrics()
    server = build_server(settings, agent=args.agent, transport="streamable-http", metrics=metrics)
    security = rebinding_protection(args.host)
    # Beside /mcp, behind the same token and the same Host/Origin checks.
    server.custom_route("/metrics", methods=["GET"], include_in_schema=False)(metrics.endpoint(security))
    app: Any = server.streamable_http_app(host=args.host, transport_security=security)
    if token:
        app = BearerAuth(app, token)
    print(
        f"spinup: serving MCP at http://{url_host(args.host)}:{args.port}/mcp, metrics at /metrics"
        + (" (bearer token required)" if token else ""),
        file=sys.stderr,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def register(sub: SubParsers) -> None:
    """Add ``spinup mcp`` and ``spinup serve``."""
    mcp = sub.add_parser("mcp", help="serve MCP over stdio")
    mcp.add_argument("--agent", help="bind every tool to this agent (created on first use)")
    mcp.set_defaults(func=serve_stdio)

    serve = sub.add_parser("serve", help="serve MCP over streamable HTTP at /mcp (and Prometheus metrics at /metrics)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8765)
    serve.add_argument("--token", help="bearer token required on every request (default: $SPINUP_TOKEN)")
    serve.add_argument("--agent", help="bind every tool to this agent (created on first use)")
    serve.add_argument("--idle-timeout", type=float, help="hibernate agents unused this many seconds (default off)")
    serve.set_defaults(func=serve_http)
