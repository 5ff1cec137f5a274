"""The MCP tools agent_create, agent_allow, agent_list, agent_status, agent_stop, agent_remove."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from spinup.runtime import Policy, check_granted

from ..schemas import (
    AgentInfo,
    AgentList,
    AgentStatusResult,
    AllowlistResult,
)
from .common import (
    ADDITIVE,
    DESTRUCTIVE,
    IDEMPOTENT,
    READ_ONLY,
    AgentArg,
    Registrar,
)


def register(reg: Registrar) -> None:
    """Register these tools through ``reg``."""
    get_runtime = reg.get_runtime
    tool = reg.tool
    grants = reg.grants
    network_help = (
        "'none' (default, isolated), 'allowlist' (only the hosts in `allow`, through Spinup's egress proxy) or "
        "'host' (shares the host network)."
        if "host-network" in grants
        else "'none' (default, isolated) or 'allowlist' (only the hosts in `allow`, through Spinup's egress proxy). "
        "'host' is not granted to MCP clients on this server (the operator's call)."
    )
    allow_help = (
        "With network 'allowlist': hosts the machine may reach, e.g. ['pypi', 'api.example.com', '*.github.com'] "
        "(presets: pypi, npm, debian, github, anthropic, openai). Setting rules implies network 'allowlist'."
        if "allowlist" in grants
        else "Allowlist rules are not granted to MCP clients on this server: the operator sets them with "
        "`spinup agent policy NAME --allow RULE`."
    )
    user_help = (
        "'agent' (default: uid 1000, no capabilities) or 'root' (needed for apt)."
        if "root" in grants
        else "'agent' (default: uid 1000, no capabilities). 'root' is not granted to MCP clients on this server."
    )

    async def agent_create(
        name: Annotated[str, Field(description="Lowercase letters, digits and '-', 1-63 chars.")],
        image: Annotated[str | None, Field(description="Base image; default spinup/base:bookworm.")] = None,
        network: Literal["none", "allowlist", "host"] = "none",  # described below: the text depends on the grants
        user: Literal["agent", "root"] = "agent",
        cpus: Annotated[float | None, Field(description="CPU cores (fractional); default all.")] = None,
        memory: Annotated[str | None, Field(description="Memory limit such as '512m' or '8g'; default 4g.")] = None,
        pids: Annotated[int | None, Field(description="Most processes and threads; default 1024.")] = None,
        disk: Annotated[
            str | None, Field(description="Quota on what the machine writes, e.g. '10g'; default 20g.")
        ] = None,
        allow: list[str] | None = None,  # described below: the text depends on the grants
    ) -> AgentInfo:
        """Create a new agent: a named, durable computer (a Debian machine with python3, pip, git, node, npm by
        default) that keeps its files and installed packages across sessions. Fails if the name is taken. It runs
        with no network, as a non-root user, with resource limits, unless the arguments say otherwise."""
        runtime = get_runtime()
        if allow and network == "none":
            network = "allowlist"  # rules given: the default network cannot have meant "none"
        policy = Policy().updated(
            network=network, user=user, cpus=cpus, memory=memory, pids=pids, disk=disk, allow=allow
        )
        return AgentInfo.of(await runtime.create_agent(name, image, policy, grants))

    # Annotations are strings here (postponed evaluation) and resolve against module globals only:
    # the grant-dependent descriptions go in as objects.
    agent_create.__annotations__["network"] = Annotated[
        Literal["none", "allowlist", "host"], Field(description=network_help)
    ]
    agent_create.__annotations__["allow"] = Annotated[list[str] | None, Field(description=allow_help)]
    agent_create.__annotations__["user"] = Annotated[Literal["agent", "root"], Field(description=user_help)]
    tool("agent_create", ADDITIVE, takes_agent=False)(agent_create)

    async def agent_allow(
        agent: AgentArg,
        add: Annotated[
            list[str] | None, Field(description="Rules to add, e.g. ['pypi', 'api.example.com:443'].")
        ] = None,
        remove: Annotated[list[str] | None, Field(description="Rules to remove, as listed in the policy.")] = None,
    ) -> AllowlistResult:
        """Show or change the hosts an 'allowlist' agent may reach (with neither argument: show them). A change
        applies to the next connection; the machine keeps running. Removing is always allowed; adding needs the
        operator's grant. A refused connection shows in exec's `network_denied`."""
        runtime = get_runtime()
        current = runtime.get_agent(agent).policy
        if add or remove:
            drop = {rule.strip().lower() for rule in remove or []}
            rules = [r for r in (*current.allow, *(add or [])) if r.strip().lower() not in drop]
            policy = current.updated(allow=rules)
            if add:
                check_granted(policy, grants)
            current = (await runtime.set_policy(agent, policy)).policy
        return AllowlistResult(agent=agent, network=current.network, allow=list(current.allow))

    tool("agent_allow", ADDITIVE)(agent_allow)

    @tool("agent_list", READ_ONLY, takes_agent=False)
    async def agent_list() -> AgentList:
        """List all agents with their state (on a server bound to one agent: only it)."""
        return AgentList(agents=[AgentInfo.of(a) for a in get_runtime().list_agents() if reg.visible(a.name)])

    @tool("agent_status", READ_ONLY)
    async def agent_status(agent: AgentArg) -> AgentStatusResult:
        """Show an agent, the current state of its machine, what it uses now (CPU, memory, processes, disk,
        snapshot store, uptime, last activity), who paused it, the commands running, and its recent events."""
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
        Cannot be undone. (On a server bound to this agent, the next call starts a new, empty one; other agents
        are refused there.)"""
        reg.check_agent(agent)
        return AgentInfo.of(await get_runtime().remove_agent(agent))
