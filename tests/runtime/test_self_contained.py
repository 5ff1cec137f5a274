"""Self-contained snapshots on a real daemon: an agent wakes after Docker lost its base image, and
any OCI tool (skopeo, umoci) reads a snapshot as the full filesystem the live machine has.

The base images here are small ones of this test's own (busybox and a few files, a unique id),
never the shared ``spinup/base:bookworm``, which other tests and processes use.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import secrets
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import DOCKER_ENV, RUN_ID, TEST_LABEL, docker_cli, sh, store_of, unique_name
from spinup.runtime import Policy, Runtime, Settings
from spinup.runtime.snapshots import snapshot_tag
from spinup.snapshot.base import find_base, is_base
from spinup.snapshot.oci import BASE_ID, BASE_LAYERS, MANIFEST_MEDIA_TYPE, REF_NAME
from spinup.snapshot.store import Store

APPLETS = ("sh", "cat", "echo", "ln", "ls", "mkdir", "rm", "find", "stat", "readlink", "sort", "mv", "cp")
ROOT = Policy(user="root")
# Docker and Spinup mount these into every machine (or make them for their mounts): no snapshot holds them.
MOUNTED = ("/proc", "/sys", "/dev", "/.spinup", "/.dockerenv", "/etc/hosts", "/etc/hostname", "/etc/resolv.conf",
           "/etc/mtab", "/run", "/var/cache/spinup", "/sbin/docker-init")  # fmt: skip


def _rootfs(marker: str) -> bytes:
    """A tiny root filesystem: static busybox, a few files and directories, and ``marker``."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:

        def add(name: str, data: bytes | None = None, *, link: str = "", mode: int = 0o644) -> None:
            info = tarfile.TarInfo(name)
            info.mode = mode
            if link:
                info.type, info.linkname = tarfile.SYMTYPE, link
                tar.addfile(info)
            elif data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o1777 if name == "tmp" else 0o755
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))

        dirs = ("bin", "sbin", "dev", "etc", "opt", "opt/keep", "opt/replace", "opt/replace/sub", "workspace", "tmp")
        for directory in dirs:
            add(directory)
        console = tarfile.TarInfo("dev/console")  # base images carry device nodes (Debian's rootfs does)
        console.type, console.devmajor, console.devminor, console.mode = tarfile.CHRTYPE, 5, 1, 0o600
        tar.addfile(console)
        add("bin/busybox", Path("/bin/busybox").read_bytes(), mode=0o755)
        for applet in APPLETS:
            add(f"bin/{applet}", link="busybox")
        add("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
        add("etc/group", b"root:x:0:\n")
        add("etc/base-marker", marker.encode())
        add("opt/keep/a", b"a\n")
        add("opt/keep/b", b"b\n")
        add("opt/replace/old", b"old\n")
        add("opt/replace/sub/deep", b"deep\n")
    return buffer.getvalue()


def _import(tag: str, marker: str, host: str = "") -> str:
    """Import a tiny base image under ``tag`` (into the daemon at ``host``, else the shared one); returns its id."""
    daemon = ["-H", host] if host else []
    subprocess.run(
        ["docker", *daemon, "import", "-c", f"LABEL {TEST_LABEL}={RUN_ID}", "-", tag],
        input=_rootfs(marker),
        check=True,
        capture_output=True,
        env={**os.environ, **DOCKER_ENV},
    )
    return docker_cli(*daemon, "image", "inspect", "--format", "{{.Id}}", tag).stdout.strip()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """The shared settings, with a base cache of the test's own: its throwaway images stay out of the host's."""
    return Settings(home=tmp_path / "spinup", label_extra={TEST_LABEL: RUN_ID}, base_cache=tmp_path / "base-cache")


@pytest.fixture
def tiny_image() -> Iterator[str]:
    """A small base image of this test's own: a unique id, so removing it touches nothing else."""
    tag = f"spinup-test/tiny:{RUN_ID}-{secrets.token_hex(3)}"
    _import(tag, f"first {secrets.token_hex(8)}\n")
    try:
        yield tag
    finally:
        docker_cli("rmi", "-f", tag, check=False)


async def test_an_agent_wakes_after_docker_lost_its_base_image_and_its_tag_was_rebuilt(
    runtime: Runtime, tiny_image: str
) -> None:
    name = unique_name()
    await runtime.create_agent(name, image=tiny_image, policy=ROOT)
    marker = await sh(runtime, name, "cat /etc/base-marker")
    await sh(runtime, name, "echo kept > /workspace/note && rm /opt/keep/b && ln -s /opt/keep/a /workspace/link")
    agent = await runtime.stop_agent(name, hibernate=True)
    assert agent.head_snapshot is not None
    base_id = docker_cli("image", "inspect", "--format", "{{.Id}}", tiny_image).stdout.strip()

    # Every tag of the base image goes, and the snapshot's own image; then the tag is rebuilt (a new id).
    docker_cli("rmi", "-f", snapshot_tag(agent.head_snapshot), tiny_image)
    assert docker_cli("image", "inspect", base_id, check=False).returncode != 0, "Docker has lost the base image"
    rebuilt = _import(tiny_image, "rebuilt\n")
    assert rebuilt != base_id

    listing = await sh(runtime, name, "cat /workspace/note /etc/base-marker; ls /opt/keep; readlink /workspace/link")
    assert listing.split("\n") == ["kept", *marker.strip().split("\n"), "a", "/opt/keep/a", ""]
    # The woken agent goes on snapshotting, on the base image its files build on (not the tag's new one).
    await sh(runtime, name, "echo later > /workspace/later")
    later = (await runtime.snapshot(name, "after the wake")).snapshot
    assert store_of(runtime).get_json(later.manifest_digest)["annotations"][BASE_ID] == base_id


def _live_listing(output: str) -> dict[str, tuple[str, ...]]:
    """``stat -c '%n|%F|%s|%a|%u|%g|%N'`` lines as path -> (type, size of a file, mode, uid, gid, link)."""
    entries: dict[str, tuple[str, ...]] = {}
    for line in output.splitlines():
        path, kind, size, mode, uid, gid, quoted = line.split("|", 6)
        if path == "/" or any(path == own or path.startswith(own + "/") for own in MOUNTED):
            continue
        kind = "regular file" if kind == "regular empty file" else kind
        link = quoted.split(" -> ", 1)[1].strip("'") if kind == "symbolic link" else ""
        entries[path] = (kind, size if kind == "regular file" else "", mode, uid, gid, link)
    return entries


def _tree_listing(root: Path) -> dict[str, tuple[str, ...]]:
    """The same listing of an unpacked root filesystem, made on the host."""
    entries: dict[str, tuple[str, ...]] = {}
    for directory, dirs, files in os.walk(root):
        for entry in dirs + files:
            path = Path(directory, entry)
            st = path.lstat()
            rel = "/" + str(path.relative_to(root))
            if any(rel == own or rel.startswith(own + "/") for own in MOUNTED):
                continue
            kind = "symbolic link" if path.is_symlink() else "directory" if path.is_dir() else "regular file"
            size = str(st.st_size) if kind == "regular file" else ""
            link = os.readlink(path) if kind == "symbolic link" else ""
            entries[rel] = (kind, size, f"{st.st_mode & 0o7777:o}", str(st.st_uid), str(st.st_gid), link)
    return entries


def _tool(*argv: str) -> str:
    """Run an OCI tool from Debian (scripts/setup installs skopeo and umoci)."""
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"{argv[0]} failed: {result.stderr}"
    return result.stdout


async def test_umoci_and_skopeo_read_a_snapshot_as_the_full_tree_of_the_live_machine(
    runtime: Runtime, tiny_image: str, tmp_path: Path
) -> None:
    name = unique_name()
    await runtime.create_agent(name, image=tiny_image, policy=ROOT)
    await sh(runtime, name, "mkdir -p /workspace/proj && echo one > /workspace/proj/file")
    await runtime.snapshot(name, "first")
    await sh(
        runtime,
        name,
        "rm /opt/keep/b && rm -rf /opt/replace && mkdir /opt/replace && echo new > /opt/replace/only"
        " && ln -s ../keep/a /opt/link && rm -rf /workspace/proj && echo two > /workspace/proj",
    )
    snapshot = (await runtime.snapshot(name, "second")).snapshot
    live = _live_listing(await sh(runtime, name, "find / -xdev -exec stat -c '%n|%F|%s|%a|%u|%g|%N' {} +"))
    store = runtime.settings.home / "store"

    inspected = json.loads(_tool("skopeo", "inspect", f"oci:{store}:{snapshot.id}"))
    assert len(inspected["Layers"]) == 3, "the base image's layer, then the snapshot's two"
    assert inspected["Labels"]["spinup.snapshot"] == snapshot.id
    assert "spinup snapshot layer" in _tool("umoci", "stat", "--image", f"{store}:{snapshot.id}")
    # Debian's umoci (0.4.7) predates zstd layers: skopeo recompresses them for it, bytes unchanged.
    gzipped = tmp_path / "gz"
    _tool("skopeo", "copy", "--dest-compress-format", "gzip", f"oci:{store}:{snapshot.id}", f"oci:{gzipped}:s")
    _tool("umoci", "unpack", "--image", f"{gzipped}:s", str(tmp_path / "bundle"))
    unpacked = _tree_listing(tmp_path / "bundle" / "rootfs")

    assert unpacked == live
    archive = tmp_path / "snapshot.tar"
    assert await runtime.export_snapshot(snapshot.id, archive, "oci") == archive.stat().st_size
    from_archive = json.loads(_tool("skopeo", "inspect", f"oci-archive:{archive}:{snapshot.id}"))
    assert from_archive["Layers"] == inspected["Layers"], "the OCI archive holds the same image, base included"
    assert "/opt/keep/b" not in unpacked and "/opt/replace/old" not in unpacked
    assert unpacked["/opt/link"][5] == "../keep/a" and unpacked["/workspace/proj"][0] == "regular file"


def _make_legacy(runtime: Runtime, snapshot_id: str, manifest_digest: str) -> str:
    """Rewrite a snapshot as the store wrote it before base images were stored: its own layers only."""
    store = store_of(runtime)
    manifest = store.get_json(manifest_digest)
    base_count = int(manifest["annotations"].pop(BASE_LAYERS))
    manifest["layers"] = manifest["layers"][base_count:]
    legacy = store.put_json(manifest, MANIFEST_MEDIA_TYPE, {REF_NAME: snapshot_id})
    store.add_manifest(legacy)
    store.remove_manifest_digest(manifest_digest)
    runtime._db.set_snapshot_manifest(snapshot_id, legacy.digest)
    return legacy.digest


async def test_migrate_makes_older_snapshots_list_their_base_and_a_rerun_changes_nothing(
    runtime: Runtime, tiny_image: str
) -> None:
    name = unique_name()
    await runtime.create_agent(name, image=tiny_image, policy=ROOT)
    await sh(runtime, name, "echo old > /workspace/old")
    first = (await runtime.snapshot(name, "first")).snapshot
    await sh(runtime, name, "echo older > /workspace/older")
    second = (await runtime.snapshot(name, "second")).snapshot
    legacy = {s.id: _make_legacy(runtime, s.id, s.manifest_digest) for s in (first, second)}
    for entry in [d for d in store_of(runtime).manifests() if is_base(d)]:  # an old store has no base image
        store_of(runtime).remove_manifest_digest(entry.digest)
    assert (await runtime.collect_garbage()).blobs_removed >= 3, "the base image's config, layer and manifest"

    seen: list[str] = []
    result = await runtime.migrate_store(lambda message, _: seen.append(message))
    assert sorted(result.migrated) == sorted(legacy) and not result.skipped
    assert any(first.id in message for message in seen)
    for snapshot_id, old in legacy.items():
        digest = runtime.get_snapshot(snapshot_id).manifest_digest
        assert digest != old
        assert store_of(runtime).get_json(digest)["annotations"][BASE_LAYERS] == "1"
    listed = [(d.annotations or {}).get(REF_NAME) for d in store_of(runtime).manifests()]
    assert sorted(n for n in listed if n and not n.startswith("base-")) == sorted(legacy), "old manifests unlisted"
    again = await runtime.migrate_store()
    assert again.migrated == [] and again.current == 2
    assert (await runtime.verify_store()).ok

    await runtime.stop_agent(name, hibernate=True)
    docker_cli("rmi", "-f", snapshot_tag(second.id), tiny_image)
    assert (await sh(runtime, name, "cat /workspace/old /workspace/older")) == "old\nolder\n"


@pytest.fixture
def second_daemon(tmp_path: Path) -> Iterator[str]:
    """A Docker daemon of this test's own (its own data, exec root, pid file and socket): its images
    may be pruned without touching the shared daemon's. Yields its DOCKER_HOST."""
    root = Path(tempfile.mkdtemp(prefix="sd-", dir="/tmp"))  # short: unix socket paths are limited
    host = f"unix://{root}/docker.sock"
    log = open(tmp_path / "dockerd.log", "wb")  # noqa: SIM115 - closed below
    daemon = subprocess.Popen(
        ["dockerd", "--data-root", str(root / "data"), "--exec-root", str(root / "exec"),
         "--pidfile", str(root / "docker.pid"), "-H", host, "--bridge=none", "--iptables=false"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while docker_cli("-H", host, "info", check=False).returncode != 0:
            assert daemon.poll() is None, (tmp_path / "dockerd.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "the second daemon did not answer in 60 s"
            time.sleep(0.2)
        yield host
    finally:
        daemon.terminate()
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
        log.close()
        shutil.rmtree(root, ignore_errors=True)


async def test_an_agent_wakes_after_docker_system_prune_all_on_its_daemon(
    settings: Settings, second_daemon: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    tag = f"spinup-test/tiny:{RUN_ID}-prune"
    _import(tag, "pruned base\n", second_daemon)
    monkeypatch.setenv("DOCKER_HOST", second_daemon)
    runtime = Runtime(settings)
    name = unique_name()
    try:
        await runtime.create_agent(name, image=tag, policy=ROOT)
        await sh(runtime, name, "echo survived > /workspace/note && rm /opt/keep/a")
        await runtime.stop_agent(name, hibernate=True)
        docker_cli("-H", second_daemon, "system", "prune", "-a", "-f")
        assert docker_cli("-H", second_daemon, "images", "-q").stdout.strip() == "", "the daemon has no image left"

        assert await sh(runtime, name, "cat /workspace/note /etc/base-marker; ls /opt/keep") == (
            "survived\npruned base\nb\n"
        )
    finally:
        await runtime.remove_agent(name)
        await runtime.close()


async def test_two_state_directories_snapshotting_at_once_on_a_new_base_share_one_stored_copy(
    tiny_image: str, tmp_path: Path
) -> None:
    cache = tmp_path / "shared-cache"
    runtimes = [
        Runtime(Settings(home=tmp_path / f"home-{i}", label_extra={TEST_LABEL: RUN_ID}, base_cache=cache))
        for i in range(2)
    ]
    names = [unique_name() for _ in runtimes]
    try:
        for runtime, name in zip(runtimes, names, strict=True):
            await runtime.create_agent(name, image=tiny_image, policy=ROOT)
        results = await asyncio.gather(*(rt.snapshot(n) for rt, n in zip(runtimes, names, strict=True)))
        assert all(result.created for result in results)
        assert len([d for d in Store(cache).manifests() if is_base(d)]) == 1, "one copy in the cache"
        base_id = str(store_of(runtimes[0]).get_json(results[0].snapshot.manifest_digest)["annotations"][BASE_ID])
        bases = [find_base(store_of(rt), base_id) for rt in runtimes]
        assert bases[0] is not None and bases[1] is not None and bases[0].layers == bases[1].layers
    finally:
        for runtime in runtimes:
            for agent in runtime.list_agents():
                await runtime.remove_agent(agent.name)
            await runtime.close()
