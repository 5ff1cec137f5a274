"""The MCP tools secret_set, secret_list (names and bindings; never values, nor fingerprints)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from ..schemas import (
    SecretList,
    SecretSummary,
)
from .common import (
    ADDITIVE,
    READ_ONLY,
    Registrar,
)


def register(reg: Registrar) -> None:
    """Register these tools through ``reg``."""
    get_runtime = reg.get_runtime
    tool = reg.tool

    @tool("secret_set", ADDITIVE, takes_agent=False)
    async def secret_set(
        name: Annotated[str, Field(description="Credential name: letters, digits, '_' (e.g. GITHUB_TOKEN).")],
        value: Annotated[str, Field(description="The secret value (at least 8 characters).")],
    ) -> SecretSummary:
        """Store a credential, encrypted at rest. WARNING: the value passes through this conversation (and the
        model provider's logs); prefer asking the user to run `spinup secret set NAME` in a terminal. Refuses to
        replace an existing credential (use the CLI for that). The value is never returned by any tool and is
        redacted as [REDACTED:NAME] from command output, file reads and errors. An operator binds it to an agent
        with `spinup secret bind AGENT NAME`."""
        return SecretSummary.of(get_runtime().set_secret(name, value, overwrite=False), bound_to=[])

    @tool("secret_list", READ_ONLY, takes_agent=False)
    async def secret_list() -> SecretList:
        """List stored credentials: names and the agents each is bound to. Values are never shown.
        A bound credential is in the agent's commands as an environment variable and/or a file under
        /run/spinup/secrets/. (On a server bound to one agent, only that agent is named.)"""
        return SecretList(
            secrets=[
                SecretSummary.of(item.info, bound_to=[a for a in item.bound_to if reg.visible(a)])
                for item in get_runtime().list_secrets()
            ]
        )
