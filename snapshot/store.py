"""The content-addressed snapshot store: an OCI image layout with atomic, verified blobs.

See ``FORMAT.md`` for the layout and the write order that keeps it crash safe.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import secrets
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .errors import BlobCorrupt, BlobMissing, StoreError, StoreFull
from .oci import OCI_INDEX_MEDIA_TYPE, REF_NAME

OCI_LAYOUT = {"imageLayoutVersion": "1.0.0"}
_READ_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor."""

    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Descriptor:
        return cls(raw["mediaType"], raw["digest"], int(raw["size"]), raw.get("annotations"))


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in directory ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def digest_hex(digest: str) -> str:
    """The hex part of a sha256 digest; :class:`StoreError` if it is malformed."""
    algorithm, _, hexpart = digest.partition(":")
    if algorithm != "sha256" or len(hexpart) != 64 or any(c not in "0123456789abcdef" for c in hexpart):
        raise StoreError(f"Malformed digest {digest!r}: expected sha256:<64 hex digits>.")
    return hexpart


# Writeback of a big blob starts while it is still being written, so the final fsync waits for
# the tail only (on one thread for the whole store: it only asks the kernel to start writing).
_WRITEBACK_EVERY = 8 * 1024 * 1024
_WRITEBACK = ThreadPoolExecutor(max_workers=1, thread_name_prefix="blob-writeback")


def _start_writeback(fd: int, offset: int, length: int) -> None:
    # For dirty pages, DONTNEED starts their writeback and leaves them cached (only clean pages go).
    os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)


def out_of_space(exc: OSError, root: Path) -> StoreFull | None:
    """:class:`StoreFull` when ``exc`` says the filesystem of ``root`` is out of space or quota, else None."""
    if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
        return None
    try:
        stats = os.statvfs(root)
        free: int | None = stats.f_bavail * stats.f_frsize
    except OSError:
        free = None
    return StoreFull(str(root), free)


class BlobWriter:
    """Streams one blob into the store: temp file, hash while writing, fsync, verify, rename."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._hash = hashlib.sha256()
        self.size = 0
        self._tmp = store.root / "tmp" / f"blob-{secrets.token_hex(8)}"
        self._fh: IO[bytes] | None = open(self._tmp, "wb")  # noqa: SIM115 - closed in commit/abort
        self._written_back = 0
        self._writeback: Future[None] | None = None

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Append bytes to the blob (:class:`StoreFull`, the partial blob discarded, when the disk is full)."""
        assert self._fh is not None, "blob already committed"
        self._hash.update(data)
        self.size += len(data)
        try:
            written = self._fh.write(data)
        except OSError as exc:
            raise self._fail(exc) from exc
        if self.size - self._written_back >= _WRITEBACK_EVERY and (self._writeback is None or self._writeback.done()):
            self._writeback = _WRITEBACK.submit(
                _start_writeback, self._fh.fileno(), self._written_back, self.size - self._written_back
            )
            self._written_back = self.size
        return written

    def _wait_writeback(self) -> None:
        if self._writeback is not None:
            with contextlib.suppress(OSError):  # only a head start: the fsync is what counts
                self._writeback.result()
            self._writeback = None

    def commit(self, media_type: str, annotations: dict[str, str] | None = None) -> Descriptor:
        """Make the blob durable under its digest and return its descriptor."""
        assert self._fh is not None, "blob already committed"
        try:
            self._fh.flush()
            self._wait_writeback()  # never close the file under a pending call on its descriptor
            os.fsync(self._fh.fileno())
            self._fh.close()
        except OSError as exc:
            raise self._fail(exc) from exc
        self._fh = None
        digest = "sha256:" + self._hash.hexdigest()
        if os.path.getsize(self._tmp) != self.size:
            self.abort()
            raise StoreError(f"Short write for blob {digest}: disk full? Nothing was stored.")
        final = self._store.blob_path(digest)
        if final.exists():
            self._tmp.unlink()  # identical content is stored once
        else:
            os.chmod(self._tmp, 0o444)
            os.replace(self._tmp, final)
            fsync_dir(final.parent)
        return Descriptor(media_type, digest, self.size, annotations)

    def abort(self) -> None:
        """Discard the partial blob."""
        self._wait_writeback()
        if self._fh is not None:
            fh, self._fh = self._fh, None
            with contextlib.suppress(OSError):  # a full disk fails the flush of what was buffered: discarded anyway
                fh.close()
        with contextlib.suppress(FileNotFoundError):
            self._tmp.unlink()

    def _fail(self, exc: OSError) -> BaseException:
        """Discard the partial blob after a failed write; the error to raise (:class:`StoreFull` for no space)."""
        self.abort()
        return out_of_space(exc, self._store.root) or exc


class VerifiedReader:
    """Reads a blob and raises :class:`BlobCorrupt` at the end if its bytes do not match the digest."""

    def __init__(self, path: Path, digest: str, size: int | None) -> None:
        self._fh = open(path, "rb")  # noqa: SIM115 - closed by close()
        self._hash = hashlib.sha256()
        self._digest = digest
        self._size = size
        self._read = 0
        self._checked = False

    def read(self, n: int = -1) -> bytes:
        data = self._fh.read(n)
        self._hash.update(data)
        self._read += len(data)
        if n < 0 or (n != 0 and not data):  # the end of the blob: verify it
            self._check()
        return data

    def _check(self) -> None:
        if self._checked:
            return
        self._checked = True
        actual = "sha256:" + self._hash.hexdigest()
        if actual != self._digest or (self._size is not None and self._read != self._size):
            raise BlobCorrupt(self._digest, f"its content hashes to {actual}")

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> VerifiedReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Store:
    """An OCI image layout on disk."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True, mode=0o700)  # snapshots hold the agents' files: not for others
        (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (root / "tmp").mkdir(exist_ok=True)
        layout = root / "oci-layout"
        if not layout.exists():
            self._write_file_atomic(layout, json.dumps(OCI_LAYOUT).encode())
        if not (root / "index.json").exists():
            self._write_index([])

    # blobs

    def blob_path(self, digest: str) -> Path:
        """Where the blob with ``digest`` lives (it may not exist)."""
        return self.root / "blobs" / "sha256" / digest_hex(digest)

    def blob_size(self, digest: str) -> int:
        """The size of a stored blob; :class:`BlobMissing` if absent."""
        try:
            return self.blob_path(digest).stat().st_size
        except FileNotFoundError:
            raise BlobMissing(digest) from None

    def has_blob(self, digest: str) -> bool:
        """Whether the blob is present (not verified)."""
        return self.blob_path(digest).exists()

    def writer(self) -> BlobWriter:
        """Start writing a new blob."""
        return BlobWriter(self)

    def put_json(self, value: dict[str, Any], media_type: str, annotations: dict[str, str] | None = None) -> Descriptor:
        """Store a JSON document as a blob (canonical: sorted keys, no spaces)."""
        writer = self.writer()
        try:
            writer.write(json.dumps(value, sort_keys=True, separators=(",", ":")).encode())
            return writer.commit(media_type, annotations)
        except BaseException:
            writer.abort()
            raise

    def open_blob(self, descriptor: Descriptor | str) -> VerifiedReader:
        """Open a blob for reading; the reader verifies the digest when it reaches the end."""
        digest = descriptor if isinstance(descriptor, str) else descriptor.digest
        size = None if isinstance(descriptor, str) else descriptor.size
        path = self.blob_path(digest)
        if not path.exists():
            raise BlobMissing(digest)
        return VerifiedReader(path, digest, size)

    def get_json(self, descriptor: Descriptor | str) -> dict[str, Any]:
        """Read and verify a JSON blob."""
        with self.open_blob(descriptor) as reader:
            data = reader.read()
        value: dict[str, Any] = json.loads(data)
        return value

    def verify_blob(self, digest: str) -> None:
        """Re-hash a blob; raise :class:`BlobCorrupt` or :class:`BlobMissing`."""
        with self.open_blob(digest) as reader:
            while reader.read(_READ_CHUNK):
                pass

    def blob_digests(self) -> Iterator[str]:
        """Digests of every blob file present."""
        for path in (self.root / "blobs" / "sha256").iterdir():
            yield "sha256:" + path.name

    def adopt_blob(self, source: Path, descriptor: Descriptor) -> None:
        """Give this store the blob ``source`` (a verified blob of another store): a hard link when both
        are on one filesystem (the same read-only inode: nothing is copied, its size is checked), else a
        copy whose digest is checked before it is renamed into place."""
        final = self.blob_path(descriptor.digest)
        if final.exists():
            return
        tmp = self.root / "tmp" / f"link-{secrets.token_hex(8)}"
        try:
            os.link(source, tmp)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                raise
            self._copy_blob(source, descriptor)
            return
        try:
            if tmp.stat().st_size != descriptor.size:
                raise BlobCorrupt(descriptor.digest, f"it holds {tmp.stat().st_size} bytes, not {descriptor.size}")
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        fsync_dir(final.parent)

    def _copy_blob(self, source: Path, descriptor: Descriptor) -> None:
        writer = self.writer()
        try:
            with VerifiedReader(source, descriptor.digest, descriptor.size) as reader:
                while chunk := reader.read(_READ_CHUNK):
                    writer.write(chunk)
            stored = writer.commit(descriptor.media_type)
        except BaseException:
            writer.abort()
            raise
        if stored.digest != descriptor.digest:  # the reader checked it; a store is never given other bytes
            raise BlobCorrupt(descriptor.digest, f"its copy hashes to {stored.digest}")

    def delete_blob(self, digest: str) -> None:
        """Remove a blob (for gc)."""
        with contextlib.suppress(FileNotFoundError):
            self.blob_path(digest).unlink()

    # index

    def manifests(self) -> list[Descriptor]:
        """Manifest descriptors listed in index.json."""
        raw = json.loads((self.root / "index.json").read_text())
        return [Descriptor.from_json(entry) for entry in raw.get("manifests", [])]

    def add_manifest(self, descriptor: Descriptor) -> None:
        """List a manifest in index.json (atomically)."""
        with self._index_lock():
            entries = [d for d in self.manifests() if d.digest != descriptor.digest]
            entries.append(descriptor)
            self._write_index(entries)

    def remove_manifest(self, ref_name: str) -> None:
        """Drop the manifest named ``ref_name`` from index.json (atomically)."""
        with self._index_lock():
            self._write_index([d for d in self.manifests() if (d.annotations or {}).get(REF_NAME) != ref_name])

    def remove_manifest_digest(self, digest: str) -> None:
        """Drop the manifest ``digest`` from index.json (atomically), whatever its name."""
        with self._index_lock():
            self._write_index([d for d in self.manifests() if d.digest != digest])

    @contextlib.contextmanager
    def _index_lock(self) -> Iterator[None]:
        """Serialize the read-modify-write of index.json between processes sharing the store."""
        fd = os.open(self.root / "index.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _write_index(self, entries: list[Descriptor]) -> None:
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX_MEDIA_TYPE, "manifests": [d.to_json() for d in entries]}
        self._write_file_atomic(self.root / "index.json", json.dumps(index, indent=1).encode())

    def _write_file_atomic(self, path: Path, data: bytes) -> None:
        tmp = self.root / "tmp" / f"{path.name}-{secrets.token_hex(6)}"
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise (out_of_space(exc, self.root) or exc) from exc
        os.replace(tmp, path)
        fsync_dir(path.parent)
