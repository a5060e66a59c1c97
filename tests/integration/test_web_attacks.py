"""Attacks on the two web pages and the HTTP API, played as an outside black-box check
would, against the real `bridge api` process, PostgreSQL and Debian's Chromium."""

from __future__ import annotations

from playwright.async_api import Browser, Route

from bridge.admin import Admin
from bridge.config import Settings
from bridge.tokens import create_token
from tests.helpers import api_server
from tests.integration.test_owner_page import browser

__all__ = ["browser"]  # the module's Chromium fixture


async def test_attack_sign_in_before_the_script_runs_puts_the_token_in_the_address(
    admin: Admin, settings: Settings, browser: Browser
) -> None:
    # A slow or blocked script (a phone on a bad network, a filtering proxy) leaves the
    # sign-in form to the browser: Enter submitted it as GET /?token=bt_..., the token
    # landing in the address bar, the history and every proxy's access log.
    owner = (await create_token(admin.store, "owner", "alice", actor="test")).token
    vendor = (await create_token(admin.store, "vendor", "acme", actor="test")).token

    async def no_script(route: Route) -> None:
        await route.abort()

    with api_server(settings) as server:
        for page_path, token in (("/", owner), ("/static/support.html", vendor)):
            page = await browser.new_page()
            await page.route("**/*.js", no_script)
            await page.goto(server.url + page_path)
            await page.fill("#token", token)
            await page.press("#token", "Enter", no_wait_after=True)
            await page.wait_for_timeout(500)  # a native submit navigates within this
            history = await page.evaluate("window.location.href")
            assert token not in history, (page_path, history)
            secret = token.partition("_")[2] or token
            assert secret not in history, (page_path, history)
            await page.close()
        log = server.log.read_text()
        assert owner not in log and vendor not in log
