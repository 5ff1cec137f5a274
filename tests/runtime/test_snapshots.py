"""Snapshots against the real daemon: exact round trips, incremental layers, chains, lifecycle, damage."""

from __future__ import annotations

import asyncio
import os
import stat
import tarfile
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
import zstandard

from conftest import docker_cli, lifecycle_kinds, store_of, unique_name
from spinup.runtime import AgentState, Policy, Runtime, Settings
from spinup.runtime.errors import Conflict, ForeignSnapshot, NotFound, SpinupError
from spinup.runtime.models import Snapshot
from spinup.runtime.snapshots import snapshot_tag
from spinup.snapshot.oci import LAYER_MEDIA_TYPE, REF_NAME
from spinup.snapshot.sink import LayerResult, LayerSink
from spinup.snapshot.store import Descriptor

# Prints one line per entry under the given roots (default: the whole machine, mount points of
# other filesystems left out): path, type, mode, owner, size, mtime, link target, content digest,
# and the first path of its hard-link group. Docker makes a few entries afresh for every
# container (its init layer: /.dockerenv, the mount points of /etc and docker-init), so their
# mtimes are the container's, not the agent's: those are blanked.
LISTING = r"""
import hashlib, os, stat, sys
roots = sys.argv[1:] or ["/"]
root_dev = os.lstat("/").st_dev
skip = {"/proc", "/sys", "/dev"}
per_container = {"/", "/.dockerenv", "/.spinup", "/etc", "/etc/mtab", "/usr/sbin", "/run", "/run/spinup"}
first_link = {}
rows = []

def row(path, st):
    mode = st.st_mode
    link = os.readlink(path) if stat.S_ISLNK(mode) else ""
    digest = group = ""
    if stat.S_ISREG(mode):
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
        digest = h.hexdigest()
        if st.st_nlink > 1:
            group = first_link.setdefault(st.st_ino, path)
    size = 0 if stat.S_ISDIR(mode) else st.st_size
    mtime = "-" if path in per_container else int(st.st_mtime)
    fields = (repr(path), f"{stat.S_IFMT(mode):o}", f"{stat.S_IMODE(mode):04o}", f"{st.st_uid}:{st.st_gid}",
              size, mtime, repr(link), digest, repr(group))
    return "|".join(map(str, fields))

for root in roots:
    rows.append(row(root, os.lstat(root)))
    for top, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if os.path.join(top, d) not in skip
                         and os.lstat(os.path.join(top, d)).st_dev == root_dev)
        for name in sorted(dirs + files):
            path = os.path.join(top, name)
            st = os.lstat(path)
            if st.st_dev == root_dev:
                rows.append(row(path, st))
print("\n".join(sorted(rows)))
"""

LONG = "x" * 150  # names past tar's 100-byte field
LONG_BASE_FILE = (
    "/usr/share/nodejs/@babel/plugin-bugfix-safari-id-destructuring-collision-in-function-expression/lib/index.js"
)

TREE = f"""
set -e
cd /workspace
mkdir -p 'dir with spaces/ünïcödé' empty-dir nested/a/b
printf 'hello\\n' > 'dir with spaces/ünïcödé/fïlé 1.txt'
head -c 20000000 /dev/urandom > big.bin
: > empty.txt
ln -s ../../big.bin nested/a/rel-link
ln -s /etc/hostname abs-link
ln -s does-not-exist dangling
ln -s nested/a dir-link
echo linked > hard1 && ln hard1 nested/a/hard2
printf '#!/bin/sh\\necho run\\n' > tool.sh && chmod 0755 tool.sh
echo s > setuid && chmod 04755 setuid
echo g > setgid && chmod 02711 setgid
mkdir sticky && chmod 01777 sticky
mkdir private && echo p > private/p && chmod 0700 private
echo mine > owned && chown 1000:1000 owned && chmod 0640 owned
mkdir owned-dir && chown 1000:1000 owned-dir
ln -s owned owned-link && chown -h 1000:1000 owned-link
echo none > mode0 && chmod 0 mode0
touch -d '2001-02-03 04:05:06' nested/a/b/old.txt
touch -h -d '2002-03-04 05:06:07' dangling
mkdir -p deep/{LONG} && echo long > deep/{LONG}/{LONG} && ln -s deep/{LONG}/{LONG} long-link
touch "$(printf 'caf\\351')"
touch -d '2003-01-01' empty-dir
rm /etc/motd
rm {LONG_BASE_FILE}
rm -rf /usr/share/doc/tar && echo 'a file now' > /usr/share/doc/tar
rm -rf /usr/share/doc/gzip && mkdir /usr/share/doc/gzip && echo fresh > /usr/share/doc/gzip/only-this
"""


@pytest.fixture
async def agent(root_agent: str) -> str:
    """These trees change base-image files (/etc, /usr), chown and mknod: the agent runs as root."""
    return root_agent


@pytest.fixture(autouse=True)
async def _remove_snapshot_images(runtime: Runtime) -> AsyncIterator[None]:
    """Remove the test's agents, then every snapshot image it made, to keep the daemon clean."""
    yield
    ids = [s.id for s in runtime.list_snapshots()]
    for agent in runtime.list_agents():
        await runtime.remove_agent(agent.name)
    if ids:
        docker_cli("rmi", "-f", *(snapshot_tag(i) for i in ids), check=False)


async def listing(runtime: Runtime, agent: str, *roots: str) -> list[str]:
    result = await runtime.exec(agent, ["python3", "-c", LISTING, *roots], output_cap=64 * 1024 * 1024)
    assert result.exit_code == 0, result.stderr
    assert result.stdout_dropped == 0
    lines: list[str] = result.stdout.splitlines()
    return lines


def differences(before: list[str], after: list[str]) -> tuple[list[str], list[str]]:
    """(lines only before, lines only after): both empty when the trees are identical."""
    return sorted(set(before) - set(after)), sorted(set(after) - set(before))


def drop_machine_and_image(runtime: Runtime, agent: str, snapshot_id: str) -> None:
    """Remove the machine out of band and the snapshot's image, so waking rebuilds it from the store."""
    machine = runtime.get_agent(agent).machine_id
    assert machine
    docker_cli("rm", "-f", machine)
    docker_cli("rmi", "-f", snapshot_tag(snapshot_id), check=False)
    assert docker_cli("image", "inspect", snapshot_tag(snapshot_id), check=False).returncode != 0


def layer_names(runtime: Runtime, snapshot: Snapshot) -> list[str]:
    """Entry names of the snapshot's own (top) layer, read back from the store."""
    manifest = store_of(runtime).get_json(snapshot.manifest_digest)
    descriptor = Descriptor.from_json(manifest["layers"][-1])
    assert descriptor.media_type == LAYER_MEDIA_TYPE
    with store_of(runtime).open_blob(descriptor) as blob:
        reader = zstandard.ZstdDecompressor().stream_reader(blob, read_across_frames=True)
        with tarfile.open(fileobj=reader, mode="r|") as tar:
            names = [m.name.rstrip("/") for m in tar]
        blob.read()
    return names


def _events(runtime: Runtime, agent: str) -> list[str]:
    return lifecycle_kinds(runtime.events(agent, limit=100))


# round trips


async def test_a_snapshot_rebuilt_from_the_store_restores_every_entry_exactly(runtime: Runtime, agent: str) -> None:
    made = await runtime.exec(agent, TREE)
    assert made.exit_code == 0, made.stderr
    before = await listing(runtime, agent)
    snapshot = (await runtime.snapshot(agent, "fidelity")).snapshot
    drop_machine_and_image(runtime, agent, snapshot.id)

    after = await listing(runtime, agent)

    assert _events(runtime, agent)[-1] == "machine-rehydrated"
    assert docker_cli("image", "inspect", snapshot_tag(snapshot.id), check=False).returncode == 0
    assert differences(before, after) == ([], [])
    paths = {line.split("|", 1)[0] for line in after}
    assert "'/etc/motd'" not in paths and repr(LONG_BASE_FILE) not in paths
    assert "'/usr/share/doc/gzip/only-this'" in paths and "'/usr/share/doc/gzip/README.gz'" not in paths
    assert any(line.startswith("'/usr/share/doc/tar'|100000|") for line in after)
    assert any(line.startswith("'/workspace/setuid'|100000|4755|0:0|") for line in after)
    assert any(line.startswith("'/workspace/owned'|100000|0640|1000:1000|") for line in after)
    assert any(
        line.startswith("'/workspace/nested/a/hard2'|") and line.endswith("'/workspace/hard1'") for line in after
    )


async def test_changes_across_several_snapshots_restore_exactly(runtime: Runtime, agent: str) -> None:
    first = await runtime.exec(
        agent,
        "set -e; cd /workspace; mkdir -p proj/src gone/deeper old-dir; echo a > proj/src/a.py; "
        "echo b > proj/src/b.py; echo g > gone/deeper/g; echo d > old-dir/d; echo f > to-dir; echo h > hard1; "
        "echo counter-0 > counter; ln -s proj/src/a.py link; echo doomed > doomed; rm /etc/motd",
    )
    assert first.exit_code == 0, first.stderr
    await runtime.snapshot(agent, "one")
    second = await runtime.exec(
        agent,
        "set -e; cd /workspace; echo counter-1 > counter; rm -rf gone; rm /etc/issue; "
        "rm to-dir && mkdir to-dir && echo in > to-dir/in; rm -rf old-dir && echo now-a-file > old-dir; "
        "ln hard1 hard2; mv proj/src/b.py proj/src/c.py; ln -sfn proj/src/c.py link; : > doomed; "
        "rm -rf /usr/share/doc/bash && mkdir /usr/share/doc/bash && echo mine > /usr/share/doc/bash/mine; "
        "echo 'motd is back' > /etc/motd",
    )
    assert second.exit_code == 0, second.stderr
    await runtime.snapshot(agent, "two")
    third = await runtime.exec(
        agent,
        "set -e; cd /workspace; rm doomed to-dir/in; chmod 0600 proj/src/a.py; chown 1000:1000 hard1; "
        "echo counter-2 > counter; chmod 0750 proj; touch -d '2004-05-06' proj/src",
    )
    assert third.exit_code == 0, third.stderr
    last = (await runtime.snapshot(agent, "three")).snapshot
    assert last.layers == 3
    before = await listing(runtime, agent)
    drop_machine_and_image(runtime, agent, last.id)

    after = await listing(runtime, agent)

    assert differences(before, after) == ([], [])
    paths = {line.split("|", 1)[0] for line in after}
    assert {"'/workspace/gone'", "'/workspace/doomed'", "'/etc/issue'", "'/usr/share/doc/bash/README'"} & paths == set()
    assert "'/etc/motd'" in paths and "'/workspace/to-dir'" in paths


async def test_a_chain_at_the_layer_limit_is_squashed_into_one_layer_that_restores_exactly(
    settings: Settings,
) -> None:
    """Docker refuses images deeper than 125 layers: a snapshot on a head of max_layers is squashed."""
    runtime = Runtime(replace(settings, max_layers=2))
    agent = unique_name("squash")
    try:
        await runtime.create_agent(agent, policy=Policy(user="root"))
        assert (await runtime.exec(agent, TREE)).exit_code == 0
        await runtime.snapshot(agent, "one")
        second = await runtime.exec(
            agent,
            "set -e; cd /workspace; echo two > counter; rm -rf 'dir with spaces'; rm /etc/issue; "
            "echo 'motd is back' > /etc/motd; chmod 0600 tool.sh; ln hard1 hard3",
        )
        assert second.exit_code == 0, second.stderr
        two = (await runtime.snapshot(agent, "two")).snapshot
        assert two.layers == 2
        # The next machine runs on the two-layer image: its changes, the two layers below and the
        # whiteouts and opaque directories in all three are what the squash merges.
        await runtime.stop_agent(agent, hibernate=True)
        third = await runtime.exec(
            agent,
            "set -e; cd /workspace; echo three > counter; rm -rf nested/a/b; rm big.bin; "
            "rm -rf sticky && mkdir sticky && echo new > sticky/new; rm /etc/issue.net; "
            "mkdir 'dir with spaces' && echo back > 'dir with spaces/back'; echo more >> hard1; "
            "rm -rf /usr/share/doc/gzip/only-this; touch -d '2005-06-07' owned",
        )
        assert third.exit_code == 0, third.stderr
        before = await listing(runtime, agent)
        squashed = (await runtime.snapshot(agent, "three")).snapshot
        assert squashed.layers == 1 and squashed.parent_id == two.id
        names = set(layer_names(runtime, squashed))
        assert {"etc/.wh.motd", "etc/.wh.issue", "etc/.wh.issue.net"} & names == {"etc/.wh.issue", "etc/.wh.issue.net"}
        assert {"usr/share/doc/gzip/.wh..wh..opq", "workspace/sticky/new"} <= names
        assert "usr/share/doc/gzip/.wh.only-this" not in names, "no whiteout inside an opaque directory"
        assert "workspace/big.bin" not in names and "workspace/counter" in names
        drop_machine_and_image(runtime, agent, squashed.id)
        assert differences(before, await listing(runtime, agent)) == ([], [])

        # Incremental again on top of the squashed layer, and the old chain still restores.
        assert (await runtime.exec(agent, "echo four > /workspace/counter; rm /workspace/empty.txt")).exit_code == 0
        four = (await runtime.snapshot(agent, "four")).snapshot
        assert four.layers == 2 and set(layer_names(runtime, four)) == {
            "workspace", "workspace/counter", "workspace/.wh.empty.txt",
        }  # fmt: skip
        before = await listing(runtime, agent)
        drop_machine_and_image(runtime, agent, four.id)
        assert differences(before, await listing(runtime, agent)) == ([], [])
        await runtime.restore(agent, two.id)
        back = await runtime.exec(agent, "cat /workspace/counter; test -e /workspace/big.bin && echo big")
        assert back.stdout == "two\nbig\n"
    finally:
        ids = [s.id for s in runtime.list_snapshots()]
        for made in runtime.list_agents():
            await runtime.remove_agent(made.name)
        if ids:
            docker_cli("rmi", "-f", *(snapshot_tag(i) for i in ids), check=False)
        await runtime.close()


async def test_a_directory_mode_or_owner_change_survives_an_incremental_snapshot(runtime: Runtime, agent: str) -> None:
    await runtime.exec(agent, "mkdir -p /workspace/proj/sub && echo x > /workspace/proj/sub/x")
    await runtime.snapshot(agent, "made")
    await runtime.exec(agent, "chmod 0700 /workspace/proj && chown 1000:1000 /workspace/proj/sub")
    snapshot = (await runtime.snapshot(agent, "chmod")).snapshot
    drop_machine_and_image(runtime, agent, snapshot.id)
    result = await runtime.exec(agent, "stat -c '%a %u:%g' /workspace/proj /workspace/proj/sub")
    assert result.stdout == "700 0:0\n755 1000:1000\n"


async def test_a_fifo_in_the_machine_does_not_make_its_snapshot_unrestorable(runtime: Runtime, agent: str) -> None:
    await runtime.exec(agent, "mkfifo /workspace/pipe && echo kept > /workspace/data")
    snapshot = (await runtime.snapshot(agent, "with a fifo")).snapshot
    drop_machine_and_image(runtime, agent, snapshot.id)
    back = await runtime.exec(agent, "cat /workspace/data; test -p /workspace/pipe && echo fifo")
    assert back.stdout == "kept\nfifo\n"


async def test_a_device_node_made_in_the_machine_does_not_make_its_snapshot_unrestorable(
    runtime: Runtime, agent: str
) -> None:
    refused = await runtime.exec(agent, "mknod /workspace/null c 1 3")
    assert refused.exit_code != 0, "root agents have no MKNOD"
    machine = await runtime.machine(agent)
    assert machine is not None and machine.upper_dir
    os.mknod(f"{machine.upper_dir}/null", 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # as Docker would
    assert (await runtime.exec(agent, "test -c /null && echo kept > /workspace/data")).exit_code == 0
    snapshot = (await runtime.snapshot(agent, "with a device")).snapshot
    drop_machine_and_image(runtime, agent, snapshot.id)
    back = await runtime.exec(agent, "cat /workspace/data; test -e /null || echo no-device")
    assert back.stdout == "kept\nno-device\n", "device nodes are left out of snapshots"


# Sets a user attribute, a file capability (cap_net_bind_service, permitted, v2 format) and an
# access ACL granting uid 1000 read (v2 entries: USER_OBJ rw, USER 1000 r, GROUP_OBJ r, MASK r,
# OTHER r), on a file and a directory, and prints them back.
XATTRS = r"""
import os, struct, sys
capability = struct.pack("<IIIII", 0x02000000, 1 << 10, 0, 0, 0)
acl = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", tag, perm, ident) for tag, perm, ident in
    [(0x01, 6, 0xFFFFFFFF), (0x02, 4, 1000), (0x04, 4, 0xFFFFFFFF), (0x10, 4, 0xFFFFFFFF), (0x20, 4, 0xFFFFFFFF)])
if sys.argv[1] == "set":
    os.makedirs("/workspace/tagged-dir", exist_ok=True)
    with open("/workspace/tagged", "w") as fh:
        fh.write("x")
    os.setxattr("/workspace/tagged", "user.origin", b"notes")
    os.setxattr("/workspace/tagged-dir", "user.kind", b"folder")
    os.setxattr("/workspace/tagged", "security.capability", capability)
    os.setxattr("/workspace/tagged", "system.posix_acl_access", acl)
for path in ("/workspace/tagged", "/workspace/tagged-dir"):
    for name in sorted(os.listxattr(path)):
        print(path, name, os.getxattr(path, name).hex())
"""


async def test_extended_attributes_capabilities_and_acls_survive_a_snapshot(runtime: Runtime, agent: str) -> None:
    made = await runtime.exec(agent, ["python3", "-c", XATTRS, "set"])
    assert made.exit_code == 0, made.stderr
    names = [line.split()[1] for line in made.stdout.splitlines()]
    assert {"user.origin", "user.kind", "security.capability", "system.posix_acl_access"} <= set(names)
    snapshot = (await runtime.snapshot(agent, "xattr")).snapshot
    drop_machine_and_image(runtime, agent, snapshot.id)
    back = await runtime.exec(agent, ["python3", "-c", XATTRS, "get"])
    assert back.exit_code == 0, back.stderr
    assert back.stdout == made.stdout
    # overlayfs's own bookkeeping (trusted.overlay.*) never reaches a layer
    manifest = store_of(runtime).get_json(snapshot.manifest_digest)
    descriptor = Descriptor.from_json(manifest["layers"][-1])
    with store_of(runtime).open_blob(descriptor) as blob:
        reader = zstandard.ZstdDecompressor().stream_reader(blob, read_across_frames=True)
        with tarfile.open(fileobj=reader, mode="r|") as tar:
            keys = {key for member in tar for key in member.pax_headers}
        blob.read()
    assert "SCHILY.xattr.user.origin" in keys and not [k for k in keys if "trusted." in k]


# incremental capture


async def test_a_one_byte_change_in_a_big_environment_makes_a_tiny_layer(runtime: Runtime, agent: str) -> None:
    made = await runtime.exec(
        agent,
        "mkdir -p /workspace/env && for i in 1 2 3 4; do head -c 50000000 /dev/urandom > /workspace/env/blob$i; "
        "done; printf 0 > /workspace/env/version",
    )
    assert made.exit_code == 0
    first = (await runtime.snapshot(agent, "env")).snapshot
    assert first.layer_uncompressed > 200_000_000

    await runtime.exec(agent, "printf 1 > /workspace/env/version")
    second = await runtime.snapshot(agent, "one byte")
    assert second.created
    assert second.snapshot.layer_size < 64 * 1024
    assert second.snapshot.paths_changed <= 3
    assert second.snapshot.parent_id == first.id and second.snapshot.layers == 2
    assert layer_names(runtime, second.snapshot) == ["workspace", "workspace/env", "workspace/env/version"]


async def test_a_deletion_becomes_a_whiteout_in_the_next_layer(runtime: Runtime, agent: str) -> None:
    await runtime.exec(agent, "mkdir -p /workspace/env && head -c 3000000 /dev/urandom > /workspace/env/blob")
    await runtime.snapshot(agent, "made")
    await runtime.exec(agent, "rm /workspace/env/blob /etc/issue")
    deleted = (await runtime.snapshot(agent, "deleted")).snapshot
    assert deleted.layer_size < 64 * 1024
    names = layer_names(runtime, deleted)
    assert "workspace/env/.wh.blob" in names, "a file captured earlier"
    assert "etc/.wh.issue" in names, "a file of the base image"
    assert not [n for n in names if n.endswith("/blob")]
    drop_machine_and_image(runtime, agent, deleted.id)
    gone = await runtime.exec(agent, "test -e /workspace/env/blob || test -e /etc/issue || echo gone")
    assert gone.stdout == "gone\n"


async def test_a_chain_of_twenty_snapshots_restores_to_the_latest_and_to_an_earlier_one(
    runtime: Runtime, agent: str
) -> None:
    snapshots: list[Snapshot] = []
    trees: dict[int, list[str]] = {}
    for step in range(20):
        await runtime.exec(agent, f"echo {step} > /workspace/counter; echo {step} > /workspace/file{step}")
        snapshots.append((await runtime.snapshot(agent, f"step {step}")).snapshot)
        if step in (4, 19):
            trees[step] = await listing(runtime, agent, "/workspace")
    assert len({s.id for s in snapshots}) == 20
    assert [s.layers for s in snapshots] == list(range(1, 21))
    assert [s.parent_id for s in snapshots[1:]] == [s.id for s in snapshots[:-1]]

    saved = (await runtime.restore(agent, snapshots[4].id)).saved_before_restore
    assert saved is None, "nothing had changed since the head"
    state = await runtime.exec(agent, "cat /workspace/counter; ls /workspace")
    assert state.stdout == "4\ncounter\n" + "".join(f"file{i}\n" for i in range(5))
    assert differences(trees[4], await listing(runtime, agent, "/workspace")) == ([], [])
    assert runtime.get_agent(agent).head_snapshot == snapshots[4].id

    await runtime.restore(agent, snapshots[-1].id)
    state = await runtime.exec(agent, "cat /workspace/counter; ls /workspace | grep -c '^file'")
    assert state.stdout == "19\n20\n"
    assert differences(trees[19], await listing(runtime, agent, "/workspace")) == ([], [])


# lifecycle


async def test_stop_snapshots_only_when_something_changed(runtime: Runtime, agent: str) -> None:
    await runtime.exec(agent, "echo 1 > /workspace/x")
    stopped = await runtime.stop_agent(agent)
    assert stopped.state is AgentState.STOPPED and stopped.head_snapshot
    head = stopped.head_snapshot

    await runtime.wake(agent)
    again = await runtime.stop_agent(agent)
    assert again.head_snapshot == head, "nothing changed, no new snapshot"
    assert len(runtime.list_snapshots(agent)) == 1

    await runtime.exec(agent, "echo 2 > /workspace/x")
    changed = await runtime.stop_agent(agent)
    assert changed.head_snapshot != head
    assert runtime.get_snapshot(changed.head_snapshot or "").parent_id == head

    await runtime.exec(agent, "echo 3 > /workspace/x")
    unsnapshotted = await runtime.stop_agent(agent, snapshot=False)
    assert unsnapshotted.head_snapshot == changed.head_snapshot
    assert (await runtime.exec(agent, "cat /workspace/x")).stdout == "3\n", "a plain stop keeps the machine"


async def test_hibernate_removes_the_machine_and_the_next_exec_brings_the_files_back(
    runtime: Runtime, agent: str
) -> None:
    await runtime.exec(agent, "echo hibernated > /workspace/x && rm /etc/motd")
    hibernated = await runtime.stop_agent(agent, hibernate=True)
    assert hibernated.state is AgentState.HIBERNATED and hibernated.machine_id is None
    assert hibernated.head_snapshot
    assert docker_cli("ps", "-aq", "--filter", f"label=spinup.agent={hibernated.id}").stdout.strip() == ""

    back = await runtime.exec(agent, "cat /workspace/x; test -e /etc/motd || echo no-motd")
    assert back.stdout == "hibernated\nno-motd\n"
    assert _events(runtime, agent)[-1] == "machine-rehydrated"
    assert runtime.get_agent(agent).state is AgentState.RUNNING


async def test_restore_saves_unsnapshotted_work_first_so_it_can_be_undone(runtime: Runtime, agent: str) -> None:
    await runtime.exec(agent, "echo base > /workspace/w")
    base = (await runtime.snapshot(agent)).snapshot
    await runtime.exec(agent, "echo precious > /workspace/w; echo new > /workspace/n")

    saved = (await runtime.restore(agent, base.id)).saved_before_restore

    assert saved is not None
    assert runtime.get_snapshot(saved).parent_id == base.id
    assert (await runtime.exec(agent, "cat /workspace/w; test -e /workspace/n || echo no-n")).stdout == "base\nno-n\n"
    saved_again = (await runtime.restore(agent, saved)).saved_before_restore
    assert saved_again is None, "nothing changed since the restore"
    assert (await runtime.exec(agent, "cat /workspace/w /workspace/n")).stdout == "precious\nnew\n"


async def test_a_restore_freezes_the_old_machine_from_its_capture_and_a_failed_one_lets_it_run_on(
    runtime: Runtime, agent: str
) -> None:
    await runtime.exec(agent, "echo one > /workspace/w")
    target = (await runtime.snapshot(agent)).snapshot
    await runtime.exec(agent, "echo two > /workspace/w")
    machine = runtime.get_agent(agent).machine_id
    assert machine
    # The target can only come from the store, and its layer is damaged: the restore fails after the capture.
    manifest = store_of(runtime).get_json(target.manifest_digest)
    blob = store_of(runtime).blob_path(manifest["layers"][-1]["digest"])
    blob.chmod(0o644)
    good = blob.read_bytes()
    blob.write_bytes(good[:-1] + bytes([good[-1] ^ 0xFF]))
    docker_cli("rmi", "-f", snapshot_tag(target.id))

    with pytest.raises(SpinupError, match="corrupt"):
        await runtime.restore(agent, target.id)
    assert runtime.get_agent(agent).machine_id == machine
    assert not (await runtime._docker.inspect(machine)).paused, "the machine goes on after a failed restore"
    assert (await runtime.exec(agent, "cat /workspace/w")).stdout == "two\n"

    blob.write_bytes(good)
    pauses: list[str] = []
    unpauses: list[str] = []
    pause, unpause = runtime._docker.pause, runtime._docker.unpause

    async def record_pause(container: str) -> None:
        pauses.append(container)
        await pause(container)

    async def record_unpause(container: str) -> None:
        unpauses.append(container)
        await unpause(container)

    runtime._docker.pause = record_pause  # type: ignore[method-assign]
    runtime._docker.unpause = record_unpause  # type: ignore[method-assign]
    try:
        await runtime.exec(agent, "echo three > /workspace/w")
        await runtime.restore(agent, target.id)
    finally:
        runtime._docker.pause, runtime._docker.unpause = pause, unpause  # type: ignore[method-assign]
    assert pauses == [machine] and unpauses == [], "paused once for the capture, never running again"
    assert (await runtime.exec(agent, "cat /workspace/w")).stdout == "one\n"


async def test_a_fork_is_independent_of_its_source(runtime: Runtime, agent: str) -> None:
    await runtime.exec(agent, "echo shared > /workspace/s")
    snapshot = (await runtime.snapshot(agent)).snapshot
    fork = unique_name("fork")
    forked = await runtime.fork(snapshot.id, fork)
    assert forked.head_snapshot == snapshot.id and forked.id != runtime.get_agent(agent).id

    await runtime.exec(fork, "echo forked > /workspace/s; echo only-in-fork > /workspace/f")
    await runtime.exec(agent, "echo only-in-source > /workspace/o")

    assert (await runtime.exec(agent, "cat /workspace/s; test -e /workspace/f || echo no-f")).stdout == "shared\nno-f\n"
    assert (await runtime.exec(fork, "cat /workspace/s; test -e /workspace/o || echo no-o")).stdout == "forked\nno-o\n"
    forked_snapshot = (await runtime.snapshot(fork)).snapshot
    assert forked_snapshot.parent_id == snapshot.id
    assert runtime.get_agent(agent).head_snapshot == snapshot.id


async def test_an_agent_restores_only_its_own_snapshots_and_the_one_it_was_forked_from(
    runtime: Runtime, agent: str
) -> None:
    await runtime.exec(agent, "echo source-only > /workspace/s")
    source = (await runtime.snapshot(agent)).snapshot
    other = unique_name("other")
    await runtime.create_agent(other)  # same base image: the restore used to take it
    with pytest.raises(ForeignSnapshot, match=f"belongs to agent '{agent}'.*snapshot_fork"):
        await runtime.restore(other, source.id)
    assert runtime.get_agent(other).head_snapshot is None
    assert "no-s" in (await runtime.exec(other, "test -e /workspace/s || echo no-s")).stdout

    fork = unique_name("fork")
    await runtime.fork(source.id, fork)
    await runtime.exec(fork, "echo forked > /workspace/s")
    await runtime.snapshot(fork)
    await runtime.restore(fork, source.id)  # its origin: allowed
    assert (await runtime.exec(fork, "cat /workspace/s")).stdout == "source-only\n"


async def test_deleting_a_parent_or_a_head_is_refused_and_a_leaf_that_is_not_a_head_is_deleted(
    runtime: Runtime, agent: str
) -> None:
    await runtime.exec(agent, "echo 1 > /workspace/v")
    parent = (await runtime.snapshot(agent, "parent")).snapshot
    await runtime.exec(agent, "echo 2 > /workspace/v")
    head = (await runtime.snapshot(agent, "head")).snapshot

    with pytest.raises(Conflict) as refused_parent:
        await runtime.delete_snapshot(parent.id)
    assert head.id in str(refused_parent.value)
    with pytest.raises(Conflict) as refused_head:
        await runtime.delete_snapshot(head.id)
    assert agent in str(refused_head.value)
    assert runtime.get_snapshot(parent.id) and runtime.get_snapshot(head.id)

    await runtime.restore(agent, parent.id)  # the old head becomes a leaf that is no head
    await runtime._snapshots.ensure_image(head)
    deleted = await runtime.delete_snapshot(head.id)

    assert deleted.id == head.id
    with pytest.raises(NotFound):
        runtime.get_snapshot(head.id)
    listed = [(d.annotations or {}).get(REF_NAME) for d in store_of(runtime).manifests()]
    assert head.id not in listed and parent.id in listed
    assert docker_cli("image", "inspect", snapshot_tag(head.id), check=False).returncode != 0
    with pytest.raises(Conflict):
        await runtime.delete_snapshot(parent.id)  # now the head
    assert (await runtime.verify_store()).ok
    assert (await runtime.exec(agent, "cat /workspace/v")).stdout == "1\n"


# damage


async def test_a_partial_temp_blob_and_an_unreferenced_blob_do_not_affect_restoring_the_head(
    runtime: Runtime, agent: str
) -> None:
    await runtime.exec(agent, "echo v1 > /workspace/state")
    head = (await runtime.snapshot(agent, "good")).snapshot
    store = store_of(runtime)
    partial = store.root / "tmp" / "blob-0123456789abcdef"
    partial.write_bytes(zstandard.ZstdCompressor().compress(os.urandom(100_000))[:30_000])
    writer = store.writer()
    writer.write(os.urandom(50_000))
    stray = writer.commit(LAYER_MEDIA_TYPE)
    drop_machine_and_image(runtime, agent, head.id)

    restored = await runtime.exec(agent, "cat /workspace/state")

    assert restored.stdout == "v1\n"
    assert partial.exists() and store.has_blob(stray.digest), "restore leaves the debris to gc"
    report = await runtime.verify_store()
    assert report.ok, report.problems
    assert any(stray.digest in g for g in report.garbage) and any(partial.name in g for g in report.garbage)


async def test_a_flipped_byte_in_a_layer_blob_fails_rehydration_clearly_and_tags_no_image(
    runtime: Runtime, agent: str
) -> None:
    await runtime.exec(agent, "head -c 100000 /dev/urandom > /workspace/data")
    snapshot = (await runtime.snapshot(agent)).snapshot
    manifest = store_of(runtime).get_json(snapshot.manifest_digest)
    blob = store_of(runtime).blob_path(manifest["layers"][-1]["digest"])
    blob.chmod(0o644)
    good = blob.read_bytes()
    flipped = bytearray(good)
    flipped[len(flipped) // 2] ^= 0xFF
    blob.write_bytes(bytes(flipped))
    drop_machine_and_image(runtime, agent, snapshot.id)

    with pytest.raises(SpinupError, match="corrupt"):
        await runtime.exec(agent, "true")

    assert docker_cli("image", "inspect", snapshot_tag(snapshot.id), check=False).returncode != 0
    half = docker_cli("images", "-aq", "--filter", f"label=spinup.snapshot={snapshot.id}").stdout.strip()
    assert half == "", "no image, tagged or not, was made from the damaged snapshot"
    blob.write_bytes(good)  # repaired, the same snapshot restores
    assert (await runtime.exec(agent, "wc -c < /workspace/data")).stdout == "100000\n"


# export and concurrency


async def test_an_exported_snapshot_loads_into_docker_as_a_standalone_image(
    runtime: Runtime, agent: str, tmp_path: Path
) -> None:
    await runtime.exec(agent, "echo exported > /workspace/e.txt")
    snapshot = (await runtime.snapshot(agent, "to export")).snapshot
    archive = tmp_path / "snap.tar"
    size = await runtime.export_snapshot(snapshot.id, archive)
    assert size == archive.stat().st_size > 0
    with tarfile.open(archive) as tar:
        assert "manifest.json" in tar.getnames()
    docker_cli("rmi", "-f", snapshot_tag(snapshot.id))
    docker_cli("load", "-i", str(archive))
    out = docker_cli(
        "run", "--rm", "--network", "none", "--entrypoint", "cat", snapshot_tag(snapshot.id), "/workspace/e.txt"
    )
    assert out.stdout == "exported\n"


async def test_a_command_arriving_during_a_snapshot_waits_for_it(runtime: Runtime, agent: str) -> None:
    await runtime.exec(agent, "head -c 300000000 /dev/urandom > /workspace/slow.bin")
    snapshot = asyncio.create_task(runtime.snapshot(agent))
    machine = runtime.get_agent(agent).machine_id
    assert machine
    async with asyncio.timeout(60):
        while (await runtime._docker.inspect(machine)).paused is False:
            assert not snapshot.done(), "the snapshot finished before the machine was seen paused"
            await asyncio.sleep(0.005)
    result = await runtime.exec(agent, "echo during")
    assert result.stdout == "during\n"
    assert snapshot.done(), "the command ran only once the snapshot had unpaused the machine"
    assert (await snapshot).created


async def test_the_machine_runs_again_once_its_files_are_read_before_the_layer_is_stored(
    runtime: Runtime, agent: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await runtime.exec(agent, "head -c 20000000 /dev/urandom > /workspace/data.bin")
    machine = runtime.get_agent(agent).machine_id
    assert machine
    seen_at_commit: list[str] = []
    commit = LayerSink.commit

    def observed_commit(self: LayerSink) -> LayerResult:
        # The capture thread: ask Docker whether the machine is still paused before the blob is made durable.
        seen_at_commit.append(docker_cli("inspect", "-f", "{{.State.Paused}}", machine).stdout.strip())
        return commit(self)

    monkeypatch.setattr(LayerSink, "commit", observed_commit)
    result = await runtime.snapshot(agent)
    assert result.created and seen_at_commit == ["false"]
    assert not (await runtime._docker.inspect(machine)).paused
    assert "workspace/data.bin" in layer_names(runtime, result.snapshot)
