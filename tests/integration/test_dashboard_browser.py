"""The dashboard in a real browser (headless Debian Chromium driven by Playwright's async
API) during a live canary: real daemon, real shop, real router, real traffic. The split
and the charts must follow the rollout, and an abort through the page must be refused
without the API token and carried out with it."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from test_canary_e2e import canary_spec, deploy, first_release, wait_for

from shipyard.client import AsyncApiClient
from shipyard.devtools.daemonproc import DaemonProcess
from shipyard.devtools.loadgen import Traffic
from support import SpecMaker

CHROMIUM = Path("/usr/bin/chromium")
VIEWPORT = {"width": 1366, "height": 768}
WAIT_MS = 15_000


@pytest.fixture
async def page(daemon: DaemonProcess) -> AsyncIterator[object]:
    if not CHROMIUM.exists() and not os.environ.get("CI"):
        pytest.skip("needs Debian's chromium: apt-get install chromium (.ci/run installs it)")
    from playwright.async_api import async_playwright
    url = json.loads(daemon.paths.api.read_text())["url"]
    pw = await async_playwright().start()
    try:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                           args=["--no-sandbox", "--disable-gpu"])
        try:
            context = await browser.new_context(viewport=VIEWPORT, base_url=url)
            pg = await context.new_page()
            errors: list[str] = []
            pg.on("pageerror", lambda e: errors.append(str(e)))
            # the refused requests this test makes on purpose are logged as 401s; anything else is a bug
            pg.on("console", lambda m: errors.append(m.text) if m.type == "error" and "401" not in m.text else None)
            pg.errors = errors            # type: ignore[attr-defined]
            yield pg
        finally:
            await browser.close()
    finally:
        await pw.stop()


async def until(page: Any, predicate: str, arg: Any = None) -> None:
    """Wait for a predicate in the page (a function: the page's CSP forbids evaluating strings)."""
    try:
        await page.wait_for_function(predicate, arg=arg, timeout=WAIT_MS)
    except Exception as e:
        text = await page.text_content("body")
        raise AssertionError(f"{predicate} ({arg!r}) never held: {e}\npage errors: {page.errors}\n"
                             f"page: {' '.join((text or '').split())[:3000]}") from None


async def test_dashboard_follows_a_live_canary_and_aborts_only_with_the_token(
        api: AsyncApiClient, page, daemon: DaemonProcess, make_spec: SpecMaker, listen: str,
        tmp_path: Path) -> None:
    await first_release(api, make_spec)
    steps = [{"set_weight": 20}, {"pause": {}}, {"set_weight": 60}, {"pause": {}}]
    async with Traffic(f"http://{listen}", clients=6, pause=0.01, users=1000) as traffic:
        r = await deploy(api, canary_spec(make_spec, "v2", "watched", steps))
        r = await wait_for(api, r["id"], lambda x: x["phase"] == "paused" and x["step_index"] == 1)
        canary = r["target_slot"]
        card = "section.card[data-service=shop]"
        canary_pct = f"{card} .split-label[data-track={canary}] .pct"
        await page.goto("/dashboard/")
        await until(page, "([q, v]) => document.querySelector(q)?.textContent === v", [canary_pct, "20%"])
        await page.wait_for_selector(f"{card} .split-bar .seg[data-track={canary}]")

        line = f"{card} svg[data-chart=rps] path[data-track={canary}]"
        await until(page, "q => (document.querySelector(q)?.getAttribute('d') || '').length > 20", line)
        before = await page.get_attribute(line, "d")
        await until(page, "([q, d]) => document.querySelector(q).getAttribute('d') !== d", [line, before])
        for chart in ("errors", "p50", "p99"):
            assert await page.locator(f"{card} svg[data-chart={chart}] path[data-track={canary}]").count() == 1

        await api.post("/v1/services/shop/promote", {})
        await wait_for(api, r["id"], lambda x: x["phase"] == "paused" and x["step_index"] == 3)
        await until(page, "([q, v]) => document.querySelector(q)?.textContent === v", [canary_pct, "60%"])
        width = await page.eval_on_selector(f"{card} .seg[data-track={canary}]", "e => e.style.width")
        assert width == "60%"
        assert "at 60%" in await page.text_content(f"{card} .canary-weight")
        shot = tmp_path / "dashboard-canary.png"
        await page.screenshot(path=str(shot), full_page=True)
        print(f"\ndashboard screenshot during the canary: {shot}")

        abort = page.locator(f"{card} button[data-action=abort]")
        assert await abort.is_disabled()               # read-only without the token
        status = await page.evaluate("async () => (await fetch('/v1/services/shop/abort', "
                                     "{method: 'POST', body: '{}'})).status")
        assert status == 401

        await page.fill("#token", "not-the-token")
        await page.click("#token-form button[type=submit]")
        await until(page, "() => document.querySelector('#notice').textContent.includes('401')")
        assert await abort.is_disabled()
        assert (await api.get(f"/v1/rollouts/{r['id']}"))["rollout"]["phase"] == "paused"

        await page.fill("#token", daemon.paths.token.read_text().strip())
        await page.click("#token-form button[type=submit]")
        await until(page, "q => !document.querySelector(q).disabled", f"{card} button[data-action=abort]")
        assert await page.locator("#token-form").is_hidden()
        assert await page.evaluate("() => sessionStorage.getItem('shipyard.token') !== null")
        page.once("dialog", lambda d: d.accept())
        await abort.click()
        final = await api.wait_rollout(r["id"], 60)
        assert final["phase"] == "aborted", final
        await page.wait_for_selector(f"{card} .rollout[data-phase=aborted]", timeout=WAIT_MS)
        await until(page, "q => document.querySelector(q) === null", canary_pct)
        timeline = await page.text_content(f"{card} .timeline")
        assert "abort" in timeline and "by dashboard via token" in timeline
        done = tmp_path / "dashboard-aborted.png"
        await page.screenshot(path=str(done), full_page=True)
        print(f"dashboard screenshot after the abort: {done}")
    assert traffic.failures() == []
    assert page.errors == []
