"""The support page and the owner page's support block in headless Chromium, against the
real `bridge api` process (and the running bridge, for a real activation attempt):
search by any spelling, read the verdict, act; the same on a phone-sized screen."""

from __future__ import annotations

import re

from playwright.async_api import Browser, Page, expect

from bridge.admin import Admin
from bridge.config import Settings
from bridge.support import SupportDesk
from bridge.tokens import create_token
from tests.helpers import RunningBridge, activate, api_server
from tests.integration.test_owner_page import ARTIFACTS, browser

__all__ = ["browser"]  # the module's Chromium fixture, shared with the owner page's test

MAC = "00:1A:2B:3C:4D:5E"
CONTACT = "support@acme.example, +1 555 0100"


async def _setup(admin: Admin) -> None:
    await admin.add_model("acme", "thermo-1", kind="mac", plaintext_keys=True)
    await admin.resolve("acme", "thermo-1", MAC, "approve", reason="first batch")
    await admin.approve("acme", "thermo-1", ["00:1A:2B:3C:4D:70", "00:1A:2B:3C:4E:5E"])
    await SupportDesk(admin).set_contact("acme", "thermo-1", CONTACT, actor="test")


async def _sign_in(page: Page, url: str, token: str, who: str) -> None:
    await page.goto(url)
    await page.fill("#token", token)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#who-name")).to_have_text(who)


async def test_support_page_diagnoses_and_releases_with_a_reason(
    admin: Admin, settings: Settings, browser: Browser
) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    await _setup(admin)
    await admin.claim("acme", "thermo-1", MAC, owner="bob")
    vendor = (await create_token(admin.store, "vendor", "acme", actor="test")).token
    with api_server(settings) as server:
        page = await browser.new_page(viewport={"width": 1100, "height": 1000})
        await _sign_in(page, f"{server.url}/static/support.html", vendor, "Support for acme")
        await expect(page.locator("#vendor")).to_have_value("acme")
        await page.fill("#model", "thermo-1")
        await page.fill("#number", "001a.2b3c.4d5e")  # another spelling
        await page.fill("#asking", "alice")
        await page.click("#diagnose-button")
        await expect(page.locator("#verdict-title")).to_have_text(
            "Cause 2: Claimed by someone else"
        )
        await expect(page.locator("#evidence")).to_contain_text("It is claimed by bob since")
        await expect(page.locator("#contact")).to_contain_text(CONTACT)
        await expect(page.locator("#timeline tbody tr")).to_have_count(2)
        await expect(page.locator("#actions button")).to_have_text(
            ["Release the claim", "Transfer to alice"]
        )
        await page.fill("#reason", "Bob sold it to Alice; receipt checked")
        await page.screenshot(path=ARTIFACTS / "support-page.png", full_page=True)

        await page.click("button[data-action=release]")
        await expect(page.locator("#done")).to_contain_text("was released from bob's account")
        await expect(page.locator("#verdict-badge")).to_have_text("not_claimed")
        await expect(page.locator("#timeline tbody tr").last).to_contain_text(
            "reason: Bob sold it to Alice; receipt checked"
        )
        await page.close()

        # A phone-sized screen: one column, nothing wider than the viewport.
        phone = await browser.new_page(
            viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True
        )
        await _sign_in(phone, f"{server.url}/static/support.html", vendor, "Support for acme")
        await phone.fill("#model", "thermo-1")
        await phone.fill("#number", "00:1A:2B:3C:4D:7O")  # O for 0
        await phone.click("#diagnose-button")
        await expect(phone.locator("#verdict-title")).to_have_text("Cause 1: Number entered wrong")
        await expect(phone.locator("#neighbours")).to_contain_text("00:1A:2B:3C:4D:70")
        width = await phone.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"the support page scrolls sideways on a phone ({width}px)"
        await phone.screenshot(path=ARTIFACTS / "support-page-phone.png", full_page=True)
        await phone.close()

    device = await admin.show("acme", "thermo-1", MAC)
    assert device.owner is None
    entry = (await admin.audit(identifier=MAC, vendor="acme", model="thermo-1", limit=1))[0]
    assert entry.action == "release" and entry.actor is not None
    assert entry.actor.startswith("api:vendor:acme:") and entry.owner == "bob"


async def test_owner_page_shows_what_the_bridge_has_seen(
    admin: Admin, settings: Settings, browser: Browser, bridge: RunningBridge
) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    await _setup(admin)
    await admin.claim("acme", "thermo-1", MAC, owner="alice")
    await admin.claim("acme", "thermo-1", "00:1A:2B:3C:4E:5E", owner="alice")
    await admin.claim("acme", "thermo-1", "00:1A:2B:3C:4D:70", owner="alice")
    await admin.resolve(
        "acme", "thermo-1", "00:1A:2B:3C:4D:70", "release", reason="returned to the shop"
    )
    # The firmware sends its Wi-Fi MAC, one digit off the label's.
    tried = await activate(settings, "00:1A:2B:3C:4D:5F", client_id="thermo-wifi", seal=False)
    assert tried.reply["code"] == "not_approved"
    alice = (await create_token(admin.store, "owner", "alice", actor="test")).token
    with api_server(settings) as server:
        page = await browser.new_page(viewport={"width": 1100, "height": 1000})
        await _sign_in(page, server.url, alice, "Signed in as alice")
        wrong = page.locator(".device", has_text=MAC)
        await expect(wrong.locator(".device-seen")).to_have_text(
            f"Your device tried with 00:1A:2B:3C:4D:5F, which differs from the number you "
            f"added ({MAC}). Support: {CONTACT}"
        )
        silent = page.locator(".device", has_text="00:1A:2B:3C:4E:5E")
        await expect(silent.locator(".device-seen")).to_contain_text("No attempt yet")
        await expect(page.locator("#history-list")).to_contain_text(
            "release acme/thermo-1 00:1A:2B:3C:4D:70 by the vendor: returned to the shop"
        )
        # A refused claim carries the model's support contact beside its sentence.
        await page.fill("#vendor", "acme")
        await page.fill("#model", "thermo-1")
        await page.fill("#number", "00:1A:2B:3C:99:99")
        await page.click("#add-button")
        await expect(page.locator("#result")).to_have_class(re.compile(r"\berror\b"))
        await expect(page.locator("#support-contact")).to_have_text(
            f"Support for acme/thermo-1: {CONTACT}"
        )
        await page.screenshot(path=ARTIFACTS / "owner-page-seen.png", full_page=True)
        await page.close()

        phone = await browser.new_page(
            viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True
        )
        await _sign_in(phone, server.url, alice, "Signed in as alice")
        await expect(phone.locator(".device-seen")).to_have_count(2)
        width = await phone.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"the owner page scrolls sideways on a phone ({width}px)"
        await phone.close()
