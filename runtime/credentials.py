"""The credential store: named secrets encrypted at rest (AES-256-GCM) in one JSON file.

The key is 32 random bytes, from ``SPINUP_MASTER_KEY`` (base64) or a 0600 key file made on
first use. Each value is sealed with a fresh nonce and its name as associated data, so a
ciphertext cannot be moved to another name. The file records a key id (an HMAC of a constant
under the key): a wrong key is told at once, before anything is written. Writes are atomic
(temp file, fsync, rename, fsync of the directory) under an exclusive lock, so the CLI and a
server can write at once.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from spinup.snapshot.store import fsync_dir

from .errors import CredentialKeyError, InvalidInput, SecretNotFound, SpinupError

SECRET_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
MIN_SECRET_LENGTH = 8  # shorter values cannot be redacted reliably (and redact every agent's output)
FORMAT_VERSION = 1
_KEY_BYTES = 32
_MAKE_KEY = "python3 -c 'import base64,os;print(base64.urlsafe_b64encode(os.urandom(32)).decode())'"


def validate_secret_name(name: str) -> str:
    """Return ``name`` if it is a valid credential name, else raise :class:`InvalidInput`."""
    if not isinstance(name, str) or not SECRET_NAME_RE.fullmatch(name):
        raise InvalidInput(
            f"Invalid credential name {name!r}: use letters, digits and '_', starting with a letter or '_' "
            f"(for example GITHUB_TOKEN)."
        )
    return name


def decode_key(text: str, source: str = "SPINUP_MASTER_KEY") -> bytes:
    """The 32-byte key from its base64 text (standard or URL-safe, padded or not)."""
    cleaned = text.strip()
    padded = cleaned + "=" * (-len(cleaned) % 4)
    try:
        key = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != _KEY_BYTES:
        raise CredentialKeyError(f"{source} must be base64 of 32 bytes (make one with: {_MAKE_KEY}).")
    return key


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _key_id(key: bytes) -> str:
    return hmac.new(key, b"spinup-key-id", hashlib.sha256).hexdigest()[:16]


def _fingerprint(key: bytes, value: str) -> str:
    return hmac.new(key, b"spinup-fingerprint\0" + value.encode(), hashlib.sha256).hexdigest()[:8]


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` (mode 0600) so that a crash leaves the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, path)
    fsync_dir(path.parent)


@dataclass(frozen=True)
class SecretInfo:
    """What may be shown of a credential: never its value."""

    name: str
    fingerprint: str  # HMAC of the value under the store's key: changes with the value, reveals nothing
    created_at: str
    updated_at: str


class CredentialStore:
    """Named secrets, encrypted at rest."""

    def __init__(self, path: Path, key_path: Path, env_key: str | None = None) -> None:
        self.path = path
        self.key_path = key_path
        self._env_key = env_key

    def __repr__(self) -> str:
        return f"CredentialStore({str(self.path)!r})"

    @property
    def key_source(self) -> str:
        """Where the key comes from: "env", "file", or "none" (not made yet)."""
        if self._env_key:
            return "env"
        return "file" if self.key_path.exists() else "none"

    # reading

    def stamp(self) -> tuple[int, int] | None:
        """Changes whenever the store file changes (None when there is none): for caches."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def _load(self) -> dict[str, Any] | None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            document = json.loads(raw)
            if not isinstance(document, dict) or not isinstance(document.get("secrets"), dict):
                raise ValueError("not a credential store")
        except ValueError as exc:
            raise SpinupError(
                f"The credential store {self.path} is damaged ({type(exc).__name__}); it was left as it is. "
                f"Restore it from a backup or move it away to start a new one."
            ) from exc
        return document

    def _key(self, document: dict[str, Any] | None, *, create: bool) -> bytes:
        """The key that opens ``document`` (made when the store holds nothing and ``create``); the caller holds
        the store lock, so an interrupted rotation may be finished here."""
        return self._key_unchecked(document, create=create, locked=True)

    def _opened(self) -> tuple[dict[str, Any] | None, bytes | None]:
        """The store and its key, for reading without the lock.

        When they disagree a rotation may be between its steps: read both again under the lock.
        """
        document = self._load()
        if document is None or not document["secrets"]:
            return document, None
        try:
            return document, self._key_unchecked(document, create=False, locked=False)
        except CredentialKeyError:
            pass
        with self._locked():
            document = self._load()
            if document is None or not document["secrets"]:
                return document, None
            return document, self._key_unchecked(document, create=False, locked=True)

    def _key_unchecked(self, document: dict[str, Any] | None, *, create: bool, locked: bool) -> bytes:
        holds_secrets = document is not None and bool(document["secrets"])
        if self._env_key:
            key = decode_key(self._env_key)
        else:
            if locked:
                self._finish_rotation(document)
            if self.key_path.exists():
                key = decode_key(self.key_path.read_text(), str(self.key_path))
            elif holds_secrets:
                raise CredentialKeyError(
                    f"The credential store {self.path} exists but its key file {self.key_path} is missing: restore "
                    f"the key file or set SPINUP_MASTER_KEY to the key it was written with."
                )
            elif create:
                key = AESGCM.generate_key(bit_length=256)
                _write_atomic(self.key_path, base64.urlsafe_b64encode(key) + b"\n")
            else:
                raise CredentialKeyError(f"There is no key yet ({self.key_path}).")
        # An empty store opens with any key: the next write records the key's id.
        if holds_secrets and document is not None and document.get("key_id") not in (None, _key_id(key)):
            raise CredentialKeyError(
                f"The master key does not open the credential store at {self.path} (key id mismatch): set "
                f"SPINUP_MASTER_KEY to the key it was written with, or restore {self.key_path}."
            )
        return key

    def _finish_rotation(self, document: dict[str, Any] | None) -> None:
        """After a crash during a rotation: the new key is in ``key.new`` and the store uses it."""
        pending = self.key_path.with_suffix(".key.new")
        if document is None or not pending.exists():
            return
        try:
            new_key = decode_key(pending.read_text(), str(pending))
        except CredentialKeyError:
            return
        if document.get("key_id") == _key_id(new_key):
            os.replace(pending, self.key_path)
            fsync_dir(self.key_path.parent)

    def _open(self, key: bytes, name: str, sealed: dict[str, Any]) -> str:
        try:
            nonce = base64.b64decode(sealed["nonce"])
            ciphertext = base64.b64decode(sealed["ciphertext"])
            return AESGCM(key).decrypt(nonce, ciphertext, name.encode()).decode()
        except (InvalidTag, KeyError, ValueError, binascii.Error) as exc:
            raise CredentialKeyError(
                f"The credential {name} in {self.path} does not decrypt with this key (tampered with, or another "
                f"key): set it again with: spinup secret set {name}"
            ) from exc

    def get(self, name: str) -> str:
        """The value of ``name``."""
        validate_secret_name(name)
        document, key = self._opened()
        if document is None or key is None or name not in document["secrets"]:
            raise SecretNotFound(name)
        return self._open(key, name, document["secrets"][name])

    def values(self, names: Iterable[str] | None = None) -> dict[str, str]:
        """Values of every credential (or of the named ones that exist). No store: {} (no key is made)."""
        document, key = self._opened()
        if document is None or key is None:
            return {}
        wanted = set(document["secrets"]) if names is None else set(names) & set(document["secrets"])
        return {name: self._open(key, name, document["secrets"][name]) for name in sorted(wanted)}

    def list(self) -> list[SecretInfo]:
        """Every credential's name and fingerprint, by name (no key needed)."""
        document = self._load()
        if document is None:
            return []
        return [
            SecretInfo(name, entry["fingerprint"], entry["created_at"], entry["updated_at"])
            for name, entry in sorted(document["secrets"].items())
        ]

    def exists(self, name: str) -> bool:
        """Whether a credential of this name is stored."""
        document = self._load()
        return document is not None and name in document["secrets"]

    # writing

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _save(self, key: bytes, secrets: dict[str, Any]) -> None:
        document = {"version": FORMAT_VERSION, "key_id": _key_id(key), "secrets": secrets}
        _write_atomic(self.path, json.dumps(document, indent=1, sort_keys=True).encode() + b"\n")

    @staticmethod
    def _seal(key: bytes, name: str, value: str) -> dict[str, str]:
        nonce = os.urandom(12)
        ciphertext = AESGCM(key).encrypt(nonce, value.encode(), name.encode())
        return {"nonce": base64.b64encode(nonce).decode(), "ciphertext": base64.b64encode(ciphertext).decode()}

    def set(self, name: str, value: str, *, overwrite: bool = True) -> SecretInfo:
        """Store ``value`` under ``name``; ``overwrite=False`` refuses to replace an existing one."""
        validate_secret_name(name)
        if not isinstance(value, str) or len(value) < MIN_SECRET_LENGTH or "\0" in value:
            raise InvalidInput(
                f"The value of {name} must be text of at least {MIN_SECRET_LENGTH} characters without NUL bytes "
                f"(shorter values cannot be redacted reliably)."
            )
        with self._locked():
            document = self._load()
            key = self._key(document, create=True)
            secrets = dict(document["secrets"]) if document else {}
            if name in secrets and not overwrite:
                raise InvalidInput(
                    f"A credential named {name} already exists. Choose another name, or replace it from a terminal "
                    f"with: spinup secret set {name}"
                )
            now = _now()
            created = secrets.get(name, {}).get("created_at", now)
            secrets[name] = {
                **self._seal(key, name, value),
                "fingerprint": _fingerprint(key, value),
                "created_at": created,
                "updated_at": now,
            }
            self._save(key, secrets)
        return SecretInfo(name, secrets[name]["fingerprint"], created, now)

    def remove(self, name: str) -> SecretInfo:
        """Forget ``name``."""
        validate_secret_name(name)
        with self._locked():
            document = self._load()
            if document is None or name not in document["secrets"]:
                raise SecretNotFound(name)
            key = self._key(document, create=False)
            secrets = dict(document["secrets"])
            entry = secrets.pop(name)
            self._save(key, secrets)
        return SecretInfo(name, entry["fingerprint"], entry["created_at"], entry["updated_at"])

    def rotate_key(self, new_key: bytes | None = None) -> None:
        """Re-encrypt every credential under a new key (random unless given), in place.

        With a key file: the new key goes to ``master.key.new`` first, then the store is rewritten
        under it, then the new key replaces the old file; a crash in between is finished on the next
        open. With ``SPINUP_MASTER_KEY`` the key file is not touched: pass the new key, then set it.
        """
        if new_key is not None and len(new_key) != _KEY_BYTES:
            raise CredentialKeyError("A new key must be 32 bytes.")
        if self._env_key and new_key is None:
            raise CredentialKeyError(
                "The key comes from SPINUP_MASTER_KEY: make a new one (" + _MAKE_KEY + "), rotate with "
                "`spinup secret rotate-key --new-key-stdin` giving it on stdin, then set SPINUP_MASTER_KEY to it."
            )
        with self._locked():
            document = self._load()
            old_key = self._key(document, create=False) if document else None
            key = new_key or AESGCM.generate_key(bit_length=256)
            secrets: dict[str, Any] = {}
            for name, entry in (document or {"secrets": {}})["secrets"].items():
                assert old_key is not None
                value = self._open(old_key, name, entry)
                secrets[name] = {**entry, **self._seal(key, name, value), "fingerprint": _fingerprint(key, value)}
            if self._env_key:
                self._save(key, secrets)
                self._env_key = base64.urlsafe_b64encode(key).decode()
                return
            pending = self.key_path.with_suffix(".key.new")
            _write_atomic(pending, base64.urlsafe_b64encode(key) + b"\n")
            self._save(key, secrets)
            os.replace(pending, self.key_path)
            fsync_dir(self.key_path.parent)
