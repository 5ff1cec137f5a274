"""``spinup mcp`` (stdio) and ``spinup serve`` (streamable HTTP, /metrics and the dashboard): the server for
harnesses and operators."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

from spinup.runtime import Runtime, Settings, SpinupError

from ..auth import BearerAuth, is_loopback, rebinding_protection, url_host
from ..http_limits import HttpLimits, raise_descriptor_limit
from ..tokens import TOKEN_VAR, ServeToken, known_token, resolve_token
from .common import SubParsers

HOST_CHECK_INTERVAL = 1.0  # seconds a "no agent has network=host" answer is reused by a --no-auth server


def serve_stdio(args: argparse.Namespace) -> int:
    """Serve MCP over stdio until the client closes it."""
    from ..app import build_server

    build_server(Settings(), agent=args.agent, transport="stdio").run()
    return 0


def host_network_agents(runtime: Runtime) -> list[str]:
    """Names of the agents whose policy shares the host's network (and so this loopback)."""
    return [agent.name for agent in runtime.list_agents() if agent.policy.network == "host"]


def _host_agents_now(settings: Settings) -> list[str]:
    async def look() -> list[str]:
        runtime = Runtime(settings)
        try:
            return host_network_agents(runtime)
        finally:
            await runtime.close()

    return asyncio.run(look())


def refuse_no_auth(names: list[str]) -> str:
    """Why a tokenless server will not serve while ``names`` have network=host."""
    return (
        f"Refusing to serve without a token: agent {', '.join(sorted(names))} has network=host and reaches this "
        f"server's loopback address. Restart spinup serve without --no-auth (a token is generated)."
    )


def _no_auth_guard(get_runtime: Any) -> Any:
    """``unsafe()`` for a --no-auth server: a reason to refuse while an agent has network=host (checked at most
    once a second)."""
    cached: list[Any] = [0.0, None]

    def unsafe() -> str | None:
        now = time.monotonic()
        if now - cached[0] >= HOST_CHECK_INTERVAL:
            runtime = get_runtime()
            names = host_network_agents(runtime) if runtime is not None else []
            cached[:] = [now, refuse_no_auth(names) if names else None]
        reason: str | None = cached[1]
        return reason

    return unsafe


def choose_token(args: argparse.Namespace, settings: Settings) -> ServeToken | None:
    """The token the server requires (None with --no-auth, after its checks); warnings on stderr."""
    if args.no_auth:
        if args.token or args.token_file:
            raise SpinupError("--no-auth serves without a token: drop --token/--token-file, or drop --no-auth.")
        if not is_loopback(args.host):
            raise SpinupError(
                f"Refusing to serve on non-loopback host {args.host} without a token: --no-auth is for loopback "
                f"addresses only. Drop --no-auth (a token is generated), or bind 127.0.0.1."
            )
        names = _host_agents_now(settings)
        if names:
            raise SpinupError(refuse_no_auth(names))
        print(
            "spinup: warning: --no-auth: every local user, and every program on this machine (a host-network "
            "container included), can drive every agent through this server.",
            file=sys.stderr,
        )
        return None
    token = resolve_token(settings, args.token, Path(args.token_file) if args.token_file else None)
    if token.source == "option":
        print(
            f"spinup: warning: --token is visible to every local user in ps; set {TOKEN_VAR} or use --token-file.",
            file=sys.stderr,
        )
    return token


def describe_token(token: ServeToken | None) -> str:
    """Where the token comes from, and how MCP clients get it."""
    if token is None:
        return "no token (--no-auth)"
    if token.path is not None:
        made = "generated now" if token.source == "generated" else "kept"
        return f'bearer token {made} in {token.path}; MCP clients: export {TOKEN_VAR}="$(cat {token.path})"'
    return f"bearer token from {'$' + TOKEN_VAR if token.source == 'env' else '--token'}"


def login_url(base: str, token: str | None) -> str:
    """The dashboard's login URL: the token rides in the fragment, which the browser never sends on."""
    return f"{base}/login#token={token}" if token else f"{base}/"


def _server_class() -> Any:
    """uvicorn's server class, extended (made on first use: uvicorn is imported only to serve)."""
    import uvicorn

    class StoppingServer(uvicorn.Server):
        """uvicorn's server, telling the dashboard's streams to end when it is asked to stop."""

        def __init__(self, config: uvicorn.Config, on_exit: Any) -> None:
            super().__init__(config)
            self._on_exit = on_exit

        def handle_exit(self, sig: int, frame: Any) -> None:
            self._on_exit()
            super().handle_exit(sig, frame)

    return StoppingServer


def serve_http(args: argparse.Namespace) -> int:
    """Serve MCP over streamable HTTP, /metrics and the dashboard, behind a bearer token (generated if none)."""
    import uvicorn

    from ..app import RuntimeHolder, build_server
    from ..dashboard import Dashboard
    from ..metrics import SpinupMetrics

    settings = Settings() if args.idle_timeout is None else Settings(idle_timeout=args.idle_timeout)
    limits = HttpLimits.from_env()
    raise_descriptor_limit(limits.max_connections)
    token = choose_token(args, settings)
    metrics = SpinupMetrics()
    holder = RuntimeHolder(settings)
    server = build_server(agent=args.agent, transport="streamable-http", metrics=metrics, holder=holder)
    security = rebinding_protection(args.host)
    # Beside /mcp, behind the same token and the same Host/Origin checks.
    server.custom_route("/metrics", methods=["GET"], include_in_schema=False)(metrics.endpoint(security))
    app: Any = server.streamable_http_app(
        host=args.host,
        transport_security=security,
        max_request_body_size=limits.max_body,
        max_sessions=limits.max_sessions,
        session_idle_timeout=limits.session_idle,
    )
    dashboard = Dashboard(holder, token.value if token else None, security, port=args.port, bound_agent=args.agent)
    dashboard.mount(app)
    app = BearerAuth(
        app, token.value if token else None, passes=dashboard.owns, unsafe=_no_auth_guard(lambda: holder.runtime)
    )
    base = f"http://{url_host(args.host)}:{args.port}"
    print(
        f"spinup: serving MCP at {base}/mcp, metrics at /metrics, the dashboard at / ({describe_token(token)})",
        file=sys.stderr,
    )
    print(f"spinup: dashboard login: {login_url(base, token.value if token else None)}", file=sys.stderr, flush=True)
    # A stop first ends the dashboard's open streams (each would hold the shutdown); whatever still runs
    # after a few seconds is cancelled.
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level="warning",
        timeout_graceful_shutdown=5,
        limit_concurrency=limits.max_connections,
    )
    _server_class()(config, dashboard.hub.end_streams_soon).run()
    return 0


def open_dashboard(args: argparse.Namespace) -> int:
    """``spinup dashboard``: print the login URL of this state directory's server (and open it with --open)."""
    token = known_token(Settings())
    if token is None:
        raise SpinupError(
            f"No token to sign in with: start spinup serve first (it generates one), or set {TOKEN_VAR} to the token "
            "the server was given."
        )
    url = login_url(f"http://{url_host(args.host)}:{args.port}", token)
    print(url)
    if args.open:
        import webbrowser

        if not webbrowser.open(url):
            print("spinup: no browser to open here; open the URL above.", file=sys.stderr)
    return 0


def register(sub: SubParsers) -> None:
    """Add ``spinup mcp``, ``spinup serve`` and ``spinup dashboard``."""
    mcp = sub.add_parser("mcp", help="serve MCP over stdio")
    mcp.add_argument("--agent", help="bind every tool to this agent (created on first use)")
    mcp.set_defaults(func=serve_stdio)

    serve = sub.add_parser(
        "serve", help="serve MCP over streamable HTTP at /mcp, Prometheus metrics at /metrics, the dashboard at /"
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8765)
    serve.add_argument(
        "--token",
        help=f"bearer token required on every request (visible in ps: prefer ${TOKEN_VAR} or --token-file; "
        "default: generated once into the state directory's http-token)",
    )
    serve.add_argument("--token-file", metavar="FILE", help="read the bearer token from FILE (mode 0600)")
    serve.add_argument(
        "--no-auth",
        action="store_true",
        help="serve without a token (loopback only; refused while an agent has network=host)",
    )
    serve.add_argument("--agent", help="bind every tool to this agent (created on first use)")
    serve.add_argument("--idle-timeout", type=float, help="hibernate agents unused this many seconds (default off)")
    serve.set_defaults(func=serve_http)

    dash = sub.add_parser("dashboard", help="print (or --open) the login URL of the dashboard of spinup serve")
    dash.add_argument("--host", default="127.0.0.1", help="where spinup serve listens (default 127.0.0.1)")
    dash.add_argument("--port", type=int, default=8765)
    dash.add_argument("--open", action="store_true", help="open it in the default browser")
    dash.set_defaults(func=open_dashboard)
