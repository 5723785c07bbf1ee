"""POST /hooks/postmark over real HTTP: basic auth per webhook, Postmark's sample bounce,
spam complaint and subscription change records."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.config import load
from gateway.esp.routes import vendors
from suppression.errors import ConfigError
from suppression.model import Reason
from tests.support.esp import (
    EspSite,
    esp_config,
    esp_site,
    postmark_bounce,
    postmark_subscription_change,
)
from tests.support.tiers import needs

pytestmark = pytest.mark.pure

BOUNCES = "bounces:s3cret-one"
CHANGES = "changes:s3cret-two"
JANE = "jane@example.com"
RICHARD = "richard@example.com"
MARY = "mary@example.com"


def basic(credentials: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(credentials.encode()).decode()}


@pytest.fixture
@needs("sockets")
async def site(tmp_path: Path) -> AsyncIterator[EspSite]:
    config = esp_config(tmp_path, postmark_credentials=f"{BOUNCES},{CHANGES}")
    async with esp_site(config) as running:
        for address in (JANE, RICHARD, MARY):
            await running.mailed(address)
        yield running


async def test_sample_bounce_and_spam_complaint_with_each_webhooks_credentials(
    site: EspSite,
) -> None:
    status, answer = await site.post("/hooks/postmark", postmark_bounce(JANE), **basic(BOUNCES))
    assert (status, answer) == (200, {"status": "ok", "hard_bounces": 1, "suppressed": 1})
    spam = postmark_bounce(RICHARD, "SpamComplaint", 100001, RecordType="SpamComplaint")
    assert (await site.post("/hooks/postmark", spam, **basic(CHANGES)))[0] == 200
    assert await site.scopes(JANE) == {"global": Reason.BOUNCED}
    assert await site.scopes(RICHARD) == {"global": Reason.COMPLAINED}


async def test_missing_or_wrong_credentials_change_nothing(site: EspSite) -> None:
    async with site.http.post(site.url + "/hooks/postmark", json=postmark_bounce(JANE)) as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"] == 'Basic realm="optgate"'
    for headers in (
        basic("bounces:wrong"),
        basic("nobody:s3cret-one"),
        {"Authorization": "Basic %%%"},
        {"Authorization": "Bearer s3cret-one"},
    ):
        status, _ = await site.post("/hooks/postmark", postmark_bounce(JANE), **headers)
        assert status in (401, 403), headers
    assert await site.scopes(JANE) == {}
    assert site.outcomes("postmark", "forged") == 3
    assert site.outcomes("postmark", "unauthenticated") == 2


async def test_bounce_types_are_mapped(site: EspSite) -> None:
    auth = basic(BOUNCES)
    soft = postmark_bounce(JANE, "SoftBounce", 4096, Details="452 4.2.2 mailbox full")
    for mail in ("m-1", "m-1", "m-2"):  # the same mail twice counts once: the limit is 2
        await site.post("/hooks/postmark", soft | {"MessageID": mail}, **auth)
    assert await site.scopes(JANE) == {"global": Reason.BOUNCED}
    for type_name, code in (("SpamNotification", 512), ("AutoResponder", 64), ("Blocked", 100006)):
        status, answer = await site.post(
            "/hooks/postmark", postmark_bounce(RICHARD, type_name, code), **auth
        )
        assert (status, answer) == (200, {"status": "ok", "ignored": 1}), type_name
    # a HardBounce whose details say our mail was refused as spam is no hard bounce
    spam_block = postmark_bounce(RICHARD, Details="550 5.7.1 message rejected as spam")
    assert (await site.post("/hooks/postmark", spam_block, **auth))[1]["ignored"] == 1
    # a Type name without the code is understood too
    by_name = postmark_bounce(RICHARD, "BadEmailAddress", 0)
    del by_name["TypeCode"]
    assert (await site.post("/hooks/postmark", by_name, **auth))[1]["hard_bounces"] == 1
    assert await site.scopes(RICHARD) == {"global": Reason.BOUNCED}


async def test_subscription_changes(site: EspSite) -> None:
    auth = basic(CHANGES)
    unsubscribed = postmark_subscription_change(JANE, "ManualSuppression", "Recipient")
    by_customer = postmark_subscription_change(RICHARD, "ManualSuppression", "Customer")
    complained = postmark_subscription_change(MARY, "SpamComplaint", "Recipient")
    for record in (unsubscribed, by_customer, complained):
        assert (await site.post("/hooks/postmark", record, **auth))[0] == 200
    assert await site.scopes(JANE) == {"global": Reason.UNSUBSCRIBED}
    assert await site.scopes(RICHARD) == {}  # the company's own act in Postmark, not the person's
    assert await site.scopes(MARY) == {"global": Reason.COMPLAINED}
    # a reactivation in Postmark lifts nothing in optgate
    reactivated = postmark_subscription_change(MARY, "SpamComplaint", "Customer", suppress=False)
    status, answer = await site.post("/hooks/postmark", reactivated, **auth)
    assert (status, answer) == (200, {"status": "ok", "ignored": 1})
    assert await site.scopes(MARY) == {"global": Reason.COMPLAINED}


async def test_other_records_are_200_and_ignored_and_garbage_is_400(site: EspSite) -> None:
    auth = basic(BOUNCES)
    delivery = {"RecordType": "Delivery", "MessageID": "x", "Recipient": JANE}
    assert await site.post("/hooks/postmark", delivery, **auth) == (200, {"status": "ok"})
    for body in (b"[]", b"{", b'{"RecordType": "Bounce"}', b'{"RecordType": "Bounce", "Email": 5}'):
        status, answer = await site.post("/hooks/postmark", body, **auth)
        assert (status, answer["status"]) == (400, "malformed"), body


def test_credentials_must_be_user_and_password() -> None:
    for value in ("no-colon", ":password", "user:"):
        config = load(None, {"OPTGATE_ESP_POSTMARK_CREDENTIALS": value})
        with pytest.raises(ConfigError, match=r"\[esp\] postmark_credentials: each entry is USER:"):
            vendors(config)


async def test_an_unconfigured_vendor_has_no_route(site: EspSite) -> None:
    for path in ("/hooks/ses", "/hooks/sendgrid", "/hooks/mailgun", "/hooks/nosuch"):
        async with site.http.post(site.url + path, data=b"{}") as response:
            assert response.status == 404, path
    async with site.http.get(site.url + "/hooks/postmark") as response:
        assert response.status == 405
