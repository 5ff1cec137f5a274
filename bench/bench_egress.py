"""Egress proxy benchmark: a download and small requests through an allowlist machine's proxy, side by
side with a direct loopback connection from a ``host``-network machine.

Run it from the repository root against the local Docker daemon, as root::

    .venv/bin/python bench/bench_egress.py [--n 5] [--n-latency 100] [--size-mb 100] [--json results.json]

One HTTP server (Python's ``http.server``, HTTP/1.0: one request per connection) runs on the host's
127.0.0.1. Two machines run the same client script (raw sockets, so the client costs the same on
both sides): in the ``allowlist`` machine it sends absolute-form requests to the egress proxy's
listener (127.0.0.1:3128 inside the machine), whose rule names the server's address; in the
``host``-network machine it connects to the server directly (the raw baseline). *download* asks
for ``--size-mb`` MB and reads to EOF; *latency* is one small request, connect to EOF, repeated
``--n-latency`` times. Each round runs both variants in an order that rotates; the first round is a
warm-up. Every run is printed (stderr), then medians side by side, their ratio, and the proxy
daemon's CPU time per MB carried (from ``/proc/PID/stat``).

Everything lives in a temporary SPINUP_HOME and machines labelled ``spinup.bench=1``, removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import http.server
import json
import os
import shutil
import statistics
import sys
import tempfile
import textwrap
import threading
from pathlib import Path
from typing import Any

from spinup.runtime import Policy, Runtime, Settings
from spinup.runtime.egress import EgressClient
from spinup.runtime.host_mounts import release_below

BENCH_LABEL = "spinup.bench"
BLOCK = bytes(range(256)) * 4096  # 1 MiB

CLIENT = textwrap.dedent(
    """
    import socket, sys, time
    mode, port, size_mb, small = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    target = ("127.0.0.1", 3128) if mode == "proxy" else ("127.0.0.1", port)
    def get(path):
        line = f"http://127.0.0.1:{port}{path}" if mode == "proxy" else path
        started = time.perf_counter()
        with socket.create_connection(target) as conn:
            conn.sendall(f"GET {line} HTTP/1.1\\r\\nHost: 127.0.0.1:{port}\\r\\nConnection: close\\r\\n\\r\\n".encode())
            got, buffer = 0, bytearray(1 << 20)
            while n := conn.recv_into(buffer):
                got += n
        return time.perf_counter() - started, got
    big = get(f"/big/{size_mb}")
    latencies = [get("/small")[0] for _ in range(small)]
    print(big[0], big[1], *latencies)
    """
)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:
        size = int(self.path.rsplit("/", 1)[1]) << 20 if self.path.startswith("/big/") else 5
        self.send_response(200)
        self.send_header("Content-Length", str(size))
        self.end_headers()
        if size == 5:
            self.wfile.write(b"PONG\n")
            return
        view, left = memoryview(BLOCK), size
        while left:
            chunk = view[: min(left, len(BLOCK))]
            self.wfile.write(chunk)
            left -= len(chunk)

    def log_message(self, format: str, *args: object) -> None:
        pass


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    home = Path(tempfile.mkdtemp(prefix="spinup-bench-egress-"))
    settings = Settings(home=home, label_extra={BENCH_LABEL: "1"})
    rt = Runtime(settings)
    runs: dict[str, list[tuple[float, list[float], float]]] = {"proxy": [], "direct": []}
    try:
        await rt.create_agent("bench-proxy", policy=Policy().updated(allow=[f"127.0.0.1:{port}"]))
        await rt.create_agent("bench-direct", policy=Policy(network="host"))
        status = await EgressClient(settings).status()
        assert status is not None
        pid = int(status["pid"])
        for round_ in range(args.n + 1):
            order = ["proxy", "direct"] if round_ % 2 == 0 else ["direct", "proxy"]
            for mode in order:
                agent = "bench-proxy" if mode == "proxy" else "bench-direct"
                before = cpu_seconds(pid)
                argv = ["python3", "-c", CLIENT, mode, str(port), str(args.size_mb), str(args.n_latency)]
                result = await rt.exec(agent, argv, timeout=300)
                if result.exit_code != 0:
                    raise SystemExit(f"{mode} client failed: {result.stderr}")
                cpu = cpu_seconds(pid) - before
                values = [float(v) for v in result.stdout.split()]
                big_s, got, latencies = values[0], int(values[1]), values[2:]
                if got < args.size_mb << 20:
                    raise SystemExit(f"{mode}: read {got} bytes, wanted {args.size_mb} MiB")
                label = "warm-up" if round_ == 0 else f"round {round_}"
                print(
                    f"{label} {mode:>6}: download {big_s:.3f}s ({args.size_mb / big_s:.0f} MB/s), "
                    f"small p50 {statistics.median(latencies) * 1000:.2f} ms, proxy CPU {cpu:.2f}s",
                    file=sys.stderr,
                )
                if round_:
                    runs[mode].append((big_s, latencies, cpu))
    finally:
        for name in ("bench-proxy", "bench-direct"):
            if rt.find_agent(name) is not None:
                await rt.remove_agent(name)
        await EgressClient(settings).stop()
        await rt.close()
        server.shutdown()
        release_below(home)
        shutil.rmtree(home, ignore_errors=True)

    def summary(mode: str) -> dict[str, float]:
        download = statistics.median(r[0] for r in runs[mode])
        latency = statistics.median(x for r in runs[mode] for x in r[1])
        cpu = statistics.median(r[2] for r in runs[mode])
        return {"download_s": download, "mb_per_s": args.size_mb / download, "latency_ms": latency * 1000, "cpu_s": cpu}

    proxy, direct = summary("proxy"), summary("direct")
    report = {
        "proxy": proxy,
        "direct": direct,
        "download_ratio": proxy["download_s"] / direct["download_s"],
        "latency_ratio": proxy["latency_ms"] / direct["latency_ms"],
        "proxy_cpu_ms_per_mb": proxy["cpu_s"] * 1000 / args.size_mb,
        "n": args.n,
    }
    print(f"{'':<22}{'through proxy':>16}{'direct':>12}{'ratio':>8}")
    print(
        f"{'download ' + str(args.size_mb) + ' MB':<22}{proxy['mb_per_s']:>11.0f} MB/s{direct['mb_per_s']:>7.0f} MB/s"
        f"{report['download_ratio']:>7.2f}x"
    )
    print(
        f"{'small request p50':<22}{proxy['latency_ms']:>13.2f} ms{direct['latency_ms']:>9.2f} ms"
        f"{report['latency_ratio']:>7.2f}x"
    )
    print(f"proxy CPU per MB carried: {report['proxy_cpu_ms_per_mb']:.2f} ms")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=5, help="measured rounds (after one warm-up)")
    parser.add_argument("--n-latency", type=int, default=100, help="small requests per round")
    parser.add_argument("--size-mb", type=int, default=100)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    report = asyncio.run(run(args))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
