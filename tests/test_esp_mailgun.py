"""POST /hooks/mailgun over real HTTP: HMAC-SHA256 of timestamp + token with a test signing
key, a replay window, each token once on every node; Mailgun's sample events."""

from __future__ import annotations

import secrets
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from suppression.address import normalize
from suppression.model import Reason
from tests.support.backends import postgres_database
from tests.support.esp import (
    EspSite,
    esp_config,
    esp_site,
    mailgun_body,
    mailgun_event,
    mailgun_failed,
)
from tests.support.tiers import needs

pytestmark = pytest.mark.pure

KEY = b"key-7d5bd9b5c8c1d86a1b7e1b8a1f6e5c2d"
PARENT = b"key-parent-0123456789abcdef"
JANE = "jane@example.com"
RICHARD = "richard@example.com"


@dataclass
class Rig:
    site: EspSite

    async def send(
        self,
        event_data: dict[str, Any],
        *,
        key: bytes = KEY,
        at: int | None = None,
        token: str | None = None,
    ) -> tuple[int, dict[str, Any]]:
        body = mailgun_body(
            key,
            event_data,
            timestamp=int(time.time()) if at is None else at,
            token=token or secrets.token_hex(25),
        )
        return await self.site.post("/hooks/mailgun", body)


@pytest.fixture
@needs("sockets")
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    config = esp_config(tmp_path, mailgun_signing_keys=KEY.decode())
    async with esp_site(config) as site:
        await site.mailed(JANE)
        await site.mailed(RICHARD)
        yield Rig(site)


async def test_sample_events_are_applied_by_severity_and_reason(rig: Rig) -> None:
    assert (await rig.send(mailgun_failed(JANE, "temporary", "generic")))[1] == {"status": "ok"}
    assert (await rig.send(mailgun_event("delivered", JANE)))[1] == {"status": "ok"}
    assert await rig.site.scopes(JANE) == {}  # an attempt Mailgun retries, and a delivery
    status, answer = await rig.send(mailgun_failed(JANE, code=550, message="5.1.1 no such user"))
    assert (status, answer) == (200, {"status": "ok", "hard_bounces": 1, "suppressed": 1})
    assert (await rig.send(mailgun_event("complained", RICHARD)))[0] == 200
    assert await rig.site.scopes(JANE) == {"global": Reason.BOUNCED}
    assert await rig.site.scopes(RICHARD) == {"global": Reason.COMPLAINED}


async def test_mailguns_own_suppressions_and_unsubscribes_are_mirrored(rig: Rig) -> None:
    await rig.send(mailgun_failed(JANE, reason="suppress-unsubscribe"))
    await rig.send(mailgun_failed(RICHARD, reason="suppress-complaint"))
    assert await rig.site.scopes(JANE) == {"global": Reason.UNSUBSCRIBED}
    assert await rig.site.scopes(RICHARD) == {"global": Reason.COMPLAINED}
    await rig.send(mailgun_event("unsubscribed", "new@example.net"))
    # an unsubscribe is the person's own wish, like mail to unsubscribe@: no ledger needed
    assert await rig.site.scopes("new@example.net") == {"global": Reason.UNSUBSCRIBED}


async def test_a_block_of_our_mail_says_nothing_about_the_address(rig: Rig) -> None:
    status, answer = await rig.send(mailgun_failed(JANE, reason="espblock"))
    assert (status, answer) == (200, {"status": "ok", "ignored": 1})
    policy = mailgun_failed(JANE, code=550, message="5.7.1 rejected: listed at spamhaus")
    assert (await rig.send(policy))[1] == {"status": "ok", "ignored": 1}
    assert await rig.site.scopes(JANE) == {}


async def test_forged_stale_and_replayed_notifications_change_nothing(rig: Rig) -> None:
    event = mailgun_failed(JANE)
    before = await rig.site.events()
    cases = {
        "another key": await rig.send(event, key=b"key-not-ours"),
        "stale": await rig.send(event, at=int(time.time()) - 600),
        "future": await rig.send(event, at=int(time.time()) + 600),
        "no signature": await rig.site.post("/hooks/mailgun", {"event-data": event}),
        "no token": await rig.site.post(
            "/hooks/mailgun", {"signature": {"timestamp": "1"}, "event-data": event}
        ),
    }
    tampered = mailgun_body(KEY, event, timestamp=int(time.time()), token="t" * 50)
    tampered["signature"]["token"] = "u" * 50
    cases["tampered token"] = await rig.site.post("/hooks/mailgun", tampered)
    assert {name: (status, answer["status"]) for name, (status, answer) in cases.items()} == {
        "another key": (403, "forged"),
        "stale": (403, "stale"),
        "future": (403, "stale"),
        "no signature": (401, "unauthenticated"),
        "no token": (401, "unauthenticated"),
        "tampered token": (403, "forged"),
    }
    assert await rig.site.scopes(JANE) == {}
    assert await rig.site.events() == before

    body = mailgun_body(KEY, event, timestamp=int(time.time()), token="once" * 10)
    assert (await rig.site.post("/hooks/mailgun", body))[0] == 200
    await rig.site.store.unsuppress([normalize(JANE).sha256], scope="global", actor="operator")
    status, answer = await rig.site.post("/hooks/mailgun", body)
    assert (status, answer["status"]) == (403, "replayed")
    assert await rig.site.scopes(JANE) == {}  # the replay did not undo the operator's lift


@pytest.mark.sockets
async def test_a_subaccounts_parent_signature_verifies_with_the_parent_key(tmp_path: Path) -> None:
    config = esp_config(tmp_path, mailgun_signing_keys=f"{KEY.decode()},{PARENT.decode()}")
    async with esp_site(config) as site:
        await site.mailed(JANE)
        body = mailgun_body(
            b"key-of-the-subaccount",
            mailgun_failed(JANE),
            timestamp=int(time.time()),
            token="p" * 50,
        )
        parent = mailgun_body(PARENT, {}, timestamp=int(time.time()), token="p" * 50)
        body["signature"]["parent-signature"] = parent["signature"]["signature"]
        assert (await site.post("/hooks/mailgun", body))[0] == 200
        assert await site.scopes(JANE) == {"global": Reason.BOUNCED}


@pytest.mark.postgres
@pytest.mark.sockets
async def test_a_token_is_accepted_once_across_nodes_sharing_postgresql(tmp_path: Path) -> None:
    async with postgres_database() as url:
        config = esp_config(tmp_path, store_url=url, mailgun_signing_keys=KEY.decode())
        async with esp_site(config) as first, esp_site(config) as second:
            await first.mailed(JANE)
            body = mailgun_body(
                KEY, mailgun_failed(JANE), timestamp=int(time.time()), token="n" * 50
            )
            assert (await first.post("/hooks/mailgun", body))[0] == 200
            status, answer = await second.post("/hooks/mailgun", body)
            assert (status, answer["status"]) == (403, "replayed")
            assert second.outcomes("mailgun", "replayed") == 1


async def test_a_failed_store_releases_the_token_so_the_retry_is_applied(
    rig: Rig, tmp_path: Path
) -> None:
    body = mailgun_body(KEY, mailgun_failed(JANE), timestamp=int(time.time()), token="r" * 50)
    with closing(sqlite3.connect(tmp_path / "optgate.db")) as db, db:
        db.execute(
            "CREATE TRIGGER down BEFORE INSERT ON suppression "
            "BEGIN SELECT RAISE(ABORT, 'down'); END"
        )
    status, _ = await rig.site.post("/hooks/mailgun", body)
    assert status == 503
    assert await rig.site.scopes(JANE) == {}
    with closing(sqlite3.connect(tmp_path / "optgate.db")) as db, db:
        db.execute("DROP TRIGGER down")
    assert (await rig.site.post("/hooks/mailgun", body))[0] == 200  # Mailgun's retry
    assert await rig.site.scopes(JANE) == {"global": Reason.BOUNCED}
