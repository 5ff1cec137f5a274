"""The HTTP bearer token: given by the operator, or generated once and kept 0600 in the state directory.

``spinup serve`` always requires a token on HTTP. One given in ``$SPINUP_TOKEN`` or a file
(``--token-file``) is used as is; ``--token`` works too but shows in ``ps`` to every local user.
Otherwise the token is read from ``<state dir>/http-token``, generated there on first use (the
way Jupyter does), so MCP clients and ``spinup dashboard`` find the same token at every start.
The file must be a regular file of this user's that nobody else can read. Precedence: ``--token``,
``--token-file``, ``$SPINUP_TOKEN``, the state directory's file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from spinup.runtime import Settings, check_token, read_token_file, stored_token_file

TOKEN_FILE = "http-token"
TOKEN_VAR = "SPINUP_TOKEN"


@dataclass(frozen=True)
class ServeToken:
    """The token a server requires and where it came from: ``env``, ``option``, ``file`` or ``generated``."""

    value: str
    source: str
    path: Path | None = None


def token_path(settings: Settings) -> Path:
    """Where the generated token is kept: ``http-token`` in the state directory."""
    return settings.home / TOKEN_FILE


def stored_token(settings: Settings) -> ServeToken:
    """The state directory's token, generated now if there is none."""
    path = token_path(settings)
    value, generated = stored_token_file(path)
    return ServeToken(value, "generated" if generated else "file", path)


def resolve_token(settings: Settings, option: str | None, token_file: Path | None) -> ServeToken:
    """The token a server requires: ``--token``, else ``--token-file``, else ``$SPINUP_TOKEN``, else the state
    directory's (generated when missing)."""
    if option:
        return ServeToken(check_token(option, "--token"), "option")
    if token_file is not None:
        return ServeToken(read_token_file(token_file.expanduser()), "file", token_file.expanduser())
    env = os.environ.get(TOKEN_VAR)
    if env:
        return ServeToken(check_token(env, f"${TOKEN_VAR}"), "env")
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
