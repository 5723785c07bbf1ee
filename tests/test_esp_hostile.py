"""Genuine, authenticated notifications with every field of the samples made hostile: each
gets 200 or 400 (never a 500), and nothing but a well-formed event changes the store."""

from __future__ import annotations

import json
import secrets
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.support.esp import (
    TOPIC,
    SendGridKey,
    esp_config,
    esp_site,
    mailgun_body,
    mailgun_failed,
    postmark_bounce,
    sendgrid_event,
    ses_bounce,
    sns_host,
    sns_notification,
)

pytestmark = pytest.mark.sockets

KEY = b"key-hostile"
HOSTILE: tuple[Any, ...] = (None, 7, -1.5, True, [], {}, "", "x" * 5000, "\ud800@example.com")


def variants(value: Any, depth: int = 0) -> Iterator[Any]:
    """The value with one leaf (or one whole branch) replaced by each hostile value."""
    if depth > 3:
        return
    if isinstance(value, dict):
        for key in value:
            for changed in variants(value[key], depth + 1):
                yield {**value, key: changed}
            yield {k: v for k, v in value.items() if k != key}  # the field missing
    elif isinstance(value, list):
        for index, item in enumerate(value):
            for changed in variants(item, depth + 1):
                yield [*value[:index], changed, *value[index + 1 :]]
    yield from HOSTILE


async def test_every_vendor_answers_hostile_fields_with_200_or_400(tmp_path: Path) -> None:
    sendgrid = SendGridKey()
    config = esp_config(
        tmp_path,
        ses_topics=f'["{TOPIC}"]',
        sendgrid_public_key=sendgrid.public_base64,
        mailgun_signing_keys=KEY.decode(),
        postmark_credentials="u:p",
    )
    statuses: dict[str, set[int]] = {}
    async with sns_host() as sns, esp_site(config, sns=sns.client()) as site:
        with capture_logs() as logs:
            for event in variants(mailgun_failed("a@example.com")):
                body = mailgun_body(
                    KEY, event, timestamp=int(time.time()), token=secrets.token_hex(25)
                )
                status, _ = await site.post("/hooks/mailgun", body)
                statuses.setdefault("mailgun", set()).add(status)
            for events in variants([sendgrid_event("bounce", "b@example.com")]):
                raw = json.dumps(events).encode()
                status, _ = await site.post(
                    "/hooks/sendgrid", raw, **sendgrid.headers(raw, int(time.time()))
                )
                statuses.setdefault("sendgrid", set()).add(status)
            auth = {"Authorization": "Basic dTpw"}
            for record in variants(postmark_bounce("c@example.com")):
                status, _ = await site.post("/hooks/postmark", json.dumps(record).encode(), **auth)
                statuses.setdefault("postmark", set()).add(status)
            for ses in variants(ses_bounce("d@example.com")):
                note = sns_notification({}, message_id=str(uuid.uuid4()), at=datetime.now(UTC))
                note["Message"] = json.dumps(ses)
                status, _ = await site.post("/hooks/ses", sns.sign(note))
                statuses.setdefault("ses", set()).add(status)
        assert statuses == {
            vendor: {200, 400} for vendor in ("mailgun", "sendgrid", "postmark", "ses")
        }
        assert not [entry for entry in logs if entry["event"] == "web_error"]
        # none of those addresses was ever mailed: nothing that named them changed anything
        assert await site.events() == 0
