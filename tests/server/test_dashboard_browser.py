"""The dashboard in a real browser: headless Chromium (Debian's) driven by Playwright, against a real
``spinup serve`` subprocess and real agents. One server, one browser and two agents for the module.

Screenshots of each page are saved under the module's tmp directory (their paths are printed).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest
from http_servers import SPINUP, free_port, wait_listening
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from playwright.async_api import Browser, Page, async_playwright, expect

from conftest import RUN_ID, TEST_LABEL, call, server_env, unique_name
from spinup.runtime import Runtime, Settings

CHROMIUM = "/usr/bin/chromium"
DEADLINE = 60_000  # ms a page may take to show what a step waits for (a loaded CI machine)
expect.set_options(timeout=DEADLINE)

class Served:
    """The server under test: its base URL, login URL, token, and the runtime the test checks through."""

    def __init__(self, base: str, login: str, token: str, runtime: Runtime, agents: list[str], shots: Path) -> None:
        self.base = base
        self.login = login
        self.token = token
        self.runtime = runtime
        self.agents = agents
        self.shots = shots

    def shot_path(self, name: str) -> Path:
        path = self.shots / f"{name}.png"
        print(f"screenshot: {path}")
        return path


@pytest.fixture(scope="module")
async def served(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Served]:
    root = tmp_path_factory.mktemp("dashboard")
    settings = Settings(home=root / "spinup", label_extra={TEST_LABEL: RUN_ID})
    runtime = Runtime(settings)
    names = [unique_name("web"), unique_name("web")]
    port = free_port()
    log_path = root / "serve.log"
    proc = None
    try:
        await asyncio.gather(*(runtime.create_agent(name) for name in names))
        with log_path.open("wb") as log:
            proc = await asyncio.create_subprocess_exec(
                SPINUP, "serve", "--port", str(port), env=server_env(settings),
                stdout=asyncio.subprocess.DEVNULL, stderr=log,
            )
        await wait_listening(proc, "127.0.0.1", port)
        printed = log_path.read_text()
        match = re.search(r"dashboard login: (\S+)", printed)
        assert match, printed
        login = match.group(1)
        token = (settings.home / "http-token").read_text().strip()
        assert login == f"http://127.0.0.1:{port}/login#token={token}"
        shots = root / "screenshots"
        shots.mkdir()
        yield Served(f"http://127.0.0.1:{port}", login, token, runtime, names, shots)
    finally:
        if proc is not None and proc.returncode is None:
            proc.terminate()
            async with asyncio.timeout(20):
                await proc.wait()
        for name in names:
            if runtime.find_agent(name) is not None:
                await runtime.remove_agent(name)
        await runtime.close()


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture(scope="module")
async def page(served: Served, browser: Browser) -> AsyncIterator[Page]:
    """A signed-in tab (logged in with the printed URL)."""
    context = await browser.new_context(viewport={"width": 1440, "height": 1000})
    tab = await context.new_page()
    tab.set_default_timeout(DEADLINE)
    await tab.goto(served.login)
    await expect(tab.locator("table.agents")).to_be_visible()
    try:
        yield tab
    finally:
        await context.close()


@asynccontextmanager
async def mcp_client(served: Served) -> AsyncIterator[Client]:
    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {served.token}"}, timeout=120) as http,
        Client(streamable_http_client(served.base + "/mcp", http_client=http)) as client,
    ):
        yield client


async def test_the_printed_url_signs_in_and_everything_else_is_refused(served: Served, page: Page) -> None:
    # The page traded the token for a cookie and dropped it from the address bar.
    assert page.url == served.base + "/"
    cookies = await page.context.cookies()
    session = next(c for c in cookies if c["name"].startswith("spinup_session_"))
    assert session["httpOnly"] and session["sameSite"] == "Strict"
    assert served.token not in session["value"]
    name = served.agents[0]
    async with httpx2.AsyncClient(base_url=served.base, timeout=30) as raw:
        for path in ("/", f"/agents/{name}", "/stream", f"/agents/{name}/panel/execs", "/fragments/agents"):
            assert (await raw.get(path)).status_code == 401, path
        bad = await raw.post("/login", data={"token": "not-the-token"}, headers={"Origin": served.base})
        assert bad.status_code == 401 and served.token not in bad.text
        raw.cookies.set(session["name"], session["value"], domain="127.0.0.1")
        assert (await raw.get(f"/agents/{name}")).status_code == 200
        for origin in ("http://evil.example", "null"):
            refused = await raw.post(f"/agents/{name}/actions/pause", headers={"Origin": origin})
            assert refused.status_code == 403
        assert (await raw.post(f"/agents/{name}/actions/pause")).status_code == 403  # no Origin at all
        rebound = await raw.get("/", headers={"Host": "attacker.example"})
        assert rebound.status_code == 421
    assert served.runtime.get_agent(name).paused_at is None


async def test_the_agents_page_lists_both_agents_with_live_use(served: Served, page: Page) -> None:
    await page.goto(served.base + "/")
    for name in served.agents:
        await expect(page.locator(f'tr[data-agent="{name}"] .badge')).to_have_text("running")
    # The shared sampler fills CPU and memory in without a reload.
    await expect(page.locator(f'tr[data-agent="{served.agents[0]}"] [data-field="mem_text"]')).to_contain_text("/")
    await expect(page.locator("#live")).to_have_attribute("data-state", "live")
    await page.wait_for_timeout(4500)  # a few samples for the sparklines
    await page.screenshot(path=served.shot_path("agents"), full_page=True)


async def test_an_exec_over_mcp_shows_on_the_agent_page_without_a_reload(served: Served, page: Page) -> None:
    name = served.agents[0]
    await page.goto(f"{served.base}/agents/{name}")
    await expect(page.locator("#live")).to_have_attribute("data-state", "live")
    await page.evaluate("window.__notReloaded = true")
    async with mcp_client(served) as client:
        result = await call(client, "exec", agent=name, command="echo from-the-harness")
        assert result["stdout"] == "from-the-harness\n"
    row = page.locator("#timeline .ev[data-kind='exec']", has_text="echo from-the-harness")
    await expect(row.first).to_be_visible()
    await expect(page.locator("#panel-execs code.cmd", has_text="echo from-the-harness").first).to_be_visible()
    assert await page.evaluate("window.__notReloaded === true")
    # The command's output, from the exec log.
    await page.locator("#panel-execs details", has_text="echo from-the-harness").first.locator("summary").click()
    await expect(page.locator("#panel-execs pre.out", has_text="from-the-harness").first).to_be_visible()


async def click_action(page: Page, action: str, confirm: bool = False) -> None:
    await page.locator(f'#panel-header [data-action="{action}"]').click()
    if confirm:
        await page.locator("#confirm-ok").click()


async def test_pause_and_resume_buttons_act_on_the_runtime_as_the_dashboard(served: Served, page: Page) -> None:
    name = served.agents[1]
    runtime = served.runtime
    await page.goto(f"{served.base}/agents/{name}")
    await click_action(page, "pause")
    await expect(page.locator("#panel-header .badge")).to_have_text("paused")
    agent = runtime.get_agent(name)
    assert agent.paused_at is not None and agent.paused_by and "spinup-dashboard" in agent.paused_by
    machine = await runtime.machine(name)
    assert machine is not None and machine.paused
    paused = runtime.events(name, 5, kinds=["paused"])[-1]
    assert paused.client == "spinup-dashboard"
    await expect(page.locator("#timeline .ev[data-kind='paused']").first).to_contain_text("spinup-dashboard")
    await page.screenshot(path=served.shot_path("agent-paused"), full_page=True)
    await click_action(page, "resume")
    await expect(page.locator("#panel-header .badge")).to_have_text("running")
    assert runtime.get_agent(name).paused_at is None
    machine = await runtime.machine(name)
    assert machine is not None and machine.running and not machine.paused
    assert runtime.events(name, 5, kinds=["resumed"])[-1].client == "spinup-dashboard"


async def test_snapshot_then_restore_through_the_buttons_brings_an_earlier_file_back(
    served: Served, page: Page
) -> None:
    name = served.agents[1]
    runtime = served.runtime
    await runtime.exec(name, "echo first > /workspace/state.txt")
    await page.goto(f"{served.base}/agents/{name}")
    await click_action(page, "snapshot")
    await page.locator("#snapshot-label").fill("first version")
    await page.locator("#snapshot-dialog button[value='ok']").click()
    snap = page.locator("#panel-snapshots .snap", has_text="first version")
    await expect(snap).to_be_visible()
    snapshot_id = await snap.get_attribute("data-snapshot")
    assert snapshot_id and runtime.get_snapshot(snapshot_id).label == "first version"
    await runtime.exec(name, "echo second > /workspace/state.txt")
    await page.locator(f'#panel-snapshots [data-action="restore"][data-snapshot="{snapshot_id}"]').click()
    await expect(page.locator("#confirm-text")).to_contain_text("saved first")
    await page.locator("#confirm-ok").click()
    await expect(page.locator("#timeline .ev[data-kind='machine-restored']").first).to_be_visible()
    # The work saved before the restore is in the timeline and among the snapshots.
    saved = page.locator("#timeline .ev[data-kind='snapshot-created']", has_text="before restore")
    await expect(saved.first).to_be_visible()
    await expect(page.locator("#panel-snapshots .snap", has_text="before restore")).to_be_visible()
    assert (await runtime.exec(name, "cat /workspace/state.txt")).stdout == "first\n"
    # The diff against the previous snapshot.
    await page.locator("#panel-snapshots .snap", has_text="before restore").locator("[data-diff]").click()
    await expect(page.locator("#panel-snapshots .diff-body").first).to_contain_text("/workspace/state.txt")
    await page.screenshot(path=served.shot_path("agent-snapshots"), full_page=True)


async def test_a_background_processes_output_shows_in_its_tail_as_it_is_produced(served: Served, page: Page) -> None:
    name = served.agents[0]
    runtime = served.runtime
    await page.goto(f"{served.base}/agents/{name}")
    await expect(page.locator("#live")).to_have_attribute("data-state", "live")
    script = "for i in $(seq 1 40); do echo tick-$i; sleep 0.3; done"
    info = await runtime.process_start(name, ["sh", "-c", script], process_name="ticker")
    tail = page.locator(f'pre.tail[data-process="{info.id}"][data-stream="stdout"]')
    await expect(tail).to_contain_text("tick-2")
    first: Any = await tail.text_content()
    await expect(tail).to_contain_text("tick-8")
    assert (await runtime.process_list(name))[-1].state == "running", "the tail followed a running process"
    assert "tick-8" not in first
    await expect(page.locator("#files-body .files-path")).to_be_visible()
    await page.screenshot(path=served.shot_path("agent"), full_page=True)
    # Stop it with its button.
    await page.locator(f'.proc[data-process="{info.id}"] [data-action="signal"][data-signal="TERM"]').click()
    await expect(page.locator(f'.proc[data-process="{info.id}"] .badge')).not_to_have_text("running")


async def test_the_file_browser_previews_text_and_the_pages_fit_a_phone_in_dark_mode(
    served: Served, browser: Browser, page: Page
) -> None:
    name = served.agents[0]
    await served.runtime.exec(name, "mkdir -p /workspace/docs && echo 'hello from a file' > /workspace/docs/readme.txt")
    await page.goto(f"{served.base}/agents/{name}")
    await page.locator("#files-body a[data-path='/workspace/docs']").click()
    await page.locator("#files-body a[data-path='/workspace/docs/readme.txt']").click()
    await expect(page.locator("#files-body pre.preview")).to_have_text("hello from a file\n")
    cookies = await page.context.cookies()
    phone = await browser.new_context(
        viewport={"width": 390, "height": 844}, color_scheme="dark", device_scale_factor=2, is_mobile=True
    )
    try:
        await phone.add_cookies(cookies)  # type: ignore[arg-type]
        tab = await phone.new_page()
        tab.set_default_timeout(DEADLINE)
        await tab.goto(served.base + "/")
        await expect(tab.locator(f'tr[data-agent="{name}"]')).to_be_visible()
        await tab.screenshot(path=served.shot_path("agents-phone-dark"), full_page=True)
        await tab.goto(f"{served.base}/agents/{name}")
        await expect(tab.locator("#panel-header .badge")).to_have_text("running")
        await tab.screenshot(path=served.shot_path("agent-phone-dark"))
    finally:
        await phone.close()


async def test_spinup_dashboard_prints_the_login_url(served: Served, tmp_path: Path) -> None:
    settings = Settings(home=Path(served.shots.parent / "spinup"))
    port = served.base.rsplit(":", 1)[1]
    proc = await asyncio.create_subprocess_exec(
        SPINUP, "dashboard", "--port", port, env=server_env(settings), stdout=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(30):
        out, _ = await proc.communicate()
    assert proc.returncode == 0 and out.decode().strip() == served.login


async def test_no_credential_value_reaches_a_page(served: Served, page: Page) -> None:
    name = served.agents[0]
    value = "sk-dashboard-secret-0123456789abcdef"
    runtime = served.runtime
    runtime.set_secret("DASH_API_KEY", value)
    runtime.bind_secret(name, "DASH_API_KEY")
    result = await runtime.exec(name, 'echo "key=$DASH_API_KEY" | tee /workspace/key.txt')
    exec_id = runtime.recent_execs(name, 1)[0].id
    cookies = {c["name"]: c["value"] for c in await page.context.cookies()}
    async with httpx2.AsyncClient(base_url=served.base, cookies=cookies, timeout=60) as http:
        pages = [
            await http.get(f"/agents/{name}"),
            await http.get(f"/agents/{name}/execs/{exec_id}"),
            await http.get(f"/agents/{name}/files", params={"path": "/workspace/key.txt"}),
            await http.get("/"),
        ]
    for answer in pages:
        assert answer.status_code == 200, answer.text
        assert value not in answer.text
    assert "DASH_API_KEY" in pages[0].text  # the binding, by name
    assert "[REDACTED:DASH_API_KEY]" in pages[1].text and "[REDACTED" in result.stdout
    runtime.remove_secret("DASH_API_KEY")


async def test_an_open_port_forward_shows_with_its_link(served: Served, page: Page) -> None:
    name = served.agents[0]
    await served.runtime.process_start(
        name, ["python3", "-m", "http.server", "8000", "--bind", "127.0.0.1"], process_name="web"
    )
    await page.goto(f"{served.base}/agents/{name}")
    await expect(page.locator("#live")).to_have_attribute("data-state", "live")
    async with mcp_client(served) as client:
        forward = await call(client, "port_forward", agent=name, port=8000)
        link = page.locator(f'#panel-ports a[href="{forward["url"]}"]')
        await expect(link).to_be_visible()  # shown live, from the port-forwarded event
        async with httpx2.AsyncClient(timeout=30) as raw:
            for _ in range(50):  # until the machine's server listens (it was just started)
                try:
                    answer = await raw.get(forward["url"])
                    break
                except httpx2.TransportError:
                    await asyncio.sleep(0.2)
            assert answer.status_code == 200
        await call(client, "port_close", agent=name, port=8000)
        await expect(link).to_have_count(0)
