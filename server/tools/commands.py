"""The MCP tools exec: run a command in the agent's machine."""

from __future__ import annotations

from typing import Annotated

from mcp.server.mcpserver import Context
from pydantic import Field

from ..schemas import (
    ExecOutput,
)
from .common import (
    EXEC,
    AgentArg,
    Registrar,
)


def register(reg: Registrar) -> None:
    """Register these tools through ``reg``."""
    get_runtime = reg.get_runtime
    tool = reg.tool

    @tool("exec", EXEC)
    async def exec_command(
        ctx: Context,
        agent: AgentArg,
        command: Annotated[
            str | list[str],
            Field(description="A shell string run by /bin/sh -c (pipes, &&, globs work), or an argv list."),
        ],
        cwd: Annotated[str | None, Field(description="Absolute working directory; default /workspace.")] = None,
        env: Annotated[dict[str, str] | None, Field(description="Extra environment variables.")] = None,
        stdin: Annotated[str | None, Field(description="Text fed to the command's standard input.")] = None,
        timeout: Annotated[
            float, Field(gt=0, le=86400, description="Seconds before the command and its children are killed.")
        ] = 600,
        max_output_bytes: Annotated[
            int, Field(ge=0, description="Cap per stream; beyond it the middle of the output is dropped.")
        ] = 1024 * 1024,
    ) -> ExecOutput:
        """Run a command in the agent's machine and return exit_code, stdout and stderr. A non-zero exit code is a
        normal result. A string runs under /bin/sh -c; a list runs without a shell. Long commands send progress;
        a command still running at `timeout` is killed. Your harness may stop waiting sooner (its tool timeout):
        start servers, watchers and long jobs with process_start instead and read their output with
        process_output. The machine has no network unless its agent's policy gives it one: with network
        'allowlist', connections go through Spinup's egress proxy and `network_denied` lists those it refused."""

        async def progress(elapsed: float, output_bytes: int) -> None:
            await ctx.report_progress(
                elapsed, timeout, f"running for {elapsed:.0f}s, {output_bytes} bytes of output so far"
            )

        result = await get_runtime().exec(
            agent,
            command,
            cwd=cwd,
            env=env,
            stdin=stdin.encode() if stdin is not None else None,
            timeout=timeout,
            output_cap=max_output_bytes,
            on_progress=progress,
        )
        return ExecOutput.of(result)
