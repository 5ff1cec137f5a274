"""What the file tools must refuse once a machine swapped ``/workspace/r`` for a link to ``/root`` and
``/workspace/w`` for a link to ``/etc``: shared by the local (host-side) and remote (in-machine) paths."""

from __future__ import annotations

import secrets
import subprocess
from typing import Protocol

import pytest

from spinup.runtime.errors import PermissionDenied
from spinup.runtime.files import Files


class DockerCli(Protocol):
    def __call__(self, *args: str, check: bool = ...) -> subprocess.CompletedProcess[str]: ...


async def expect_swapped_links_refused(files: Files, machine_id: str, docker: DockerCli) -> None:
    """Every file tool refuses to reach root's file or write into /etc through the swapped links, and nothing
    landed there (checked with ``docker``, the CLI of the machine's daemon)."""
    with pytest.raises(PermissionDenied):
        await files.read("/workspace/r/secret")
    preload = f"/nonexistent-{secrets.token_hex(4)}.so\n"
    with pytest.raises(PermissionDenied):
        await files.write("/workspace/w/ld.so.preload", preload)
    assert preload not in docker("exec", "-u", "0", machine_id, "cat", "/etc/ld.so.preload", check=False).stdout
    with pytest.raises(PermissionDenied):
        await files.mkdir("/workspace/w/cron.hourly.d")
    with pytest.raises(PermissionDenied):
        await files.list("/workspace/r")
    with pytest.raises(PermissionDenied):
        await files.stat("/workspace/r/secret")
    assert docker("exec", machine_id, "test", "-e", "/etc/cron.hourly.d", check=False).returncode == 1
