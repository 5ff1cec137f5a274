"""Local package sources built at test time (the machines reach no registry): wheels, npm tarballs, .debs."""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import subprocess
import threading
import zipfile
from pathlib import Path


def make_wheel(directory: Path, name: str, version: str, requires: tuple[str, ...] = (), value: str = "") -> Path:
    """A pure-Python wheel whose module ``name`` (dashes as underscores) has ``VALUE``."""
    module = name.replace("-", "_")
    dist = f"{module}-{version}"
    files = {
        f"{module}/__init__.py": f"VALUE = {value or version!r}\n".encode(),
        f"{dist}.dist-info/METADATA": (
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
            + "".join(f"Requires-Dist: {r}\n" for r in requires)
        ).encode(),
        f"{dist}.dist-info/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: spinup-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{dist}.dist-info/RECORD,,")
    files[f"{dist}.dist-info/RECORD"] = ("\n".join(record) + "\n").encode()
    directory.mkdir(parents=True, exist_ok=True)
    wheel = directory / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
    return wheel


def make_npm_tarball(directory: Path, name: str, version: str, message: str, work: Path) -> Path:
    """A package made by ``npm pack`` with a ``bin`` that prints ``message``."""
    source = work / f"npm-{name}-{version}"
    source.mkdir(parents=True)
    package = {"name": name, "version": version, "bin": {name: "cli.js"}, "main": "cli.js", "license": "MIT"}
    (source / "package.json").write_text(json.dumps(package))
    script = source / "cli.js"
    script.write_text(f"#!/usr/bin/env node\nconsole.log({json.dumps(message)});\n")
    script.chmod(0o755)
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["npm", "pack", "--pack-destination", str(directory), "--offline", "--no-update-notifier"],
        cwd=source,
        check=True,
        capture_output=True,
    )
    return directory / f"{name}-{version}.tgz"


def make_deb(directory: Path, name: str, version: str, message: str, work: Path) -> Path:
    """A .deb (built with dpkg-deb) installing /usr/bin/``name``, which prints ``message``."""
    root = work / f"{name}-{version}"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        f"Package: {name}\nVersion: {version}\nArchitecture: all\nMaintainer: Spinup tests <tests@localhost>\n"
        f"Description: a package built by the Spinup tests\n"
    )
    script = root / "usr" / "bin" / name
    script.parent.mkdir(parents=True)
    script.write_text(f"#!/bin/sh\necho {message}\n")
    script.chmod(0o755)
    directory.mkdir(parents=True, exist_ok=True)
    deb = directory / f"{name}_{version}_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(root), str(deb)], check=True, capture_output=True)
    return deb


def serve_index(files: Path) -> tuple[http.server.ThreadingHTTPServer, str, list[str]]:
    """A PEP 503 index of the wheels in ``files`` on the host's 127.0.0.1, in a thread.

    Wheel downloads are cacheable (``max-age``), pages are not, as on PyPI. Returns the server
    (call ``shutdown``), the index URL and the list of paths requested so far.
    """
    wheels = {p.name.split("-")[0].replace("_", "-"): p.name for p in files.glob("*.whl")}
    requests: list[str] = []

    class Index(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            requests.append(self.path)
            parts = self.path.strip("/").split("/")
            if len(parts) == 2 and parts[0] == "simple" and parts[1] in wheels:
                name = wheels[parts[1]]
                self._send(f'<a href="/files/{name}">{name}</a>'.encode(), "text/html", "no-cache")
            elif len(parts) == 2 and parts[0] == "files" and parts[1] in wheels.values():
                self._send((files / parts[1]).read_bytes(), "application/octet-stream", "max-age=3600")
            else:
                self.send_error(404)

        def _send(self, body: bytes, kind: str, cache: str) -> None:
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", cache)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Index)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/simple", requests
