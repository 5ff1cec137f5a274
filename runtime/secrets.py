"""Credentials for agents: the encrypted store, per-agent bindings, injection at exec time, redaction.

A bound credential reaches a machine only as an exec's environment variable or as a file in the
machine's in-memory ``/run/spinup/secrets`` (a tmpfs: never in the writable layer, so never in a
snapshot). Every value, and its base64 and URL-encoded forms, is redacted from what Spinup
returns or records.
"""

from __future__ import annotations

import builtins
import io
import logging
import posixpath
import re
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass

from .config import TOOLBOX_MOUNT, Settings
from .credentials import CredentialStore, SecretInfo, SecretNotFound, validate_secret_name
from .docker import DockerBackend
from .egress.rules import is_host_pattern
from .errors import InvalidInput, SpinupError
from .exec import run_command
from .models import Agent, HeaderBinding, SecretBinding
from .policy import SECRETS_DIR, exec_user, owner
from .redact import Redactor
from .state import StateDB

log = logging.getLogger(__name__)

ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_FILE_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")


@dataclass(frozen=True)
class SecretListing:
    """A credential's name and fingerprint (never its value) and the agents it is bound to."""

    info: SecretInfo
    bound_to: list[str]


def redact_stored(text: str, settings: Settings | None = None) -> str:
    """``text`` with every stored credential value redacted, without a runtime (as is if the store cannot be read)."""
    try:
        settings = settings or Settings()
        values = CredentialStore(settings.credentials_path, settings.master_key_path, settings.master_key).values()
    except SpinupError:
        log.warning("the credential store cannot be read; text is not redacted")
        return text
    return Redactor(values).redact_text(text) if values else text


_HEADER_NAME_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,100}$")


def parse_header_binding(spec: str) -> HeaderBinding:
    """``host:Header:template`` (e.g. ``api.example.com:Authorization:Bearer {value}``) as a binding."""
    host, sep1, rest = spec.partition(":")
    name, sep2, template = rest.partition(":")
    host, name, template = host.strip().lower(), name.strip(), template.strip()
    if not (sep1 and sep2) or not host or not template:
        raise InvalidInput(
            f"Invalid --header {spec!r}: write HOST:HEADER:TEMPLATE, e.g. "
            f"'api.example.com:Authorization:Bearer {{value}}' ({{value}} stands for the credential)."
        )
    if not is_host_pattern(host):
        raise InvalidInput(f"Invalid --header host {host!r}: a host name, '*.domain' or address (any port).")
    if not _HEADER_NAME_RE.fullmatch(name):
        raise InvalidInput(f"Invalid --header name {name!r}: an HTTP header name such as 'Authorization'.")
    if "{value}" not in template:
        raise InvalidInput(f"The --header template {template!r} has no {{value}}: where does the credential go?")
    if any(ch in template for ch in "\r\n\0"):
        raise InvalidInput("The --header template cannot hold line breaks.")
    return HeaderBinding(host=host, name=name, template=template)


def secret_file_path(file: str) -> str:
    """The absolute path under /run/spinup/secrets for a binding's ``file`` (relative or absolute)."""
    relative = file.removeprefix(SECRETS_DIR + "/") if file.startswith("/") else file
    if not _FILE_NAME_RE.fullmatch(relative) or any(part in {".", ".."} for part in relative.split("/")):
        raise InvalidInput(
            f"A secret file must be a plain relative name (or a path under {SECRETS_DIR}), such as "
            f"'github-token', got {file!r}."
        )
    return f"{SECRETS_DIR}/{relative}"


class SecretService:
    """The credential store plus who may use which credential, and how it reaches their machines."""

    def __init__(self, settings: Settings, db: StateDB, docker: DockerBackend) -> None:
        self.store = CredentialStore(settings.credentials_path, settings.master_key_path, settings.master_key)
        self.db = db
        self.docker = docker
        self._redactor: tuple[object, Redactor] | None = None
        self._synced: dict[str, tuple[object, str]] = {}  # machine id -> (what was written, started at)

    # the store

    def set(self, name: str, value: str, *, overwrite: bool = True) -> SecretInfo:
        """Store (or replace) a credential's value."""
        info = self.store.set(name, value, overwrite=overwrite)
        self._redactor = None
        return info

    def remove(self, name: str) -> SecretInfo:
        """Forget a credential and every binding of it."""
        info = self.store.remove(name)
        for agent_id, binding in self.db.secret_bindings():
            if binding.secret == name:
                self.db.unbind_secret(agent_id, name)
        self._redactor = None
        return info

    def list(self) -> list[SecretListing]:
        """Every credential with the names of the agents it is bound to."""
        names = {a.id: a.name for a in self.db.list_agents()}
        bound: dict[str, list[str]] = {}
        for agent_id, binding in self.db.secret_bindings():
            bound.setdefault(binding.secret, []).append(names.get(agent_id, agent_id))
        return [SecretListing(info, sorted(bound.get(info.name, []))) for info in self.store.list()]

    # bindings

    def require(self, name: str) -> None:
        """Refuse a credential name that is invalid or not stored (:class:`SecretNotFound`)."""
        validate_secret_name(name)
        if not self.store.exists(name):
            raise SecretNotFound(name)

    def bind(
        self,
        agent: Agent,
        name: str,
        env: str | None = None,
        file: str | None = None,
        header: str | None = None,
    ) -> SecretBinding:
        """Give ``agent`` the credential ``name`` as an env var (default: the name itself), a file, and/or a
        request header the egress proxy adds for one host (``host:Header:template``; the value stays out of
        the machine)."""
        self.require(name)
        edge = parse_header_binding(header) if header is not None else None
        if edge is not None and agent.policy.network != "allowlist":
            raise InvalidInput(
                f"A header binding is added by the egress proxy, and agent '{agent.name}' has network "
                f"'{agent.policy.network}': give it network 'allowlist' first (spinup agent policy {agent.name} "
                f"--allow {edge.host})."
            )
        if env is None and file is None and edge is None:
            env = name
        if env is not None and not ENV_NAME_RE.fullmatch(env):
            raise InvalidInput(f"Invalid environment variable name {env!r}: use letters, digits and '_'.")
        path = secret_file_path(file) if file is not None else None
        for _, other in self.db.secret_bindings(agent.id):
            if other.secret != name and ((env and other.env == env) or (path and other.file == path)):
                raise InvalidInput(
                    f"Agent '{agent.name}' already gets {other.secret} as {env if other.env == env else path}; "
                    f"choose another --env or --file, or unbind {other.secret} first."
                )
        binding = SecretBinding(secret=name, env=env, file=path, header=edge)
        self.db.bind_secret(agent.id, binding)
        return binding

    def unbind(self, agent: Agent, name: str) -> None:
        """Take the credential ``name`` away from ``agent``."""
        if not self.db.unbind_secret(agent.id, name):
            raise InvalidInput(f"Agent '{agent.name}' has no binding of {name}. See: spinup secret list")

    def bindings(self, agent: Agent) -> builtins.list[SecretBinding]:
        """The agent's bindings."""
        return [binding for _, binding in self.db.secret_bindings(agent.id)]

    # injection

    def exec_env(self, agent: Agent) -> dict[str, str]:
        """Environment variables the agent's bound credentials give each command."""
        bindings = [b for b in self.bindings(agent) if b.env]
        if not bindings:
            return {}
        values = self.store.values([b.secret for b in bindings])
        return {b.env: values[b.secret] for b in bindings if b.env and b.secret in values}

    def record_use(self, agent: Agent) -> None:
        """Record that a command gets the agent's bound credentials (their names, never values)."""
        names = sorted({b.secret for b in self.bindings(agent)})
        if names:
            self.db.record_event(agent.id, "secret-used", ", ".join(names), {"secrets": names})

    async def sync_files(self, agent: Agent, machine_id: str) -> None:
        """Make the machine's /run/spinup/secrets hold exactly the agent's bound credential files.

        The tmpfs empties whenever the machine stops, so what was written is remembered together
        with the machine's start time and written again after a restart.
        """
        bindings = sorted((b for b in self.bindings(agent) if b.file), key=lambda b: b.file or "")
        wanted = tuple((b.file, b.secret) for b in bindings)
        synced = self._synced.get(machine_id)
        if not wanted and synced is None:
            return
        info = await self.docker.inspect(machine_id)
        started = info.started_at if info is not None else ""
        fingerprints = {i.name: i.fingerprint for i in self.store.list()} if wanted else {}
        key = (wanted, tuple(fingerprints.get(secret, "") for _, secret in wanted))
        if synced == (key, started):
            return
        values = self.store.values([secret for _, secret in wanted]) if wanted else {}
        archive = _secrets_tar({path: values[secret] for path, secret in wanted if path and secret in values}, agent)
        script = f"{TOOLBOX_MOUNT} rm -rf {SECRETS_DIR}/* {SECRETS_DIR}/.[!.]* && {TOOLBOX_MOUNT} tar -x -C / -f -"
        result = await run_command(
            self.docker,
            machine_id,
            [TOOLBOX_MOUNT, "sh", "-c", script],
            stdin=archive,
            cwd="/",
            user=exec_user(agent.policy),
            timeout=60,
            output_cap=4096,
        )
        if result.exit_code != 0:
            raise SpinupError(
                f"Could not place the agent's credential files in {SECRETS_DIR}: {self.redact(result.stderr).strip()}"
            )
        self._synced[machine_id] = (key, started)

    def rotate_key(self, new_key: bytes | None = None) -> str:
        """Re-encrypt every credential under ``new_key`` (or a new random key); returns where the key lives now:
        ``"env"`` (SPINUP_MASTER_KEY, which the operator must update) or ``"file"``."""
        self.store.rotate_key(new_key)
        self.forget_cache()
        return self.store.key_source

    def forget_cache(self) -> None:
        """Drop cached redactors and what was written to machines (after the store changed underneath)."""
        self._redactor = None
        self._synced.clear()

    # redaction

    def redactor(self) -> Redactor:
        """A redactor for every stored credential (cached until the store changes)."""
        stamp = self.store.stamp()
        if self._redactor is None or self._redactor[0] != stamp:
            self._redactor = (stamp, Redactor(self.store.values() if stamp is not None else {}))
        return self._redactor[1]

    def redact(self, text: str) -> str:
        """``text`` with every credential value (and its encodings) replaced by ``[REDACTED:NAME]``."""
        try:
            redactor = self.redactor()
        except SpinupError:
            log.warning("the credential store cannot be read; text is not redacted")
            return text
        return redactor.redact_text(text) if redactor else text

    def text_filter(self) -> Callable[[str], str]:
        """:meth:`redact` as a plain function, for hooks such as event details."""
        return self.redact


def _secrets_tar(files: dict[str, str], agent: Agent) -> bytes:
    uid, gid = owner(agent.policy)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        made: set[str] = set()
        for path, value in sorted(files.items()):
            parent = posixpath.dirname(path)
            while parent != SECRETS_DIR and parent not in made:
                made.add(parent)
                directory = tarfile.TarInfo(parent.lstrip("/"))
                directory.type, directory.mode, directory.uid, directory.gid = tarfile.DIRTYPE, 0o700, uid, gid
                directory.mtime = int(time.time())
                tar.addfile(directory)
                parent = posixpath.dirname(parent)
            data = value.encode()
            member = tarfile.TarInfo(path.lstrip("/"))
            member.size, member.mode, member.uid, member.gid = len(data), 0o400, uid, gid
            member.mtime = int(time.time())
            tar.addfile(member, io.BytesIO(data))
    return buffer.getvalue()
