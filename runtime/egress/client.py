"""How a Spinup process reaches the egress daemon of its state directory, starting it when none answers."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from typing import Any

from ..config import Settings
from ..errors import SpinupError

REQUEST_TIMEOUT = 15.0  # seconds for the daemon to answer one request (listening in a machine is quick)
START_TIMEOUT = 15.0  # seconds for a new daemon to open its control socket
_spawning = threading.Lock()


class EgressUnavailable(SpinupError):
    """The egress proxy cannot serve an allowlist machine."""


class EgressClient:
    """Requests to the egress daemon (``attach`` starts it when it is not running)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.socket_path = settings.egress_dir / "control.sock"

    async def attach(self, agent_id: str, pid: int) -> str | None:
        """Make sure the proxy listens inside the machine whose first process is ``pid``; returns the agent's CA
        certificate (PEM) when the proxy intercepts some of its hosts, else None."""
        reply = await self.request({"op": "attach", "agent_id": agent_id, "pid": pid}, start=True)
        assert reply is not None
        if not reply.get("ok"):
            raise EgressUnavailable(f"The egress proxy cannot serve this machine: {reply.get('error')}")
        ca = reply.get("ca_pem")
        return str(ca) if ca else None

    async def status(self) -> dict[str, Any] | None:
        """The daemon's listeners and counts, or None when no daemon runs."""
        return await self.request({"op": "status"}, start=False)

    async def stop(self) -> bool:
        """Ask the daemon to exit (its listeners close); False when none was running."""
        return await self.request({"op": "stop"}, start=False) is not None

    async def request(self, message: dict[str, Any], start: bool) -> dict[str, Any] | None:
        """Send one request; with ``start``, start the daemon first when none answers."""
        deadline = time.monotonic() + START_TIMEOUT
        started = False
        while True:
            try:
                return await self._send(message)
            except (FileNotFoundError, ConnectionRefusedError, ConnectionResetError, BrokenPipeError):
                if not start:
                    return None
            if not started:
                await asyncio.to_thread(self._start_daemon)
                started = True
            if time.monotonic() > deadline:
                raise EgressUnavailable(
                    f"The egress daemon did not start within {START_TIMEOUT:g}s; see "
                    f"{self.settings.egress_dir / 'daemon.log'}."
                )
            await asyncio.sleep(0.05)

    async def _send(self, message: dict[str, Any]) -> dict[str, Any]:
        reader, writer = await asyncio.open_unix_connection(str(self.socket_path))
        try:
            writer.write(json.dumps(message).encode() + b"\n")
            await writer.drain()
            async with asyncio.timeout(REQUEST_TIMEOUT):
                line = await reader.readline()
        except TimeoutError as exc:
            raise EgressUnavailable(f"The egress daemon did not answer within {REQUEST_TIMEOUT:g}s.") from exc
        finally:
            writer.close()
        if not line:
            raise ConnectionRefusedError("the egress daemon closed the connection")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def _daemon_env(self) -> dict[str, str]:
        """This process's environment with the egress settings it runs under (they may not come from it)."""
        settings = self.settings
        env = {
            **os.environ,
            "SPINUP_EGRESS_PORT": str(settings.egress_port),
            "SPINUP_EGRESS_MAX_CONNECTIONS": str(settings.egress_max_connections),
            "SPINUP_EGRESS_RESOLVE": settings.egress_resolve,
            "SPINUP_EGRESS_UPSTREAM_CA": settings.egress_upstream_ca,
            "SPINUP_DOCKER_TIMEOUT": str(settings.docker_timeout),
        }
        if settings.master_key:
            env["SPINUP_MASTER_KEY"] = settings.master_key
        return env

    def _start_daemon(self) -> None:
        """Start a daemon detached from this process (a second one exits at once: the lock is held)."""
        with _spawning:
            directory = self.settings.egress_dir
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            log_fd = os.open(directory / "daemon.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                process = subprocess.Popen(
                    [sys.executable, "-m", "spinup.runtime.egress.daemon", str(self.settings.home)],
                    stdin=subprocess.DEVNULL,
                    stdout=log_fd,
                    stderr=log_fd,
                    start_new_session=True,
                    close_fds=True,
                    env=self._daemon_env(),
                )
            finally:
                os.close(log_fd)
        # Reaped when it exits, so a long-lived server leaves no zombie behind.
        threading.Thread(target=process.wait, name="egress-daemon-reaper", daemon=True).start()
