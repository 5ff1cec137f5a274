"""Packages against the real daemon, offline: local wheels, npm tarballs and .debs built at test time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import unique_name
from package_sources import make_deb, make_npm_tarball, make_wheel, serve_index
from spinup.runtime import Policy, Runtime, Settings
from spinup.runtime.config import DEFAULT_IMAGE
from spinup.runtime.errors import InvalidInput
from spinup.runtime.packages import PackageError

IMPORT = [
    "python",
    "-c",
    "import spinup_demo_app, spinup_demo_lib; print(spinup_demo_app.VALUE, spinup_demo_lib.VALUE)",
]


@pytest.fixture
def sources(settings: Settings, tmp_path: Path) -> Path:
    """The runtime's local sources, holding two wheels (an app that needs a lib), an npm tarball."""
    root = settings.sources_dir
    make_wheel(root / "pip", "spinup-demo-lib", "1.4", value="lib-1.4")
    make_wheel(root / "pip", "spinup-demo-app", "2.0", requires=("spinup-demo-lib>=1.0",), value="app-2.0")
    make_npm_tarball(root / "npm", "spinup-demo-npm", "1.2.3", "hello from npm", tmp_path / "npm-build")
    return root


async def test_pip_installs_from_local_sources_report_every_package_and_record_the_request(
    runtime: Runtime, agent: str, sources: Path
) -> None:
    result = await runtime.install_packages(agent, "pip", ["spinup-demo-app"])
    assert {(p.name, p.version) for p in result.added} == {("spinup-demo-app", "2.0"), ("spinup-demo-lib", "1.4")}
    assert [(e.manager, e.name, e.spec, e.version) for e in result.manifest] == [
        ("pip", "spinup-demo-app", "spinup-demo-app", "2.0")
    ]
    works = await runtime.exec(agent, IMPORT)
    assert works.stdout == "app-2.0 lib-1.4\n", works.stderr
    where = await runtime.exec(agent, "command -v python; id -u")
    assert where.stdout == "/home/agent/.venv/bin/python\n1000\n"
    status = await runtime.status(agent)
    assert [e.name for e in status.packages] == ["spinup-demo-app"]
    assert runtime.export_packages(agent, "pip") == "spinup-demo-app==2.0\n"
    again = await runtime.install_packages(agent, "pip", ["spinup-demo-lib"])  # already there, as a dependency
    assert again.added == [] and [(e.name, e.version) for e in again.manifest][-1] == ("spinup-demo-lib", "1.4")


async def test_installed_packages_survive_stop_hibernate_restore_and_fork(
    runtime: Runtime, agent: str, sources: Path
) -> None:
    await runtime.install_packages(agent, "pip", ["spinup-demo-app"])
    await runtime.install_packages(agent, "npm", ["spinup-demo-npm"])
    check = "spinup-demo-npm && python -c 'import spinup_demo_app; print(spinup_demo_app.VALUE)'"
    expected = "hello from npm\napp-2.0\n"
    await runtime.stop_agent(agent)
    assert (await runtime.exec(agent, check)).stdout == expected
    await runtime.stop_agent(agent, hibernate=True)
    assert (await runtime.exec(agent, check)).stdout == expected
    with_packages = (await runtime.snapshot(agent, "with packages")).snapshot
    await runtime.remove_packages(agent, "pip", ["spinup-demo-app"])
    assert [e.name for e in runtime.package_manifest(agent)] == ["spinup-demo-npm"]
    gone = await runtime.exec(agent, "python -c 'import spinup_demo_app'")
    assert gone.exit_code != 0
    await runtime.restore(agent, with_packages.id)
    assert (await runtime.exec(agent, check)).stdout == expected
    assert {e.name for e in runtime.package_manifest(agent)} == {
        "spinup-demo-app",
        "spinup-demo-npm",
    }
    fork = unique_name("fork")
    await runtime.fork(with_packages.id, fork)
    assert (await runtime.exec(fork, check)).stdout == expected
    assert len(runtime.package_manifest(fork)) == 2


async def test_npm_installs_a_local_tarball_with_its_bin_on_path(runtime: Runtime, agent: str, sources: Path) -> None:
    result = await runtime.install_packages(agent, "npm", ["spinup-demo-npm@1.2.3"])
    assert [(p.name, p.version) for p in result.added] == [("spinup-demo-npm", "1.2.3")]
    assert (await runtime.exec(agent, "spinup-demo-npm")).stdout == "hello from npm\n"
    exported = json.loads(runtime.export_packages(agent, "npm"))
    assert exported["dependencies"] == {"spinup-demo-npm": "1.2.3"}
    await runtime.remove_packages(agent, "npm", ["spinup-demo-npm"])
    assert (await runtime.exec(agent, "command -v spinup-demo-npm || echo none")).stdout == "none\n"


async def test_apt_needs_root_and_installs_a_local_deb(
    runtime: Runtime, agent: str, root_agent: str, settings: Settings, tmp_path: Path
) -> None:
    make_deb(settings.sources_dir / "apt", "spinup-demo-deb", "1.0", "hello-from-deb", tmp_path / "build")
    archives = await runtime.exec(root_agent, "test -d /var/cache/apt/archives/partial && echo shared")
    own = settings.cache_dir / runtime.get_agent(root_agent).id / "apt" / "partial"
    assert archives.stdout == "shared\n" and own.is_dir()
    with pytest.raises(PackageError, match="needs root"):
        await runtime.install_packages(agent, "apt", ["spinup-demo-deb"])
    result = await runtime.install_packages(root_agent, "apt", ["spinup-demo-deb"])
    assert ("spinup-demo-deb", "1.0") in {(p.name, p.version) for p in result.added}
    assert (await runtime.exec(root_agent, "spinup-demo-deb")).stdout == "hello-from-deb\n"
    assert runtime.export_packages(root_agent, "apt") == "spinup-demo-deb=1.0\n"
    await runtime.remove_packages(root_agent, "apt", ["spinup-demo-deb"])
    assert runtime.package_manifest(root_agent) == []


async def test_failures_say_why_in_the_managers_words_and_leave_the_manifest_alone(
    runtime: Runtime, agent: str, sources: Path
) -> None:
    await runtime.install_packages(agent, "pip", ["spinup-demo-lib"])
    before = runtime.package_manifest(agent)
    with pytest.raises(PackageError) as unknown:
        await runtime.install_packages(agent, "pip", ["no-such-package-anywhere"])
    assert "network policy is 'none'" in str(unknown.value) and "No matching distribution" in str(unknown.value)
    with pytest.raises(PackageError) as conflict:
        await runtime.install_packages(agent, "pip", ["spinup-demo-app", "spinup-demo-lib<1.0"])
    assert "manifest was not changed" in str(conflict.value)
    with pytest.raises(PackageError, match="npm said"):
        await runtime.install_packages(agent, "npm", ["no-such-npm-package"])
    for bad in (["--index-url=http://evil"], [], ["a b"]):
        with pytest.raises(InvalidInput):
            await runtime.install_packages(agent, "pip", bad)
    with pytest.raises(InvalidInput, match="pip, npm or apt"):
        await runtime.install_packages(agent, "cargo", ["x"])  # type: ignore[arg-type]
    assert runtime.package_manifest(agent) == before


async def test_a_manager_missing_from_the_image_is_named(runtime: Runtime, noshell_image: str) -> None:
    name = unique_name("bare")
    await runtime.create_agent(name, image=noshell_image)
    with pytest.raises(PackageError, match="not available") as missing:
        await runtime.install_packages(name, "pip", ["anything"])
    assert "python3" in str(missing.value)
    assert runtime.package_manifest(name) == []


def test_the_cli_installs_lists_exports_and_removes(settings: Settings) -> None:
    make_wheel(settings.sources_dir / "pip", "spinup-cli-demo", "1.1")
    env = {**os.environ, "SPINUP_HOME": str(settings.home), "DOCKER_API_VERSION": "1.41"}
    name = unique_name("cli")

    def spinup(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "spinup.server", *args], capture_output=True, text=True, env=env, timeout=300
        )

    try:
        assert spinup("agent", "create", name).returncode == 0
        installed = spinup("package", "install", name, "pip", "spinup-cli-demo")
        assert installed.returncode == 0, installed.stderr
        assert installed.stdout == "added spinup-cli-demo 1.1\n"
        assert spinup("package", "list", name, "--export", "pip").stdout == "spinup-cli-demo==1.1\n"
        refused = spinup("package", "install", name, "apt", "jq")
        assert refused.returncode == 2 and "needs root" in refused.stderr
        assert spinup("package", "remove", name, "pip", "spinup-cli-demo").returncode == 0
        assert spinup("package", "list", name).stdout == ""
    finally:
        spinup("agent", "rm", name)


@pytest.fixture
def loopback_index(tmp_path: Path) -> Iterator[tuple[str, list[str]]]:
    """A PEP 503 index on the host's 127.0.0.1 serving one wheel; yields its URL and the request log."""
    make_wheel(tmp_path / "files", "spinup-cached-demo", "3.1")
    server, url, requests = serve_index(tmp_path / "files")
    try:
        yield url, requests
    finally:
        server.shutdown()
        server.server_close()


async def _use_index(runtime: Runtime, name: str, url: str) -> None:
    files = await runtime.files(name)
    # pip caches plain-HTTP downloads only from trusted hosts
    await files.write("/home/agent/.config/pip/pip.conf", f"[global]\nindex-url = {url}\ntrusted-host = 127.0.0.1\n")


async def test_an_agent_installs_again_from_its_own_download_cache_and_no_other_agent_shares_it(
    runtime: Runtime, settings: Settings, loopback_index: tuple[str, list[str]]
) -> None:
    url, requests = loopback_index
    first, second, private = unique_name("c1"), unique_name("c2"), unique_name("c3")
    await runtime.create_agent(first, policy=Policy(network="host"))
    await runtime.create_agent(second, policy=Policy(network="host"))
    await runtime.create_agent(private, policy=Policy(network="host", package_cache=False))
    for name in (first, second, private):
        await _use_index(runtime, name, url)

    def downloads() -> int:
        return len([r for r in requests if r.startswith("/files/")])

    await runtime.install_packages(first, "pip", ["spinup-cached-demo"])
    assert downloads() == 1
    cached = [p for p in (settings.cache_dir / runtime.get_agent(first).id / "pip").rglob("*") if p.is_file()]
    assert cached, "the first install filled the agent's own cache"
    await runtime.remove_packages(first, "pip", ["spinup-cached-demo"])
    await runtime.stop_agent(first, hibernate=True)  # the cache outlasts the machine
    result = await runtime.install_packages(first, "pip", ["spinup-cached-demo"])
    assert [(p.name, p.version) for p in result.added] == [("spinup-cached-demo", "3.1")]
    assert downloads() == 1, "the agent's second install was served by its cache"
    await runtime.install_packages(second, "pip", ["spinup-cached-demo"])
    assert downloads() == 2, "another agent does not share the first one's cache"
    await runtime.install_packages(private, "pip", ["spinup-cached-demo"])
    assert downloads() == 3
    mounts = await runtime.exec(private, "ls /var/cache/spinup 2>&1 || true")
    assert "No such file" in mounts.stdout
    await runtime.remove_agent(first)
    assert not (settings.cache_dir / cached[0].relative_to(settings.cache_dir).parts[0]).exists()


async def test_rebuild_on_another_base_carries_files_and_reinstalls_the_manifest(
    runtime: Runtime, agent: str, sources: Path, other_base: str
) -> None:
    await runtime.install_packages(agent, "pip", ["spinup-demo-app"])
    await runtime.install_packages(agent, "npm", ["spinup-demo-npm"])
    await runtime.exec(agent, "echo mine > /workspace/notes.txt && echo 'alias ll=ls' > ~/.bash_aliases")
    (sources / "pip" / "spinup_demo_lib-1.4-py3-none-any.whl").unlink()
    make_wheel(sources / "pip", "spinup-demo-lib", "1.5", value="lib-1.5")  # 1.4 is gone: the app takes 1.5
    result = await runtime.rebuild(agent, other_base)
    assert result.agent.image == other_base and result.saved_snapshot != result.snapshot
    assert {(o.entry.name, o.version) for o in result.packages} == {
        ("spinup-demo-app", "2.0"),
        ("spinup-demo-npm", "1.2.3"),
    }
    check = await runtime.exec(
        agent,
        "cat /etc/other-base /workspace/notes.txt ~/.bash_aliases; spinup-demo-npm; "
        + " ".join(IMPORT[:2])
        + f" '{IMPORT[2]}'",
    )
    assert check.stdout == "other\nmine\nalias ll=ls\nhello from npm\napp-2.0 lib-1.5\n", check.stderr
    assert runtime.get_agent(agent).head_snapshot == result.snapshot
    # What cannot be found on the new base is reported, not fatal.
    (sources / "npm" / "spinup-demo-npm-1.2.3.tgz").unlink()
    again = await runtime.rebuild(agent, DEFAULT_IMAGE)
    failed = [o for o in again.packages if o.version is None]
    assert [o.entry.name for o in failed] == ["spinup-demo-npm"] and failed[0].error
    assert [e.name for e in runtime.package_manifest(agent)] == ["spinup-demo-app"]
