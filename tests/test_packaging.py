"""The distribution installs as the ``spinup`` namespace from a plain ``pip install .`` and editable,
and its ``spinup`` command works on this machine."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SPINUP = str(Path(sys.executable).with_name("spinup"))
PACKAGES = ("server", "runtime", "snapshot")
BUILD_LEFTOVERS = (
    ".git", ".venv", ".cache", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "tests", "bench",
)


@pytest.mark.slow
def test_a_plain_install_lays_out_the_spinup_namespace(tmp_path: Path) -> None:
    # Build from a clean copy of the working tree: pip builds in place, and a stale build/ folder
    # in the checkout would both leak into the result and be shared with concurrent runs.
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*BUILD_LEFTOVERS))
    target = tmp_path / "site"
    # Build isolation fetches setuptools from the configured local index; the venv's own is too old to build.
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(source)],
        capture_output=True, text=True, timeout=600,
    )
    assert install.returncode == 0, install.stderr
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "import spinup.server, spinup.runtime, spinup.snapshot, spinup.server.app;"
        "print('\\n'.join(m.__file__ for m in (spinup.server, spinup.runtime, spinup.snapshot, spinup.server.app)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, str(target)], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    files = [Path(line) for line in out.stdout.splitlines()]
    assert len(files) == 4
    for file in files:
        assert file.is_relative_to(target / "spinup"), file
    for package in PACKAGES:  # subpackages included: each must be listed in pyproject.toml
        shipped = {p.relative_to(target / "spinup" / package) for p in (target / "spinup" / package).rglob("*.py")}
        assert shipped == {p.relative_to(ROOT / package) for p in (ROOT / package).rglob("*.py")}, package
    assert (target / "spinup" / "server" / "guide.md").is_file()
    dashboard = target / "spinup" / "server" / "dashboard"
    for shipped_file in ("templates/base.html", "templates/agent.html", "static/app.js", "static/app.css"):
        assert (dashboard / shipped_file).is_file(), shipped_file
    for package in PACKAGES:
        assert (target / "spinup" / package / "py.typed").is_file()
    assert not (target / "spinup" / "__init__.py").exists(), "spinup is a namespace of three packages"
    assert not list(target.glob("spinup/**/test*")), "tests do not ship"


def test_the_editable_install_points_at_the_source_folders() -> None:
    import spinup.runtime
    import spinup.server
    import spinup.snapshot

    for module, package in zip((spinup.server, spinup.runtime, spinup.snapshot), PACKAGES, strict=True):
        assert module.__file__ is not None
        assert Path(module.__file__).resolve().parent == ROOT / package


def test_the_command_line_lists_its_subcommands() -> None:
    helptext = subprocess.run([SPINUP, "--help"], capture_output=True, text=True, timeout=60)
    assert helptext.returncode == 0, helptext.stderr
    choices = re.search(r"\{([a-z,-]+)\}", helptext.stdout)
    assert choices is not None, helptext.stdout
    assert set(choices.group(1).split(",")) >= {"agent", "exec", "snapshot", "mcp", "serve", "image", "doctor"}


def test_the_doctor_passes_on_this_machine(tmp_path: Path) -> None:
    env = {**os.environ, "DOCKER_API_VERSION": "1.41", "SPINUP_HOME": str(tmp_path / "spinup")}
    doctor = subprocess.run([SPINUP, "doctor"], capture_output=True, text=True, env=env, timeout=120)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert "[ok  ] docker" in doctor.stdout and "[ok  ] base image" in doctor.stdout
