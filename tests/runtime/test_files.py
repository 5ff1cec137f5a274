"""Files through the archive API: content, ranges, listings, errors, big files, an image without tools."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import tracemalloc

import pytest

from conftest import sh, unique_name
from spinup.runtime import FileContent, FileInfo, Runtime
from spinup.runtime.errors import (
    DirectoryNotEmpty,
    InvalidInput,
    IsADirectory,
    NotADirectory,
    PathNotFound,
)
from spinup.runtime.files import Files

LIMIT = 60  # seconds any one test may take against the daemon
BIG = 100_000_000


@pytest.fixture
async def files(runtime: Runtime, agent: str) -> Files:
    async with asyncio.timeout(LIMIT):
        return await runtime.files(agent)


async def test_text_written_is_read_back_whole(files: Files) -> None:
    async with asyncio.timeout(LIMIT):
        written = await files.write("/workspace/t.txt", "one\ntwo\nthree\nfour\n")
        whole = await files.read("/workspace/t.txt")
    assert isinstance(written, FileInfo) and isinstance(whole, FileContent)
    assert (written.path, written.type, written.size, written.mode) == ("/workspace/t.txt", "file", 19, "0644")
    assert (whole.content, whole.encoding, whole.size, whole.eof) == ("one\ntwo\nthree\nfour\n", "text", 19, True)
    assert (whole.offset, whole.returned, whole.unit) == (0, 4, "lines")


async def test_line_ranges_return_the_lines_asked_for_and_say_whether_the_end_was_reached(files: Files) -> None:
    async with asyncio.timeout(LIMIT):
        await files.write("/workspace/t.txt", "one\ntwo\nthree\nfour\n")
        middle = await files.read("/workspace/t.txt", offset=1, limit=2)
        last = await files.read("/workspace/t.txt", offset=3, limit=10)
        exact = await files.read("/workspace/t.txt", offset=2, limit=2)
        beyond = await files.read("/workspace/t.txt", offset=50)
    assert (middle.content, middle.returned, middle.eof, middle.size) == ("two\nthree\n", 2, False, 19)
    assert (last.content, last.returned, last.eof) == ("four\n", 1, True)
    assert (exact.content, exact.eof) == ("three\nfour\n", True)
    assert (beyond.content, beyond.returned, beyond.eof) == ("", 0, True)


async def test_byte_ranges_return_the_bytes_asked_for_and_say_whether_the_end_was_reached(files: Files) -> None:
    async with asyncio.timeout(LIMIT):
        await files.write("/workspace/t.txt", "one\ntwo\nthree\nfour\n")
        chunk = await files.read("/workspace/t.txt", offset=4, limit=3, unit="bytes")
        tail = await files.read("/workspace/t.txt", offset=14, unit="bytes")
        to_end = await files.read("/workspace/t.txt", offset=14, limit=5, unit="bytes")
    assert (chunk.content, chunk.returned, chunk.unit, chunk.eof) == ("two", 3, "bytes", False)
    assert (tail.content, tail.returned, tail.eof) == ("four\n", 5, True)
    assert to_end.eof


async def test_auto_encoding_gives_text_for_utf8_and_base64_for_binary(files: Files) -> None:
    raw = bytes(range(256)) * 4
    async with asyncio.timeout(LIMIT):
        await files.write("/workspace/u.txt", "héllo wörld ✓\n")
        await files.write("/workspace/b.bin", base64.b64encode(raw).decode(), encoding="base64")
        text = await files.read("/workspace/u.txt")
        binary = await files.read("/workspace/b.bin")
        forced = await files.read("/workspace/u.txt", encoding="base64")
    assert (text.encoding, text.content) == ("text", "héllo wörld ✓\n")
    assert binary.encoding == "base64" and base64.b64decode(binary.content) == raw
    assert forced.encoding == "base64" and base64.b64decode(forced.content) == "héllo wörld ✓\n".encode()


async def test_a_base64_write_of_binary_bytes_lands_exactly(runtime: Runtime, agent: str, files: Files) -> None:
    raw = os.urandom(70_000) + b"\0\xff\xfe"
    async with asyncio.timeout(LIMIT):
        await files.write("/workspace/r.bin", base64.b64encode(raw).decode(), encoding="base64")
        inside = await sh(runtime, agent, "sha256sum /workspace/r.bin")
        back = await files.read("/workspace/r.bin", encoding="base64", unit="bytes")
        with pytest.raises(InvalidInput, match="base64"):
            await files.write("/workspace/x", "not base64!!", encoding="base64")
    assert inside.split()[0] == hashlib.sha256(raw).hexdigest()
    assert base64.b64decode(back.content) == raw and back.size == len(raw)


async def test_write_creates_missing_parents_unless_told_not_to(runtime: Runtime, agent: str, files: Files) -> None:
    async with asyncio.timeout(LIMIT):
        await files.write("/workspace/deep/er/f.txt", "x")
        parent = await files.stat("/workspace/deep/er")
        with pytest.raises(PathNotFound):
            await files.write("/workspace/missing/parent/f", "x", create_parents=False)
        assert not await files.exists("/workspace/missing")
        await files.write("/workspace/deep/g.txt", "y", create_parents=False)
    assert parent.type == "directory"
    assert (await files.read("/workspace/deep/g.txt")).content == "y"


async def test_a_mode_is_applied_and_an_overwrite_keeps_the_old_one(runtime: Runtime, agent: str, files: Files) -> None:
    async with asyncio.timeout(LIMIT):
        info = await files.write("/workspace/run.sh", "#!/bin/sh\necho one\n", mode="0755")
        ran = await sh(runtime, agent, "/workspace/run.sh")
        again = await files.write("/workspace/run.sh", "#!/bin/sh\necho two\n")
        ran_again = await sh(runtime, agent, "/workspace/run.sh")
        private = await files.write("/workspace/run.sh", "x", mode=0o600)
        with pytest.raises(InvalidInput, match="octal"):
            await files.write("/workspace/m", "x", mode="rwx")
    assert (info.mode, ran) == ("0755", "one\n")
    assert (again.mode, ran_again) == ("0755", "two\n"), "overwriting keeps the mode when none is given"
    assert private.mode == "0600"


async def test_listing_is_flat_or_recursive_with_types_sizes_and_link_targets(
    runtime: Runtime, agent: str, files: Files
) -> None:
    async with asyncio.timeout(LIMIT):
        await sh(
            runtime,
            agent,
            "mkdir -p /workspace/l/sub/deeper && printf 12345 > /workspace/l/a.py && "
            "printf x > /workspace/l/sub/b.py && printf yy > /workspace/l/sub/deeper/c.txt && "
            "ln -s a.py /workspace/l/link",
        )
        flat, flat_cut = await files.list("/workspace/l")
        deep, deep_cut = await files.list("/workspace/l", recursive=True)
    assert not flat_cut and not deep_cut
    assert [(e.path, e.type) for e in flat] == [
        ("/workspace/l/a.py", "file"),
        ("/workspace/l/link", "symlink"),
        ("/workspace/l/sub", "directory"),
    ]
    by_path = {e.path: e for e in deep}
    assert sorted(by_path) == [
        "/workspace/l/a.py",
        "/workspace/l/link",
        "/workspace/l/sub",
        "/workspace/l/sub/b.py",
        "/workspace/l/sub/deeper",
        "/workspace/l/sub/deeper/c.txt",
    ]
    assert by_path["/workspace/l/a.py"].size == 5 and by_path["/workspace/l/sub/deeper/c.txt"].size == 2
    assert by_path["/workspace/l/link"].link_target == "a.py" and by_path["/workspace/l/a.py"].link_target is None
    assert all(len(e.mode) == 4 and e.mtime for e in deep)


async def test_patterns_match_names_or_relative_paths_and_max_entries_cuts(
    runtime: Runtime, agent: str, files: Files
) -> None:
    async with asyncio.timeout(LIMIT):
        await sh(
            runtime,
            agent,
            "mkdir -p /workspace/p/sub && touch /workspace/p/a.py /workspace/p/b.txt "
            "/workspace/p/sub/c.py /workspace/p/sub/d.txt",
        )
        by_name, _ = await files.list("/workspace/p", recursive=True, pattern="*.py")
        flat_by_name, _ = await files.list("/workspace/p", pattern="*.py")
        by_path, _ = await files.list("/workspace/p", recursive=True, pattern="sub/*.txt")
        first, cut = await files.list("/workspace/p", recursive=True, max_entries=2)
        everything, not_cut = await files.list("/workspace/p", recursive=True, max_entries=5)
        with pytest.raises(InvalidInput):
            await files.list("/workspace/p", max_entries=0)
    assert [e.path for e in by_name] == ["/workspace/p/a.py", "/workspace/p/sub/c.py"]
    assert [e.path for e in flat_by_name] == ["/workspace/p/a.py"]
    assert [e.path for e in by_path] == ["/workspace/p/sub/d.txt"]
    assert len(first) == 2 and cut
    assert len(everything) == 5 and not not_cut


async def test_a_hard_linked_file_is_listed_with_its_real_size(runtime: Runtime, agent: str, files: Files) -> None:
    # Regression: Docker sends the second name of a hard-linked file as a link entry of size 0.
    async with asyncio.timeout(LIMIT):
        await sh(
            runtime, agent, "mkdir /workspace/h && printf hello > /workspace/h/a && ln /workspace/h/a /workspace/h/b"
        )
        entries, _ = await files.list("/workspace/h")
    assert [(e.path, e.type, e.size) for e in entries] == [
        ("/workspace/h/a", "file", 5),
        ("/workspace/h/b", "file", 5),
    ]


async def test_stat_reports_files_directories_and_symlinks_as_themselves(
    runtime: Runtime, agent: str, files: Files
) -> None:
    async with asyncio.timeout(LIMIT):
        await sh(
            runtime,
            agent,
            "mkdir -p /workspace/s/d && printf abc > /workspace/s/f && chmod 640 /workspace/s/f "
            "&& ln -s f /workspace/s/link",
        )
        file = await files.stat("/workspace/s/f")
        directory = await files.stat("/workspace/s/d")
        link = await files.stat("/workspace/s/link")
        normalized = await files.stat("/workspace/./s/d/../f")
    assert (file.path, file.type, file.size, file.mode, file.link_target) == ("/workspace/s/f", "file", 3, "0640", None)
    assert file.mtime.endswith("+00:00")
    assert directory.type == "directory"
    assert (link.type, link.link_target) == ("symlink", "f")
    assert normalized.path == "/workspace/s/f"


async def test_wrong_kinds_of_path_raise_typed_errors(files: Files) -> None:
    async with asyncio.timeout(LIMIT):
        await files.write("/workspace/e/file.txt", "x")
        with pytest.raises(PathNotFound):
            await files.stat("/workspace/nope")
        with pytest.raises(PathNotFound):
            await files.read("/workspace/nope")
        with pytest.raises(PathNotFound):
            await files.list("/workspace/nope")
        with pytest.raises(IsADirectory):
            await files.read("/workspace/e")
        with pytest.raises(NotADirectory):
            await files.list("/workspace/e/file.txt")
        with pytest.raises(IsADirectory):
            await files.write("/workspace/e", "x")
        with pytest.raises(IsADirectory):
            await files.write("/", "x")
        with pytest.raises(NotADirectory):
            await files.write("/workspace/e/file.txt/child", "x")
        with pytest.raises(InvalidInput, match="absolute"):
            await files.stat("workspace/e")
        with pytest.raises(InvalidInput):
            await files.read("/workspace/e/file.txt", offset=-1)


async def test_mkdir_makes_parents_and_accepts_an_existing_directory(files: Files) -> None:
    async with asyncio.timeout(LIMIT):
        made = await files.mkdir("/workspace/m/n/o")
        parent = await files.stat("/workspace/m/n")
        again = await files.mkdir("/workspace/m/n/o")
        private = await files.mkdir("/workspace/m/private", mode="0700")
        await files.write("/workspace/m/f.txt", "f")
        with pytest.raises(NotADirectory):
            await files.mkdir("/workspace/m/f.txt")
    assert (made.path, made.type) == ("/workspace/m/n/o", "directory")
    assert parent.type == "directory" and again.type == "directory"
    assert private.mode == "0700"


async def test_mkdir_mode_zero_is_kept_and_a_link_to_a_directory_counts_as_one(
    runtime: Runtime, agent: str, files: Files
) -> None:
    # Regressions: mode 0 became 0755; mkdir on a symlink to a directory said "not a directory".
    async with asyncio.timeout(LIMIT):
        closed = await files.mkdir("/workspace/closed", mode="0000")
        await sh(
            runtime, agent, "mkdir /workspace/real && ln -s real /workspace/alias && ln -s gone /workspace/dangling"
        )
        alias = await files.mkdir("/workspace/alias")
        with pytest.raises(NotADirectory):
            await files.mkdir("/workspace/dangling")
    assert closed.mode == "0000"
    assert alias.type == "directory"


async def test_move_renames_files_and_directories(files: Files) -> None:
    async with asyncio.timeout(LIMIT):
        await files.write("/workspace/mv/f.txt", "f")
        await files.write("/workspace/mv/dir/inner.txt", "inner")
        moved = await files.move("/workspace/mv/f.txt", "/workspace/mv/new/g.txt")
        moved_dir = await files.move("/workspace/mv/dir", "/workspace/mv/renamed")
        gone = not await files.exists("/workspace/mv/f.txt") and not await files.exists("/workspace/mv/dir")
        inner = await files.read("/workspace/mv/renamed/inner.txt")
    assert (moved.path, moved.type, moved.size) == ("/workspace/mv/new/g.txt", "file", 1)
    assert moved_dir.type == "directory" and inner.content == "inner"
    assert gone


async def test_move_onto_an_existing_path_needs_overwrite(files: Files) -> None:
    async with asyncio.timeout(LIMIT):
        await files.write("/workspace/o/a.txt", "a")
        await files.write("/workspace/o/b.txt", "b")
        with pytest.raises(InvalidInput, match="already exists"):
            await files.move("/workspace/o/a.txt", "/workspace/o/b.txt")
        untouched = (await files.read("/workspace/o/b.txt")).content, await files.exists("/workspace/o/a.txt")
        await files.move("/workspace/o/a.txt", "/workspace/o/b.txt", overwrite=True)
        replaced = await files.read("/workspace/o/b.txt")
        with pytest.raises(PathNotFound):
            await files.move("/workspace/o/gone", "/workspace/o/x")
        with pytest.raises(InvalidInput):
            await files.move("/", "/workspace/o/root")
    assert untouched == ("b", True)
    assert replaced.content == "a" and not await files.exists("/workspace/o/a.txt")


async def test_move_with_overwrite_replaces_a_link_to_a_directory_instead_of_moving_into_it(
    runtime: Runtime, agent: str, files: Files
) -> None:
    # Regression: mv followed the link and dropped the file inside the directory it points to.
    async with asyncio.timeout(LIMIT):
        await sh(runtime, agent, "mkdir /workspace/target && ln -s target /workspace/link && echo m > /workspace/m")
        moved = await files.move("/workspace/m", "/workspace/link", overwrite=True)
        inside, _ = await files.list("/workspace/target")
    assert (moved.type, moved.size) == ("file", 2)
    assert inside == []


async def test_delete_removes_files_and_directories_and_refuses_what_it_should(files: Files) -> None:
    async with asyncio.timeout(LIMIT):
        await files.write("/workspace/d/keep/f.txt", "f")
        await files.write("/workspace/d/file.txt", "x")
        await files.mkdir("/workspace/d/empty")
        deleted = await files.delete("/workspace/d/file.txt")
        emptied = await files.delete("/workspace/d/empty")
        with pytest.raises(DirectoryNotEmpty):
            await files.delete("/workspace/d")
        kept = await files.exists("/workspace/d/keep/f.txt")
        tree = await files.delete("/workspace/d", recursive=True)
        with pytest.raises(InvalidInput):
            await files.delete("/")
        with pytest.raises(InvalidInput):
            await files.delete("/", recursive=True)
        with pytest.raises(PathNotFound):
            await files.delete("/workspace/d")
    assert (deleted.path, deleted.type, emptied.type, tree.type) == (
        "/workspace/d/file.txt",
        "file",
        "directory",
        "directory",
    )
    assert kept, "a refused delete removes nothing"


async def test_a_symlink_is_read_and_written_through(runtime: Runtime, agent: str, files: Files) -> None:
    async with asyncio.timeout(LIMIT):
        await sh(
            runtime,
            agent,
            "mkdir /workspace/y && echo original > /workspace/y/real && "
            "ln -s real /workspace/y/link && ln -s /workspace/y /workspace/ydir && "
            "ln -s missing /workspace/y/dangling",
        )
        read = await files.read("/workspace/y/link")
        via_dir = await files.read("/workspace/ydir/real")
        written = await files.write("/workspace/y/link", "changed\n")
        link = await files.stat("/workspace/y/link")
        real = await files.read("/workspace/y/real")
        created = await files.write("/workspace/y/dangling", "now here\n")
        with pytest.raises(IsADirectory):
            await files.write("/workspace/ydir", "x")
    assert read.content == "original\n" and via_dir.content == "original\n"
    assert (link.type, real.content) == ("symlink", "changed\n"), "the link stays, its target changes"
    assert written.path == "/workspace/y/real"
    assert created.path == "/workspace/y/missing"


async def test_a_partial_read_of_a_big_file_leaves_the_machine_usable(
    runtime: Runtime, agent: str, files: Files
) -> None:
    # Regression: Docker keeps the machine locked until the whole archive is read or the
    # connection closed; a range read left it open and every later call on the machine hung.
    async with asyncio.timeout(LIMIT):
        await sh(runtime, agent, "head -c 20000000 /dev/zero > /workspace/z.bin")
        head = await files.read("/workspace/z.bin", limit=10, unit="bytes")
        info = await files.stat("/workspace/z.bin")
        lines = await files.read("/workspace/z.bin", limit=0)
        after = await runtime.exec(agent, "echo alive")
    assert (head.returned, head.eof, info.size, lines.returned) == (10, False, 20_000_000, 0)
    assert after.stdout == "alive\n"


async def test_a_cut_listing_of_a_big_tree_leaves_the_machine_usable(
    runtime: Runtime, agent: str, files: Files
) -> None:
    async with asyncio.timeout(LIMIT):
        await sh(
            runtime,
            agent,
            "mkdir /workspace/big && for i in 1 2 3; do head -c 10000000 /dev/zero > /workspace/big/$i.bin; done",
        )
        first, cut = await files.list("/workspace/big", max_entries=1)
        info = await files.stat("/workspace/big/3.bin")
        after = await runtime.exec(agent, "echo alive")
    assert len(first) == 1 and cut
    assert info.size == 10_000_000 and after.stdout == "alive\n"


@pytest.mark.slow
async def test_a_100_mb_file_made_in_the_machine_reads_back_exactly(runtime: Runtime, agent: str, files: Files) -> None:
    async with asyncio.timeout(300):
        await sh(runtime, agent, f"head -c {BIG} /dev/urandom > /workspace/big.bin")
        inside = (await sh(runtime, agent, "sha256sum /workspace/big.bin")).split()[0]
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            read = await files.read("/workspace/big.bin", encoding="base64", unit="bytes")
            peak = tracemalloc.get_traced_memory()[1] - before
        finally:
            tracemalloc.stop()
    assert (read.size, read.returned, read.eof, read.encoding) == (BIG, BIG, True, "base64")
    assert hashlib.sha256(base64.b64decode(read.content)).hexdigest() == inside
    # The bytes (1x), their base64 (1.33x) and the returned str (1.33x): about 3.7x at the peak.
    assert peak < 4 * BIG, f"peak {peak / BIG:.2f}x the file size"


@pytest.mark.slow
async def test_a_100_mb_base64_write_lands_exactly(runtime: Runtime, agent: str, files: Files) -> None:
    raw = os.urandom(BIG)
    content = base64.b64encode(raw).decode()
    async with asyncio.timeout(300):
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            info = await files.write("/workspace/up.bin", content, encoding="base64")
            peak = tracemalloc.get_traced_memory()[1] - before
        finally:
            tracemalloc.stop()
        inside = (await sh(runtime, agent, "sha256sum /workspace/up.bin")).split()[0]
    assert info.size == BIG
    assert inside == hashlib.sha256(raw).hexdigest()
    assert peak < 3 * BIG, f"peak {peak / BIG:.2f}x the file size"


async def test_files_work_in_an_image_without_any_tools(runtime: Runtime, noshell_image: str) -> None:
    name = unique_name("bare")
    async with asyncio.timeout(LIMIT):
        await runtime.create_agent(name, image=noshell_image)
        files = await runtime.files(name)
        motd = await files.read("/etc/motd")
        await files.write("/workspace/data/notes/a.txt", "in a bare image")
        made = await files.mkdir("/workspace/data/empty")
        listing, _ = await files.list("/workspace/data", recursive=True)
        stat = await files.stat("/workspace/data/notes/a.txt")
        moved = await files.move("/workspace/data/notes/a.txt", "/workspace/data/b.txt")
        read = await files.read("/workspace/data/b.txt")
        deleted = await files.delete("/workspace/data/b.txt")
        await files.delete("/workspace/data", recursive=True)
        gone = not await files.exists("/workspace/data")
        no_shell = await runtime.exec(name, "echo hi")
        no_sh = await runtime.exec(name, ["/bin/sh", "-c", "true"])
        still = await files.read("/etc/motd")
    assert motd.content == "hello\n" and still.content == "hello\n"
    assert made.type == "directory"
    assert [(e.path, e.type) for e in listing] == [
        ("/workspace/data/empty", "directory"),
        ("/workspace/data/notes", "directory"),
        ("/workspace/data/notes/a.txt", "file"),
    ]
    assert (stat.type, stat.size) == ("file", len("in a bare image"))
    assert moved.path == "/workspace/data/b.txt" and read.content == "in a bare image"
    assert deleted.type == "file" and gone
    for result in (no_shell, no_sh):
        assert result.exit_code in (126, 127) and "could not start" in result.stderr
