"""The whole loop through `optgate serve`'s two parts: relay a message, follow its
unsubscribe link (one-click POST as Gmail sends it, and the footer link in Chromium),
and the very next message to that recipient is dropped."""

from __future__ import annotations

import email
import email.policy
import json
import os
import re
from pathlib import Path

import aiohttp
import pytest
from playwright.async_api import Browser

from gateway.config import Config
from gateway.runtime.service import Running
from gateway.runtime.stores import open_configured
from suppression.address import normalize
from suppression.model import Reason
from tests.support.people import FAN, SENDER
from tests.support.smtp import Sink, message, send
from tests.test_web_browser import browser, chromium  # noqa: F401 - fixtures

# screenshots a person can look at after a run (CI keeps the folder as an artefact)
ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS", Path(__file__).parents[1] / "test-artifacts"))


@pytest.fixture(scope="module", autouse=True)
def _artifacts() -> None:
    ARTIFACTS.mkdir(exist_ok=True)


def links(data: bytes) -> tuple[str, str]:
    """The one-click URL from List-Unsubscribe and the footer URL from the text body."""
    copy = email.message_from_bytes(data, policy=email.policy.default)
    header = re.search(r"<(https://[^>]+)>", str(copy["List-Unsubscribe"]))
    body = copy.get_body(("plain",))
    assert header is not None
    assert body is not None
    footer = re.search(r"https://\S+/u/\S+", body.get_content())
    assert footer is not None
    return header.group(1), footer.group(0)


def local(url: str, gate: Running) -> str:
    """The link as the recipient's client would reach it, on the test's web port."""
    return re.sub(r"^https://[^/]+", f"http://127.0.0.1:{gate.web_port}", url)


async def test_one_click_post_from_the_header_stops_the_next_message(
    gate: Running, next_hop: Sink, config: Config
) -> None:
    await send(gate.smtp_port, SENDER, [FAN], message(message_id="<one@sender.example>"))
    one_click, _ = links(next_hop.to(FAN)[0].data)
    async with aiohttp.ClientSession() as http:
        response = await http.post(
            local(one_click, gate),
            data={"List-Unsubscribe": "One-Click"},
            allow_redirects=False,
        )
        assert response.status == 200
    again = await send(gate.smtp_port, SENDER, [FAN], message(message_id="<two@sender.example>"))
    assert again.code == 250
    assert len(next_hop.to(FAN)) == 1  # the second one was dropped
    store = await open_configured(config, create=True)
    try:
        record = await store.subject(normalize(FAN))
    finally:
        await store.close()
    [opt_out] = [s for s in record.suppressions if s.reason is Reason.UNSUBSCRIBED]
    assert (opt_out.scope, opt_out.source) == ("topic:marketing", "one-click")
    evidence = json.loads(opt_out.evidence or "{}")
    assert evidence["ip"] == "127.0.0.1"
    assert evidence["channel"] == "one-click"
    assert "token_issued" in evidence
    [event] = [e for e in record.events if e.seq == opt_out.event]
    assert event.action == "suppress"
    assert json.loads(event.body)["detail"]["channel"] == "one-click"
    metrics = gate.metrics.exposition().decode()
    assert 'optgate_unsubscribes_total{channel="one-click"} 1.0' in metrics


async def test_footer_link_in_chromium_stops_the_next_message(
    gate: Running,
    next_hop: Sink,
    browser: Browser,  # noqa: F811 - the fixture
) -> None:
    await send(gate.smtp_port, SENDER, [FAN], message(message_id="<one@sender.example>"))
    _, footer = links(next_hop.to(FAN)[0].data)
    page = await browser.new_page(java_script_enabled=False)
    response = await page.goto(local(footer, gate))
    assert response is not None
    assert response.status == 200
    await page.screenshot(path=ARTIFACTS / "unsubscribe-page.png", full_page=True)
    await send(gate.smtp_port, SENDER, [FAN], message(message_id="<two@sender.example>"))
    assert len(next_hop.to(FAN)) == 2  # opening the page alone changes nothing
    await page.get_by_role("button", name="Unsubscribe").click()
    await page.get_by_text("unsubscribed", exact=False).first.wait_for()
    await send(gate.smtp_port, SENDER, [FAN], message(message_id="<three@sender.example>"))
    assert len(next_hop.to(FAN)) == 2  # the third was dropped
