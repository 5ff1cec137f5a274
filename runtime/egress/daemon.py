"""The egress daemon: one process per state directory holding every allowlist machine's proxy listener.

Any Spinup process (a stdio server, an HTTP server, the CLI) that wakes an allowlist agent asks
the daemon, over a 0600 Unix socket in ``$SPINUP_HOME/egress/``, to listen inside that machine;
the first one to ask starts it. So a background process started from a short CLI command keeps
its network after the command exits, and every process sees the same decisions. An ``flock`` makes
the daemon a singleton per state directory. On start it listens again in every running allowlist
machine (a killed daemon comes back on the next call, with its listeners), drops the listener of a
machine whose first process is gone, and exits when it has had nothing to serve for a while.

Run as ``python -m spinup.runtime.egress.daemon STATE_DIR``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import ssl
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..actors import Actor, acting_as
from ..config import Settings
from ..credentials import CredentialStore
from ..docker import DockerBackend
from ..ports import netns_inode
from ..state import StateDB
from .decide import parse_pins, pinned_resolver
from .listeners import ListenerUnavailable, listen_in_netns
from .proxy import EdgeHeader, EgressProxy, EgressView
from .tls import AgentAuthorities

log = logging.getLogger("spinup.egress")

SWEEP_INTERVAL = 1.0  # seconds between two looks at the machines' namespaces
IDLE_EXIT = 20.0  # seconds with no listener and no connection before the daemon exits
REQUEST_LIMIT = 64 * 1024
ACTOR = Actor(client="spinup-egress", transport="proxy")


@dataclass
class _Listener:
    agent_id: str
    pid: int
    netns: int
    server: asyncio.Server
    port: int
    opened: float


class EgressDaemon:
    """Listeners in machines, the proxy behind them, and the control socket the other processes use."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.dir = settings.egress_dir
        self.db = StateDB(settings.db_path)
        self._store = CredentialStore(settings.credentials_path, settings.master_key_path, settings.master_key)
        self.authorities = AgentAuthorities(
            CredentialStore(self.dir / "ca-keys.json", settings.master_key_path, settings.master_key)
        )
        upstream = ssl.create_default_context()
        if settings.egress_upstream_ca:
            upstream.load_verify_locations(settings.egress_upstream_ca)
        self.proxy = EgressProxy(
            self.view,
            self.record,
            resolve=pinned_resolver(parse_pins(settings.egress_resolve)),
            tls=self.authorities.server_context,
            upstream_tls=upstream,
            max_connections=settings.egress_max_connections,
        )
        self.listeners: dict[str, _Listener] = {}
        self._attaching: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)  # one listen at a time per agent
        self._idle_since = time.monotonic()
        self._stop = asyncio.Event()

    # what the proxy asks

    def view(self, agent_id: str) -> EgressView | None:
        """The agent's allowlist as stored now (None when it has none or is gone)."""
        agent = self.db.agent_by_id(agent_id)
        if agent is None or agent.policy.network != "allowlist":
            return None
        headers: list[EdgeHeader] = []
        bindings = [b for _, b in self.db.secret_bindings(agent_id) if b.header is not None]
        if bindings:
            values = self._store.values([b.secret for b in bindings])
            for binding in bindings:
                header = binding.header
                assert header is not None
                secret = values.get(binding.secret)
                if secret is None or any(ch in secret for ch in "\r\n\0"):
                    log.warning("credential %s cannot go in a header (missing, or holds a line break)", binding.secret)
                    continue
                value = header.template.replace("{value}", secret)
                headers.append(EdgeHeader(header.host, header.name, value, binding.secret))
        return EgressView(
            agent_id=agent.id,
            agent=agent.name,
            allow=agent.policy.allow,
            intercept=agent.policy.intercept,
            headers=tuple(headers),
        )

    def record(self, agent_id: str, kind: str, detail: str, data: dict[str, Any]) -> None:
        """Record one decision as an event of the agent."""
        with acting_as(ACTOR):
            self.db.record_event(agent_id, kind, detail, data)

    # listeners

    async def attach(self, agent_id: str, pid: int) -> int:
        """Listen inside the namespace of machine process ``pid`` for ``agent_id`` (once per namespace)."""
        async with self._attaching[agent_id]:  # the start-up adoption and a client may ask at once
            return await self._attach(agent_id, pid)

    async def _attach(self, agent_id: str, pid: int) -> int:
        inode = netns_inode(pid)
        if inode is None:
            raise ListenerUnavailable(f"The machine's first process ({pid}) is gone: is the machine running?")
        current = self.listeners.get(agent_id)
        if current is not None and current.netns == inode and netns_inode(current.pid) == inode:
            return current.port
        if current is not None:
            self._close(current, "the machine was replaced")
        sock = await asyncio.to_thread(listen_in_netns, pid, self.settings.egress_port)

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self.proxy.handle(agent_id, reader, writer)

        server = await asyncio.start_server(serve, sock=sock, limit=256 * 1024)
        self.listeners[agent_id] = _Listener(agent_id, pid, inode, server, self.settings.egress_port, time.monotonic())
        log.info("listening in agent %s's machine (pid %d) on 127.0.0.1:%d", agent_id, pid, self.settings.egress_port)
        return self.settings.egress_port

    def _close(self, listener: _Listener, why: str) -> None:
        listener.server.close()
        self.listeners.pop(listener.agent_id, None)
        log.info("closed the listener of agent %s: %s", listener.agent_id, why)

    async def adopt(self) -> None:
        """Listen again in every running allowlist machine (after a restart of the daemon)."""
        agents = [a for a in self.db.list_agents() if a.policy.network == "allowlist" and a.machine_id]
        if not agents:
            return
        docker = DockerBackend(call_timeout=self.settings.docker_timeout, locate=self.db.machine_host)
        try:
            for agent in agents:
                assert agent.machine_id is not None
                try:
                    info = await docker.inspect(agent.machine_id)
                    if info is not None and info.running and info.pid > 0:
                        await self.attach(agent.id, info.pid)
                except Exception as exc:  # one machine's trouble must not keep the others offline
                    log.warning("could not listen in agent %s's machine again: %s", agent.name, exc)
        finally:
            await docker.close()

    def sweep(self) -> None:
        """Drop listeners whose machine process is gone; note when the daemon became idle."""
        for listener in list(self.listeners.values()):
            if netns_inode(listener.pid) != listener.netns:
                self._close(listener, "the machine stopped")
        busy = bool(self.listeners) or any(self.proxy.active.values())
        if busy:
            self._idle_since = time.monotonic()

    # control socket

    async def control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Answer one JSON request from another Spinup process."""
        reply: dict[str, Any]
        try:
            line = await asyncio.wait_for(reader.readline(), 10)
            request = json.loads(line[:REQUEST_LIMIT] or b"{}")
            op = request.get("op")
            if op == "attach":
                agent_id = str(request["agent_id"])
                port = await self.attach(agent_id, int(request["pid"]))
                reply = {"ok": True, "port": port, "pid": os.getpid()}
                view = self.view(agent_id)
                if view is not None and view.intercept:
                    reply["ca_pem"] = self.authorities.certificate_pem(agent_id).decode()
            elif op == "status":
                reply = {"ok": True, **self.status()}
            elif op == "stop":
                reply = {"ok": True}
                self._stop.set()
            else:
                reply = {"ok": False, "error": f"unknown request {op!r}"}
        except ListenerUnavailable as exc:
            reply = {"ok": False, "error": str(exc)}
        except (ValueError, KeyError, TypeError, TimeoutError) as exc:
            reply = {"ok": False, "error": f"bad request: {exc!r}"}
        except Exception as exc:
            log.exception("control request failed")
            reply = {"ok": False, "error": f"the egress daemon failed: {exc}"}
        with contextlib.suppress(ConnectionError, OSError):
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
            writer.close()

    def status(self) -> dict[str, Any]:
        """Listeners and connection counts."""
        return {
            "pid": os.getpid(),
            "port": self.settings.egress_port,
            "listeners": [{"agent_id": lst.agent_id, "pid": lst.pid} for lst in self.listeners.values()],
            "active": {agent: count for agent, count in self.proxy.active.items() if count},
            "handled": self.proxy.handled,
        }

    async def run(self) -> int:
        """Serve until stopped or idle; 0 also when another daemon already serves this state directory."""
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock = os.open(self.dir / "daemon.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)  # held for life
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("another egress daemon serves %s", self.settings.home)
            os.close(lock)
            return 0
        socket_path = self.dir / "control.sock"
        with contextlib.suppress(FileNotFoundError):
            socket_path.unlink()
        old_umask = os.umask(0o177)
        try:
            control = await asyncio.start_unix_server(self.control, path=str(socket_path))
        finally:
            os.umask(old_umask)
        log.info("egress daemon %d serving %s", os.getpid(), self.settings.home)
        try:
            await self.adopt()
            while not self._stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), SWEEP_INTERVAL)
                self.sweep()
                if time.monotonic() - self._idle_since > IDLE_EXIT or not self.settings.home.exists():
                    log.info("nothing to serve; exiting")
                    break
        finally:
            control.close()
            with contextlib.suppress(FileNotFoundError):
                socket_path.unlink()
            for listener in list(self.listeners.values()):
                self._close(listener, "the egress daemon stopped")
            self.db.close()
            os.close(lock)
        return 0


def main(argv: list[str] | None = None) -> int:
    """Run the daemon for the state directory given as the only argument."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m spinup.runtime.egress.daemon STATE_DIR", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return asyncio.run(EgressDaemon(Settings(home=Path(args[0]))).run())


if __name__ == "__main__":
    sys.exit(main())
