"""``spinup agent``: create, list, show, stop, rebuild and remove agents, and change their policy."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from spinup.runtime import Policy, Runtime

from ..schemas import AgentInfo, AgentStatusResult
from .common import SubParsers, dispatch, print_json, progress_printer

POLICY_OPTIONS = ("network", "user", "cpus", "memory", "pids", "disk", "nofile", "package_cache", "self_control")


def policy_changes(args: argparse.Namespace) -> dict[str, Any]:
    """The policy options given on the command line (None where not given)."""
    return {key: getattr(args, key) for key in POLICY_OPTIONS}


def add_policy_options(parser: argparse.ArgumentParser) -> None:
    """The ``--network``, ``--user``, ``--cpus`` ... options of ``agent create`` and ``agent policy``."""
    group = parser.add_argument_group("policy (defaults: README, 'Isolation policy')")
    group.add_argument(
        "--network",
        choices=["none", "allowlist", "host"],
        help="'none' (default), 'allowlist' (only what --allow names, through the egress proxy) or 'host' (weaker)",
    )
    group.add_argument(
        "--allow",
        action="append",
        metavar="RULE",
        help="let the machine reach RULE: a host (pypi.org), *.domain, [scheme://]host:port, an address "
        "(127.0.0.1:8080), or a preset (pypi, npm, debian, github, anthropic, openai); repeatable. Implies "
        "--network allowlist. With 'agent policy' it adds to the rules",
    )
    group.add_argument(
        "--intercept",
        action="append",
        metavar="HOST",
        help="terminate HTTPS to HOST in the egress proxy (the agent trusts a CA of its own) so credential "
        "headers bound with 'secret bind --header' are added; repeatable",
    )
    group.add_argument("--user", choices=["agent", "root"], help="who commands run as (default agent, uid 1000)")
    group.add_argument("--cpus", help="CPU cores, fractional, or 'all' (default all)")
    group.add_argument("--memory", help="memory limit such as 512m or 4g (default 4g, no swap)")
    group.add_argument("--pids", type=int, help="most processes and threads (default 1024)")
    group.add_argument("--disk", help="quota on what the machine writes, such as 10g, or 'none' (default 20g)")
    group.add_argument("--nofile", type=int, help="open files per process (default 8192)")
    group.add_argument(
        "--package-cache",
        action=argparse.BooleanOptionalAction,
        help="keep pip's and npm's download caches on the host, for this agent alone (default on; off: in its home)",
    )
    group.add_argument(
        "--self-control",
        action=argparse.BooleanOptionalAction,
        help="an MCP endpoint inside the machine (http://127.0.0.1:7390/mcp, token in $SPINUP_CONTROL_TOKEN) to "
        "snapshot, list and restore this agent alone, served while a Spinup server or `spinup shell` runs "
        "(default off; not with --network host)",
    )


def rule_changes(args: argparse.Namespace, policy: Policy | None = None) -> dict[str, Any]:
    """``--allow``/``--disallow``/``--intercept`` as policy changes: added to ``policy``'s rules when given."""
    allow = list(policy.allow if policy else ()) + list(args.allow or [])
    drop = {rule.strip().lower() for rule in getattr(args, "disallow", None) or []}
    if drop:
        allow = [rule for rule in allow if rule.strip().lower() not in drop]
    intercept = list(policy.intercept if policy else ()) + list(args.intercept or [])
    changes: dict[str, Any] = {}
    if args.allow or drop:
        changes["allow"] = allow
    if args.intercept:
        changes["intercept"] = intercept
    return changes


async def create(rt: Runtime, args: argparse.Namespace) -> int:
    changes = {**policy_changes(args), **rule_changes(args)}
    agent = await rt.create_agent(args.name, args.image, Policy().updated(**changes))
    print_json(AgentInfo.of(agent).model_dump())
    return 0


async def policy(rt: Runtime, args: argparse.Namespace) -> int:
    agent = rt.get_agent(args.name)
    changes = {**policy_changes(args), **rule_changes(args, agent.policy)}
    if changes.get("network") in ("none", "host") and "allow" not in changes:
        changes["allow"], changes["intercept"] = [], []  # leaving the allowlist drops its rules
    if any(value is not None for value in changes.values()):
        agent = await rt.set_policy(args.name, agent.policy.updated(**changes))
    print_json(agent.policy.model_dump())
    return 0


async def listing(rt: Runtime, args: argparse.Namespace) -> int:
    agents = rt.list_agents()
    if args.json:
        print_json([AgentInfo.of(a).model_dump() for a in agents])
        return 0
    print(f"{'NAME':<24} {'STATE':<10} {'NETWORK':<8} {'USER':<6} IMAGE")
    for a in agents:
        where = f"  (on {a.host})" if a.host else ""
        print(f"{a.name:<24} {a.state.value:<10} {a.policy.network:<8} {a.policy.user:<6} {a.image}{where}")
    return 0


async def show(rt: Runtime, args: argparse.Namespace) -> int:
    print_json(AgentStatusResult.of(await rt.status(args.name)).model_dump())
    return 0


async def stop(rt: Runtime, args: argparse.Namespace) -> int:
    agent = await rt.stop_agent(args.name, snapshot=not args.no_snapshot, hibernate=args.hibernate)
    print_json(AgentInfo.of(agent).model_dump())
    return 0


async def rebuild(rt: Runtime, args: argparse.Namespace) -> int:
    result = await rt.rebuild(args.name, args.image)
    print(f"rebuilt {args.name} on {args.image}; the old state is snapshot {result.saved_snapshot}")
    for outcome in result.packages:
        entry = outcome.entry
        if outcome.version is None:
            reason = (outcome.error.splitlines() or ["no reason given"])[0]
            print(f"NOT reinstalled: {entry.manager} {entry.spec} ({reason})")
        else:
            print(f"reinstalled {entry.manager} {entry.name} {outcome.version} (was {entry.version})")
    return 1 if any(o.version is None for o in result.packages) else 0


async def move(rt: Runtime, args: argparse.Namespace) -> int:
    before = rt.get_agent(args.name)
    agent = await rt.move_agent(args.name, args.to, progress=progress_printer())
    print(f"moved {agent.name} to {agent.host} (head snapshot {agent.head_snapshot})", file=sys.stderr)
    if before.head_snapshot != agent.head_snapshot:
        print(f"its work was saved first as snapshot {agent.head_snapshot}", file=sys.stderr)
    print_json(AgentInfo.of(agent).model_dump())
    return 0


async def remove(rt: Runtime, args: argparse.Namespace) -> int:
    await rt.remove_agent(args.name)
    print(f"removed agent {args.name}", file=sys.stderr)
    return 0


async def pull(rt: Runtime, args: argparse.Namespace) -> int:
    agent = await rt.pull_agent(
        args.ref, args.name, insecure=args.insecure, credential=args.credential, progress=progress_printer()
    )
    print_json(AgentInfo.of(agent).model_dump())
    return 0


def register(sub: SubParsers) -> None:
    """Add ``spinup agent`` and its subcommands."""
    agent = sub.add_parser("agent", help="create, list, show, stop and remove agents")
    agent_sub = agent.add_subparsers(dest="agent_command", required=True)
    created = agent_sub.add_parser("create", help="create an agent and start its machine")
    created.add_argument("name")
    created.add_argument("--image", help="base image (default spinup/base:bookworm)")
    add_policy_options(created)
    pulled = agent_sub.add_parser("pull", help="make an agent from a snapshot in an OCI registry")
    pulled.add_argument("ref", help="host[:port]/path[:tag], as `spinup snapshot push` wrote it")
    pulled.add_argument("--name", help="the new agent's name (default: the reference's last path part)")
    pulled.add_argument("--insecure", action="store_true", help="plain HTTP, for a registry on loopback only")
    pulled.add_argument("--credential", help="a secret holding the registry's user:password")
    policied = agent_sub.add_parser(
        "policy",
        help="show an agent's policy, or change it (CPUs, memory, pids, disk, allowlist rules and "
        "self_control apply live; anything else rebuilds the machine, its state kept)",
    )
    policied.add_argument("name")
    add_policy_options(policied)
    policied.add_argument(
        "--disallow", action="append", metavar="RULE", help="remove RULE (as written in the policy) from the allowlist"
    )
    listed = agent_sub.add_parser("list", help="list agents")
    listed.add_argument("--json", action="store_true")
    agent_sub.add_parser("show", help="show an agent, its machine and events").add_argument("name")
    stopped = agent_sub.add_parser("stop", help="snapshot (if anything changed) and stop an agent's machine")
    stopped.add_argument("name")
    stopped.add_argument("--hibernate", action="store_true", help="also remove the machine (rebuilt on next use)")
    stopped.add_argument("--no-snapshot", action="store_true", help="stop without taking a snapshot")
    rebuilt = agent_sub.add_parser(
        "rebuild", help="move an agent to another base image: files carried over, packages reinstalled"
    )
    rebuilt.add_argument("name")
    rebuilt.add_argument("--image", required=True, help="the new base image")
    moved = agent_sub.add_parser(
        "move", help="move an agent to another Docker daemon: snapshot, made again there, old machine removed"
    )
    moved.add_argument("name")
    moved.add_argument(
        "--to",
        required=True,
        metavar="HOST",
        help="the daemon: an address as in DOCKER_HOST (unix:///path.sock, tcp://host:port), a name from "
        "SPINUP_DOCKER_HOSTS, or 'local' (this process's daemon)",
    )
    agent_sub.add_parser("rm", help="remove an agent and its machine").add_argument("name")
    dispatch(
        agent,
        "agent_command",
        {
            "create": create,
            "policy": policy,
            "list": listing,
            "show": show,
            "stop": stop,
            "rebuild": rebuild,
            "move": move,
            "rm": remove,
            "pull": pull,
        },
    )
