"""``spinup secret``: store credentials (encrypted), bind them to agents, rotate the key."""

from __future__ import annotations

import argparse
import getpass
import sys

from spinup.runtime import InvalidInput, Runtime, decode_key

from ..schemas import SecretEntry
from .common import SubParsers, dispatch, print_json


def read_secret_value(name: str) -> str:
    """The value from stdin (one trailing newline dropped) or, on a terminal, a hidden prompt."""
    if sys.stdin.isatty():
        value = getpass.getpass(f"Value for {name} (hidden): ")
        if getpass.getpass("Again: ") != value:
            raise InvalidInput("The two entries differ; nothing was stored.")
        return value
    value = sys.stdin.read()
    return value[:-1] if value.endswith("\n") else value


async def store(rt: Runtime, args: argparse.Namespace) -> int:
    info = rt.set_secret(args.name, read_secret_value(args.name))
    print(f"stored {info.name} (fingerprint {info.fingerprint})", file=sys.stderr)
    return 0


async def listing(rt: Runtime, args: argparse.Namespace) -> int:
    items = rt.list_secrets()
    if args.json:
        print_json([SecretEntry.of(i.info, bound_to=i.bound_to).model_dump() for i in items])
        return 0
    print(f"{'NAME':<32} {'FINGERPRINT':<12} BOUND TO")
    for item in items:
        print(f"{item.info.name:<32} {item.info.fingerprint:<12} {', '.join(item.bound_to) or '-'}")
    return 0


async def remove(rt: Runtime, args: argparse.Namespace) -> int:
    rt.remove_secret(args.name)
    print(f"removed {args.name} and its bindings", file=sys.stderr)
    return 0


async def bind(rt: Runtime, args: argparse.Namespace) -> int:
    binding = rt.bind_secret(args.agent, args.name, env=args.env, file=args.file, header=args.header)
    where = " and ".join(
        part
        for part in (
            f"${binding.env}" if binding.env else "",
            binding.file or "",
            f"a {binding.header.name} header on requests to {binding.header.host} (added by the egress proxy)"
            if binding.header
            else "",
        )
        if part
    )
    print(f"{args.agent} gets {args.name} as {where} (from its next command)", file=sys.stderr)
    return 0


async def unbind(rt: Runtime, args: argparse.Namespace) -> int:
    rt.unbind_secret(args.agent, args.name)
    print(f"{args.agent} no longer gets {args.name}", file=sys.stderr)
    return 0


async def rotate_key(rt: Runtime, args: argparse.Namespace) -> int:
    new_key = decode_key(sys.stdin.read().strip()) if args.new_key_stdin else None
    if rt.rotate_master_key(new_key) == "env":
        print("re-encrypted; now set SPINUP_MASTER_KEY to the new key", file=sys.stderr)
    else:
        print(f"re-encrypted under a new key in {rt.settings.master_key_path}", file=sys.stderr)
    return 0


def register(sub: SubParsers) -> None:
    """Add ``spinup secret`` and its subcommands."""
    sec = sub.add_parser("secret", help="store credentials (encrypted) and bind them to agents")
    sec_sub = sec.add_subparsers(dest="secret_command", required=True)
    sec_sub.add_parser("set", help="store NAME's value, read from stdin or a hidden prompt").add_argument("name")
    sec_sub.add_parser("list", help="names, fingerprints, bound agents (never values)").add_argument(
        "--json", action="store_true"
    )
    sec_sub.add_parser("rm", help="forget a credential and its bindings").add_argument("name")
    bound = sec_sub.add_parser("bind", help="give an agent a credential as an env var, a file or an edge header")
    bound.add_argument("agent")
    bound.add_argument("name")
    bound.add_argument("--env", help="environment variable name (default: NAME, unless --file alone is given)")
    bound.add_argument("--file", help="file under /run/spinup/secrets/ (in memory, never in a snapshot)")
    bound.add_argument(
        "--header",
        metavar="HOST:HEADER:TEMPLATE",
        help="add it at the egress proxy as a request header for HOST, e.g. 'api.example.com:Authorization:Bearer "
        "{value}'; it never enters the machine (HTTPS needs 'agent policy --intercept HOST')",
    )
    unbound = sec_sub.add_parser("unbind", help="take a credential away from an agent")
    unbound.add_argument("agent")
    unbound.add_argument("name")
    rotate = sec_sub.add_parser("rotate-key", help="re-encrypt every credential under a new key")
    rotate.add_argument("--new-key-stdin", action="store_true", help="read the new key (base64 of 32 bytes) from stdin")
    dispatch(
        sec,
        "secret_command",
        {"set": store, "list": listing, "rm": remove, "bind": bind, "unbind": unbind, "rotate-key": rotate_key},
    )
