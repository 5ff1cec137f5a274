"""Set a running machine's hostname from the host: its UTS namespace and the ``/etc/hostname`` Docker binds.

A machine made ahead of need (a warm-pool spare) learns its agent's name only when it is claimed;
root in the machine has no capabilities, so the host sets the name. A dedicated thread enters the
machine's UTS namespace (``setns`` needs CAP_SYS_ADMIN: Spinup as root on the daemon's host),
calls ``sethostname`` there and ends; no thread that served another namespace is used again.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from pathlib import Path

from .ports import enter_namespace

CLONE_NEWUTS = 0x04000000


def _in_uts_namespace(pid: int, name: str) -> None:
    if os.stat(f"/proc/{pid}/ns/uts").st_ino == os.stat("/proc/self/ns/uts").st_ino:
        raise RuntimeError(f"process {pid} shares this host's UTS namespace: its hostname is the host's own")
    enter_namespace(f"/proc/{pid}/ns/uts", CLONE_NEWUTS)
    socket.sethostname(name)


async def set_machine_hostname(pid: int, hostname_file: str, name: str) -> None:
    """Name the machine whose init is host pid ``pid`` ``name`` (``hostname`` and ``/etc/hostname`` inside)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def settle(error: BaseException | None) -> None:
        if not done.done():
            done.set_exception(error) if error is not None else done.set_result(None)

    def run() -> None:
        try:
            _in_uts_namespace(pid, name)
        except BaseException as exc:  # handed to the awaiting task
            loop.call_soon_threadsafe(settle, exc)
        else:
            loop.call_soon_threadsafe(settle, None)

    threading.Thread(target=run, name="spinup-hostname", daemon=True).start()
    await done
    if hostname_file:
        # Written in place: the machine's /etc/hostname is a bind mount of this very inode.
        await asyncio.to_thread(Path(hostname_file).write_text, name + "\n")
