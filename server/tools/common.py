"""What every MCP tool shares: argument types, annotations, error translation, agent binding, progress."""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import Field, ValidationError

from spinup.runtime import OutsideBinding, Runtime, SpinupError

from ..observe import note_internal_error

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
            note_internal_error()
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


@dataclass(frozen=True)
class Registrar:
    """Registers tools on one server: the runtime they call, the agent it is bound to, the operator's grants."""

    server: MCPServer[Any]
    get_runtime: Callable[[], Runtime]
    bound_agent: str | None
    grants: frozenset[str]

    async def _resolve_bound(self) -> str:
        assert self.bound_agent is not None
        runtime = self.get_runtime()
        if runtime.find_agent(self.bound_agent) is None:
            await runtime.ensure_agent(self.bound_agent)
        return self.bound_agent

    def visible(self, agent: str) -> bool:
        """Whether this server may see ``agent`` (every agent, unless it is bound to one)."""
        return self.bound_agent is None or agent == self.bound_agent

    def check_agent(self, agent: str) -> None:
        """Refuse, on a bound server, an agent other than the bound one."""
        if not self.visible(agent):
            assert self.bound_agent is not None
            raise OutsideBinding(self.bound_agent, f"agent '{agent}'")

    def check_snapshot(self, snapshot_id: str, *, own_only: bool = False) -> None:
        """Refuse, on a bound server, a snapshot that is not its agent's (own, or unless ``own_only`` the one
        it was forked from)."""
        if self.bound_agent is not None:
            self.get_runtime().check_snapshot_of(self.bound_agent, snapshot_id, own_only=own_only)

    def tool(
        self, name: str, annotations: ToolAnnotations, takes_agent: bool = True
    ) -> Callable[[Callable[..., Any]], Any]:
        """A decorator registering ``fn`` as tool ``name`` (without its ``agent`` argument on a bound server)."""

        def decorate(fn: Callable[..., Awaitable[Any]]) -> Any:
            wrapped = _tool_errors(fn, lambda text: self.get_runtime().redact(text))
            if takes_agent and self.bound_agent is not None:
                wrapped = _bind_agent(wrapped, self._resolve_bound)
            # Docstrings wrap at the line length; a model reads the description as one paragraph.
            description = " ".join((inspect.getdoc(fn) or "").split())
            self.server.add_tool(wrapped, name=name, description=description, annotations=annotations)
            return fn

        return decorate
