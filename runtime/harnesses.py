"""Harness CLIs Spinup can install inside an agent's machine: their npm packages, command, login variable,
state directories and the API hosts their network policy must reach.

A harness inside is an npm package installed through the package tool (so it is in the manifest,
and rebuild and restore bring it back); its state lives in the agent's home (in every snapshot);
its login is a credential bound as an environment variable (never written into a layer).
"""

from __future__ import annotations

import platform
from dataclasses import dataclass

from .errors import InvalidInput


@dataclass(frozen=True)
class Harness:
    """One harness CLI as it lives in a machine."""

    name: str
    packages: tuple[str, ...]  # npm specs; "{arch}" stands for the host's x64 or arm64
    command: str  # what `spinup shell AGENT -- COMMAND` runs
    login_env: str  # the environment variable its API key is read from
    state: tuple[str, ...]  # where it keeps sessions, settings and logins (under the agent's home)
    allow: tuple[str, ...]  # allowlist rules (presets or hosts) for its API, plus npm's to install it
    # A shell script run inside as the agent's user that points the harness at the agent's control endpoint,
    # $SPINUP_CONTROL_URL, its token read from $SPINUP_CONTROL_TOKEN when the harness runs (never written down).
    connect: str

    def specs(self, arch: str | None = None) -> list[str]:
        """The npm specs to install on a machine of ``arch`` (default: this host's)."""
        machine = arch or npm_arch()
        return [spec.format(arch=machine) for spec in self.packages]


HARNESSES: dict[str, Harness] = {
    harness.name: harness
    for harness in (
        # Claude Code ships its native binary in a package per platform, an optional dependency of the
        # wrapper: named here too, so an offline install from the local sources finds it.
        Harness(
            "claude-code",
            ("@anthropic-ai/claude-code", "@anthropic-ai/claude-code-linux-{arch}"),
            "claude",
            "ANTHROPIC_API_KEY",
            ("~/.claude", "~/.claude.json"),
            ("anthropic", "npm"),
            "claude mcp remove --scope user spinup >/dev/null 2>&1; "
            'claude mcp add --scope user --transport http spinup "$SPINUP_CONTROL_URL" '
            "--header 'Authorization: Bearer ${SPINUP_CONTROL_TOKEN}'",
        ),
        Harness(
            "codex",
            ("@openai/codex",),
            "codex",
            "OPENAI_API_KEY",
            ("~/.codex",),
            ("openai", "npm"),
            'mkdir -p ~/.codex && touch ~/.codex/config.toml && if ! grep -q "^\\[mcp_servers.spinup\\]" '
            "~/.codex/config.toml; then printf '\\n[mcp_servers.spinup]\\nurl = \"%s\"\\n"
            "bearer_token_env_var = \"SPINUP_CONTROL_TOKEN\"\\n' \"$SPINUP_CONTROL_URL\" >> ~/.codex/config.toml; fi",
        ),
        Harness(
            "gemini",
            ("@google/gemini-cli",),
            "gemini",
            "GEMINI_API_KEY",
            ("~/.gemini",),
            ("generativelanguage.googleapis.com", "npm"),
            "mkdir -p ~/.gemini && node -e '"
            'const fs = require("fs"), f = process.env.HOME + "/.gemini/settings.json";'
            "let s = {}; try { s = JSON.parse(fs.readFileSync(f)); } catch (e) {}"
            "s.mcpServers = Object.assign(s.mcpServers || {}, {spinup: {httpUrl: process.env.SPINUP_CONTROL_URL,"
            ' headers: {Authorization: "Bearer $SPINUP_CONTROL_TOKEN"}}});'
            "fs.writeFileSync(f, JSON.stringify(s, null, 2));'",
        ),
    )
}


def npm_arch() -> str:
    """This host's CPU as npm's platform packages name it (machines run natively on it)."""
    machine = platform.machine().lower()
    return {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}.get(machine, machine)


def get_harness(name: str) -> Harness:
    """The harness called ``name``; a clear error naming the known ones otherwise."""
    try:
        return HARNESSES[name]
    except KeyError:
        raise InvalidInput(
            f"Spinup does not know a harness called {name!r}: use one of {', '.join(sorted(HARNESSES))}."
        ) from None
