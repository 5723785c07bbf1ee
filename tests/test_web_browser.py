"""The pages in real headless Chromium (Debian's package), driven by Playwright, JavaScript off."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from suppression.opening import open_store
from suppression.store import Store
from tests.support.keys import AUDIT_KEY
from tests.support.tiers import needs
from tests.test_web import JANE, Site, seed, site_for

pytestmark = [pytest.mark.browser, pytest.mark.sockets]

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
@needs("browser")
def chromium() -> Path:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: run scripts/setup-system as root (apt-get install chromium); "
            "never `playwright install`",
            pytrace=False,
        )
    return CHROMIUM


@pytest.fixture
async def browser(chromium: Path) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=str(chromium), args=ARGS)
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
@needs("sockets")
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    store: Store = await open_store(f"sqlite:///{tmp_path / 'optgate.db'}", audit_key=AUDIT_KEY)
    try:
        await seed(store)
        async with site_for(store) as running:
            yield running
    finally:
        await store.close()


async def open_page(browser: Browser, url: str) -> tuple[Page, list[str]]:
    """A new page without JavaScript at url, and the console errors it logs."""
    page = await browser.new_page(java_script_enabled=False)
    errors: list[str] = []
    page.on(
        "console", lambda message: errors.append(message.text) if message.type == "error" else None
    )
    response = await page.goto(url)
    assert response is not None
    assert response.status == 200
    return page, errors


async def test_the_unsubscribe_button_works_in_a_real_browser(
    site: Site, browser: Browser, tmp_path: Path
) -> None:
    token = site.token(JANE, "topic:news")
    page, errors = await open_page(browser, f"{site.url}/u/{token}")
    await expect(page.get_by_role("heading", name="Unsubscribe")).to_be_visible()
    await expect(page.get_by_text("j***@example.com")).to_be_visible()
    await page.screenshot(path=tmp_path / "unsubscribe.png", full_page=True)
    assert await site.keeps(JANE, "news")  # opening the page changed nothing

    await page.get_by_role("button", name="Unsubscribe").click()

    await expect(page.get_by_role("heading", name="You are unsubscribed")).to_be_visible()
    await expect(page.get_by_role("button", name="Resubscribe")).to_be_visible()
    assert not await site.keeps(JANE, "news")
    assert await site.keeps(JANE, "deals")
    assert errors == []


async def test_preferences_unsubscribe_and_resubscribe_in_a_real_browser(
    site: Site, browser: Browser
) -> None:
    token = site.token(JANE, "topic:news")
    page, errors = await open_page(browser, f"{site.url}/p/{token}")

    await page.get_by_role("button", name="Unsubscribe from news").click()

    await expect(page.get_by_role("status")).to_have_text("You are unsubscribed from “news”.")
    assert page.url == f"{site.url}/p/{token}?done=unsubscribed&topic=news"
    assert not await site.keeps(JANE, "news")
    assert await site.keeps(JANE, "deals")

    await page.get_by_role("button", name="Resubscribe to news").click()

    await expect(page.get_by_role("status")).to_have_text("You are subscribed to “news” again.")
    await expect(page.get_by_role("button", name="Unsubscribe from news")).to_be_visible()
    assert await site.keeps(JANE, "news")
    assert errors == []
