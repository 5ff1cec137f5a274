"""Dashboard benchmark: first paint of the agents page with many agents, and the server's CPU with live tabs.

Run it from the repository root against the local Docker daemon, as root, with Debian's chromium::

    .venv/bin/python bench/bench_dashboard.py [--agents 50] [--n 10] [--seconds 60] [--json results.json]

Makes ``--agents`` running agents in a temporary SPINUP_HOME (machines labelled ``spinup.bench=1``,
removed at the end whatever happens), starts a real ``spinup serve`` and signs a headless Chromium
in with the printed URL.

*First paint*: a fresh tab opens ``/`` and the browser's ``first-contentful-paint`` entry is read
(plus the time to the response's last byte). The raw baseline is the same page's HTML, saved once,
served by a static file server on loopback and painted the same way: the difference is what the
dashboard costs (reading every agent and its last events from the state database, rendering).
Each round runs both, in an order that rotates; the first ``--warmup`` rounds are not recorded.

*CPU*: the server process's CPU time (``/proc/PID/stat``) over ``--seconds`` with no tab open (idle
server), then over ``--seconds`` with three tabs on live pages (the agents page and two agent
pages). Every tab shares one usage sampler (one ``Runtime.overview`` every 2 s for all agents).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import http.server
import json
import os
import platform
import re
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from playwright.async_api import Browser, async_playwright

from spinup.runtime import Runtime, Settings

BENCH_LABEL = "spinup.bench"
CHROMIUM = "/usr/bin/chromium"
SPINUP = str(Path(sys.executable).with_name("spinup"))
STATIC = Path(__file__).resolve().parent.parent / "server" / "dashboard" / "static"
PAINT = """() => new Promise((resolve) => {
  const done = () => {
    const fcp = performance.getEntriesByName("first-contentful-paint")[0];
    const nav = performance.getEntriesByType("navigation")[0];
    if (fcp) resolve({fcp: fcp.startTime, response: nav ? nav.responseEnd : null}); else setTimeout(done, 20);
  };
  done();
})"""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def paint(browser: Browser, url: str, cookies: list[Any]) -> dict[str, float]:
    context = await browser.new_context(viewport={"width": 1440, "height": 1000})
    try:
        await context.add_cookies(cookies)
        page = await context.new_page()
        await page.goto(url, wait_until="commit")
        timing: dict[str, float] = await page.evaluate(PAINT)
        return timing
    finally:
        await context.close()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No access log on stderr (the runs are printed there)."""


def static_server(directory: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    handler = functools.partial(_Quiet, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def summary(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))]


async def bench(args: argparse.Namespace, home: Path) -> dict[str, Any]:
    settings = Settings(home=home / "spinup", label_extra={BENCH_LABEL: "1"})
    runtime = Runtime(settings)
    names = [f"bench-{i:02d}" for i in range(args.agents)]
    proc: asyncio.subprocess.Process | None = None
    statics: http.server.ThreadingHTTPServer | None = None
    results: dict[str, Any] = {"agents": args.agents}
    try:
        started = time.monotonic()
        gate = asyncio.Semaphore(6)

        async def make(name: str) -> None:
            async with gate:
                await runtime.create_agent(name)

        await asyncio.gather(*(make(name) for name in names))
        log(f"{args.agents} agents running after {time.monotonic() - started:.1f} s")
        port = free_port()
        env = {"SPINUP_HOME": str(settings.home), "DOCKER_API_VERSION": "1.41", "PATH": os.environ["PATH"]}
        log_path = home / "serve.log"
        with log_path.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                SPINUP, "serve", "--port", str(port), env=env, stdout=asyncio.subprocess.DEVNULL, stderr=out
            )
        for _ in range(300):
            match = re.search(r"dashboard login: (\S+)", log_path.read_text())
            if match:
                break
            await asyncio.sleep(0.1)
        assert match, log_path.read_text()
        login = match.group(1)
        base = f"http://127.0.0.1:{port}"
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            context = await browser.new_context()
            page = await context.new_page()
            for _ in range(100):  # until the server answers
                with contextlib.suppress(Exception):
                    await page.goto(login)
                    await page.wait_for_selector("table.agents", timeout=30_000)
                    break
                await asyncio.sleep(0.2)
            cookies = await context.cookies()
            saved = home / "static"
            saved.mkdir()
            (saved / "index.html").write_text(await page.content())
            shutil.copytree(STATIC, saved / "static")
            await context.close()
            statics, static_base = static_server(saved)

            # first paint, rotating the order of the two variants
            variants = {"dashboard /": base + "/", "static copy": static_base + "/index.html"}
            samples: dict[str, list[dict[str, float]]] = {key: [] for key in variants}
            for round_ in range(args.warmup + args.n):
                order = list(variants)
                if round_ % 2:
                    order.reverse()
                for key in order:
                    timing = await paint(browser, variants[key], cookies)
                    log(f"round {round_}{' (warm-up)' if round_ < args.warmup else ''}: {key}: "
                        f"first paint {timing['fcp']:.1f} ms, response end {timing['response']:.1f} ms")
                    if round_ >= args.warmup:
                        samples[key].append(timing)
            results["paint"] = samples

            # CPU idle, then with three live tabs
            await asyncio.sleep(35)  # past the feed's linger: the server is idle
            assert proc.pid is not None
            before, t0 = cpu_seconds(proc.pid), time.monotonic()
            await asyncio.sleep(args.seconds)
            idle = (cpu_seconds(proc.pid) - before) / (time.monotonic() - t0)
            log(f"idle server: {idle * 100:.1f}% of a core over {args.seconds} s")
            tabs = []
            live = await browser.new_context()
            await live.add_cookies(cookies)
            for url in (base + "/", f"{base}/agents/{names[0]}", f"{base}/agents/{names[1]}"):
                tab = await live.new_page()
                await tab.goto(url)
                await tab.wait_for_selector("#live[data-state='live']", timeout=60_000)
                tabs.append(tab)
            before, t0 = cpu_seconds(proc.pid), time.monotonic()
            await asyncio.sleep(args.seconds)
            busy = (cpu_seconds(proc.pid) - before) / (time.monotonic() - t0)
            log(f"3 live tabs: {busy * 100:.1f}% of a core over {args.seconds} s")
            await live.close()
            results["cpu"] = {"idle_percent": idle * 100, "three_tabs_percent": busy * 100, "seconds": args.seconds}
            await browser.close()
        return results
    finally:
        if statics is not None:
            statics.shutdown()
        if proc is not None and proc.returncode is None:
            proc.terminate()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(20):
                    await proc.wait()
        gate = asyncio.Semaphore(6)

        async def remove(name: str) -> None:
            async with gate:
                if runtime.find_agent(name) is not None:
                    await runtime.remove_agent(name)

        await asyncio.gather(*(remove(name) for name in names), return_exceptions=True)
        await runtime.close()


def report(results: dict[str, Any]) -> None:
    print(f"agents page with {results['agents']} agents, times in ms")
    print(f"{'page':<14} {'n':>3} {'paint med':>10} {'p90':>8} {'response med':>13}")
    medians = {}
    for key, samples in results["paint"].items():
        fcp = [s["fcp"] for s in samples]
        response = [s["response"] for s in samples]
        med, p90 = summary(fcp)
        medians[key] = med
        print(f"{key:<14} {len(fcp):>3} {med:>10.1f} {p90:>8.1f} {statistics.median(response):>13.1f}")
    print(f"ratio first paint dashboard / static copy: {medians['dashboard /'] / medians['static copy']:.2f}x")
    cpu = results["cpu"]
    print(f"server CPU over {cpu['seconds']} s: idle {cpu['idle_percent']:.1f}% of a core, "
          f"3 live tabs {cpu['three_tabs_percent']:.1f}% of a core")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--n", type=int, default=10, help="timed rounds of first paint")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each CPU window")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    os.environ.setdefault("DOCKER_API_VERSION", "1.41")
    home = Path(tempfile.mkdtemp(prefix="spinup-bench-dash-"))
    try:
        results = asyncio.run(bench(args, home))
    finally:
        shutil.rmtree(home, ignore_errors=True)
    results["machine"] = {"python": platform.python_version(), "cpus": os.cpu_count()}
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
