"""The HTTP bearer token: given by the operator, or generated once and kept 0600 in the state directory.

``spinup serve`` always requires a token on HTTP. One given in ``$SPINUP_TOKEN`` or a file
(``--token-file``) is used as is; ``--token`` works too but shows in ``ps`` to every local user.
Otherwise the token is read from ``<state dir>/http-token``, generated there on first use (the
way Jupyter does), so MCP clients and ``spinup dashboard`` find the same token at every start.
The file must be a regular file of this user's that nobody else can read. Precedence: ``--token``,
``--token-file``, ``$SPINUP_TOKEN``, the state directory's file.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from spinup.runtime import InvalidInput, Settings

TOKEN_FILE = "http-token"
TOKEN_VAR = "SPINUP_TOKEN"
MIN_TOKEN_CHARS = 8
TOKEN_BYTES = 32  # of randomness in a generated token (43 URL-safe characters)


@dataclass(frozen=True)
class ServeToken:
    """The token a server requires and where it came from: ``env``, ``option``, ``file`` or ``generated``."""

    value: str
    source: str
    path: Path | None = None


def token_path(settings: Settings) -> Path:
    """Where the generated token is kept: ``http-token`` in the state directory."""
    return settings.home / TOKEN_FILE


def _check_value(value: str, where: str) -> str:
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
    return _check_value(text, str(path))


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
            os.link(temp, path)  # never replaces a token another server already handed out
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


def stored_token(settings: Settings) -> ServeToken:
    """The state directory's token, generated now if there is none."""
    path = token_path(settings)
    if path.exists() or path.is_symlink():
        return ServeToken(read_token_file(path), "file", path)
    return ServeToken(_write_new(path), "generated", path)


def resolve_token(settings: Settings, option: str | None, token_file: Path | None) -> ServeToken:
    """The token a server requires: ``--token``, else ``--token-file``, else ``$SPINUP_TOKEN``, else the state
    directory's (generated when missing)."""
    if option:
        return ServeToken(_check_value(option, "--token"), "option")
    if token_file is not None:
        return ServeToken(read_token_file(token_file.expanduser()), "file", token_file.expanduser())
    env = os.environ.get(TOKEN_VAR)
    if env:
        return ServeToken(_check_value(env, f"${TOKEN_VAR}"), "env")
    return stored_token(settings)


def known_token(settings: Settings) -> str | None:
    """The token a client should send to this state directory's server: ``$SPINUP_TOKEN``, else the stored one
    (None when neither exists; nothing is generated)."""
    env = os.environ.get(TOKEN_VAR)
    if env:
        return env.strip()
    path = token_path(settings)
    if not path.exists():
        return None
    return read_token_file(path)
