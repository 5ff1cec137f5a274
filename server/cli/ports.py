"""``spinup forward AGENT PORT``: reach a port of an agent's machine from the host's 127.0.0.1 while it runs.

Exit codes (README, "Command line"): 0 stopped with Ctrl-C (the normal way out); 2 the runtime
refused (unknown agent, paused agent, host port taken, not root or not a local daemon); 3 the
forward ended because the machine stopped, was killed, removed or replaced.
"""

from __future__ import annotations

import argparse
import sys

from spinup.runtime import Runtime

from .common import SubParsers, with_runtime

EXIT_MACHINE_GONE = 3


async def forward(rt: Runtime, args: argparse.Namespace) -> int:
    made = await rt.port_forward(args.agent, args.port, args.host_port)
    print(made.url, flush=True)
    print(f"forwarding {made.url} -> port {made.port} of {made.agent}; Ctrl-C to stop", file=sys.stderr, flush=True)
    ended = await rt.port_wait(args.agent, args.port)
    print(f"spinup: forward of {made.url} ended: {ended.reason}", file=sys.stderr, flush=True)
    return EXIT_MACHINE_GONE


def _forward(args: argparse.Namespace) -> int:
    try:
        return with_runtime(forward, args)
    except KeyboardInterrupt:
        return 0  # Ctrl-C is how a forward ends


def register(sub: SubParsers) -> None:
    """Add ``spinup forward``."""
    parser = sub.add_parser(
        "forward",
        help="reach a port of an agent's machine at http://127.0.0.1:N on this host, until Ctrl-C",
        description="Listen on the host's 127.0.0.1 and relay each connection to PORT on the machine's own "
        "127.0.0.1 (the machine keeps network none). Prints the URL, then forwards until Ctrl-C (exit 0) or "
        "until the machine stops, is killed or replaced (exit 3). Needs root and a local Docker daemon.",
    )
    parser.add_argument("agent", metavar="AGENT")
    parser.add_argument("port", type=int, metavar="PORT", help="port on the machine's 127.0.0.1")
    parser.add_argument("--host-port", type=int, metavar="N", help="port on the host's 127.0.0.1 (default: a free one)")
    parser.set_defaults(func=_forward)
