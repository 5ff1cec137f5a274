"""A second Docker daemon a test starts, stops and restarts itself, never the one the suite shares.

It has its own data root, exec root, pidfile, socket and containerd namespace under
``/tmp/spinup-dockerd-*`` (short paths: containerd's socket lives under the exec root), and gets
the base image from the shared daemon with ``docker save | docker load``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

START_WAIT = 60.0
STOP_WAIT = 40.0


class SecondDaemon:
    """``dockerd`` on its own socket; :meth:`start` and :meth:`stop` may be called again and again."""

    def __init__(self, tcp_port: int | None = None) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="spinup-dockerd-", dir="/tmp"))
        self.socket = self.root / "docker.sock"
        self.host = f"unix://{self.socket}"
        # Also on TCP (loopback only, no TLS): how a remote daemon is reached, for code that must not use
        # the host's /proc for the daemon's machines.
        self.tcp = f"tcp://127.0.0.1:{tcp_port}" if tcp_port is not None else None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = self.root / "dockerd.log"

    def start(self) -> None:
        """Start the daemon and wait until it answers."""
        assert self._proc is None, "already running"
        namespace = "spinupd" + "".join(c for c in self.root.name if c.isalnum())
        with self._log.open("ab") as log:
            self._proc = subprocess.Popen(
                [
                    "dockerd",
                    f"--data-root={self.root / 'data'}",
                    f"--exec-root={self.root / 'exec'}",
                    f"--pidfile={self.root / 'docker.pid'}",
                    f"--host={self.host}",
                    *([f"--host={self.tcp}"] if self.tcp else []),
                    f"--containerd-namespace={namespace}",
                    f"--containerd-plugins-namespace={namespace}p",
                    "--bridge=none",
                    "--iptables=false",
                    "--ip-masq=false",
                    "--ip-forward=false",
                    "--shutdown-timeout=3",
                    "--log-level=warn",
                ],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_WAIT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise AssertionError(f"the second dockerd exited: {self._log.read_text()[-2000:]}")
            if self.cli("info", "--format", "{{.ServerVersion}}", check=False, timeout=10).returncode == 0:
                return
            time.sleep(0.2)
        self.stop()
        raise AssertionError(f"the second dockerd did not answer within {START_WAIT:g}s")

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Stop the daemon (SIGTERM: it stops its containers first; SIGKILL: at once) and wait for it."""
        if self._proc is None:
            return
        proc, self._proc = self._proc, None
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(STOP_WAIT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(STOP_WAIT)

    def cli(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run the docker CLI against this daemon."""
        env = {**os.environ, "DOCKER_HOST": self.host, "DOCKER_API_VERSION": "1.41"}
        return subprocess.run(["docker", *args], capture_output=True, text=True, check=check, env=env, timeout=timeout)

    def load_image(self, image: str) -> None:
        """Copy ``image`` from the shared daemon into this one."""
        env = {**os.environ, "DOCKER_API_VERSION": "1.41"}
        with subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE, env=env) as save:
            loaded = subprocess.run(
                ["docker", "load", "-q"],
                stdin=save.stdout,
                capture_output=True,
                text=True,
                env={**env, "DOCKER_HOST": self.host},
                timeout=300,
            )
        assert save.returncode == 0 and loaded.returncode == 0, loaded.stderr

    def remove(self) -> None:
        """Remove every container, stop the daemon and delete its directories (mounts left behind included)."""
        if self._proc is not None:
            ids = self.cli("ps", "-aq", check=False, timeout=60).stdout.split()
            if ids:
                self.cli("rm", "-f", *ids, check=False, timeout=120)
        self.stop()
        mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
        for point in sorted((m for m in mounts if m.startswith(str(self.root))), key=len, reverse=True):
            subprocess.run(["umount", "-l", point], check=False, capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def started_daemon(image: str | None = None, tcp_port: int | None = None) -> Iterator[SecondDaemon]:
    """A started :class:`SecondDaemon` (given ``image`` from the shared daemon, and a TCP port), removed after."""
    daemon = SecondDaemon(tcp_port)
    try:
        daemon.start()
        if image is not None:
            daemon.load_image(image)
        yield daemon
    finally:
        daemon.remove()
