"""Port forwarding benchmark: a download and a small request through a forward, side by side with loopback.

Run it from the repository root against the local Docker daemon, as root::

    .venv/bin/python bench/bench_ports.py [--n 10] [--n-latency 100] [--size-mb 100] [--json results.json]

The same small server (one Python script, one connection at a time) runs twice: inside a
``network none`` machine, reached through ``Runtime.port_forward`` from the host's 127.0.0.1, and on
the host, reached directly over loopback (the raw baseline). A client in its own process (so it
shares no interpreter with the forward's event loop) times each operation with
``time.perf_counter``: *download* connects, asks for ``--size-mb`` MB and reads to EOF; *latency*
connects, sends one line and reads the five-byte answer to EOF. Each round runs both variants, in
an order that rotates from round to round; the first ``--warmup`` rounds are not recorded. Every
run is printed (stderr), then medians and p90s side by side (stdout).

Everything lives in a temporary SPINUP_HOME and a machine labelled ``spinup.bench=1``, removed at
the end whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import shutil
import statistics
import sys
import tempfile
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from spinup.runtime import Runtime, Settings
from spinup.runtime.host_mounts import release_below

BENCH_LABEL = "spinup.bench"
MACHINE_PORT = 9000
OP_TIMEOUT = 120.0

SERVER = textwrap.dedent(
    """
    import socket, sys
    port, size = int(sys.argv[1]), int(sys.argv[2])
    block = memoryview(bytes(range(256)) * 4096)  # 1 MiB
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(128)
    print(srv.getsockname()[1], flush=True)
    while True:
        conn, _ = srv.accept()
        with conn:
            request = conn.recv(16)
            if request.startswith(b"BIG"):
                left = size
                while left:
                    chunk = block[: min(left, len(block))]
                    conn.sendall(chunk)
                    left -= len(chunk)
            else:
                conn.sendall(b"PONG\\n")
    """
)

CLIENT = textwrap.dedent(
    """
    import socket, sys, time
    buffer = bytearray(1 << 20)
    for line in sys.stdin:
        what, port = line.split()
        started = time.perf_counter()
        with socket.create_connection(("127.0.0.1", int(port))) as conn:
            conn.sendall(b"BIG\\n" if what == "big" else b"PING\\n")
            got = 0
            while n := conn.recv_into(buffer):
                got += n
        print(time.perf_counter() - started, got, flush=True)
    """
)


class Client:
    """The timing client, in its own process: one line per operation, the seconds and bytes it took back."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls) -> Client:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CLIENT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
        return cls(proc)

    async def run(self, what: str, port: int) -> tuple[float, int]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{what} {port}\n".encode())
        await self.proc.stdin.drain()
        async with asyncio.timeout(OP_TIMEOUT):
            seconds, got = (await self.proc.stdout.readline()).split()
        return float(seconds), int(got)

    async def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        await self.proc.wait()


def p90(values: Sequence[float]) -> float:
    return statistics.quantiles(values, n=10, method="inclusive")[-1]


async def measure(
    client: Client, what: str, ports: dict[str, int], n: int, warmup: int, expect: int
) -> dict[str, list[float]]:
    """``warmup + n`` rounds of ``what`` on every variant, order rotated; seconds of the last ``n`` of each."""
    samples: dict[str, list[float]] = {key: [] for key in ports}
    keys = list(ports)
    for round_no in range(warmup + n):
        shift = round_no % len(keys)
        for key in [*keys[shift:], *keys[:shift]]:
            seconds, got = await client.run(what, ports[key])
            if got != expect:
                raise AssertionError(f"{what} via {key}: {got} bytes, expected {expect}")
            rate = f" ({got / seconds / 1e6:,.0f} MB/s)" if what == "big" else ""
            tag = " (warm-up)" if round_no < warmup else ""
            print(f"  {what:<4} round {round_no + 1:>3} {key:<8} {seconds * 1000:9.3f} ms{rate}{tag}", file=sys.stderr)
            if round_no >= warmup:
                samples[key].append(seconds)
    return samples


def row(name: str, samples: dict[str, list[float]], size: int | None) -> dict[str, Any]:
    forward, direct = samples["forward"], samples["direct"]
    result: dict[str, Any] = {
        "name": name,
        "n": len(forward),
        "forward_median_ms": round(statistics.median(forward) * 1000, 3),
        "forward_p90_ms": round(p90(forward) * 1000, 3),
        "direct_median_ms": round(statistics.median(direct) * 1000, 3),
        "direct_p90_ms": round(p90(direct) * 1000, 3),
        "ratio": round(statistics.median(forward) / statistics.median(direct), 2),
        "samples_ms": {key: [round(s * 1000, 3) for s in values] for key, values in samples.items()},
    }
    if size is not None:
        result["forward_median_MBps"] = round(size / statistics.median(forward) / 1e6)
        result["direct_median_MBps"] = round(size / statistics.median(direct) / 1e6)
    return result


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    header = (
        f"{'measurement':<26} {'n':>4} {'forward med':>11} {'p90':>9}  {'loopback med':>12} {'p90':>9} {'ratio':>6}"
        f"  throughput (median)"
    )
    lines = [header, "-" * (len(header) + 8)]
    for r in rows:
        rate = (
            f"{r['forward_median_MBps']:,} vs {r['direct_median_MBps']:,} MB/s" if "forward_median_MBps" in r else "-"
        )
        lines.append(
            f"{r['name']:<26} {r['n']:>4} {r['forward_median_ms']:>11.3f} {r['forward_p90_ms']:>9.3f}  "
            f"{r['direct_median_ms']:>12.3f} {r['direct_p90_ms']:>9.3f} {r['ratio']:>5.2f}x  {rate}"
        )
    lines.append("times in ms (median and p90); ratio = forward median / loopback median")
    lines.append("  forward   host client -> Runtime.port_forward listener -> machine's 127.0.0.1 (network none)")
    lines.append("  loopback  host client -> the same server script on the host's 127.0.0.1")
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    size = args.size_mb * 1_000_000
    home = Path(tempfile.mkdtemp(prefix="spinup-bench-ports-"))
    runtime = Runtime(Settings(home=home / "spinup", label_extra={BENCH_LABEL: "1"}))
    host_server: asyncio.subprocess.Process | None = None
    client: Client | None = None
    name = "bench-ports"
    try:
        await runtime.create_agent(name)
        await runtime.exec(name, "cat > /tmp/serve.py", stdin=SERVER.encode())
        await runtime.exec(name, f"nohup python3 /tmp/serve.py {MACHINE_PORT} {size} >/tmp/serve.log 2>&1 &")
        host_server = await asyncio.create_subprocess_exec(
            sys.executable, "-c", SERVER, "0", str(size), stdout=asyncio.subprocess.PIPE
        )
        assert host_server.stdout is not None
        direct_port = int(await host_server.stdout.readline())
        probe = f"import socket; socket.create_connection(('127.0.0.1', {MACHINE_PORT}), timeout=1).close()"
        for _ in range(100):
            if (await runtime.exec(name, ["python3", "-c", probe])).exit_code == 0:
                break
            await asyncio.sleep(0.1)
        forward = await runtime.port_forward(name, MACHINE_PORT)
        print(f"forward {forward.url} -> {name}:{MACHINE_PORT}; loopback server on {direct_port}", file=sys.stderr)
        ports = {"forward": forward.host_port, "direct": direct_port}
        client = await Client.start()
        big = await measure(client, "big", ports, args.n, args.warmup, size)
        ping = await measure(client, "ping", ports, args.n_latency, args.warmup, 5)
        listed = runtime.port_list(name)[0]
        print(f"forward carried {listed.bytes:,} bytes in {listed.connections} connections", file=sys.stderr)
        return [row(f"download {args.size_mb} MB", big, size), row("connect + 1 request", ping, None)]
    finally:
        if client is not None:
            await client.close()
        if host_server is not None:
            host_server.kill()
            await host_server.wait()
        for agent in runtime.list_agents():
            await runtime.remove_agent(agent.name)
        await runtime.close()
        release_below(home)  # the nosuid,nodev mounts made for machines
        shutil.rmtree(home, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=10, help="timed download rounds (default 10)")
    parser.add_argument("--n-latency", type=int, default=100, help="timed latency rounds (default 100)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first (default 2)")
    parser.add_argument("--size-mb", type=int, default=100, help="download size in MB (default 100)")
    parser.add_argument("--json", type=Path, help="also write the rows and every sample here")
    args = parser.parse_args(argv)
    rows = asyncio.run(run(args))
    print(format_table(rows))
    if args.json is not None:
        meta = {"python": platform.python_version(), "machine": platform.machine(), "args": vars(args) | {"json": ""}}
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
