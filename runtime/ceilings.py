"""Operator ceilings: the most one request may ask of the host, whatever the caller.

A model over MCP chooses its own arguments; these bound them. Each ceiling is a setting the
operator can raise (an environment variable, read once by :class:`Ceilings.from_env`), and every
refusal names the ceiling and that setting. The ``mcp_*`` ones bound the policies MCP clients ask
``agent_create`` and ``snapshot_fork`` for (the CLI is the operator's); the others bound every caller.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

from .errors import InvalidInput, LimitReached
from .models import Policy, format_size, parse_size

GiB = 1 << 30
MiB = 1 << 20

# (field, environment variable, default, whether it is a size)
_SETTINGS = {
    "output_bytes": ("SPINUP_MAX_OUTPUT_BYTES", 64 * MiB, True),
    "read_bytes": ("SPINUP_MAX_READ_BYTES", 128 * MiB, True),
    "list_bytes": ("SPINUP_MAX_LIST_BYTES", 1 * GiB, True),
    "snapshots": ("SPINUP_MAX_SNAPSHOTS", 1000, False),
    "store_bytes": ("SPINUP_STORE_QUOTA", 50 * GiB, True),
    "mcp_memory": ("SPINUP_MCP_MAX_MEMORY", 16 * GiB, True),
    "mcp_disk": ("SPINUP_MCP_MAX_DISK", 100 * GiB, True),
    "mcp_pids": ("SPINUP_MCP_MAX_PIDS", 4096, False),
    "mcp_agents": ("SPINUP_MCP_MAX_AGENTS", 50, False),
}


@dataclass(frozen=True)
class Ceilings:
    """The operator's ceilings (see the module docstring and the README's list of settings)."""

    output_bytes: int = 64 * MiB  # exec max_output_bytes, per stream
    read_bytes: int = 128 * MiB  # what one file_read returns
    list_bytes: int = 1 * GiB  # what one file_list may stream through the daemon (the subtree's tar)
    snapshots: int = 1000  # snapshots of one agent that snapshot_create may reach
    store_bytes: int = 50 * GiB  # compressed bytes one agent's snapshots may hold in the store
    mcp_memory: int = 16 * GiB
    mcp_disk: int = 100 * GiB  # and disk=none is refused over MCP
    mcp_pids: int = 4096
    mcp_agents: int = 50  # agents in all, past which MCP clients create no more

    @classmethod
    def from_env(cls) -> Ceilings:
        """The ceilings the environment sets, the defaults elsewhere; a malformed value is a clear error."""
        values: dict[str, int] = {}
        for name, (variable, default, is_size) in _SETTINGS.items():
            text = os.environ.get(variable, "").strip()
            if not text:
                values[name] = default
                continue
            try:
                value = parse_size(text) if is_size else int(text)
            except ValueError as exc:
                kind = "a size such as '64m' or '16g'" if is_size else "a whole number"
                raise InvalidInput(f"{variable}={text!r} is not {kind}.") from exc
            if value < 1:
                raise InvalidInput(f"{variable} must be at least 1.")
            values[name] = value
        return cls(**values)

    @staticmethod
    def setting(name: str) -> str:
        """The environment variable that sets ceiling ``name``."""
        return _SETTINGS[name][0]

    def _past(self, name: str, what: str, asked: str, remedy: str) -> InvalidInput:
        limit = getattr(self, name)
        shown = format_size(limit) if _SETTINGS[name][2] else str(limit)
        return InvalidInput(
            f"{what} {asked} is past this server's ceiling of {shown} ({self.setting(name)}). {remedy} "
            f"The operator can raise it with {self.setting(name)}."
        )

    def check_output(self, output_cap: int) -> None:
        """Refuse an exec output cap past the ceiling."""
        if output_cap > self.output_bytes:
            raise self._past(
                "output_bytes", "max_output_bytes", str(output_cap),
                "Ask for less: the middle of a longer output is dropped, or start the command with process_start "
                "and read its output in parts with process_output.",
            )  # fmt: skip

    def check_read(self, size: int, limited: bool) -> None:
        """Refuse a file read that would return more than the ceiling (``limited``: the caller gave a limit)."""
        if size > self.read_bytes:
            remedy = "Ask for a smaller limit" if limited else "Read it in parts: give offset and limit"
            raise self._past(
                "read_bytes", "Reading", f"{size} bytes at once",
                f"{remedy} (unit 'bytes', at most {self.read_bytes} a call).",
            )  # fmt: skip

    def list_past(self, path: str) -> LimitReached:
        """The error for a listing whose subtree streams more than the ceiling through the daemon."""
        return LimitReached(
            f"Listing {path} streams more than {format_size(self.list_bytes)} through Docker (the archive API sends "
            f"the directory's whole subtree, contents included): this server's ceiling ({self.setting('list_bytes')}). "
            f"List a smaller directory, or run `find {path} -maxdepth 1 -printf '%y %s %p\\n'` with exec."
        )

    def check_policy(self, policy: Policy, agents: int) -> None:
        """Refuse a policy an MCP client asks for past the ceilings, or a new agent past the number allowed."""
        how = "Ask for less, or the operator creates the agent with `spinup agent create`."
        if policy.memory > self.mcp_memory:
            raise self._past("mcp_memory", "memory", format_size(policy.memory), how)
        if policy.pids > self.mcp_pids:
            raise self._past("mcp_pids", "pids", str(policy.pids), how)
        if policy.disk is None:
            raise InvalidInput(
                f"disk='none' (no disk quota) is not for MCP clients on this server: ask for a size up to "
                f"{format_size(self.mcp_disk)} ({self.setting('mcp_disk')}), or the operator creates the agent with "
                f"`spinup agent create NAME --disk none`."
            )
        if policy.disk > self.mcp_disk:
            raise self._past("mcp_disk", "disk", format_size(policy.disk), how)
        if agents >= self.mcp_agents:
            raise LimitReached(
                f"This server already has {agents} agents, its ceiling for MCP clients ({self.setting('mcp_agents')}"
                f"={self.mcp_agents}). Remove agents you no longer need (agent_remove), or the operator raises it."
            )

    def check_snapshot(self, agent: str, snapshots: int, stored: int) -> None:
        """Refuse one more snapshot of an agent with ``snapshots`` already holding ``stored`` bytes in the store."""
        if snapshots >= self.snapshots:
            raise LimitReached(
                f"Agent '{agent}' has {snapshots} snapshots, this server's ceiling ({self.setting('snapshots')}="
                f"{self.snapshots}). Delete old ones with snapshot_delete (CLI: spinup snapshot delete), or the "
                f"operator raises it."
            )
        if stored >= self.store_bytes:
            raise LimitReached(
                f"Agent '{agent}''s snapshots hold {format_size(stored)} in the store, its quota of "
                f"{format_size(self.store_bytes)} ({self.setting('store_bytes')}). Delete old snapshots with "
                f"snapshot_delete (then `spinup snapshot gc` frees the space), or the operator raises the quota."
            )


assert set(_SETTINGS) == {f.name for f in fields(Ceilings)}
