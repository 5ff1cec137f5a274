"""The MCP tools process_start, process_list, process_output, process_wait, process_signal, process_remove."""

from __future__ import annotations

from typing import Annotated, Literal

from mcp.server.mcpserver import Context
from pydantic import Field

from ..schemas import ProcessEntry, ProcessList, ProcessRead, ProcessWaited
from .common import DESTRUCTIVE, EXEC, READ_ONLY, AgentArg, Registrar

ProcessArg = Annotated[str, Field(description="Process id (p-...) or the name given at process_start.")]


def register(reg: Registrar) -> None:
    """Register these tools through ``reg``."""
    get_runtime = reg.get_runtime
    tool = reg.tool

    @tool("process_start", EXEC)
    async def process_start(
        agent: AgentArg,
        command: Annotated[str | list[str], Field(description="A shell string run by /bin/sh -c, or an argv list.")],
        cwd: Annotated[str | None, Field(description="Absolute working directory; default /workspace.")] = None,
        env: Annotated[dict[str, str] | None, Field(description="Extra environment variables.")] = None,
        name: Annotated[str | None, Field(description="A name to find it by, e.g. 'dev-server'.")] = None,
    ) -> ProcessEntry:
        """Start a command in the background and return its id at once: dev servers (npm run dev), watchers,
        databases, long builds or training runs. It keeps running after this call, this session and the server
        end. Read its output with process_output (from an offset, to tail it), wait with process_wait, stop it
        with process_signal. Use exec instead for commands that finish within a minute or two."""
        runtime = get_runtime()
        return ProcessEntry.of(await runtime.process_start(agent, command, cwd=cwd, env=env, process_name=name))

    @tool("process_list", READ_ONLY)
    async def process_list(agent: AgentArg) -> ProcessList:
        """List the agent's background processes: state (running, exited, lost), exit code, output sizes."""
        return ProcessList(processes=[ProcessEntry.of(p) for p in await get_runtime().process_list(agent)])

    @tool("process_output", READ_ONLY)
    async def process_output(
        agent: AgentArg,
        process: ProcessArg,
        stream: Literal["stdout", "stderr"] = "stdout",
        offset: Annotated[int, Field(ge=0, description="Byte offset to read from: 0, or the last next_offset.")] = 0,
        max_bytes: Annotated[int, Field(ge=1, le=1024 * 1024, description="Most bytes returned.")] = 65536,
    ) -> ProcessRead:
        """Read a background process's stdout or stderr from a byte offset. Pass the returned next_offset next
        time to get only new output; eof says the process ended and all was read."""
        read = await get_runtime().process_output(agent, process, stream=stream, offset=offset, max_bytes=max_bytes)
        return ProcessRead.of(read, process=ProcessEntry.of(read.process))

    @tool("process_wait", READ_ONLY)
    async def process_wait(
        ctx: Context,
        agent: AgentArg,
        process: ProcessArg,
        timeout: Annotated[float, Field(gt=0, le=86400, description="Most seconds to wait.")] = 60,
    ) -> ProcessWaited:
        """Wait until a background process ends (or the timeout passes), with progress; returns its state."""

        async def progress(elapsed: float, output_bytes: int) -> None:
            await ctx.report_progress(elapsed, timeout, f"still running after {elapsed:.0f}s, {output_bytes} bytes out")

        info, running = await get_runtime().process_wait(agent, process, timeout, on_progress=progress)
        return ProcessWaited(process=ProcessEntry.of(info), still_running=running)

    @tool("process_signal", DESTRUCTIVE)
    async def process_signal(
        agent: AgentArg,
        process: ProcessArg,
        signal: Annotated[str, Field(description="TERM (default), INT, KILL, HUP, QUIT, USR1, USR2, STOP, CONT.")] = (
            "TERM"
        ),
    ) -> ProcessEntry:
        """Send a signal to a background process's whole process group (and to anything it started that left
        the group, e.g. with nohup or setsid). TERM asks it to stop; KILL forces it."""
        return ProcessEntry.of(await get_runtime().process_signal(agent, process, signal))

    @tool("process_remove", DESTRUCTIVE)
    async def process_remove(agent: AgentArg, process: ProcessArg) -> ProcessEntry:
        """Forget an ended background process and its output (a running one must be signalled first)."""
        return ProcessEntry.of(await get_runtime().process_remove(agent, process))
