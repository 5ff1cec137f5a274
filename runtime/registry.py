"""OCI registries, reached through Debian's ``skopeo`` (containers/image): push, manifest, pull.

skopeo asks the registry for each blob before sending it (a blob the registry has is not sent
again, and it mounts blobs across repositories where the registry allows it) and checks every
digest it receives. Spinup gives it the store as an OCI layout to push from, and a staging
layout to pull into; what arrives is checked again before it enters the store
(``spinup.snapshot.transfer``). Every run has a deadline. Registry credentials come from
Spinup's credential store and reach skopeo in a 0600 auth file, never on its command line.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import InvalidInput, SpinupError

_REF = re.compile(
    r"^(?P<host>(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9-]+)*|\[::1\])(?::[0-9]{1,5})?)"
    r"/(?P<path>[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?$"
)
LOOPBACK = ("127.0.0.1", "localhost", "[::1]")
DEFAULT_TIMEOUT = 3600.0  # seconds one skopeo run may take


class RegistryError(SpinupError):
    """A registry refused or failed a transfer; the message has skopeo's words."""


@dataclass(frozen=True)
class ImageRef:
    """A checked registry reference: ``host[:port]/path[:tag]``."""

    host: str
    path: str
    tag: str
    insecure: bool  # plain HTTP, only ever to a loopback registry

    @property
    def name(self) -> str:
        return f"{self.host}/{self.path}"

    def __str__(self) -> str:
        return f"{self.name}:{self.tag}"


def parse_ref(ref: str, insecure: bool = False) -> ImageRef:
    """Check a reference like ``registry.example.com/team/agent:tag`` (tag default ``latest``)."""
    match = _REF.match(ref or "")
    if not match:
        raise InvalidInput(
            f"Invalid image reference {ref!r}: use host[:port]/path[:tag], such as registry.example.com/team/agent:v1."
        )
    host = match["host"]
    if insecure and host.rsplit(":", 1)[0] not in LOOPBACK and host not in LOOPBACK:
        raise InvalidInput(
            f"--insecure (plain HTTP) is only for a registry on this machine's loopback (127.0.0.1, localhost, "
            f"[::1]), not {host}. Give the registry TLS."
        )
    return ImageRef(host, match["path"], match["tag"] or "latest", insecure)


class Skopeo:
    """Runs skopeo with a deadline and an auth file made from a credential (``user:password``)."""

    def __init__(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.timeout = timeout

    @contextlib.contextmanager
    def _auth(self, ref: ImageRef, credential: str | None) -> Iterator[list[str]]:
        if credential is None:
            yield []
            return
        if ":" not in credential:
            raise InvalidInput("A registry credential's value must be user:password (spinup secret set NAME).")
        directory = tempfile.mkdtemp(prefix="spinup-auth-")
        path = Path(directory) / "auth.json"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump({"auths": {ref.host: {"auth": base64.b64encode(credential.encode()).decode()}}}, fh)
            yield ["--authfile", str(path)]
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    async def _run(self, what: str, *args: str) -> bytes:
        if shutil.which("skopeo") is None:
            raise RegistryError("Registry transfers need skopeo: apt-get install skopeo (scripts/setup installs it).")
        process = await asyncio.create_subprocess_exec(
            "skopeo",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL,
        )
        try:
            out, err = await asyncio.wait_for(process.communicate(), self.timeout)
        except (TimeoutError, asyncio.CancelledError):
            process.kill()
            await process.wait()
            raise
        if process.returncode != 0:
            said = err.decode(errors="replace").strip().splitlines()[-3:]
            raise RegistryError(f"{what} failed: skopeo said: {' '.join(said) or 'nothing'}")
        return out

    async def push(self, layout: Path, name: str, ref: ImageRef, credential: str | None = None) -> str:
        """Push image ``name`` of the OCI layout to ``ref`` exactly (digests kept); returns the manifest digest."""
        with tempfile.TemporaryDirectory(prefix="spinup-push-") as tmp, self._auth(ref, credential) as auth:
            digest_file = Path(tmp) / "digest"
            await self._run(
                f"Push to {ref}", "copy", "--preserve-digests", "--digestfile", str(digest_file),
                *auth, f"--dest-tls-verify={'false' if ref.insecure else 'true'}",
                f"oci:{layout}:{name}", f"docker://{ref}",
            )  # fmt: skip
            return digest_file.read_text().strip()

    async def manifest(self, ref: ImageRef, credential: str | None = None) -> bytes:
        """The raw manifest ``ref`` names."""
        with self._auth(ref, credential) as auth:
            return await self._run(
                f"Read {ref}", "inspect", "--raw", *auth, f"--tls-verify={'false' if ref.insecure else 'true'}",
                f"docker://{ref}",
            )  # fmt: skip

    async def pull(self, ref: ImageRef, digest: str, layout: Path, name: str, credential: str | None = None) -> None:
        """Copy the image ``ref``'s manifest ``digest`` names into the OCI layout (blobs it has are not fetched)."""
        with self._auth(ref, credential) as auth:
            await self._run(
                f"Pull {ref}", "copy", "--preserve-digests", *auth,
                f"--src-tls-verify={'false' if ref.insecure else 'true'}",
                f"docker://{ref.name}@{digest}", f"oci:{layout}:{name}",
            )  # fmt: skip
