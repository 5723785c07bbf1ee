"""The footer in a real headless Chromium: a typical 600 px newsletter before and after,
on a desktop and on a 375 px phone, screenshots in the test artefacts.

"Before" is the footer optgate used to add (a bare left-aligned paragraph after the
template's table, in English, naming the raw topic key); "after" is the message as
the rewrite makes it now. The test asserts that the new footer is visible, centred
under the template's column, no wider than it, and that the phone needs no
horizontal scrolling.
"""

from __future__ import annotations

import email
import email.policy
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, FloatRect, Locator, Page, async_playwright

from gateway.config import Topic
from gateway.outbound.footers import Footers
from gateway.outbound.rewrite import Footer, FooterTemplates, Links, prepare
from tests.support.tiers import needs
from tests.test_rewrite import body_text_parts, content
from tests.test_web_browser import ARGS, chromium  # noqa: F401 - the fixture

pytestmark = pytest.mark.browser

ARTIFACTS = Path(
    os.environ.get("TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "test-artifacts")
)
LINKS = Links(
    "https://unsub.shop.example/u/AV4xj4zWSLJDo-gX6qMwngDhg0g", "unsubscribe+t@shop.example"
)
POSTAL = "Shop Example GmbH · Hauptstraße 1 · 10115 Berlin · Germany"
# main's default footer until this change, word for word
BEFORE = FooterTemplates(
    "\n-- \nYou receive this because you subscribed to marketing.\nUnsubscribe: {url}\n"
    "{postal_address}\n",
    '<p style="font-size:12px;color:#666">You receive this because you subscribed to '
    'marketing. <a href="{url}">Unsubscribe</a><br>{postal_address}</p>',
    POSTAL,
)
SCREENS = {"desktop": (1280, 900), "phone": (375, 812)}
NEWSLETTER = """\
<!DOCTYPE html>
<html lang="{lang}">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Spring sale</title>
</head>
<body style="margin:0;padding:0;background:#eef0f3;">
<table role="presentation" id="template" width="100%" cellpadding="0" cellspacing="0"
 border="0" style="background:#eef0f3;">
<tr><td align="center" style="padding:24px 12px 0 12px;">
<table role="presentation" id="column" width="600" cellpadding="0" cellspacing="0" border="0"
 style="width:100%;max-width:600px;background:#ffffff;border-radius:8px;">
<tr><td style="padding:28px 32px 0 32px;font-family:Helvetica,Arial,sans-serif;">
<div style="font-size:14px;font-weight:bold;letter-spacing:2px;color:#0b57d0;">SHOP EXAMPLE</div>
<h1 style="margin:16px 0 0 0;font-size:28px;line-height:34px;color:#1f1f1f;">{title}</h1>
</td></tr>
<tr><td style="padding:12px 32px 28px 32px;font:16px/24px Helvetica,Arial,sans-serif;
color:#3c4043;">
<p style="margin:0 0 16px 0;">{text}</p>
<p style="margin:0;"><a href="https://shop.example/sale" style="display:inline-block;
background:#0b57d0;color:#ffffff;padding:12px 24px;border-radius:6px;text-decoration:none;
font-weight:bold;">{button}</a></p>
</td></tr>
</table>
</td></tr>
</table>
</body>
</html>
"""
ENGLISH = {
    "lang": "en",
    "title": "Spring sale: 20% off everything",
    "text": "Fresh colours for a new season. Until Sunday, everything in the shop is 20% off.",
    "button": "Shop the sale",
}
GERMAN = {
    "lang": "de",
    "title": "Frühlingsaktion: 20 % auf alles",
    "text": "Frische Farben für die neue Saison. Bis Sonntag ist alles im Shop 20 % günstiger.",
    "button": "Zur Aktion",
}


def newsletter(words: dict[str, str]) -> bytes:
    head = "From: Shop Example <news@shop.example>\nSubject: Spring sale\nMIME-Version: 1.0\n"
    head += "Content-Type: text/html; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n"
    return (head + NEWSLETTER.format(**words)).encode("utf-8")


def rewritten(message: bytes, footer: Footer) -> str:
    """The HTML a reader's client shows after optgate's rewrite."""
    prepared = prepare(message, footer=footer, list_id=None, feedback_id=None)
    parsed = email.message_from_bytes(prepared.render(LINKS), policy=email.policy.default)
    return content(body_text_parts(parsed)["1"])


def after() -> Footer:
    topics = {"marketing": Topic(name="Shop Example news", names={"de": "Shop-Neuigkeiten"})}
    return Footers(company="Shop Example", postal_address=POSTAL, topics=topics).topic("marketing")


@pytest.fixture
@needs("browser")
async def browser(chromium: Path) -> AsyncIterator[Browser]:  # noqa: F811 - uses the fixture
    ARTIFACTS.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, before the browser
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=str(chromium), args=ARGS)
        try:
            yield launched
        finally:
            await launched.close()


async def show(browser: Browser, html: str, screen: str, name: str) -> Page:
    width, height = SCREENS[screen]
    page = await browser.new_page(viewport={"width": width, "height": height})
    await page.set_content(html, wait_until="load")
    await page.screenshot(path=ARTIFACTS / f"footer-{name}-{screen}.png", full_page=True)
    return page


async def box(page: Page | Locator, selector: str = "") -> FloatRect:
    located = page.locator(selector).first if isinstance(page, Page) else page
    found = await located.bounding_box()
    assert found is not None, selector
    return found


def centre(b: FloatRect) -> float:
    return b["x"] + b["width"] / 2


@pytest.mark.parametrize("screen", SCREENS)
async def test_the_footer_sits_centred_under_a_600px_newsletter(
    browser: Browser, screen: str
) -> None:
    width = SCREENS[screen][0]
    message = newsletter(ENGLISH)
    before = await show(browser, rewritten(message, BEFORE), screen, "before")
    old_link = await box(before, "text=Unsubscribe")
    column = await box(before, "#column")
    assert abs(centre(old_link) - centre(column)) > 40  # the old one: left, not centred

    page = await show(browser, rewritten(message, after()), screen, "after")
    column, template = await box(page, "#column"), await box(page, "#template")
    reason = page.get_by_text("You receive this e-mail because you subscribed to")
    link = page.get_by_role("link", name="Unsubscribe")
    postal = page.get_by_text(POSTAL)
    for part in (reason, link, postal):
        assert await part.is_visible()
        found = await box(part)
        assert abs(centre(found) - centre(column)) <= 2  # centred under the column
        assert found["y"] >= template["y"] + template["height"]  # below the newsletter
    footer = await box(page, "td[lang]")  # the footer's text cell
    assert footer["width"] <= min(600, width)
    assert abs(centre(footer) - width / 2) <= 2
    assert "“Shop Example news”" in await reason.inner_text()
    scroll = await page.evaluate("document.documentElement.scrollWidth")
    assert scroll <= width  # no sideways scrolling on the phone


async def test_a_german_newsletter_gets_a_german_footer(browser: Browser) -> None:
    page = await show(browser, rewritten(newsletter(GERMAN), after()), "phone", "after-de")
    link = page.get_by_role("link", name="Abmelden")
    assert await link.is_visible()
    assert await link.get_attribute("href") == LINKS.url
    reason = page.get_by_text("Sie erhalten diese E-Mail, weil Sie „Shop-Neuigkeiten“")
    assert await reason.is_visible()
