"""A tmux server on a socket of its own, for tests that need a real terminal on Spinup's side."""

from __future__ import annotations

import contextlib
import os
import secrets
import shlex
import subprocess
import time
from collections.abc import Iterator

WAIT = 30.0  # seconds a pane may take to show what is expected


class Tmux:
    """A tmux server on its own socket; panes run commands with Spinup's environment."""

    def __init__(self, socket: str, env: dict[str, str]) -> None:
        self.socket = socket
        self.env = env

    def __call__(self, *args: str) -> str:
        done = subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def start(self, name: str, command: str, cols: int = 90, rows: int = 25) -> None:
        """A window running ``command``, then reporting its exit status, then waiting to be looked at."""
        exports = " ".join(f"{key}={shlex.quote(value)}" for key, value in self.env.items())
        script = f"env {exports} {command}; echo exited:$?; sleep 600"
        self("-f", "/dev/null", "new-session", "-d", "-s", name, "-x", str(cols), "-y", str(rows), script)
        self("set-option", "-t", name, "status", "off")

    def keys(self, name: str, *keys: str) -> None:
        self("send-keys", "-t", name, *keys)

    def screen(self, name: str) -> str:
        return self("capture-pane", "-p", "-J", "-t", name)

    def wait_for(self, name: str, text: str, after: str = "") -> str:
        """Wait until the pane shows ``text`` (after the last ``after``); returns the screen."""
        deadline = time.monotonic() + WAIT
        while True:
            screen = self.screen(name)
            if text in (screen.rpartition(after)[2] if after else screen):
                return screen
            assert time.monotonic() < deadline, f"no {text!r} on the screen:\n{screen}"
            time.sleep(0.1)


@contextlib.contextmanager
def panes(env: dict[str, str]) -> Iterator[Tmux]:
    """A tmux server whose panes get ``env`` (with TERM and HOME), killed when the block ends."""
    tmux = Tmux(
        f"spinup-test-{secrets.token_hex(4)}",
        {"TERM": "xterm-256color", "HOME": os.environ.get("HOME", "/root"), **env},
    )
    try:
        yield tmux
    finally:
        subprocess.run(["tmux", "-L", tmux.socket, "kill-server"], capture_output=True, timeout=30)
