"""Snapshots against the real daemon: exact round trips, incremental layers, chains, durability."""

from __future__ import annotations

import asyncio
import tarfile
from pathlib import Path

import zstandard

from conftest import docker_cli, unique_name
from spinup.runtime import AgentState, Runtime
from spinup.snapshot.store import Descriptor

# Prints one line per entry under the given roots: path, type, mode, owner, size, mtime, link
# target, content digest, and which hard-link group it shares an inode with.
LISTING = r"""
import hashlib, os, stat, sys
inodes = {}
rows = []
for root in sys.argv[1:]:
    for top, dirs, files in os.walk(root):
        for name in sorted(dirs + files):
            p = os.path.join(top, name)
            st = os.lstat(p)
            kind = stat.S_IFMT(st.st_mode)
            link = os.readlink(p) if stat.S_ISLNK(st.st_mode) else ""
            digest = ""
            if stat.S_ISREG(st.st_mode):
                with open(p, "rb") as fh:
                    digest = hashlib.sha256(fh.read()).hexdigest()[:16]
                if st.st_nlink > 1:
                    inodes.setdefault(st.st_ino, p)
            group = inodes.get(st.st_ino, "") if stat.S_ISREG(st.st_mode) and st.st_nlink > 1 else ""
            size = 0 if stat.S_ISDIR(st.st_mode) else st.st_size
            fields = (p, f"{kind:o}", f"{stat.S_IMODE(st.st_mode):o}", f"{st.st_uid}:{st.st_gid}", size,
                      int(st.st_mtime), link, digest, group)
            rows.append("|".join(map(str, fields)))
for row in sorted(rows):
    print(row)
for gone in ("/etc/motd",):
    print(gone, os.path.lexists(gone))
"""
ROOTS = ["/workspace", "/usr/share/doc/tar", "/usr/share/doc/gzip", "/usr/share/doc/bash"]

TREE = """
set -e
cd /workspace
mkdir -p 'dir with spaces/ünïcödé' empty-dir nested/a/b
echo hello > 'dir with spaces/ünïcödé/fïlé.txt'
head -c 20000000 /dev/urandom > big.bin
: > empty.txt
ln -s ../big.bin nested/rel-link
ln -s /etc/hostname abs-link
echo linked > hard1 && ln hard1 nested/a/hard2
echo '#!/bin/sh' > tool.sh && chmod 0755 tool.sh
echo s > setuid && chmod 04755 setuid
echo mine > owned && chown 1000:1000 owned && chmod 0640 owned
touch -d '2001-02-03 04:05:06' nested/a/b/old.txt
rm /etc/motd
rm -rf /usr/share/doc/tar && echo 'a file now' > /usr/share/doc/tar
rm -rf /usr/share/doc/gzip && mkdir /usr/share/doc/gzip && echo fresh > /usr/share/doc/gzip/only-this
"""


async def listing(runtime: Runtime, agent: str) -> str:
    result = await runtime.exec(agent, ["python3", "-c", LISTING, *ROOTS])
    assert result.exit_code == 0, result.stderr
    return result.stdout


async def test_a_snapshot_restores_every_entry_exactly_into_a_fresh_machine(runtime: Runtime, agent: str) -> None:
    assert (await runtime.exec(agent, TREE)).exit_code == 0
    before = await listing(runtime, agent)
    snapshot = (await runtime.agents.snapshot(agent, "fidelity")).snapshot
    machine = runtime.agents.get(agent).machine_id
    assert machine
    docker_cli("rm", "-f", machine)
    docker_cli("rmi", "-f", f"spinup/snap:{snapshot.id}")  # force a rebuild from the store
    after = await listing(runtime, agent)
    assert after == before
    assert "/etc/motd False" in after and "/usr/share/doc/gzip/only-this" in after
    events = [e.kind for e in runtime.agents.events(runtime.agents.get(agent))]
    assert events[-1] == "machine-rehydrated"


def layer_names(runtime: Runtime, descriptor: dict[str, object]) -> list[str]:
    with runtime.snapshots.store.open_blob(Descriptor.from_json(descriptor)) as blob:  # type: ignore[arg-type]
        reader = zstandard.ZstdDecompressor().stream_reader(blob)  # type: ignore[arg-type]
        with tarfile.open(fileobj=reader, mode="r|") as tar:
            return [m.name for m in tar]


async def test_a_one_byte_change_in_a_big_environment_makes_a_tiny_layer(runtime: Runtime, agent: str) -> None:
    await runtime.exec(agent, "mkdir -p /workspace/env && for i in 1 2 3 4; do "
                              "head -c 50000000 /dev/urandom > /workspace/env/blob$i; done; echo 0 > /workspace/v")
    first = (await runtime.agents.snapshot(agent)).snapshot
    assert first.layer_uncompressed > 200_000_000
    await runtime.exec(agent, "echo 1 > /workspace/v")
    second = (await runtime.agents.snapshot(agent)).snapshot
    assert second.layer_size < 64 * 1024 and second.paths_changed <= 2
    manifest = runtime.snapshots.store.get_json(second.manifest_digest)
    assert [n for n in layer_names(runtime, manifest["layers"][-1]) if not n.endswith("/")] == [
        "workspace", "workspace/v"
    ]
    await runtime.exec(agent, "rm /workspace/env/blob2")
    third = (await runtime.agents.snapshot(agent)).snapshot
    manifest = runtime.snapshots.store.get_json(third.manifest_digest)
    assert "workspace/env/.wh.blob2" in layer_names(runtime, manifest["layers"][-1])


async def test_a_chain_of_twenty_snapshots_restores_to_any_of_them(runtime: Runtime, agent: str) -> None:
    ids = []
    for step in range(20):
        await runtime.exec(agent, f"echo {step} > /workspace/counter; echo {step} > /workspace/file{step}")
        ids.append((await runtime.agents.snapshot(agent, f"step {step}")).snapshot.id)
    assert len(set(ids)) == 20
    await runtime.agents.restore(agent, ids[4])
    state = await runtime.exec(agent, "cat /workspace/counter; ls /workspace | grep -c file")
    assert state.stdout == "4\n5\n"
    await runtime.agents.restore(agent, ids[-1])
    state = await runtime.exec(agent, "cat /workspace/counter; ls /workspace | grep -c file")
    assert state.stdout == "19\n20\n"


async def test_stop_snapshots_only_what_changed_and_hibernate_frees_the_machine(runtime: Runtime, agent: str) -> None:
    await runtime.exec(agent, "echo 1 > /workspace/x")
    await runtime.agents.stop(agent)
    head = runtime.agents.get(agent).head_snapshot
    assert head
    await runtime.agents.wake(agent)
    await runtime.agents.stop(agent)
    assert runtime.agents.get(agent).head_snapshot == head, "nothing changed, no new snapshot"
    await runtime.exec(agent, "echo 2 > /workspace/x")
    hibernated = await runtime.agents.stop(agent, hibernate=True)
    assert hibernated.state is AgentState.HIBERNATED and hibernated.machine_id is None
    assert hibernated.head_snapshot != head
    assert docker_cli("ps", "-aq", "--filter", f"label=spinup.agent={hibernated.id}").stdout.strip() == ""
    assert (await runtime.exec(agent, "cat /workspace/x")).stdout == "2\n"


async def test_restore_saves_unsnapshotted_work_so_it_can_be_undone(runtime: Runtime, agent: str) -> None:
    await runtime.exec(agent, "echo base > /workspace/w")
    base = (await runtime.agents.snapshot(agent)).snapshot
    await runtime.exec(agent, "echo precious > /workspace/w")
    _, saved = await runtime.agents.restore(agent, base.id)
    assert saved is not None
    assert (await runtime.exec(agent, "cat /workspace/w")).stdout == "base\n"
    await runtime.agents.restore(agent, saved)
    assert (await runtime.exec(agent, "cat /workspace/w")).stdout == "precious\n"


async def test_a_fork_is_independent_of_its_source(runtime: Runtime, agent: str) -> None:
    await runtime.exec(agent, "echo shared > /workspace/s")
    snapshot = (await runtime.agents.snapshot(agent)).snapshot
    fork = unique_name("fork")
    await runtime.agents.fork(snapshot.id, fork)
    await runtime.exec(fork, "echo forked > /workspace/s")
    assert (await runtime.exec(agent, "cat /workspace/s")).stdout == "shared\n"
    assert (await runtime.exec(fork, "cat /workspace/s")).stdout == "forked\n"


async def test_an_exported_snapshot_loads_into_docker_as_a_standalone_image(
    runtime: Runtime, agent: str, tmp_path: Path
) -> None:
    await runtime.exec(agent, "echo exported > /workspace/e.txt")
    snapshot = (await runtime.agents.snapshot(agent, "to export")).snapshot
    archive = tmp_path / "snap.tar"
    size = await runtime.snapshots.export(snapshot, archive)
    assert size == archive.stat().st_size > 0
    with tarfile.open(archive) as tar:
        assert "manifest.json" in tar.getnames()
    docker_cli("rmi", "-f", f"spinup/snap:{snapshot.id}")
    docker_cli("load", "-i", str(archive))
    out = docker_cli("run", "--rm", "--network", "none", "--entrypoint", "cat", f"spinup/snap:{snapshot.id}",
                     "/workspace/e.txt")
    assert out.stdout == "exported\n"


async def test_a_command_arriving_during_a_snapshot_waits_for_it(runtime: Runtime, agent: str) -> None:
    await runtime.exec(agent, "head -c 300000000 /dev/urandom > /workspace/slow.bin")
    snapshot = asyncio.create_task(runtime.agents.snapshot(agent))
    machine = runtime.agents.get(agent).machine_id
    assert machine
    async with asyncio.timeout(60):
        while (await runtime.docker.inspect(machine)).paused is False:  # type: ignore[union-attr]
            assert not snapshot.done(), "the snapshot finished before the machine was seen paused"
            await asyncio.sleep(0.005)
    result = await runtime.exec(agent, "echo during")
    assert result.stdout == "during\n"
    assert snapshot.done(), "the command ran only once the snapshot had unpaused the machine"
    assert (await snapshot).created
