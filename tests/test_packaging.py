"""The distribution installs as the ``spinup`` namespace from a plain ``pip install .`` and editable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SPINUP = str(Path(sys.executable).with_name("spinup"))


@pytest.mark.slow
def test_a_plain_install_lays_out_the_spinup_namespace(tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
         str(ROOT)],
        check=True, capture_output=True,
    )
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "import spinup.server, spinup.runtime, spinup.snapshot, spinup.server.app;"
        "print('\\n'.join(m.__file__ for m in (spinup.server, spinup.runtime, spinup.snapshot)))"
    )
    out = subprocess.run([sys.executable, "-c", probe, str(target)], check=True, capture_output=True, text=True)
    for line in out.stdout.split():
        assert line.startswith(str(target / "spinup")), line
    assert (target / "spinup" / "server" / "guide.md").is_file()
    assert not (target / "spinup" / "__init__.py").exists(), "spinup is a namespace of three packages"


def test_the_editable_install_points_at_the_source_folders() -> None:
    import spinup.runtime
    import spinup.server
    import spinup.snapshot

    assert Path(spinup.server.__file__).parent == ROOT / "server"
    assert Path(spinup.runtime.__file__).parent == ROOT / "runtime"
    assert Path(spinup.snapshot.__file__).parent == ROOT / "snapshot"


def test_the_command_line_lists_its_commands_and_the_doctor_passes() -> None:
    helptext = subprocess.run([SPINUP, "--help"], check=True, capture_output=True, text=True).stdout
    for command in ("agent", "exec", "snapshot", "mcp", "serve", "image", "doctor"):
        assert command in helptext
    doctor = subprocess.run([SPINUP, "doctor"], capture_output=True, text=True, env={
        **__import__("os").environ, "DOCKER_API_VERSION": "1.41"})
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert "[ok  ] docker" in doctor.stdout and "[ok  ] base image" in doctor.stdout
