"""The reference owner page in headless Chromium, against the real `bridge api` process:
sign in with a token, mistype a number, follow "did you mean …?", see the device claimed;
re-enable and release from the list; the same on a phone-sized screen."""

from __future__ import annotations

import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from bridge.admin import Admin
from bridge.config import Settings
from bridge.tokens import Role, create_token
from tests.helpers import api_server

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
APPROVED = "00:1B:2B:3C:4D:5E"
MISREAD = "00:18:2B:3C:4D:5E"  # B read as 8 on the label


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    # Debian's chromium package, never a browser download (.ci/run installs it).
    executable = shutil.which("chromium")
    assert executable, "the browser test needs Chromium: apt-get install chromium"
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield browser
        await browser.close()


@pytest.fixture
async def alice_token(admin: Admin, settings: Settings) -> str:
    await admin.add_model("acme", "thermo-1", kind="mac")
    await admin.add_model("acme", "plug-3", kind="serial")
    await admin.approve("acme", "thermo-1", [APPROVED, "00:1B:2B:3C:4D:5F"])
    await admin.approve("acme", "plug-3", ["PL-000417"])
    await admin.claim("acme", "plug-3", "PL-000417", owner="alice")
    # Alice revoked its key herself (a portal acting for her, e.g. a lost plug), so she may
    # re-enable it; a vendor's revoke she could not undo.
    owner = Admin(admin.store, settings=settings, actor="test", role=Role.OWNER)
    await owner.revoke("acme", "plug-3", "PL-000417")
    return (await create_token(admin.store, "owner", "alice", actor="test")).token


async def _sign_in(page: Page, url: str, token: str) -> None:
    await page.goto(url)
    await page.fill("#token", token)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#who-name")).to_have_text("Signed in as alice")


async def _mistype(page: Page) -> None:
    await page.fill("#vendor", "acme")
    await page.fill("#model", "thermo-1")
    await page.fill("#number", MISREAD)
    await page.click("#add-button")
    result = page.locator("#result")
    await expect(result).to_contain_text(f"did you mean {APPROVED}?")
    await expect(result).to_have_class(re.compile(r"\berror\b"))


async def test_owner_follows_the_suggestion_and_sees_the_device_claimed(
    admin: Admin, settings: Settings, browser: Browser, alice_token: str
) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    with api_server(settings) as server:
        page = await browser.new_page(viewport={"width": 1100, "height": 900})
        await _sign_in(page, server.url, alice_token)
        plug = page.locator(".device", has_text="PL-000417")
        await expect(plug.locator(".state")).to_have_text("revoked")
        await expect(page.locator(".device")).to_have_count(1)

        await _mistype(page)
        await page.click("#suggestion")
        await expect(page.locator("#number")).to_have_value(APPROVED)
        await page.click("#add-button")

        result = page.locator("#result")
        await expect(result).to_contain_text(f"The MAC address {APPROVED} (acme/thermo-1)")
        await expect(result).to_contain_text("is now in your account")
        device = page.locator(".device", has_text=APPROVED)
        await expect(device.locator(".state")).to_have_text("claimed")
        await expect(device.locator(".device-window")).to_have_text(
            re.compile(r"Activation window: 23 h 5\d min left")
        )
        await expect(device.locator(".release")).to_be_visible()
        await expect(device.locator(".reenable")).to_be_hidden()
        await expect(plug.locator(".reenable")).to_be_visible()
        await page.screenshot(path=ARTIFACTS / "owner-page.png", full_page=True)

        await plug.locator(".reenable").click()
        await expect(result).to_contain_text(
            "A new activation window is open for the serial number PL-000417 (acme/plug-3)"
        )
        await expect(plug.locator(".state")).to_have_text("claimed")
        await expect(plug.locator(".reenable")).to_be_hidden()
        await page.close()

        # A phone-sized screen: one column, nothing wider than the viewport.
        phone = await browser.new_page(
            viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True
        )
        await _sign_in(phone, server.url, alice_token)
        await expect(phone.locator(".device")).to_have_count(2)
        await _mistype(phone)
        width = await phone.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"the page scrolls sideways on a phone ({width}px)"
        await phone.screenshot(path=ARTIFACTS / "owner-page-phone.png", full_page=True)

        phone.once("dialog", lambda dialog: dialog.accept())  # "Release …?"
        await phone.locator(".device", has_text="PL-000417").locator(".release").click()
        await expect(phone.locator("#result")).to_contain_text("is no longer in your account")
        await expect(phone.locator(".device")).to_have_count(1)
        await phone.close()

    device_row = await admin.show("acme", "thermo-1", APPROVED)
    assert (device_row.owner, device_row.state) == ("alice", "claimed")
    assert (await admin.show("acme", "plug-3", "PL-000417")).owner is None
    assert (ARTIFACTS / "owner-page.png").stat().st_size > 10_000
