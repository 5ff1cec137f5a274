"""Files through the archive API: content, ranges, listings, errors, big files, images without tools."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import subprocess
import tarfile
from collections.abc import Iterator

import pytest

from conftest import RUN_ID, TEST_LABEL, docker_cli, unique_name
from spinup.runtime import Runtime
from spinup.runtime.errors import (
    DirectoryNotEmpty,
    InvalidInput,
    IsADirectory,
    NotADirectory,
    PathNotFound,
)
from spinup.runtime.files import Files


@pytest.fixture
async def files(runtime: Runtime, agent: str) -> Files:
    return await runtime.files(agent)


async def test_text_round_trip_and_ranges_in_lines_and_bytes(files: Files) -> None:
    await files.write("/workspace/t.txt", "one\ntwo\nthree\nfour\n")
    whole = await files.read("/workspace/t.txt")
    assert (whole.content, whole.encoding, whole.eof, whole.size) == ("one\ntwo\nthree\nfour\n", "text", True, 19)
    lines = await files.read("/workspace/t.txt", offset=1, limit=2)
    assert (lines.content, lines.returned, lines.eof) == ("two\nthree\n", 2, False)
    tail = await files.read("/workspace/t.txt", offset=3, limit=10)
    assert (tail.content, tail.eof) == ("four\n", True)
    chunk = await files.read("/workspace/t.txt", offset=4, limit=3, unit="bytes")
    assert (chunk.content, chunk.returned, chunk.unit) == ("two", 3, "bytes")


async def test_binary_content_round_trips_exactly_as_base64(files: Files) -> None:
    raw = bytes(range(256)) * 4
    await files.write("/workspace/b.bin", base64.b64encode(raw).decode(), encoding="base64")
    auto = await files.read("/workspace/b.bin")
    assert auto.encoding == "base64" and base64.b64decode(auto.content) == raw
    with pytest.raises(InvalidInput, match="base64"):
        await files.write("/workspace/x", "not base64!!", encoding="base64")


async def test_parents_modes_and_overwrites(files: Files) -> None:
    info = await files.write("/workspace/deep/er/run.sh", "#!/bin/sh\n", mode="0755")
    assert info.mode == "0755" and info.type == "file"
    again = await files.write("/workspace/deep/er/run.sh", "#!/bin/sh\necho 2\n")
    assert again.mode == "0755", "overwriting keeps the mode when none is given"
    with pytest.raises(PathNotFound):
        await files.write("/workspace/missing/parent/f", "x", create_parents=False)
    with pytest.raises(IsADirectory):
        await files.write("/workspace/deep", "x")
    with pytest.raises(NotADirectory):
        await files.write("/workspace/deep/er/run.sh/child", "x")
    with pytest.raises(InvalidInput, match="octal"):
        await files.write("/workspace/m", "x", mode="rwx")


async def test_listing_stat_and_symlinks(runtime: Runtime, agent: str, files: Files) -> None:
    await runtime.exec(agent, "mkdir -p /workspace/l/sub && echo 12345 > /workspace/l/a.py && "
                              "echo x > /workspace/l/sub/b.py && ln -s a.py /workspace/l/link")
    flat, cut = await files.list("/workspace/l")
    assert [(e.path, e.type) for e in flat] == [
        ("/workspace/l/a.py", "file"), ("/workspace/l/link", "symlink"), ("/workspace/l/sub", "directory")
    ]
    assert not cut and flat[0].size == 6 and flat[1].link_target == "a.py"
    deep, _ = await files.list("/workspace/l", recursive=True, pattern="*.py")
    assert [e.path for e in deep] == ["/workspace/l/a.py", "/workspace/l/sub/b.py"]
    by_path, _ = await files.list("/workspace/l", recursive=True, pattern="sub/*")
    assert [e.path for e in by_path] == ["/workspace/l/sub/b.py"]
    first, cut = await files.list("/workspace/l", recursive=True, max_entries=2)
    assert len(first) == 2 and cut
    assert (await files.stat("/workspace/l/link")).type == "symlink"
    assert (await files.read("/workspace/l/link")).content == "12345\n", "reads follow symlinks"
    with pytest.raises(PathNotFound):
        await files.stat("/workspace/nope")
    with pytest.raises(IsADirectory):
        await files.read("/workspace/l")
    with pytest.raises(NotADirectory):
        await files.list("/workspace/l/a.py")
    with pytest.raises(InvalidInput, match="absolute"):
        await files.stat("workspace/l")


async def test_mkdir_move_and_delete(files: Files) -> None:
    made = await files.mkdir("/workspace/m/n/o")
    assert made.type == "directory"
    assert (await files.mkdir("/workspace/m/n/o")).type == "directory", "an existing directory is fine"
    await files.write("/workspace/m/f.txt", "f")
    with pytest.raises(NotADirectory):
        await files.mkdir("/workspace/m/f.txt")
    moved = await files.move("/workspace/m/f.txt", "/workspace/m/n/g.txt")
    assert moved.path == "/workspace/m/n/g.txt" and not await files.exists("/workspace/m/f.txt")
    await files.write("/workspace/other.txt", "o")
    with pytest.raises(InvalidInput, match="already exists"):
        await files.move("/workspace/other.txt", "/workspace/m/n/g.txt")
    await files.move("/workspace/other.txt", "/workspace/m/n/g.txt", overwrite=True)
    assert (await files.read("/workspace/m/n/g.txt")).content == "o"
    with pytest.raises(PathNotFound):
        await files.move("/workspace/gone", "/workspace/x")
    with pytest.raises(DirectoryNotEmpty):
        await files.delete("/workspace/m")
    assert await files.exists("/workspace/m/n/g.txt"), "a refused delete removes nothing"
    await files.delete("/workspace/m/n/o")
    await files.delete("/workspace/m", recursive=True)
    assert not await files.exists("/workspace/m")
    with pytest.raises(InvalidInput):
        await files.delete("/")


@pytest.mark.slow
async def test_a_100_mb_file_round_trips_both_ways(runtime: Runtime, agent: str, files: Files) -> None:
    await runtime.exec(agent, "head -c 100000000 /dev/urandom > /workspace/big.bin")
    inside = (await runtime.exec(agent, "sha256sum /workspace/big.bin")).stdout.split()[0]
    read = await files.read("/workspace/big.bin", encoding="base64", unit="bytes")
    assert read.size == 100_000_000 and hashlib.sha256(base64.b64decode(read.content)).hexdigest() == inside
    raw = os.urandom(100_000_000)
    await files.write("/workspace/up.bin", base64.b64encode(raw).decode(), encoding="base64")
    written = (await runtime.exec(agent, "sha256sum /workspace/up.bin")).stdout.split()[0]
    assert written == hashlib.sha256(raw).hexdigest()


@pytest.fixture(scope="module")
def noshell_image() -> Iterator[str]:
    """An image holding one file and no tools at all."""
    tag = f"spinup-test/noshell:{RUN_ID}"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("etc/motd")
        info.size = 6
        tar.addfile(info, io.BytesIO(b"hello\n"))
    subprocess.run(
        ["docker", "import", "-c", f"LABEL {TEST_LABEL}={RUN_ID}", "-", tag],
        input=buffer.getvalue(), check=True, capture_output=True, env={**os.environ, "DOCKER_API_VERSION": "1.41"},
    )
    yield tag
    docker_cli("rmi", "-f", tag, check=False)


async def test_files_work_in_an_image_without_any_tools(runtime: Runtime, noshell_image: str) -> None:
    name = unique_name("bare")
    await runtime.agents.create(name, image=noshell_image)
    files = await runtime.files(name)
    assert (await files.read("/etc/motd")).content == "hello\n"
    await files.write("/data/notes/a.txt", "in a bare image")
    await files.mkdir("/data/empty")
    listing, _ = await files.list("/data", recursive=True)
    assert [e.path for e in listing] == ["/data/empty", "/data/notes", "/data/notes/a.txt"]
    await files.move("/data/notes/a.txt", "/data/b.txt")
    assert (await files.stat("/data/b.txt")).size == len("in a bare image")
    await files.delete("/data", recursive=True)
    assert not await files.exists("/data")
    no_shell = await runtime.exec(name, "echo hi")
    assert no_shell.exit_code in (126, 127) and "could not start" in no_shell.stderr
