"""The ``spinup`` command line."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from spinup.runtime import Policy, Runtime, Settings, SpinupError
from spinup.runtime.config import DEFAULT_IMAGE
from spinup.runtime.credentials import CredentialStore, decode_key
from spinup.runtime.errors import InvalidInput
from spinup.runtime.models import readable_size
from spinup.runtime.redact import Redactor

from .auth import BearerAuth, is_loopback, rebinding_protection, url_host
from .harness import register_config_command
from .schemas import AgentInfo, AgentStatusResult, SecretEntry

log = logging.getLogger("spinup")


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


def _progress_printer(interval: float = 0.5) -> Callable[[str, float | None], None]:
    """Progress lines on stderr, at most one per ``interval`` seconds (the first always)."""
    last: list[float] = []

    def report(message: str, _: float | None) -> None:
        now = time.monotonic()
        if last and now - last[0] < interval:
            return
        last[:] = [now]
        print(message, file=sys.stderr, flush=True)

    return report


async def _with_runtime(work: Callable[[Runtime], Awaitable[int]]) -> int:
    runtime = Runtime(Settings())
    try:
        return await work(runtime)
    finally:
        await runtime.close()


def _cmd_agent(args: argparse.Namespace) -> int:
    async def work(rt: Runtime) -> int:
        if args.agent_command == "create":
            agent = await rt.agents.create(args.name, args.image, Policy().updated(**_policy_changes(args)))
            _print_json(AgentInfo.of(agent).model_dump())
        elif args.agent_command == "policy":
            agent = rt.agents.get(args.name)
            changes = _policy_changes(args)
            if any(value is not None for value in changes.values()):
                agent = await rt.agents.set_policy(args.name, agent.policy.updated(**changes))
            _print_json(agent.policy.model_dump())
        elif args.agent_command == "list":
            agents = rt.agents.list()
            if args.json:
                _print_json([AgentInfo.of(a).model_dump() for a in agents])
            else:
                print(f"{'NAME':<24} {'STATE':<10} {'NETWORK':<8} {'USER':<6} IMAGE")
                for a in agents:
                    print(f"{a.name:<24} {a.state.value:<10} {a.policy.network:<8} {a.policy.user:<6} {a.image}")
        elif args.agent_command == "show":
            _print_json(AgentStatusResult.of(await rt.status(args.name)).model_dump())
        elif args.agent_command == "stop":
            agent = await rt.agents.stop(args.name, snapshot=not args.no_snapshot, hibernate=args.hibernate)
            _print_json(AgentInfo.of(agent).model_dump())
        elif args.agent_command == "rebuild":
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
        elif args.agent_command == "rm":
            await rt.agents.remove(args.name)
            print(f"removed agent {args.name}", file=sys.stderr)
        return 0

    return asyncio.run(_with_runtime(work))


POLICY_OPTIONS = ("network", "user", "cpus", "memory", "pids", "disk", "nofile", "package_cache")


def _policy_changes(args: argparse.Namespace) -> dict[str, Any]:
    return {key: getattr(args, key) for key in POLICY_OPTIONS}


def _add_policy_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("policy (defaults: README, 'Isolation policy')")
    group.add_argument("--network", choices=["none", "host"], help="'none' (default) or 'host' (weaker)")
    group.add_argument("--user", choices=["agent", "root"], help="who commands run as (default agent, uid 1000)")
    group.add_argument("--cpus", help="CPU cores, fractional, or 'all' (default all)")
    group.add_argument("--memory", help="memory limit such as 512m or 4g (default 4g, no swap)")
    group.add_argument("--pids", type=int, help="most processes and threads (default 1024)")
    group.add_argument("--disk", help="quota on what the machine writes, such as 10g, or 'none' (default 20g)")
    group.add_argument("--nofile", type=int, help="open files per process (default 8192)")
    group.add_argument(
        "--package-cache",
        action=argparse.BooleanOptionalAction,
        help="share pip's and npm's download caches with other agents (default on)",
    )


def _read_secret_value(name: str) -> str:
    """The value from stdin (one trailing newline dropped) or, on a terminal, a hidden prompt."""
    if sys.stdin.isatty():
        value = getpass.getpass(f"Value for {name} (hidden): ")
        if getpass.getpass("Again: ") != value:
            raise InvalidInput("The two entries differ; nothing was stored.")
        return value
    value = sys.stdin.read()
    return value[:-1] if value.endswith("\n") else value


def _cmd_secret(args: argparse.Namespace) -> int:
    async def work(rt: Runtime) -> int:
        secrets = rt.secrets
        if args.secret_command == "set":
            info = secrets.set(args.name, _read_secret_value(args.name))
            print(f"stored {info.name} (fingerprint {info.fingerprint})", file=sys.stderr)
        elif args.secret_command == "list":
            items = secrets.list()
            if args.json:
                _print_json([SecretEntry.of(i.info, i.bound_to).model_dump() for i in items])
            else:
                print(f"{'NAME':<32} {'FINGERPRINT':<12} BOUND TO")
                for item in items:
                    print(f"{item.info.name:<32} {item.info.fingerprint:<12} {', '.join(item.bound_to) or '-'}")
        elif args.secret_command == "rm":
            secrets.remove(args.name)
            print(f"removed {args.name} and its bindings", file=sys.stderr)
        elif args.secret_command == "bind":
            binding = secrets.bind(rt.agents.get(args.agent), args.name, env=args.env, file=args.file)
            where = " and ".join(
                part for part in (f"${binding.env}" if binding.env else "", binding.file or "") if part
            )
            print(f"{args.agent} gets {args.name} as {where} (from its next command)", file=sys.stderr)
        elif args.secret_command == "unbind":
            secrets.unbind(rt.agents.get(args.agent), args.name)
            print(f"{args.agent} no longer gets {args.name}", file=sys.stderr)
        elif args.secret_command == "rotate-key":
            new_key = None
            if args.new_key_stdin:
                new_key = decode_key(sys.stdin.read().strip())
            secrets.store.rotate_key(new_key)
            secrets.forget_cache()
            if secrets.store.key_source == "env":
                print("re-encrypted; now set SPINUP_MASTER_KEY to the new key", file=sys.stderr)
            else:
                print(f"re-encrypted under a new key in {rt.settings.master_key_path}", file=sys.stderr)
        return 0

    return asyncio.run(_with_runtime(work))


def _cmd_package(args: argparse.Namespace) -> int:
    async def work(rt: Runtime) -> int:
        if args.package_command == "install":

            async def progress(elapsed: float, output_bytes: int) -> None:
                print(f"spinup: {args.manager} has been installing for {elapsed:.0f}s", file=sys.stderr)

            result = await rt.install_packages(args.agent, args.manager, args.specs, progress)
            for package in result.added:
                print(f"added {package.name} {package.version}")
            if not result.added:
                print("nothing new: already installed", file=sys.stderr)
        elif args.package_command == "remove":
            await rt.remove_packages(args.agent, args.manager, args.names)
            print(f"removed {', '.join(args.names)}", file=sys.stderr)
        elif args.package_command == "list":
            agent = rt.agents.get(args.agent)
            if args.export:
                sys.stdout.write(rt.packages.export(agent, args.export))
            else:
                for entry in rt.packages.manifest(agent):
                    print(f"{entry.manager:<4} {entry.name:<32} {entry.version:<16} {entry.spec}")
        return 0

    return asyncio.run(_with_runtime(work))


def _cmd_exec(args: argparse.Namespace) -> int:
    command: list[str] = list(args.argv)
    if not command:
        raise SpinupError("No command given. Usage: spinup exec AGENT -- CMD [ARGS...]")

    async def work(rt: Runtime) -> int:
        stdin = sys.stdin.buffer.read() if args.stdin else None
        result = await rt.exec(
            args.agent,
            command[0] if args.shell and len(command) == 1 else command,
            cwd=args.cwd,
            stdin=stdin,
            timeout=args.timeout,
        )
        sys.stdout.write(result.stdout)
        sys.stderr.write(result.stderr)
        if result.timed_out:
            return 124
        return result.exit_code if result.exit_code is not None else 1

    return asyncio.run(_with_runtime(work))


def _cmd_snapshot(args: argparse.Namespace) -> int:
    from .schemas import SnapshotInfo

    async def work(rt: Runtime) -> int:
        command = args.snapshot_command
        if command == "create":
            result = await rt.agents.snapshot(args.agent, args.label, _progress_printer())
            verb = "created" if result.created else "unchanged; head is"
            stored = readable_size(result.snapshot.layer_size)
            print(f"{verb} {result.snapshot.id} ({stored} stored, {result.duration_s}s)", file=sys.stderr)
            _print_json(SnapshotInfo.of(result.snapshot).model_dump())
        elif command == "list":
            agent = rt.agents.get(args.agent) if args.agent else None
            print(f"{'ID':<16} {'AGENT':<18} {'CREATED':<26} {'LAYERS':>6} {'BYTES':>12}  LABEL")
            names = {a.id: a.name for a in rt.agents.list()}
            for s in rt.snapshots.list(agent):
                print(
                    f"{s.id:<16} {names.get(s.agent_id, s.agent_id):<18} {s.created_at.isoformat()[:25]:<26} "
                    f"{s.layers:>6} {s.layer_size:>12}  {s.label}"
                )
        elif command == "show":
            _print_json(SnapshotInfo.of(rt.snapshots.get(args.snapshot)).model_dump())
        elif command == "restore":
            agent, saved = await rt.agents.restore(args.agent, args.snapshot)
            print(
                f"restored {args.agent} to {args.snapshot}"
                + (f"; its previous work is saved as {saved}" if saved else ""),
                file=sys.stderr,
            )
        elif command == "fork":
            _print_json(AgentInfo.of(await rt.agents.fork(args.snapshot, args.name)).model_dump())
        elif command == "diff":
            source, target_tree, _ = await rt.snapshot_diff_inputs(args.agent, args.source, args.target)
            before = await rt.snapshots.tree(rt.snapshots.get(source)) if source else {}
            changes = await rt.snapshots.diff(before, target_tree)
            for mark, paths in (("A", changes.added), ("M", changes.changed), ("D", changes.removed)):
                for path in paths:
                    print(f"{mark} {path}")
        elif command == "rm":
            await rt.snapshots.delete(args.snapshot)
            print(f"deleted {args.snapshot} (run spinup snapshot gc to free its blobs)", file=sys.stderr)
        elif command == "verify":
            report = await rt.snapshots.verify()
            for line in report.problems:
                print(f"PROBLEM {line}")
            for line in report.garbage:
                print(f"garbage {line}")
            print(
                f"checked {report.blobs_checked} blobs, {report.snapshots_checked} snapshots: "
                + ("ok" if report.ok else f"{len(report.problems)} problems"),
                file=sys.stderr,
            )
            return 0 if report.ok else 1
        elif command == "gc":
            gc = await rt.snapshots.gc()
            print(
                f"removed {gc.blobs_removed} blobs ({gc.bytes_freed} bytes) and {gc.temp_files_removed} "
                f"temporary files",
                file=sys.stderr,
            )
        elif command == "export":
            size = await rt.snapshots.export(rt.snapshots.get(args.snapshot), Path(args.output))
            print(f"wrote {args.output} ({size} bytes); load it with: docker load -i {args.output}", file=sys.stderr)
        return 0

    return asyncio.run(_with_runtime(work))


def _cmd_mcp(args: argparse.Namespace) -> int:
    from .app import build_server

    build_server(Settings(), agent=args.agent).run()
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .app import build_server

    token = args.token or os.environ.get("SPINUP_TOKEN") or None
    if not is_loopback(args.host) and not token:
        raise SpinupError(
            f"Refusing to serve on non-loopback host {args.host} without a bearer token. "
            f"Set SPINUP_TOKEN (or pass --token), or bind 127.0.0.1."
        )
    settings = Settings() if args.idle_timeout is None else Settings(idle_timeout=args.idle_timeout)
    server = build_server(settings, agent=args.agent)
    app: Any = server.streamable_http_app(host=args.host, transport_security=rebinding_protection(args.host))
    if token:
        app = BearerAuth(app, token)
    print(
        f"spinup: serving MCP at http://{url_host(args.host)}:{args.port}/mcp"
        + (" (bearer token required)" if token else ""),
        file=sys.stderr,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def _cmd_image(args: argparse.Namespace) -> int:
    from spinup.runtime.image import build_base_image

    async def work(rt: Runtime) -> int:
        image_id = await build_base_image(
            rt.docker, args.tag, on_line=lambda line: print(line, file=sys.stderr, flush=True)
        )
        print(f"built {args.tag} ({image_id})")
        return 0

    return asyncio.run(_with_runtime(work))


def _cmd_doctor(args: argparse.Namespace) -> int:
    from spinup.runtime.doctor import diagnose

    checks = asyncio.run(diagnose(Settings()))
    for check in checks:
        mark = "ok  " if check.ok else "FAIL"
        print(f"[{mark}] {check.name}: {check.detail}" + ("" if check.ok else f"\n       fix: {check.fix}"))
    required = {"docker", "docker api", "base image", "state", "toolbox"}
    return 0 if all(c.ok for c in checks if c.name in required) else 1


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every ``spinup`` subcommand."""
    parser = argparse.ArgumentParser(prog="spinup", description="A durable runtime for AI agents, over MCP.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details to stderr")
    sub = parser.add_subparsers(dest="command", required=True)

    agent = sub.add_parser("agent", help="create, list, show, stop and remove agents")
    agent_sub = agent.add_subparsers(dest="agent_command", required=True)
    create = agent_sub.add_parser("create", help="create an agent and start its machine")
    create.add_argument("name")
    create.add_argument("--image", help="base image (default spinup/base:bookworm)")
    _add_policy_options(create)
    policy = agent_sub.add_parser(
        "policy", help="show an agent's policy, or change it (the machine is rebuilt, its state kept)"
    )
    policy.add_argument("name")
    _add_policy_options(policy)
    listing = agent_sub.add_parser("list", help="list agents")
    listing.add_argument("--json", action="store_true")
    agent_sub.add_parser("show", help="show an agent, its machine and events").add_argument("name")
    stop = agent_sub.add_parser("stop", help="snapshot (if anything changed) and stop an agent's machine")
    stop.add_argument("name")
    stop.add_argument("--hibernate", action="store_true", help="also remove the machine (rebuilt on next use)")
    stop.add_argument("--no-snapshot", action="store_true", help="stop without taking a snapshot")
    rebuild = agent_sub.add_parser(
        "rebuild", help="move an agent to another base image: files carried over, packages reinstalled"
    )
    rebuild.add_argument("name")
    rebuild.add_argument("--image", required=True, help="the new base image")
    agent_sub.add_parser("rm", help="remove an agent and its machine").add_argument("name")
    agent.set_defaults(func=_cmd_agent)

    sec = sub.add_parser("secret", help="store credentials (encrypted) and bind them to agents")
    sec_sub = sec.add_subparsers(dest="secret_command", required=True)
    sec_sub.add_parser("set", help="store NAME's value, read from stdin or a hidden prompt").add_argument("name")
    sec_sub.add_parser("list", help="names, fingerprints, bound agents (never values)").add_argument(
        "--json", action="store_true"
    )
    sec_sub.add_parser("rm", help="forget a credential and its bindings").add_argument("name")
    bind = sec_sub.add_parser("bind", help="give an agent a credential as an env var and/or a file")
    bind.add_argument("agent")
    bind.add_argument("name")
    bind.add_argument("--env", help="environment variable name (default: NAME, unless --file alone is given)")
    bind.add_argument("--file", help="file under /run/spinup/secrets/ (in memory, never in a snapshot)")
    unbind = sec_sub.add_parser("unbind", help="take a credential away from an agent")
    unbind.add_argument("agent")
    unbind.add_argument("name")
    rotate = sec_sub.add_parser("rotate-key", help="re-encrypt every credential under a new key")
    rotate.add_argument(
        "--new-key-stdin", action="store_true", help="read the new key (base64 of 32 bytes) from stdin"
    )
    sec.set_defaults(func=_cmd_secret)

    pkg = sub.add_parser("package", help="install, remove and list an agent's packages (pip, npm, apt)")
    pkg_sub = pkg.add_subparsers(dest="package_command", required=True)
    install = pkg_sub.add_parser("install", help="install packages and record them in the agent's manifest")
    install.add_argument("agent")
    install.add_argument("manager", choices=["pip", "npm", "apt"])
    install.add_argument("specs", nargs="+", metavar="SPEC", help="e.g. requests>=2.31, left-pad@1.3.0, jq")
    remove = pkg_sub.add_parser("remove", help="uninstall packages and drop them from the manifest")
    remove.add_argument("agent")
    remove.add_argument("manager", choices=["pip", "npm", "apt"])
    remove.add_argument("names", nargs="+", metavar="NAME")
    plist = pkg_sub.add_parser("list", help="the agent's manifest, or one manager's part as a file")
    plist.add_argument("agent")
    plist.add_argument(
        "--export", choices=["pip", "npm", "apt"], help="print requirements.txt, package.json or an apt list"
    )
    pkg.set_defaults(func=_cmd_package)

    exe = sub.add_parser("exec", help="run a command in an agent's machine: spinup exec AGENT -- CMD...")
    exe.add_argument("agent")
    exe.add_argument("--cwd")
    exe.add_argument("--timeout", type=float, default=600.0)
    exe.add_argument("--stdin", action="store_true", help="feed this process's stdin to the command")
    exe.add_argument("--shell", action="store_true", help="run a single argument as a /bin/sh -c string")
    exe.add_argument("argv", nargs="*", metavar="CMD", help="the command, after -- (for example: -- ls -la)")
    exe.set_defaults(func=_cmd_exec)

    snap = sub.add_parser("snapshot", help="create, list, restore, fork, diff, verify and collect snapshots")
    snap_sub = snap.add_subparsers(dest="snapshot_command", required=True)
    sc = snap_sub.add_parser("create", help="snapshot an agent's machine")
    sc.add_argument("agent")
    sc.add_argument("--label", default="")
    snap_sub.add_parser("list", help="list snapshots (of one agent, or all)").add_argument("agent", nargs="?")
    snap_sub.add_parser("show", help="show one snapshot").add_argument("snapshot")
    sr = snap_sub.add_parser("restore", help="replace an agent's machine with a snapshot (saves its work first)")
    sr.add_argument("agent")
    sr.add_argument("snapshot")
    sf = snap_sub.add_parser("fork", help="create a new agent from a snapshot")
    sf.add_argument("snapshot")
    sf.add_argument("name")
    sd = snap_sub.add_parser("diff", help="paths added/changed/removed between snapshots, or vs the live machine")
    sd.add_argument("agent")
    sd.add_argument("source", nargs="?", help="default: the agent's head")
    sd.add_argument("target", nargs="?", help="default: the live machine")
    snap_sub.add_parser("rm", help="delete a snapshot nothing builds on").add_argument("snapshot")
    snap_sub.add_parser("verify", help="re-hash every blob and check every reference")
    snap_sub.add_parser("gc", help="remove unreferenced blobs and interrupted writes")
    se = snap_sub.add_parser("export", help="write a docker-save archive loadable on any Docker host")
    se.add_argument("snapshot")
    se.add_argument("output", help="path of the .tar to write")
    snap.set_defaults(func=_cmd_snapshot)

    mcp = sub.add_parser("mcp", help="serve MCP over stdio")
    mcp.add_argument("--agent", help="bind every tool to this agent (created on first use)")
    mcp.set_defaults(func=_cmd_mcp)

    serve = sub.add_parser("serve", help="serve MCP over streamable HTTP at /mcp")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8765)
    serve.add_argument("--token", help="bearer token required on every request (default: $SPINUP_TOKEN)")
    serve.add_argument("--agent", help="bind every tool to this agent (created on first use)")
    serve.add_argument("--idle-timeout", type=float, help="hibernate agents unused this many seconds (default off)")
    serve.set_defaults(func=_cmd_serve)

    image = sub.add_parser("image", help="manage the base image")
    image_sub = image.add_subparsers(dest="image_command", required=True)
    build = image_sub.add_parser("build", help="build spinup/base:bookworm locally with mmdebstrap (no registry)")
    build.add_argument("--tag", default=DEFAULT_IMAGE)
    image.set_defaults(func=_cmd_image)

    register_config_command(sub)

    sub.add_parser("doctor", help="check Docker, the base image and the state directory").set_defaults(func=_cmd_doctor)
    return parser


def _redacted(text: str) -> str:
    """``text`` with stored credential values redacted (as is when the store cannot be read)."""
    try:
        settings = Settings()
        values = CredentialStore(settings.credentials_path, settings.master_key_path, settings.master_key).values()
    except SpinupError:
        return text
    return Redactor(values).redact_text(text) if values else text


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``spinup`` command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # Everything after the first "--" is the command of `spinup exec`, options and all.
    tail: list[str] = []
    if "--" in argv:
        split = argv.index("--")
        argv, tail = argv[:split], argv[split + 1 :]
    args = build_parser().parse_args(argv)
    if tail:
        if getattr(args, "argv", None) is None:
            build_parser().error("'--' only separates the command of: spinup exec AGENT -- CMD")
        args.argv = [*args.argv, *tail]
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        code = int(args.func(args))
    except SpinupError as exc:
        print(f"spinup: error: {_redacted(str(exc))}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        code = 130
    return code


if __name__ == "__main__":
    sys.exit(main())
