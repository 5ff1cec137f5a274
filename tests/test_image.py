"""The base image: what the built image promises, and how ``build_base_image`` behaves.

The real image is never rebuilt here (about a minute); ``scripts/setup`` builds it once. The
build pipeline is exercised with a stand-in ``mmdebstrap`` on PATH that streams a tiny rootfs.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import stat
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from conftest import RUN_ID, TEST_LABEL, docker_cli
from spinup.runtime.config import DEFAULT_IMAGE
from spinup.runtime.docker import DockerBackend
from spinup.runtime.errors import DockerFailure, SpinupError
from spinup.runtime.image import BASE_PACKAGES, build_base_image

# name -> (shell command run in the image, expected first line of output or None for "any")
PROMISES: dict[str, tuple[str, str | None]] = {
    "python3": ("python3 --version", None),
    "pip": ("python3 -m pip --version", None),
    "venv": ("python3 -m venv /tmp/v && /tmp/v/bin/python -c 'import sys; print(sys.prefix)'", "/tmp/v"),
    "git": ("git --version", None),
    "node": ("node --version", None),
    "npm": ("npm --version", None),
    "agent uid": ("id -u agent", "1000"),
    "agent home": ("getent passwd agent | cut -d: -f6 && test -d /home/agent", "/home/agent"),
    "workspace": ("stat -c %u:%g /workspace", "1000:1000"),
}


def _require_base_image() -> None:
    if docker_cli("image", "inspect", DEFAULT_IMAGE, check=False).returncode != 0:
        pytest.fail(f"{DEFAULT_IMAGE} is missing. Build it with scripts/setup (or: spinup image build).")


def test_base_image_has_what_we_promise() -> None:
    _require_base_image()
    script = "\n".join(
        f'out=$( ({cmd}) 2>&1 ); printf \'%s\\t%s\\t%s\\n\' {shlex.quote(name)} $? "$(echo "$out" | head -n1)"'
        for name, (cmd, _) in PROMISES.items()
    )
    container = f"spinup-test-image-{secrets.token_hex(4)}"
    try:
        run = docker_cli(
            "run", "--name", container, "--network", "none", "--label", f"{TEST_LABEL}={RUN_ID}",
            DEFAULT_IMAGE, "/bin/sh", "-c", script,
            check=False,
        )  # fmt: skip
    finally:
        docker_cli("rm", "-f", container, check=False)
    assert run.returncode == 0, run.stderr
    results = {}
    for line in run.stdout.splitlines():
        key, code, first = line.split("\t", 2)
        results[key] = (int(code), first)
    assert set(results) == set(PROMISES), run.stdout
    for key, (_, expected) in PROMISES.items():
        code, first = results[key]
        assert code == 0, f"{key}: exit {code}: {first}"
        if expected is not None:
            assert first == expected, f"{key}: {first!r} != {expected!r}"


def test_base_image_config() -> None:
    _require_base_image()
    config = json.loads(docker_cli("image", "inspect", DEFAULT_IMAGE, "--format", "{{json .Config}}").stdout)
    assert config["Cmd"] == ["/bin/bash"]
    assert "LANG=C.UTF-8" in (config.get("Env") or []), f"{DEFAULT_IMAGE} predates ENV LANG; rebuild it"
    assert config["WorkingDir"] == "/workspace", f"{DEFAULT_IMAGE} predates WORKDIR; rebuild it"
    assert (config.get("Labels") or {}).get("spinup.agent-dirs") == "1000", f"{DEFAULT_IMAGE} is old; rebuild it"


async def test_build_without_mmdebstrap_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    docker = DockerBackend()
    try:
        with pytest.raises(SpinupError, match="apt-get install mmdebstrap"):
            await build_base_image(docker, f"spinup/test-image:{secrets.token_hex(4)}")
    finally:
        await docker.close()


def _fake_mmdebstrap(tmp_path: Path, body: str) -> Path:
    """Put a stand-in ``mmdebstrap`` first on PATH; it records its argv and runs ``body``."""
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "hello").write_text("hello from the fake rootfs\n")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = bindir / "mmdebstrap"
    script.write_text(
        f'#!/bin/sh\nprintf "%s\\n" "$@" > {shlex.quote(str(tmp_path / "argv"))}\n'
        f"ROOT={shlex.quote(str(root))}\n{body}\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return bindir


def _tags(repo: str) -> list[str]:
    out = docker_cli("images", repo, "--format", "{{.Repository}}:{{.Tag}}").stdout
    return sorted(out.split())


@pytest.fixture
async def docker() -> AsyncIterator[DockerBackend]:
    backend = DockerBackend()
    try:
        yield backend
    finally:
        await backend.close()


@pytest.fixture
def test_repo() -> Iterator[str]:
    """A throwaway image repository; every tag in it is removed afterwards."""
    repo = f"spinup/test-image-{secrets.token_hex(4)}"
    yield repo
    tags = _tags(repo)
    if tags:
        docker_cli("rmi", "-f", *tags, check=False)


async def test_build_streams_rootfs_into_docker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, docker: DockerBackend, test_repo: str
) -> None:
    bindir = _fake_mmdebstrap(
        tmp_path,
        'echo "I: fake build" >&2\nprintf "I: step 1\\rI: step 2\\n" >&2\ntar -C "$ROOT" -cf - .',
    )
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    ref = f"{test_repo}:v1"
    lines: list[str] = []

    image_id = await build_base_image(
        docker, ref, suite="trixie", mirror="http://mirror.invalid/debian", extra_packages=["jq"], on_line=lines.append
    )

    inspect = json.loads(docker_cli("image", "inspect", ref).stdout)[0]
    assert inspect["Id"] == image_id
    assert inspect["Config"]["Cmd"] == ["/bin/bash"]
    assert "LANG=C.UTF-8" in inspect["Config"]["Env"]
    assert inspect["Config"]["WorkingDir"] == "/workspace"
    assert _tags(test_repo) == [ref], "the staging tag must be gone"
    assert {"I: fake build", "I: step 1", "I: step 2"} <= set(lines)
    argv = (tmp_path / "argv").read_text().splitlines()
    assert argv[-3:] == ["trixie", "-", "http://mirror.invalid/debian"]
    include = next(a for a in argv if a.startswith("--include=")).removeprefix("--include=").split(",")
    assert set(include) == {*BASE_PACKAGES, "jq"}


async def test_failed_build_reports_stderr_and_leaves_ref_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, docker: DockerBackend, test_repo: str
) -> None:
    _require_base_image()
    ref = f"{test_repo}:v1"
    docker_cli("tag", DEFAULT_IMAGE, ref)
    before = docker_cli("image", "inspect", ref, "--format", "{{.Id}}").stdout.strip()
    bindir = _fake_mmdebstrap(
        tmp_path,
        'echo "I: fake build" >&2\n'
        'tar -C "$ROOT" -cf - . | head -c 3000\n'
        'echo "E: fake failure: cannot reach the mirror" >&2\n'
        "exit 25",
    )
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")

    with pytest.raises(DockerFailure) as caught:
        await build_base_image(docker, ref)

    message = str(caught.value)
    assert "status 25" in message
    assert "E: fake failure: cannot reach the mirror" in message
    assert docker_cli("image", "inspect", ref, "--format", "{{.Id}}").stdout.strip() == before
    assert _tags(test_repo) == [ref], "no staging tag may be left behind"
