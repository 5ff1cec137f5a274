"""The dashboard's pages, fragments, live stream and buttons: each a thin reader of one or a few runtime calls."""

from __future__ import annotations

import asyncio
import base64
import json
import posixpath
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Literal

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse

from spinup.runtime import InvalidInput, ProcessInfo, Runtime

from .actions import perform
from .views import display_state, usage_json

if TYPE_CHECKING:
    from .web import Dashboard

TIMELINE_EVENTS = 200  # events on an agent page (older ones: spinup events / agent_events)
EXECS = 30  # commands in the history panel
TAIL_BYTES = 4096  # of each process stream rendered with the page (the rest streams in)
LIST_ENTRIES = 500  # entries of a directory listing
PREVIEW_BYTES = 256 * 1024  # of a file shown as text
DOWNLOAD_BYTES = 16 * 1024 * 1024  # the largest file the browser can download
KEEPALIVE = 15.0  # seconds between comments on a quiet stream (keeps proxies from closing it)
SHOWN_PROCESSES = 20  # background processes listed, newest first
ENDED_TAILS = 3  # ended processes whose output tail is shown (each read costs a look at the machine)
STREAMS = ("stdout", "stderr")
PANELS = ("execs", "processes", "ports", "snapshots", "policy", "header")


def _safe_next(path: str | None) -> str:
    """A local path to go to after signing in (never another site)."""
    if not path or not path.startswith("/") or path.startswith("//") or "\\" in path:
        return "/"
    return path


class Pages:
    """The handlers; ``dash`` gives the runtime, templates and sessions."""

    def __init__(self, dash: Dashboard) -> None:
        self.dash = dash

    @property
    def rt(self) -> Runtime:
        return self.dash.runtime()

    # signing in

    async def login(self, request: Request) -> Response:
        sessions = self.dash.sessions
        if sessions.open:
            return RedirectResponse("/", status_code=303)
        if request.method == "GET":
            return self.dash.render("login.html", request, next_path=_safe_next(request.query_params.get("next")))
        form = await request.form()
        next_path = _safe_next(str(form.get("next") or "/"))
        session = sessions.login(str(form.get("token") or ""))
        if session is None:
            return self.dash.render(
                "login.html",
                request,
                status=401,
                next_path=next_path,
                error="That is not this server's token. Use the login URL spinup serve printed, or run: "
                "spinup dashboard",
            )
        response = RedirectResponse(next_path, status_code=303)
        response.headers.append("set-cookie", sessions.set_cookie(session))
        return response

    async def logout(self, request: Request) -> Response:
        self.dash.sessions.logout(request)
        response = RedirectResponse("/login", status_code=303)
        response.headers.append("set-cookie", self.dash.sessions.clear_cookie())
        return response

    # the agents page

    def _rows(self) -> list[dict[str, Any]]:
        rt = self.rt
        hub = self.dash.hub
        rows = []
        for agent in rt.list_agents():
            if not self.dash.visible(agent.name):
                continue
            live = hub.latest.get(agent.name)
            last = rt.events(agent.name, 1)
            calls = rt.events(agent.name, 1, kinds=["tool-call"])
            history = list(hub.history.get(agent.name, ()))
            usage = usage_json(live) if live is not None else None
            rows.append(
                {
                    "agent": agent,
                    "state": usage["state"] if usage else display_state(agent),
                    "usage": usage,
                    "cpu_history": ",".join("" if c is None else f"{c:g}" for c, _ in history),
                    "mem_history": ",".join("" if m is None else str(m) for _, m in history),
                    "last": last[-1] if last else None,
                    "harness": calls[-1].client if calls and calls[-1].client else "",
                }
            )
        return rows

    async def agents(self, request: Request) -> Response:
        if request.url.path != "/":
            raise InvalidInput("No such page.")
        return self.dash.render("agents.html", request, rows=self._rows(), page="agents")

    async def agent_rows(self, request: Request) -> Response:
        return self.dash.render("_agent_rows.html", request, rows=self._rows())

    # one agent

    async def _processes(self, name: str) -> list[dict[str, Any]]:
        rt = self.rt
        shown = []
        processes: list[ProcessInfo] = await rt.process_list(name)
        ended_with_tail = 0
        for info in reversed(processes[-SHOWN_PROCESSES:]):
            tails: dict[str, dict[str, Any]] = {}
            if info.state != "running":
                ended_with_tail += 1
                if ended_with_tail > ENDED_TAILS:  # older ended ones: listed, their output a click away in the CLI
                    shown.append({"info": info, "tails": {s: {"data": "", "next": 0, "cut": False} for s in STREAMS}})
                    continue
            sizes: tuple[tuple[Literal["stdout", "stderr"], int], ...] = (
                ("stdout", info.stdout_bytes),
                ("stderr", info.stderr_bytes),
            )
            for stream, size in sizes:
                start = max(0, size - TAIL_BYTES)
                out = await rt.process_output(name, info.id, stream=stream, offset=start, max_bytes=TAIL_BYTES * 2)
                tails[stream] = {"data": out.data, "next": out.next_offset, "cut": start > 0}
            shown.append({"info": info, "tails": tails})
        return shown

    def _snapshots(self, name: str) -> list[dict[str, Any]]:
        snapshots = self.rt.list_snapshots(name)
        head = self.rt.get_agent(name).head_snapshot
        listed = []
        for index, snapshot in enumerate(snapshots):
            previous = snapshots[index - 1].id if index > 0 else None
            listed.append({"snapshot": snapshot, "previous": previous, "head": snapshot.id == head})
        return list(reversed(listed))

    def _policy(self, name: str) -> dict[str, Any]:
        agent = self.rt.get_agent(name)
        secrets = sorted(s.info.name for s in self.rt.list_secrets() if name in s.bound_to)
        return {"agent": agent, "secrets": secrets, "packages": self.rt.package_manifest(name)}

    async def _panel_values(self, name: str, panel: str) -> dict[str, Any]:
        rt = self.rt
        if panel == "execs":
            return {"execs": rt.recent_execs(name, EXECS)}
        if panel == "processes":
            return {"processes": await self._processes(name)}
        if panel == "ports":
            return {"ports": rt.port_list(name)}
        if panel == "snapshots":
            return {"snapshots": self._snapshots(name)}
        if panel == "policy":
            return self._policy(name)
        if panel == "header":
            return {"agent": rt.get_agent(name), "state": self._state(name)}
        raise InvalidInput(f"Unknown panel {panel!r}.")

    def _state(self, name: str) -> str:
        live = self.dash.hub.latest.get(name)
        agent = self.rt.get_agent(name)
        return display_state(agent, live.state if live is not None else None)

    async def agent(self, request: Request) -> Response:
        name = self.dash.agent_name(request)
        rt = self.rt
        values: dict[str, Any] = {"name": name, "page": "agent"}
        for panel in PANELS:
            values.update(await self._panel_values(name, panel))
        events = rt.events(name, TIMELINE_EVENTS)
        history = list(self.dash.hub.history.get(name, ()))
        live = self.dash.hub.latest.get(name)
        values.update(
            events=list(reversed(events)),
            kinds=sorted({e.kind for e in events}),
            usage=usage_json(live) if live is not None else None,
            cpu_history=",".join("" if c is None else f"{c:g}" for c, _ in history),
            mem_history=",".join("" if m is None else str(m) for _, m in history),
        )
        return self.dash.render("agent.html", request, **values)

    async def panel(self, request: Request) -> Response:
        name = self.dash.agent_name(request)
        panel = str(request.path_params["panel"])
        if panel not in PANELS:
            raise InvalidInput(f"Unknown panel {panel!r}.")
        values = await self._panel_values(name, panel)
        return self.dash.render(f"_{panel}.html", request, name=name, **values)

    async def exec_output(self, request: Request) -> Response:
        name = self.dash.agent_name(request)
        entry = self.rt.exec_log(name, str(request.path_params["exec_id"]))
        return self.dash.render("_exec_output.html", request, entry=entry)

    async def process_output(self, request: Request) -> Response:
        name = self.dash.agent_name(request)
        stream = request.query_params.get("stream", "stdout")
        if stream not in ("stdout", "stderr"):
            raise InvalidInput("stream is stdout or stderr.")
        try:
            offset = max(0, int(request.query_params.get("offset", "0")))
        except ValueError as exc:
            raise InvalidInput("offset is a number of bytes.") from exc
        out = await self.rt.process_output(
            name, str(request.path_params["process_id"]), stream="stderr" if stream == "stderr" else "stdout",
            offset=offset, max_bytes=65536,
        )
        return JSONResponse(
            {"ok": True, "offset": offset, "next_offset": out.next_offset, "data": out.data, "state": out.process.state}
        )

    async def diff(self, request: Request) -> Response:
        name = self.dash.agent_name(request)
        source = request.query_params.get("source") or None
        target = request.query_params.get("target") or None
        if source is None or target is None:
            raise InvalidInput("A diff needs two snapshots (source and target).")
        for snapshot in (source, target):
            self.rt.check_snapshot_of(name, snapshot)
        changes = await self.rt.diff(name, source, target)
        return self.dash.render("_diff.html", request, diff=changes)

    # files

    async def _running_files(self, name: str) -> Any:
        machine = await self.rt.machine(name)
        if machine is None or not machine.running or machine.paused:
            state = "paused" if machine is not None and machine.paused else "not running"
            raise InvalidInput(
                f"The machine of {name} is {state}: the file browser reads a running machine "
                f"({'resume' if state == 'paused' else 'start'} it first)."
            )
        return await self.rt.files(name)

    async def files(self, request: Request) -> Response:
        name = self.dash.agent_name(request)
        path = posixpath.normpath(request.query_params.get("path") or "/workspace")
        if not path.startswith("/"):
            raise InvalidInput("A path in the machine starts with /.")
        files = await self._running_files(name)
        info = await files.stat(path)
        parent = posixpath.dirname(path) if path != "/" else None
        if info.type == "directory":
            entries, cut = await files.list(path, max_entries=LIST_ENTRIES)
            entries = sorted(entries, key=lambda e: (e.type != "directory", e.path))
            return self.dash.render(
                "_files.html", request, name=name, path=path, parent=parent, entries=entries, cut=cut,
                basename=posixpath.basename,
            )
        preview = None
        if info.type == "file":
            content = await files.read(path, unit="bytes", limit=PREVIEW_BYTES)
            preview = content if content.encoding == "text" else None
        return self.dash.render(
            "_preview.html", request, name=name, path=path, parent=parent, info=info, preview=preview,
            limit=PREVIEW_BYTES,
        )

    async def download(self, request: Request) -> Response:
        name = self.dash.agent_name(request)
        path = posixpath.normpath(request.query_params.get("path") or "")
        if not path.startswith("/"):
            raise InvalidInput("Name the file to download by its absolute path.")
        files = await self._running_files(name)
        info = await files.stat(path)
        if info.type != "file":
            raise InvalidInput(f"{path} is not a regular file.")
        if info.size > DOWNLOAD_BYTES:
            raise InvalidInput(
                f"{path} is {info.size} bytes, more than the dashboard downloads ({DOWNLOAD_BYTES}); "
                f"use: spinup file read {name} {path}"
            )
        content = await files.read(path, unit="bytes", limit=DOWNLOAD_BYTES, encoding="base64")
        filename = "".join(c for c in posixpath.basename(path) if c.isalnum() or c in "._-")[:100] or "download"
        return Response(
            base64.b64decode(content.content),
            media_type="application/octet-stream",
            headers={"content-disposition": f'attachment; filename="{filename}"'},
        )

    # buttons

    async def action(self, request: Request) -> Response:
        name = self.dash.agent_name(request)
        form = await request.form()
        fields = {key: str(value) for key, value in form.items() if isinstance(value, str)}
        session = self.dash.sessions.label(request)
        message = await perform(self.rt, str(request.path_params["action"]), name, fields, session)
        return JSONResponse({"ok": True, "message": message})

    # the live stream

    async def stream(self, request: Request) -> Response:
        agent = self.dash.agent_name(request) if request.query_params.get("agent") else None
        hub = self.dash.hub

        async def messages() -> AsyncIterator[str]:
            async with hub.subscribe(agent) as sub:
                yield "retry: 2000\n\n"
                while True:
                    try:
                        async with asyncio.timeout(KEEPALIVE):
                            name, payload = await sub.queue.get()
                    except TimeoutError:
                        yield ": keepalive\n\n"
                        continue
                    yield f"event: {name}\ndata: {payload}\n\n"
                    if name == "close":
                        return

        return StreamingResponse(
            messages(),
            media_type="text/event-stream",
            headers={"cache-control": "no-store", "x-accel-buffering": "no"},
        )


def dumps(value: Any) -> str:
    """JSON for a ``data-`` attribute."""
    return json.dumps(value, separators=(",", ":"))
