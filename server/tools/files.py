"""The MCP tools file_read, file_write, file_list, file_stat, file_mkdir, file_move, file_delete."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from ..schemas import (
    FileEntry,
    FileListing,
    FileRead,
)
from .common import (
    DESTRUCTIVE,
    IDEMPOTENT,
    OVERWRITES,
    READ_ONLY,
    AgentArg,
    PathArg,
    Registrar,
)


def register(reg: Registrar) -> None:
    """Register these tools through ``reg``."""
    get_runtime = reg.get_runtime
    tool = reg.tool

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
        read = await get_runtime().on_files(
            agent, lambda files: files.read(path, offset=offset, limit=limit, unit=unit, encoding=encoding)
        )
        return FileRead.of(read)

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
        written = await get_runtime().on_files(
            agent,
            lambda files: files.write(path, content, encoding=encoding, mode=mode, create_parents=create_parents),
        )
        return FileEntry.of(written)

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
        entries, cut = await get_runtime().on_files(
            agent, lambda files: files.list(path, recursive=recursive, pattern=pattern, max_entries=max_entries)
        )
        return FileListing(path=path, entries=[FileEntry.of(e) for e in entries], truncated=cut)

    @tool("file_stat", READ_ONLY)
    async def file_stat(agent: AgentArg, path: PathArg) -> FileEntry:
        """Type, size, permissions and modification time of one path (a symlink is shown as itself)."""
        return FileEntry.of(await get_runtime().on_files(agent, lambda files: files.stat(path)))

    @tool("file_mkdir", IDEMPOTENT)
    async def file_mkdir(
        agent: AgentArg,
        path: PathArg,
        mode: Annotated[str | None, Field(description="Octal permissions; default '0755'.")] = None,
    ) -> FileEntry:
        """Create a directory and any missing parents. An existing directory is not an error."""
        return FileEntry.of(await get_runtime().on_files(agent, lambda files: files.mkdir(path, mode=mode)))

    @tool("file_move", DESTRUCTIVE)
    async def file_move(
        agent: AgentArg,
        source: PathArg,
        destination: Annotated[str, Field(description="Absolute new path (not a directory to move into).")],
        overwrite: Annotated[bool, Field(description="Replace an existing file at destination.")] = False,
    ) -> FileEntry:
        """Move or rename a file or directory in the agent's machine."""
        moved = await get_runtime().on_files(agent, lambda files: files.move(source, destination, overwrite=overwrite))
        return FileEntry.of(moved)

    @tool("file_delete", DESTRUCTIVE)
    async def file_delete(
        agent: AgentArg,
        path: PathArg,
        recursive: Annotated[bool, Field(description="Required to delete a non-empty directory.")] = False,
    ) -> FileEntry:
        """Delete a file, symlink or directory in the agent's machine. Returns what was deleted."""
        deleted = await get_runtime().on_files(agent, lambda files: files.delete(path, recursive=recursive))
        return FileEntry.of(deleted)
