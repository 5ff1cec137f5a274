"""The dashboard's HTTP side: its routes beside /mcp and /metrics, and the checks every request passes.

Every request passes the Host (DNS-rebinding) and Origin checks of ``/mcp``; every page, fragment,
stream and button but the login page needs a signed-in session (:mod:`.sessions`); every
state-changing request must come from the dashboard's own origin. A failure shows as a message
on the page (never a stack trace); credential values are redacted from every message.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any, Literal

from jinja2 import Environment, PackageLoader, select_autoescape
from mcp.server.transport_security import TransportSecurityMiddleware, TransportSecuritySettings
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from spinup.runtime import Event, Runtime, SpinupError, validate_agent_name

from ..app import RuntimeHolder
from ..cli.monitor import size_text
from .live import LiveHub
from .sessions import Sessions, same_origin
from .views import actor_text, exec_state, iso, kind_group, policy_line

log = logging.getLogger(__name__)

Kind = Literal["page", "fragment", "json", "stream"]
Handler = Callable[[Request], Awaitable[Response]]
PREFIXES = ("/login", "/logout", "/agents/", "/fragments/", "/stream", "/static/")
STATIC = {"app.css": "text/css", "app.js": "text/javascript", "icon.svg": "image/svg+xml"}
HEADERS = {
    "content-security-policy": "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",  # "no-referrer" would make Chromium send "Origin: null" on posts
}


class NotHere(SpinupError):
    """A page of something this server does not show (no such agent, or outside its binding)."""


class Dashboard:
    """The browser dashboard of one ``spinup serve``."""

    def __init__(
        self,
        holder: RuntimeHolder,
        token: str | None,
        security: TransportSecuritySettings | None,
        *,
        port: int,
        bound_agent: str | None = None,
    ) -> None:
        self.holder = holder
        self.sessions = Sessions(token, port)
        self.guard = TransportSecurityMiddleware(security)
        self.bound_agent = bound_agent
        self.templates = Environment(
            loader=PackageLoader("spinup.server.dashboard", "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.templates.globals.update(
            policy_line=policy_line, iso=iso, kind_group=kind_group, actor_text=actor_text, exec_state=exec_state
        )
        self.templates.filters["size"] = size_text
        self.hub = LiveHub(self.runtime, self.visible, self.render_event)
        self.holder.closing.append(self.hub.close)
        self._static: dict[str, bytes] = {}

    # what it serves

    def owns(self, path: str) -> bool:
        """Whether ``path`` is the dashboard's (signed in with its cookie rather than the bearer header); a path
        with dot segments or empty segments never is (it stays behind the bearer token, whatever routes it)."""
        if "//" in path or any(part in (".", "..") for part in path.split("/")):
            return False
        return path == "/" or path == "/favicon.ico" or path.startswith(PREFIXES)

    def routes(self) -> list[Route]:
        """The dashboard's routes."""
        from . import pages

        p = pages.Pages(self)
        table: list[tuple[str, Handler, Kind, list[str], bool]] = [
            ("/", p.agents, "page", ["GET"], False),
            ("/login", p.login, "page", ["GET", "POST"], True),
            ("/logout", p.logout, "page", ["POST"], False),
            ("/favicon.ico", self.favicon, "fragment", ["GET"], True),
            ("/static/{file}", self.static, "fragment", ["GET"], True),
            ("/fragments/agents", p.agent_rows, "fragment", ["GET"], False),
            ("/stream", p.stream, "stream", ["GET"], False),
            ("/agents/{name}", p.agent, "page", ["GET"], False),
            ("/agents/{name}/panel/{panel}", p.panel, "fragment", ["GET"], False),
            ("/agents/{name}/execs/{exec_id}", p.exec_output, "fragment", ["GET"], False),
            ("/agents/{name}/processes/{process_id}/output", p.process_output, "json", ["GET"], False),
            ("/agents/{name}/diff", p.diff, "fragment", ["GET"], False),
            ("/agents/{name}/files", p.files, "fragment", ["GET"], False),
            ("/agents/{name}/download", p.download, "fragment", ["GET"], False),
            ("/agents/{name}/actions/{action}", p.action, "json", ["POST"], False),
        ]
        return [
            Route(path, self.checked(handler, kind, public), methods=methods, include_in_schema=False)
            for path, handler, kind, methods, public in table
        ]

    def mount(self, app: Any) -> None:
        """Add the dashboard's routes to the MCP server's Starlette ``app`` (after /mcp and /metrics)."""
        app.router.routes.extend(self.routes())

    # what every request passes

    def checked(self, handler: Handler, kind: Kind, public: bool) -> Handler:
        """``handler`` behind the Host/Origin checks, the session (unless ``public``), the same-origin check of
        state-changing requests, and error pages."""

        async def endpoint(request: Request) -> Response:
            refused = await self.guard.validate_request(request)
            if refused is None and request.method not in ("GET", "HEAD") and not same_origin(request):
                refused = self.error(kind, 403, "This request did not come from the dashboard's own page; reload it.")
            if refused is None and not public and not self.sessions.allows(request):
                refused = self.unauthorized(request, kind)
            if refused is not None:
                return self.secured(refused)
            try:
                response = await handler(request)
            except NotHere as exc:
                response = self.error(kind, 404, str(exc))
            except SpinupError as exc:
                response = self.error(kind, 400, self.redact(str(exc)))
            except Exception as exc:  # the top of a request: the page says so, the log has the details
                log.exception("dashboard: %s %s failed", request.method, request.url.path)
                response = self.error(
                    kind,
                    500,
                    f"Internal error ({type(exc).__name__}); the details are in the Spinup server's log. "
                    "The server keeps serving; if it repeats, run: spinup doctor",
                )
            return self.secured(response)

        return endpoint

    def secured(self, response: Response) -> Response:
        for key, value in HEADERS.items():
            response.headers.setdefault(key, value)
        response.headers.setdefault("cache-control", "no-store")
        return response

    def unauthorized(self, request: Request, kind: Kind) -> Response:
        if kind == "page":
            return self.render("login.html", request, status=401, next_path=request.url.path)
        return JSONResponse(
            {"ok": False, "error": "Sign in: open the login URL spinup serve printed (or run: spinup dashboard)."},
            status_code=401,
        )

    def error(self, kind: Kind, status: int, message: str) -> Response:
        """A failure as the kind of response the caller expects."""
        if kind in ("json", "stream"):
            return JSONResponse({"ok": False, "error": message}, status_code=status)
        if kind == "fragment":
            html = self.templates.get_template("_error.html").render(message=message)
            return HTMLResponse(html, status_code=status)
        html = self.templates.get_template("error.html").render(
            message=message, status=status, bound_agent=self.bound_agent, open=self.sessions.open, signed_in=True
        )
        return HTMLResponse(html, status_code=status)

    # helpers for the pages

    def runtime(self) -> Runtime:
        """The server's runtime."""
        return self.holder.get()

    def redact(self, text: str) -> str:
        try:
            return self.runtime().redact(text)
        except RuntimeError:
            return text

    def visible(self, name: str) -> bool:
        """Whether this server shows agent ``name`` (every agent, unless it is bound to one)."""
        return self.bound_agent is None or name == self.bound_agent

    def agent_name(self, request: Request) -> str:
        """The agent a request names, if this server shows it and it exists."""
        name = validate_agent_name(str(request.path_params.get("name") or request.query_params.get("agent") or ""))
        if not self.visible(name) or self.runtime().find_agent(name) is None:
            raise NotHere(f"There is no agent '{name}' here: it may have been removed. Back to the agents list.")
        return name

    def render(self, template: str, request: Request, status: int = 200, **values: Any) -> HTMLResponse:
        html = self.templates.get_template(template).render(
            bound_agent=self.bound_agent, open=self.sessions.open, **values
        )
        return HTMLResponse(html, status_code=status)

    def render_event(self, event: Event) -> str:
        """One timeline row."""
        return self.templates.get_template("_event.html").render(event=event)

    async def static(self, request: Request) -> Response:
        name = str(request.path_params["file"])
        if name not in STATIC:
            return Response("not found", status_code=404, media_type="text/plain")
        if name not in self._static:
            files = resources.files("spinup.server.dashboard").joinpath("static")
            self._static[name] = files.joinpath(name).read_bytes()
        response = Response(self._static[name], media_type=STATIC[name])
        response.headers["cache-control"] = "max-age=300"
        return response

    async def favicon(self, request: Request) -> Response:
        request.path_params["file"] = "icon.svg"
        return await self.static(request)
