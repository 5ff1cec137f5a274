"""The MCP tools package_install, package_remove, package_list."""

from __future__ import annotations

from typing import Annotated, Literal

from mcp.server.mcpserver import Context
from pydantic import Field

from ..schemas import (
    PackageInfo,
    PackageInstallResult,
    PackageManifest,
)
from .common import (
    DESTRUCTIVE,
    EXEC,
    READ_ONLY,
    AgentArg,
    ManagerArg,
    Registrar,
)


def register(reg: Registrar) -> None:
    """Register these tools through ``reg``."""
    get_runtime = reg.get_runtime
    tool = reg.tool

    @tool("package_install", EXEC)
    async def package_install(
        ctx: Context,
        agent: AgentArg,
        manager: ManagerArg,
        packages: Annotated[
            list[str], Field(description="Specs such as 'requests>=2.31', 'left-pad@1.3.0' or 'jq'.", min_length=1)
        ],
    ) -> PackageInstallResult:
        """Install packages so they persist and are recorded in the agent's manifest (kept in every snapshot,
        replayed by a rebuild). Returns every package added with its resolved version. Local sources the operator
        provides are used first; with network 'none' they are the only ones. Prefer this to `exec pip install`."""

        async def progress(elapsed: float, output_bytes: int) -> None:
            await ctx.report_progress(elapsed, None, f"{manager} has been installing for {elapsed:.0f}s")

        return PackageInstallResult.of(await get_runtime().install_packages(agent, manager, packages, progress))

    @tool("package_remove", DESTRUCTIVE)
    async def package_remove(
        agent: AgentArg,
        manager: ManagerArg,
        packages: Annotated[list[str], Field(description="Package names to uninstall.", min_length=1)],
    ) -> PackageManifest:
        """Uninstall packages and drop them from the agent's manifest."""
        removed = await get_runtime().remove_packages(agent, manager, packages)
        return PackageManifest(packages=[PackageInfo.of(e) for e in removed])

    @tool("package_list", READ_ONLY)
    async def package_list(
        agent: AgentArg,
        export: Annotated[
            Literal["pip", "npm", "apt"] | None,
            Field(description="Also render that manager's part as requirements.txt / package.json / an apt list."),
        ] = None,
    ) -> PackageManifest:
        """The agent's package manifest: each requested package, its resolved version and when it was installed."""
        runtime = get_runtime()
        return PackageManifest(
            packages=[PackageInfo.of(e) for e in runtime.package_manifest(agent)],
            export=runtime.export_packages(agent, export) if export else None,
        )
