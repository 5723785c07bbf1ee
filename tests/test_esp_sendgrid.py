"""POST /hooks/sendgrid over real HTTP: the Signed Event Webhook (ECDSA P-256 over
timestamp + raw body) with a test key, and the Event Webhook Reference's sample events."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.config import load
from gateway.esp.common import Vendor
from gateway.esp.routes import vendors
from suppression.errors import ConfigError
from suppression.model import Reason
from tests.support.esp import (
    EspSite,
    SendGridKey,
    esp_config,
    esp_site,
    sendgrid_event,
    sendgrid_events,
)
from tests.support.tiers import needs

pytestmark = pytest.mark.pure

ADDRESSES = {
    kind: f"{kind}@example.com"
    for kind in ("bounce", "blocked", "dropped", "spamreport", "unsubscribe", "group")
}


@dataclass
class Rig:
    site: EspSite
    key: SendGridKey

    async def send(
        self, events: list[dict[str, Any]], *, at: int | None = None, key: SendGridKey | None = None
    ) -> tuple[int, dict[str, Any]]:
        body = json.dumps(events).encode()
        headers = (key or self.key).headers(body, int(time.time()) if at is None else at)
        return await self.site.post("/hooks/sendgrid", body, **headers)


@pytest.fixture
@needs("sockets")
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    key = SendGridKey()
    config = esp_config(
        tmp_path, sendgrid_public_key=key.public_base64, sendgrid_groups='{ "10" = "news" }'
    )
    async with esp_site(config) as site:
        for address in ADDRESSES.values():
            await site.mailed(address)
        yield Rig(site, key)


async def test_a_genuine_batch_of_the_sample_events_is_applied(rig: Rig) -> None:
    a = ADDRESSES
    batch = [
        *sendgrid_events(a["bounce"]),  # processed, deferred, delivered, open: ignored
        sendgrid_event("bounce", a["bounce"], 1),
        sendgrid_event("dropped", a["dropped"], 2),
        sendgrid_event("spamreport", a["spamreport"], 3),
        sendgrid_event("unsubscribe", a["unsubscribe"], 4),
        sendgrid_event("group_unsubscribe", a["group"], 5),
        sendgrid_event("click", a["group"], 6),
        sendgrid_event("a-type-from-the-future", a["group"], 7),
    ]
    status, answer = await rig.send(batch)
    assert status == 200
    assert answer == {
        "status": "ok",
        "hard_bounces": 2,
        "complaints": 1,
        "unsubscribes": 2,
        "suppressed": 5,
    }
    assert await rig.site.scopes(a["bounce"]) == {"global": Reason.BOUNCED}
    assert await rig.site.scopes(a["dropped"]) == {"global": Reason.BOUNCED}
    assert await rig.site.scopes(a["spamreport"]) == {"global": Reason.COMPLAINED}
    assert await rig.site.scopes(a["unsubscribe"]) == {"global": Reason.UNSUBSCRIBED}
    # group 10 is configured as the topic news: only that list stops
    assert await rig.site.scopes(a["group"]) == {"topic:news": Reason.UNSUBSCRIBED}
    assert rig.site.outcomes("sendgrid", "accepted") == 1


async def test_blocked_counts_as_soft_and_a_policy_block_not_at_all(rig: Rig) -> None:
    who = ADDRESSES["blocked"]
    temporary = {"type": "blocked", "status": "4.0.0", "reason": "421 try again later"}
    policy = {"type": "blocked", "status": "5.7.1", "reason": "550 5.7.1 blocked by spamhaus"}
    status, answer = await rig.send(
        [
            sendgrid_event("bounce", who, 1, **policy),
            sendgrid_event("bounce", who, 2, **temporary),
            sendgrid_event("bounce", who, 2, **temporary),  # the same mail again
        ]
    )
    assert (status, answer) == (200, {"status": "ok", "soft_bounces": 2, "ignored": 1})
    assert await rig.site.scopes(who) == {}
    await rig.send([sendgrid_event("bounce", who, 3, **temporary)])  # a second mail: the limit
    assert await rig.site.scopes(who) == {"global": Reason.BOUNCED}


async def test_forged_tampered_stale_and_replayed_batches_change_nothing(rig: Rig) -> None:
    who = ADDRESSES["bounce"]
    events = [sendgrid_event("bounce", who)]
    body = json.dumps(events).encode()
    genuine = rig.key.headers(body, int(time.time()))
    before = await rig.site.events()
    cases = {
        "no signature": await rig.site.post("/hooks/sendgrid", body),
        "another key": await rig.send(events, key=SendGridKey()),
        "tampered body": await rig.site.post(
            "/hooks/sendgrid", body.replace(b"unknown", b"unknowN"), **genuine
        ),
        "timestamp moved": await rig.site.post(
            "/hooks/sendgrid",
            body,
            **genuine | {"X-Twilio-Email-Event-Webhook-Timestamp": str(int(time.time()) + 1)},
        ),
        "not base64": await rig.site.post(
            "/hooks/sendgrid", body, **genuine | {"X-Twilio-Email-Event-Webhook-Signature": "%%"}
        ),
        "stale": await rig.send(events, at=int(time.time()) - 3600),
    }
    assert {name: (status, answer["status"]) for name, (status, answer) in cases.items()} == {
        "no signature": (401, "unauthenticated"),
        "another key": (403, "forged"),
        "tampered body": (403, "forged"),
        "timestamp moved": (403, "forged"),
        "not base64": (403, "forged"),
        "stale": (403, "stale"),
    }
    assert await rig.site.scopes(who) == {}
    assert await rig.site.events() == before

    assert (await rig.site.post("/hooks/sendgrid", body, **genuine))[0] == 200
    assert await rig.site.scopes(who) == {"global": Reason.BOUNCED}
    status, answer = await rig.site.post("/hooks/sendgrid", body, **genuine)
    assert (status, answer["status"]) == (403, "replayed")
    assert rig.site.outcomes("sendgrid", "forged") == 4


async def test_a_genuine_batch_that_is_not_events_is_400(rig: Rig) -> None:
    for body in (b"{}", b"[1]", b"not json", b'[{"event": "bounce"}]'):
        headers = rig.key.headers(body, int(time.time()))
        status, answer = await rig.site.post("/hooks/sendgrid", body, **headers)
        assert (status, answer["status"]) == (400, "malformed"), body


def test_a_bad_public_key_or_group_topic_is_a_configuration_error() -> None:
    def configured(**esp: str) -> list[Vendor]:
        return vendors(load(None, {f"OPTGATE_ESP_{k.upper()}": v for k, v in esp.items()}))

    p384 = SendGridKey(ec.generate_private_key(ec.SECP384R1())).public_base64
    for value, problem in (
        ("not-base64!", "not a base64 or PEM public key"),
        (p384, "not an ECDSA P-256 public key"),
    ):
        with pytest.raises(ConfigError, match=rf"\[esp\] sendgrid_public_key: {problem}"):
            configured(sendgrid_public_key=value)
    with pytest.raises(ConfigError, match=r"\[esp\] sendgrid_groups"):
        configured(
            sendgrid_public_key=SendGridKey().public_base64, sendgrid_groups='{ "1" = "Bad Topic" }'
        )
    assert configured() == []  # nothing configured: no hooks at all
    with pytest.raises(ConfigError, match=r"OPTGATE_ESP_MAX_AGE"):
        load(None, {"OPTGATE_ESP_MAX_AGE": "soon"})
