"""Packages: pip, npm and apt installs that the runtime knows about, recorded in the agent's manifest.

pip installs into the agent's virtual environment (``/home/agent/.venv``, first on PATH), npm
into a global prefix in its home (``/home/agent/.npm-global``), apt into the system (only under
a root policy). The operator's local sources, mounted read-only at ``/spinup/sources``, are used
first: ``pip/`` as pip's find-links, ``npm/`` tarballs named ``NAME-VERSION.tgz``
(``SCOPE-NAME-VERSION.tgz`` for ``@SCOPE/NAME``, as ``npm pack`` names them) and ``apt/`` files
named ``NAME_VERSION_ARCH.deb`` stand in for a bare ``NAME`` or ``NAME@VERSION`` / ``NAME=VERSION``.
Under network ``none`` these are the only sources.

Each install returns what it added (resolved names and versions, dependencies included) and
records the requested packages in the manifest, which travels in every snapshot. A failed
install leaves the manifest as it was and says why in the manager's own words.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from spinup.snapshot.faults import FaultHook, no_faults

from .errors import InvalidInput, PackageError
from .exec import ExecResult, ProgressCallback
from .models import Agent, PackageEntry, PackageManager
from .policy import NPM_PREFIX, SOURCES_MOUNT, VENV, is_root
from .state import StateDB

RunFn = Callable[[str, list[str], float, ProgressCallback | None], Awaitable[ExecResult]]
INSTALL_TIMEOUT = 1800.0
_MARK = "--spinup-section--"
_SPEC_RE = re.compile(r"^[A-Za-z0-9@][A-Za-z0-9._+/@:=<>!~,*\[\]-]*$")
_NAME_RE = re.compile(r"^(@[a-z0-9._-]+/)?[A-Za-z0-9][A-Za-z0-9._-]*")
_OFFLINE_HINTS = {
    "pip": ("No matching distribution", "Could not find a version", "NewConnectionError", "Failed to establish"),
    "npm": ("ENOTFOUND", "ENOTCACHED", "EAI_AGAIN", "ECONNREFUSED", "request to"),
    "apt": ("Unable to locate package", "has no installation candidate", "Temporary failure resolving"),
}


@dataclass(frozen=True)
class Installed:
    """A package a command added or changed."""

    name: str
    version: str


@dataclass(frozen=True)
class InstallResult:
    """What an install did."""

    manager: PackageManager
    requested: list[str]
    added: list[Installed]  # every package new or changed, dependencies included
    manifest: list[PackageEntry]  # the agent's manifest afterwards
    duration_s: float


def package_name(spec: str) -> str:
    """The package name a spec asks for: 'requests>=2' -> 'requests', '@scope/x@1' -> '@scope/x'."""
    match = _NAME_RE.match(spec)
    if match is None:
        raise InvalidInput(f"Cannot tell the package name in {spec!r}.")
    return match.group(0)


def canonical(manager: PackageManager, name: str) -> str:
    """Names as the manager compares them (pip: PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower() if manager == "pip" else name


def _validate(manager: str, specs: list[str]) -> None:
    if manager not in ("pip", "npm", "apt"):
        raise InvalidInput(f"Unknown package manager {manager!r}: use pip, npm or apt.")
    if not specs:
        raise InvalidInput("Name at least one package, for example ['requests'] or ['left-pad@1.3.0'].")
    for spec in specs:
        if not isinstance(spec, str) or not _SPEC_RE.fullmatch(spec) or spec.startswith("-"):
            raise InvalidInput(
                f"{spec!r} is not a package spec: use a name with an optional version, such as 'requests>=2.31', "
                f"'left-pad@1.3.0' or 'jq'. Options and paths are not accepted; put local packages in the sources."
            )


def _sections(stdout: str) -> list[str]:
    return stdout.split(_MARK + "\n")[1:]


def _npm_listing(text: str) -> dict[str, str]:
    data = json.loads(text or "{}")
    return {name: str(info.get("version", "")) for name, info in (data.get("dependencies") or {}).items()}


def _dpkg_listing(text: str) -> dict[str, str]:
    return dict(line.split("\t", 1) for line in text.splitlines() if "\t" in line)


def _version_key(version: str) -> list[tuple[int, str]]:
    return [(int(part), "") if part.isdigit() else (-1, part) for part in re.split(r"[.+~-]", version)]


# Crash-test point (SPINUP_CRASH_AT): the manager installed the packages in the machine; the manifest is
# not changed yet (installing them again records them, the manager finding them there).
PACKAGES_INSTALLED = "packages-installed"

class PackageService:
    """Installs, removes and lists packages of agents, keeping each agent's manifest."""

    def __init__(self, db: StateDB, sources_dir: Path, run: RunFn, fault: FaultHook = no_faults) -> None:
        self.db = db
        self.sources_dir = sources_dir
        self._run = run
        self._fault = fault

    def manifest(self, agent: Agent) -> list[PackageEntry]:
        """The agent's package manifest."""
        return self.db.packages(agent.id)

    async def install(
        self,
        agent: Agent,
        manager: PackageManager,
        specs: list[str],
        on_progress: ProgressCallback | None = None,
    ) -> InstallResult:
        """Install ``specs`` with ``manager`` in the agent's machine and record them in its manifest."""
        _validate(manager, specs)
        if manager == "apt" and not is_root(agent.policy):
            raise PackageError(
                f"apt installs system packages and needs root, which agent '{agent.name}' does not have. Give it "
                f"root (CLI: spinup agent policy {agent.name} --user root), or install with pip or npm instead."
            )
        started = time.monotonic()
        argv = {"pip": self._pip_install, "npm": self._npm_install, "apt": self._apt_install}[manager](agent, specs)
        result = await self._run(agent.name, argv, INSTALL_TIMEOUT, on_progress)
        self._check(agent, manager, "install", specs, result)
        self._fault(PACKAGES_INSTALLED)
        before, after = self._listings(manager, result)
        added = [Installed(n, v) for n, v in sorted(after.items()) if before.get(n) != v]
        if manager == "pip" and any(canonical("pip", package_name(spec)) not in after for spec in specs):
            after = {**await self._pip_installed(agent), **after}  # some were already there: ask for their versions
        now = datetime.now(UTC)
        entries = []
        for spec in specs:
            name = self._requested_name(manager, spec, after, added)
            if name is None or name not in after:
                raise PackageError(
                    f"{manager} reported success but {spec!r} is not installed afterwards; the manifest was not "
                    f"changed. Its output: {result.stderr.strip()[-1500:]}"
                )
            entries.append(PackageEntry(manager=manager, name=name, spec=spec, version=after[name], installed_at=now))
        self.db.record_packages(agent.id, entries, [])
        return InstallResult(manager, specs, added, self.db.packages(agent.id), round(time.monotonic() - started, 3))

    async def _pip_installed(self, agent: Agent) -> dict[str, str]:
        argv = [f"{VENV}/bin/python", "-m", "pip", "list", "--format=json", "--disable-pip-version-check"]
        result = await self._run(agent.name, argv, 300.0, None)
        self._check(agent, "pip", "list", ["(installed packages)"], result)
        return {canonical("pip", item["name"]): item["version"] for item in json.loads(result.stdout or "[]")}

    async def remove(self, agent: Agent, manager: PackageManager, names: list[str]) -> list[PackageEntry]:
        """Uninstall ``names`` and drop them from the manifest; returns the manifest afterwards."""
        _validate(manager, names)
        if manager == "apt" and not is_root(agent.policy):
            raise PackageError(f"apt needs root, which agent '{agent.name}' does not have.")
        names = [package_name(n) for n in names]
        argv = {
            "pip": [f"{VENV}/bin/python", "-m", "pip", "uninstall", "-y", "--disable-pip-version-check", *names],
            "npm": ["npm", "uninstall", "-g", "--no-audit", "--no-fund", "--prefix", NPM_PREFIX, *names],
            "apt": ["env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "remove", "-y", *names],
        }[manager]
        result = await self._run(agent.name, argv, INSTALL_TIMEOUT, None)
        self._check(agent, manager, "remove", names, result)
        self.db.record_packages(agent.id, [], [(manager, canonical(manager, n)) for n in names])
        return self.db.packages(agent.id)

    def export(self, agent: Agent, manager: PackageManager) -> str:
        """The manifest's entries of one manager as requirements.txt, package.json or an apt list."""
        entries = [e for e in self.db.packages(agent.id) if e.manager == manager]
        if manager == "pip":
            return "".join(f"{e.name}=={e.version}\n" for e in entries)
        if manager == "npm":
            document = {"name": agent.name, "private": True, "dependencies": {e.name: e.version for e in entries}}
            return json.dumps(document, indent=2) + "\n"
        return "".join(f"{e.name}={e.version}\n" for e in entries)

    # commands

    def _pip_install(self, agent: Agent, specs: list[str]) -> list[str]:
        options = ["--find-links", f"{SOURCES_MOUNT}/pip"] if (self.sources_dir / "pip").is_dir() else []
        if agent.policy.network == "none":
            options += ["--no-index"]
        report = f"/tmp/.spinup-pip-{secrets.token_hex(4)}.json"
        script = (
            'set -e; v="$1"; r="$2"; shift 2\n'
            '[ -x "$v/bin/python" ] || python3 -m venv "$v" >&2\n'
            '"$v/bin/python" -m pip install -q --disable-pip-version-check --no-input --progress-bar off '
            '--timeout 15 --retries 1 --report "$r" "$@" >&2\n'
            f'echo {_MARK}; cat "$r"; rm -f "$r"\n'
        )
        return ["sh", "-c", script, "pip", VENV, report, *options, *specs]

    def _npm_install(self, agent: Agent, specs: list[str]) -> list[str]:
        targets = [self._local_npm(spec) or spec for spec in specs]
        offline = ["--offline"] if agent.policy.network == "none" else []
        script = (
            'set -e; p="$1"; shift; mkdir -p "$p"\n'
            f'echo {_MARK}; npm ls -g --json --depth=0 --prefix "$p" 2>/dev/null || true\n'
            'npm install -g --no-audit --no-fund --no-update-notifier --prefix "$p" "$@" >&2\n'
            f'echo {_MARK}; npm ls -g --json --depth=0 --prefix "$p"\n'
        )
        return ["sh", "-c", script, "npm", NPM_PREFIX, *offline, *targets]

    def _apt_install(self, agent: Agent, specs: list[str]) -> list[str]:
        targets = [self._local_deb(spec) or spec for spec in specs]
        listing = "dpkg-query -W -f '${Package}\\t${Version}\\n'"
        script = (
            f"set -e; echo {_MARK}; {listing}\n"
            'DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >&2\n'
            f"echo {_MARK}; {listing}\n"
        )
        return ["sh", "-c", script, "apt", *targets]

    def _local_npm(self, spec: str) -> str | None:
        """The local tarball standing in for a bare name or name@version, if the sources have one."""
        name, _, version = spec.rpartition("@") if spec.rfind("@") > 0 else (spec, "", "")
        if re.fullmatch(r"@[a-z0-9][a-z0-9._-]*/[a-z0-9][a-z0-9._-]*", name):
            name = name[1:].replace("/", "-")  # as `npm pack` names a scoped package: @scope/x -> scope-x-1.0.tgz
        if not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", name):
            return None
        return self._newest(self.sources_dir / "npm", f"{name}-", ".tgz", version, f"{SOURCES_MOUNT}/npm")

    def _local_deb(self, spec: str) -> str | None:
        """The local .deb standing in for a bare name or name=version, if the sources have one."""
        name, _, version = spec.partition("=")
        if not re.fullmatch(r"[a-z0-9][a-z0-9+.-]*", name):
            return None
        return self._newest(self.sources_dir / "apt", f"{name}_", ".deb", version, f"{SOURCES_MOUNT}/apt")

    @staticmethod
    def _newest(directory: Path, prefix: str, suffix: str, version: str, mount: str) -> str | None:
        if not directory.is_dir():
            return None
        found: dict[str, str] = {}
        for path in directory.iterdir():
            if path.name.startswith(prefix) and path.name.endswith(suffix):
                candidate = path.name[len(prefix) : -len(suffix)].split("_")[0]
                if re.fullmatch(r"[0-9][A-Za-z0-9.+~:-]*", candidate):
                    found[candidate] = path.name
        if version:
            return f"{mount}/{found[version]}" if version in found else None
        if not found:
            return None
        return f"{mount}/{found[max(found, key=_version_key)]}"

    # results

    @staticmethod
    def _listings(manager: PackageManager, result: ExecResult) -> tuple[dict[str, str], dict[str, str]]:
        sections = _sections(result.stdout)
        if manager == "pip":
            # pip's report names exactly what this install added or changed.
            report = json.loads(sections[0] or "{}")
            added = report.get("install", [])
            return {}, {canonical("pip", i["metadata"]["name"]): i["metadata"]["version"] for i in added}
        if manager == "npm":
            return _npm_listing(sections[0]), _npm_listing(sections[1])
        return _dpkg_listing(sections[0]), _dpkg_listing(sections[1])

    @staticmethod
    def _requested_name(
        manager: PackageManager, spec: str, after: dict[str, str], added: list[Installed]
    ) -> str | None:
        name = canonical(manager, package_name(spec))
        if name in after:
            return name
        if manager == "npm":
            base = name.rsplit("@", 1)[0] if name.rfind("@") > 0 else name
            return base if base in after else None
        return None

    def _check(self, agent: Agent, manager: PackageManager, action: str, specs: list[str], result: ExecResult) -> None:
        if result.exit_code == 0 and not result.timed_out:
            return
        output = (result.stderr.strip() or result.stdout.strip())[-2000:]
        if result.timed_out:
            raise PackageError(f"{manager} {action} of {', '.join(specs)} timed out; the manifest was not changed.")
        if result.exit_code in (126, 127):
            missing = {"pip": "python3 (with venv)", "npm": "npm", "apt": "apt-get"}[manager]
            raise PackageError(
                f"{manager} is not available in agent '{agent.name}': its image has no {missing}. Use an image "
                f"that has it (spinup agent create NAME --image IMAGE). Output: {output}"
            )
        hint = ""
        if agent.policy.network == "none" and any(word in output for word in _OFFLINE_HINTS[manager]):
            hint = (
                f" The agent's network policy is 'none': only local sources are reachable, from "
                f"{self.sources_dir / manager} on the host (mounted at {SOURCES_MOUNT}/{manager}). Put the package "
                f"there, or allow the network (spinup agent policy {agent.name} --network host)."
            )
        raise PackageError(
            f"{manager} could not {action} {', '.join(specs)} (exit {result.exit_code}); the manifest was not "
            f"changed.{hint} {manager} said:\n{output}"
        )
