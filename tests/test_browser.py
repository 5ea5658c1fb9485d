"""End to end in Debian's chromium: inject io_stall from the Simulator panel and watch it heal live."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agent_support import SCENARIOS, agent_core, manual
from api_support import LOGIN_TOKEN, make_app, with_tokens
from servers import Servers
from web_support import web_config

from breakglass.config import Config
from breakglass.core import Core, CoreThread
from breakglass.metrics import Metrics
from breakglass.sim.fake_messages import Script
from breakglass.sim.runner import SimHandle
from breakglass.store import Store
from breakglass.web.app import create_app
from breakglass.web.pages import FLEET_VIEW_AFTER

__all__ = ["agent_core"]  # the fixture, imported for pytest

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason="Debian's chromium is not installed")


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """Debian's chromium under Playwright, closed afterwards."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def demo_url(sim: SimHandle, servers: Servers) -> str:
    """The full service (real core, breakglass's server) in demo mode against the simulator."""
    cfg: Config = sim.config.model_copy(update={"demo": True, "sim_control_url": sim.control_url})
    running = servers.core(cfg)
    app = create_app(cfg, store=running.store, metrics=running.metrics, core=running.handle)
    server = servers.web(app, threads=8, store=running.store)
    return f"http://127.0.0.1:{server.effective_port}/"


def test_io_stall_injected_from_the_page_opens_an_incident_that_resolves_without_a_reload(
    demo_url: str,
) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 420, "height": 900})
        page.goto(demo_url)
        page.wait_for_selector("#simulator")
        # A marker on the window survives only if the page never reloads.
        page.evaluate("window.stillTheSamePage = true")
        page.click('button[data-fault="io_stall"]')
        page.wait_for_selector(".incident-live", timeout=30_000)
        page.screenshot(path=str(ARTIFACTS / "demo-incident-open.png"), full_page=True)
        page.wait_for_selector(".target .state-resolved", timeout=45_000)
        page.screenshot(path=str(ARTIFACTS / "demo-incident-resolved.png"), full_page=True)
        assert page.evaluate("window.stillTheSamePage === true")
        assert page.locator(".incident-live").count() == 0


# The README's screenshots are refreshed on purpose (`make screenshots`), never as a side effect of a run.
SCREENSHOTS = Path(os.environ.get("BREAKGLASS_SCREENSHOTS_DIR") or ARTIFACTS / "screenshots")
WIDTHS = (390, 1280)


def _fits(page: object, url: str, width: int) -> None:
    """The page at ``url`` has no horizontal scroll at ``width`` px."""
    page.set_viewport_size({"width": width, "height": 900})  # type: ignore[attr-defined]
    page.goto(url)  # type: ignore[attr-defined]
    _fits_now(page, url, width)


def _fits_now(page: object, what: str, width: int) -> None:
    """The page as it is now has no horizontal scroll at ``width`` px."""
    page.wait_for_load_state("load")  # type: ignore[attr-defined]
    scroll, inner = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")  # type: ignore[attr-defined]
    assert scroll <= inner, f"{what} is {scroll} px wide at {width} px"


def test_every_page_fits_a_phone_and_a_desktop_and_the_live_incident_page_closes_in_place(
    demo_url: str, sim
) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with chromium() as browser:
        page = browser.new_page()
        for width in WIDTHS:
            _fits(page, demo_url, width)
            _fits(page, demo_url + "incidents", width)
        sim.inject("io_stall")
        page.set_viewport_size({"width": 1280, "height": 900})
        page.goto(demo_url)
        page.wait_for_selector(".incident-live", timeout=30_000)
        incident = page.get_attribute(".incident-live a", "href")
        assert incident
        for width in WIDTHS:
            _fits(page, demo_url, width)
            page.screenshot(path=str(SCREENSHOTS / f"front-incident-{width}.png"), full_page=True)
        # The live incident page: open while the incident runs, closed in place (no reload).
        _fits(page, demo_url.rstrip("/") + incident, 390)
        page.evaluate("window.stillTheSamePage = true")
        assert page.text_content("#inc-closed") == "still open"
        page.wait_for_selector("#inc-state.state-resolved", timeout=60_000)
        page.wait_for_function("document.getElementById('inc-closed').textContent !== 'still open'")
        assert page.evaluate("window.stillTheSamePage === true")
        assert "UTC" in (page.text_content("#inc-closed") or "")
        assert page.is_visible("#report")
        assert "Confirmed:" in (page.text_content("#report") or "")
        for width in WIDTHS:
            _fits(page, demo_url.rstrip("/") + incident, width)
            page.screenshot(path=str(SCREENSHOTS / f"incident-resolved-{width}.png"), full_page=True)
            _fits(page, demo_url + "incidents", width)
            _fits(page, demo_url, width)


# Each step on the page and the step it is nested in ("" at the top level).
STEP_TREE = """Array.from(document.querySelectorAll('#steps li.step')).map(
  (li) => [li.id, (li.parentElement.closest('li.step') || {id: ''}).id])"""


def test_the_agents_conversation_arrives_live_nested_as_on_a_reload_and_fits_a_phone(
    agent_core: Any, servers: Servers
) -> None:
    script = json.loads((SCENARIOS / "conversation.json").read_text(encoding="utf-8"))
    script["turns"][0]["hold"] = True  # the model's first answer waits until the page is open
    r, fake = agent_core(Script(script))
    app = create_app(r.cfg, store=r.store, metrics=r.metrics, core=r.handle)
    server = servers.web(app, threads=8, store=r.store)
    url = f"http://127.0.0.1:{server.effective_port}/incidents/{manual(r, 'builds feel slow')}"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 390, "height": 900})
        page.goto(url)
        page.wait_for_selector("body[data-incident-live]")
        assert page.locator("#steps .step-tool_call").count() == 0
        page.evaluate("window.stillTheSamePage = true")
        fake.release()
        # "Closed" is the stream's last event: every step has arrived before it.
        page.wait_for_selector("#live-note:text-matches('^Closed')", timeout=60_000)
        assert page.evaluate("window.stillTheSamePage === true")
        live = page.evaluate(STEP_TREE)
        assert page.locator("#steps .step-tool_call .inner .step-tool_result").count() == 3
        assert page.locator("#steps .step-tool_call .inner .step-policy.refused").count() == 2
        page.reload()
        assert page.evaluate(STEP_TREE) == live
        for width in WIDTHS:
            _fits(page, url, width)
            page.screenshot(path=str(SCREENSHOTS / f"incident-conversation-{width}.png"), full_page=True)


def test_with_a_login_every_page_fits_a_phone_and_a_desktop_the_login_page_too(
    tmp_path: Path, servers: Servers
) -> None:
    names = tuple(f"devvm-{i:02d}" for i in range(FLEET_VIEW_AFTER + 6))  # enough for the fleet table
    cfg = with_tokens(web_config(tmp_path, names), tmp_path, mode="token")
    store = Store(cfg.store_path)
    thread = CoreThread(Core(cfg, store=store, metrics=Metrics()), schedule=False)
    handle = thread.start()
    try:
        incident_id, _ = store.open_incident(names[0], "manual", "builds feel slow", "viktor", {})
        store.add_step(incident_id, "agent_text", {"text": "Looking at the load first."})
        server = servers.web(make_app(cfg, store, handle), store=store)
        base = f"http://127.0.0.1:{server.effective_port}"
        with chromium() as browser:
            page = browser.new_page()
            for width in WIDTHS:
                # Any page asks for the login first.
                _fits(page, f"{base}/incidents/{incident_id}", width)
                assert page.url.startswith(f"{base}/login?next=")
                page.screenshot(path=str(SCREENSHOTS / f"login-{width}.png"), full_page=True)
                page.fill("input[name=token]", "not the token")
                page.click("button[type=submit]")
                page.wait_for_selector("[role=alert]")
                _fits_now(page, "the login page saying the token is wrong", width)
            page.fill("input[name=user]", "viktor")
            page.fill("input[name=token]", LOGIN_TOKEN)
            page.click("button[type=submit]")
            page.wait_for_url(f"{base}/incidents/{incident_id}")
            paths = ("/", "/?page=2", f"/?target={names[0]}", "/incidents", f"/incidents/{incident_id}")
            for width in WIDTHS:
                for path in paths:
                    _fits(page, base + path, width)
                    assert page.url == base + path, f"{path} asked for the login again"
    finally:
        thread.stop()
        store.close()
