"""Bearer tokens kept in files: generated once (0600, written whole before the name appears, never
replacing one another process already handed out) and read back only from a regular file of this
user's that nobody else can read. Used for the HTTP server's token and each control endpoint's."""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

from .errors import InvalidInput

MIN_TOKEN_CHARS = 8
TOKEN_BYTES = 32  # of randomness in a generated token (43 URL-safe characters)


def check_token(value: str, where: str) -> str:
    """``value`` stripped; refused when too short or holding spaces (``where`` names its source)."""
    value = value.strip()
    if len(value) < MIN_TOKEN_CHARS or any(c.isspace() for c in value):
        raise InvalidInput(
            f"The token from {where} is too short or holds spaces: use at least {MIN_TOKEN_CHARS} characters "
            f"without spaces (e.g. python3 -c 'import secrets; print(secrets.token_urlsafe(32))')."
        )
    return value


def read_token_file(path: Path, *, private: bool = True) -> str:
    """The token in ``path``; with ``private``, refused unless it is a regular file of ours others cannot read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise InvalidInput(f"Cannot read the token file {path} ({exc.strerror}).") from exc
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise InvalidInput(f"The token file {path} is not a regular file.")
        if private and (info.st_uid != os.getuid() or info.st_mode & 0o077):
            raise InvalidInput(
                f"The token file {path} can be read by other users (mode {stat.S_IMODE(info.st_mode):04o}) or is "
                f"not yours: run chmod 600 {path} (and check who wrote it), or remove it to have a new one generated."
            )
        data = handle.read(4096)
    try:
        text = data.decode()
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"The token file {path} does not hold text.") from exc
    return check_token(text, str(path))


def _write_new(path: Path) -> str:
    """Generate a token into ``path`` (0600, written whole before it appears); the existing one if another
    process was first."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    value = secrets.token_urlsafe(TOKEN_BYTES)
    temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(value + "\n")
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(temp, path)  # never replaces a token another process already handed out
        except FileExistsError:
            return read_token_file(path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return value


def stored_token_file(path: Path) -> tuple[str, bool]:
    """The token kept in ``path``, generated there first when there is none; and whether it was generated now."""
    if path.exists() or path.is_symlink():
        return read_token_file(path), False
    return _write_new(path), True
