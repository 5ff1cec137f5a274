"""The MCP tools: thin, typed adapters from a call to a runtime method.

Every tool takes an ``agent`` argument unless the server is bound to one agent
(``spinup mcp --agent NAME``), in which case the argument is removed from the schema and the
bound agent is used (created on first use).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal, TypeVar

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import Field, ValidationError

from spinup.runtime import MCP_GRANTS, Policy, Runtime, SpinupError, check_granted

from .schemas import (
    AgentInfo,
    AgentList,
    AgentStatusResult,
    DiffResult,
    ExecOutput,
    FileEntry,
    FileListing,
    FileRead,
    PackageInfo,
    PackageInstallResult,
    PackageManifest,
    RestoreResult,
    SecretEntry,
    SecretList,
    SnapshotCreated,
    SnapshotInfo,
    SnapshotList,
)

log = logging.getLogger(__name__)
R = TypeVar("R")
AgentArg = Annotated[str, Field(description="Name of the agent to act on (see agent_list).")]
SnapshotArg = Annotated[str, Field(description="Snapshot id such as s-1a2b3c4d5e6f (see snapshot_list).")]
ManagerArg = Annotated[
    Literal["pip", "npm", "apt"],
    Field(description="pip (the agent's venv, on PATH), npm (global, bins on PATH) or apt (needs a root policy)."),
]
PathArg = Annotated[str, Field(description="Absolute path inside the agent's machine, e.g. /workspace/app.py.")]

READ_ONLY = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False)
ADDITIVE = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False)
IDEMPOTENT = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=True, open_world_hint=False)
OVERWRITES = ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=True, open_world_hint=False)
DESTRUCTIVE = ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=False, open_world_hint=False)
# exec can do anything the machine allows, including network access under a 'host' policy.
EXEC = ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=False, open_world_hint=True)


def _tool_errors(fn: Callable[..., Awaitable[R]], redact: Callable[[str], str]) -> Callable[..., Awaitable[R]]:
    """Turn runtime errors into tool errors whose text the model can act on, credential values redacted.

    An unexpected exception is logged (redacted) and reported as an internal error, never as its raw text.
    """

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> R:
        try:
            return await fn(*args, **kwargs)
        except SpinupError as exc:
            raise ToolError(redact(str(exc))) from exc
        except (ToolError, ValidationError):
            raise
        except Exception as exc:
            log.exception("tool %s failed", fn.__name__)
            raise ToolError(
                f"Internal error in {fn.__name__} ({type(exc).__name__}); the details are in the Spinup server's "
                f"log. The server keeps serving; if it repeats, run: spinup doctor"
            ) from exc

    return wrapper


def _bind_agent(fn: Callable[..., Awaitable[R]], resolve: Callable[[], Awaitable[str]]) -> Callable[..., Awaitable[R]]:
    """A copy of ``fn`` without the ``agent`` parameter, acting on the bound agent."""
    signature = inspect.signature(fn, eval_str=True)

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> R:
        return await fn(*args, agent=await resolve(), **kwargs)

    wrapper.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[p for p in signature.parameters.values() if p.name != "agent"]
    )
    wrapper.__annotations__ = {p.name: p.annotation for p in signature.parameters.values() if p.name != "agent"} | {
        "return": signature.return_annotation
    }
    return wrapper


REPORT_INTERVAL = 0.5  # seconds between progress notifications of one call


def progress_reporter(ctx: Context, interval: float | None = None) -> Callable[[str, float | None], None]:
    """A thread-safe, throttled progress callback that forwards to the client (if it asked for progress)."""
    interval = REPORT_INTERVAL if interval is None else interval
    loop = asyncio.get_running_loop()
    last = [0.0]
    count = [0]

    def report(message: str, amount: float | None) -> None:
        now = time.monotonic()
        if count[0] and now - last[0] < interval:
            return
        last[0] = now
        count[0] += 1
        progress = amount if amount is not None else float(count[0])
        loop.call_soon_threadsafe(lambda: loop.create_task(ctx.report_progress(progress, None, message)))

    return report


def register_tools(
    server: MCPServer[Any],
    get_runtime: Callable[[], Runtime],
    bound_agent: str | None,
    grants: frozenset[str] = frozenset(MCP_GRANTS),
) -> None:
    """Register every tool on ``server``; ``grants`` is what agent_create may give (Settings.mcp_grants)."""
    network_help = (
        "'none' (default, isolated) or 'host' (shares the host network)."
        if "host-network" in grants
        else "'none' (default, isolated). 'host' is not granted to MCP clients on this server (the operator's call)."
    )
    user_help = (
        "'agent' (default: uid 1000, no capabilities) or 'root' (needed for apt)."
        if "root" in grants
        else "'agent' (default: uid 1000, no capabilities). 'root' is not granted to MCP clients on this server."
    )

    async def resolve_bound() -> str:
        assert bound_agent is not None
        runtime = get_runtime()
        if runtime.find_agent(bound_agent) is None:
            await runtime.ensure_agent(bound_agent)
        return bound_agent

    def tool(name: str, annotations: ToolAnnotations, takes_agent: bool = True) -> Callable[[Callable[..., Any]], Any]:
        def decorate(fn: Callable[..., Awaitable[Any]]) -> Any:
            wrapped = _tool_errors(fn, lambda text: get_runtime().redact(text))
            if takes_agent and bound_agent is not None:
                wrapped = _bind_agent(wrapped, resolve_bound)
            # Docstrings wrap at the line length; a model reads the description as one paragraph.
            description = " ".join((inspect.getdoc(fn) or "").split())
            server.add_tool(wrapped, name=name, description=description, annotations=annotations)
            return fn

        return decorate

    # agents

    async def agent_create(
        name: Annotated[str, Field(description="Lowercase letters, digits and '-', 1-63 chars.")],
        image: Annotated[str | None, Field(description="Base image; default spinup/base:bookworm.")] = None,
        network: Literal["none", "host"] = "none",  # described below: the text depends on the grants
        user: Literal["agent", "root"] = "agent",
        cpus: Annotated[float | None, Field(description="CPU cores (fractional); default all.")] = None,
        memory: Annotated[str | None, Field(description="Memory limit such as '512m' or '8g'; default 4g.")] = None,
        pids: Annotated[int | None, Field(description="Most processes and threads; default 1024.")] = None,
        disk: Annotated[
            str | None, Field(description="Quota on what the machine writes, e.g. '10g'; default 20g.")
        ] = None,
    ) -> AgentInfo:
        """Create a new agent: a named, durable computer (a Debian machine with python3, pip, git, node, npm by
        default) that keeps its files and installed packages across sessions. Fails if the name is taken. It runs
        with no network, as a non-root user, with resource limits, unless the arguments say otherwise."""
        runtime = get_runtime()
        policy = Policy().updated(network=network, user=user, cpus=cpus, memory=memory, pids=pids, disk=disk)
        check_granted(policy, grants)
        return AgentInfo.of(await runtime.create_agent(name, image, policy))

    # Annotations are strings here (postponed evaluation) and resolve against module globals only:
    # the grant-dependent descriptions go in as objects.
    agent_create.__annotations__["network"] = Annotated[Literal["none", "host"], Field(description=network_help)]
    agent_create.__annotations__["user"] = Annotated[Literal["agent", "root"], Field(description=user_help)]
    tool("agent_create", ADDITIVE, takes_agent=False)(agent_create)

    @tool("agent_list", READ_ONLY, takes_agent=False)
    async def agent_list() -> AgentList:
        """List all agents with their state."""
        return AgentList(agents=[AgentInfo.of(a) for a in get_runtime().list_agents()])

    @tool("agent_status", READ_ONLY)
    async def agent_status(agent: AgentArg) -> AgentStatusResult:
        """Show an agent, the current state of its machine, and its recent lifecycle events."""
        return AgentStatusResult.of(await get_runtime().status(agent))

    @tool("agent_stop", IDEMPOTENT)
    async def agent_stop(
        agent: AgentArg,
        hibernate: Annotated[
            bool, Field(description="Also remove the machine to free disk; it is rebuilt from the snapshot.")
        ] = False,
    ) -> AgentInfo:
        """Stop an agent's machine to free CPU and memory, snapshotting it first if anything changed. Files and
        packages are kept; the next call on the agent starts (or rebuilds) it."""
        return AgentInfo.of(await get_runtime().stop_agent(agent, hibernate=hibernate))

    @tool("agent_remove", DESTRUCTIVE, takes_agent=False)
    async def agent_remove(agent: AgentArg) -> AgentInfo:
        """Permanently delete an agent, its machine with every file in it, and its snapshots that no fork uses.
        Cannot be undone. (On a server bound to this agent, the next call starts a new, empty one.)"""
        return AgentInfo.of(await get_runtime().remove_agent(agent))

    # exec

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
        start long jobs in the background with `nohup cmd > log 2>&1 &` and poll the log. The machine has no
        network unless its agent was created with network 'host'."""

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

    # files

    @tool("file_read", READ_ONLY)
    async def file_read(
        agent: AgentArg,
        path: PathArg,
        offset: Annotated[int, Field(ge=0, description="First line (or byte) to return, counting from 0.")] = 0,
        limit: Annotated[
            int | None, Field(ge=0, description="How many lines (or bytes) to return; all if unset.")
        ] = None,
        unit: Annotated[Literal["lines", "bytes"], Field(description="Unit of offset and limit.")] = "lines",
        encoding: Annotated[
            Literal["auto", "text", "base64"],
            Field(description="auto: UTF-8 text, or base64 if the file is binary; text; base64."),
        ] = "auto",
    ) -> FileRead:
        """Read a file from the agent's machine, whole or a range of lines or bytes. Binary files come back as
        base64. Use offset/limit for big files."""
        files = await get_runtime().files(agent)
        return FileRead.of(await files.read(path, offset=offset, limit=limit, unit=unit, encoding=encoding))

    @tool("file_write", OVERWRITES)
    async def file_write(
        agent: AgentArg,
        path: PathArg,
        content: Annotated[str, Field(description="The whole new content (text, or base64 if encoding='base64').")],
        encoding: Annotated[Literal["text", "base64"], Field(description="How content is encoded.")] = "text",
        mode: Annotated[
            str | None, Field(description="Octal permissions such as '0755'; default: the old file's, or 0644.")
        ] = None,
        create_parents: Annotated[bool, Field(description="Create missing parent directories.")] = True,
    ) -> FileEntry:
        """Create or overwrite a file in the agent's machine with the given content."""
        files = await get_runtime().files(agent)
        return FileEntry.of(
            await files.write(path, content, encoding=encoding, mode=mode, create_parents=create_parents)
        )

    @tool("file_list", READ_ONLY)
    async def file_list(
        agent: AgentArg,
        path: Annotated[str, Field(description="Absolute directory path.")] = "/workspace",
        recursive: Annotated[bool, Field(description="Include everything below, not just direct children.")] = False,
        pattern: Annotated[
            str | None, Field(description="Glob on names ('*.py'), or on relative paths if it has '/'.")
        ] = None,
        max_entries: Annotated[int, Field(ge=1, le=100000, description="Most entries to return.")] = 1000,
    ) -> FileListing:
        """List a directory in the agent's machine with types, sizes, permissions and modification times."""
        files = await get_runtime().files(agent)
        entries, cut = await files.list(path, recursive=recursive, pattern=pattern, max_entries=max_entries)
        return FileListing(path=path, entries=[FileEntry.of(e) for e in entries], truncated=cut)

    @tool("file_stat", READ_ONLY)
    async def file_stat(agent: AgentArg, path: PathArg) -> FileEntry:
        """Type, size, permissions and modification time of one path (a symlink is shown as itself)."""
        return FileEntry.of(await (await get_runtime().files(agent)).stat(path))

    @tool("file_mkdir", IDEMPOTENT)
    async def file_mkdir(
        agent: AgentArg,
        path: PathArg,
        mode: Annotated[str | None, Field(description="Octal permissions; default '0755'.")] = None,
    ) -> FileEntry:
        """Create a directory and any missing parents. An existing directory is not an error."""
        return FileEntry.of(await (await get_runtime().files(agent)).mkdir(path, mode=mode))

    @tool("file_move", DESTRUCTIVE)
    async def file_move(
        agent: AgentArg,
        source: PathArg,
        destination: Annotated[str, Field(description="Absolute new path (not a directory to move into).")],
        overwrite: Annotated[bool, Field(description="Replace an existing file at destination.")] = False,
    ) -> FileEntry:
        """Move or rename a file or directory in the agent's machine."""
        files = await get_runtime().files(agent)
        return FileEntry.of(await files.move(source, destination, overwrite=overwrite))

    @tool("file_delete", DESTRUCTIVE)
    async def file_delete(
        agent: AgentArg,
        path: PathArg,
        recursive: Annotated[bool, Field(description="Required to delete a non-empty directory.")] = False,
    ) -> FileEntry:
        """Delete a file, symlink or directory in the agent's machine. Returns what was deleted."""
        return FileEntry.of(await (await get_runtime().files(agent)).delete(path, recursive=recursive))

    # snapshots

    @tool("snapshot_create", ADDITIVE)
    async def snapshot_create(
        ctx: Context,
        agent: AgentArg,
        label: Annotated[str, Field(max_length=200, description="A note to find it by, e.g. 'before upgrade'.")] = "",
    ) -> SnapshotCreated:
        """Save the agent's machine (files, installed packages) as a snapshot you can restore or fork later. Only
        what changed since the last snapshot is stored. Take one before risky work."""
        return SnapshotCreated.of(await get_runtime().snapshot(agent, label, progress_reporter(ctx)))

    @tool("snapshot_list", READ_ONLY)
    async def snapshot_list(agent: AgentArg) -> SnapshotList:
        """List an agent's snapshots, oldest first, and its current head."""
        runtime = get_runtime()
        return SnapshotList(
            snapshots=[SnapshotInfo.of(s) for s in runtime.list_snapshots(agent)],
            head=runtime.get_agent(agent).head_snapshot,
        )

    @tool("snapshot_restore", DESTRUCTIVE)
    async def snapshot_restore(ctx: Context, agent: AgentArg, snapshot: SnapshotArg) -> RestoreResult:
        """Replace the agent's machine with the state saved in a snapshot. Work not yet snapshotted is saved first
        (saved_before_restore), so a restore can itself be undone."""
        started = time.monotonic()
        result = await get_runtime().restore(agent, snapshot, progress_reporter(ctx))
        return RestoreResult(
            agent=AgentInfo.of(result.agent),
            restored=snapshot,
            saved_before_restore=result.saved_before_restore,
            duration_s=round(time.monotonic() - started, 4),
        )

    @tool("snapshot_fork", ADDITIVE, takes_agent=False)
    async def snapshot_fork(
        snapshot: SnapshotArg,
        name: Annotated[str, Field(description="Name of the new agent (lowercase letters, digits, '-').")],
    ) -> AgentInfo:
        """Create a new, independent agent whose machine starts from a snapshot (e.g. to try two approaches)."""
        return AgentInfo.of(await get_runtime().fork(snapshot, name))

    @tool("snapshot_diff", READ_ONLY)
    async def snapshot_diff(
        agent: AgentArg,
        source: Annotated[str | None, Field(description="Snapshot to compare from; default the agent's head.")] = None,
        target: Annotated[str | None, Field(description="Snapshot to compare to; default the live machine.")] = None,
    ) -> DiffResult:
        """List files added, changed and removed between two snapshots, or between a snapshot and the live
        machine (by default: what changed since the last snapshot)."""
        return DiffResult.of(await get_runtime().diff(agent, source, target))

    @tool("snapshot_delete", DESTRUCTIVE, takes_agent=False)
    async def snapshot_delete(snapshot: SnapshotArg) -> SnapshotInfo:
        """Delete a snapshot. Refused for a snapshot that another builds on or that is an agent's head."""
        return SnapshotInfo.of(await get_runtime().delete_snapshot(snapshot))

    # credentials

    @tool("secret_set", ADDITIVE, takes_agent=False)
    async def secret_set(
        name: Annotated[str, Field(description="Credential name: letters, digits, '_' (e.g. GITHUB_TOKEN).")],
        value: Annotated[str, Field(description="The secret value (at least 4 characters).")],
    ) -> SecretEntry:
        """Store a credential, encrypted at rest. WARNING: the value passes through this conversation (and the
        model provider's logs); prefer asking the user to run `spinup secret set NAME` in a terminal. Refuses to
        replace an existing credential (use the CLI for that). The value is never returned by any tool and is
        redacted as [REDACTED:NAME] from command output, file reads and errors. An operator binds it to an agent
        with `spinup secret bind AGENT NAME`."""
        return SecretEntry.of(get_runtime().set_secret(name, value, overwrite=False), bound_to=[])

    @tool("secret_list", READ_ONLY, takes_agent=False)
    async def secret_list() -> SecretList:
        """List stored credentials: names, fingerprints and the agents each is bound to. Values are never shown.
        A bound credential is in the agent's commands as an environment variable and/or a file under
        /run/spinup/secrets/."""
        return SecretList(
            secrets=[SecretEntry.of(item.info, bound_to=item.bound_to) for item in get_runtime().list_secrets()]
        )

    # packages

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
