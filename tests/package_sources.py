"""Local package sources built at test time (the machines reach no registry): wheels, npm tarballs, .debs."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
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
