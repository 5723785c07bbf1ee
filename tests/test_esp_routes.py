"""What every ESP webhook route shares: the body limit, the path under base_url, the rate
limit that spares them, logs without addresses, and the routes in `optgate serve`."""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from structlog.testing import capture_logs

from gateway.cli import main as cli
from gateway.runtime.service import running
from gateway.runtime.stores import open_configured
from suppression.address import normalize
from suppression.model import Reason, Send, now
from tests.support.esp import (
    esp_config,
    esp_site,
    mailgun_body,
    mailgun_failed,
    postmark_bounce,
)
from tests.support.smtp import gateway_config

pytestmark = pytest.mark.pure

KEY = b"key-routes"
JANE = "jane@example.com"


def signed(event: dict[str, object]) -> dict[str, object]:
    return mailgun_body(KEY, event, timestamp=int(time.time()), token=secrets.token_hex(25))


@pytest.mark.sockets
async def test_a_body_over_max_body_is_413_and_changes_nothing(tmp_path: Path) -> None:
    config = esp_config(tmp_path, mailgun_signing_keys=KEY.decode(), max_body="2000")
    async with esp_site(config) as site:
        await site.mailed(JANE)
        event = mailgun_failed(JANE)
        event["padding"] = "x" * 3000
        status, answer = await site.post("/hooks/mailgun", signed(event))
        assert (status, answer["status"]) == (413, "too_large")

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: read until too much
            for _ in range(100):
                yield b" " * 100

        async with site.http.post(site.url + "/hooks/mailgun", data=chunks()) as response:
            assert response.status == 413
        assert await site.scopes(JANE) == {}
        assert site.outcomes("mailgun", "too_large") == 2
        del event["padding"]
        assert (await site.post("/hooks/mailgun", signed(event)))[0] == 200


@pytest.mark.sockets
async def test_hooks_live_under_the_path_of_base_url(tmp_path: Path) -> None:
    base_url = {"unsubscribe_base_url": "https://example.com/optgate/"}
    config = esp_config(tmp_path, other=base_url, mailgun_signing_keys=KEY.decode())
    async with esp_site(config) as site:
        await site.mailed(JANE)
        assert (await site.post("/optgate/hooks/mailgun", signed(mailgun_failed(JANE))))[0] == 200
        async with site.http.post(site.url + "/hooks/mailgun", data=b"{}") as response:
            assert response.status == 404


@pytest.mark.sockets
async def test_the_web_rate_limit_spares_the_hooks(tmp_path: Path) -> None:
    limit = {"web_rate_limit": "2"}
    config = esp_config(tmp_path, other=limit, mailgun_signing_keys=KEY.decode())
    async with esp_site(config) as site:
        await site.mailed(JANE)
        statuses = [
            (await site.post("/hooks/mailgun", signed(mailgun_failed(JANE))))[0] for _ in range(6)
        ]
        assert statuses == [200] * 6  # an ESP posts many notifications from few addresses
        pages = []
        for _ in range(4):
            async with site.http.get(site.url + "/u/not-a-token") as response:
                pages.append(response.status)
        assert 429 in pages  # the link pages are limited as before


@pytest.mark.sockets
async def test_logs_and_answers_never_hold_an_address(tmp_path: Path) -> None:
    config = esp_config(tmp_path, mailgun_signing_keys=KEY.decode(), postmark_credentials="u:p")
    async with esp_site(config) as site:
        await site.mailed(JANE)
        with capture_logs() as logs:
            answers = [
                await site.post("/hooks/mailgun", signed(mailgun_failed(JANE))),
                await site.post(
                    "/hooks/mailgun",
                    mailgun_body(
                        b"forged", mailgun_failed(JANE), timestamp=int(time.time()), token="t" * 50
                    ),
                ),
                await site.post("/hooks/postmark", postmark_bounce(JANE)),
                await site.post(
                    "/hooks/mailgun",
                    b'{"signature": {}, "event-data": {"recipient": "jane@example.com"}}',
                ),
            ]
        assert [status for status, _ in answers] == [200, 403, 401, 401]
        assert {entry["event"] for entry in logs} >= {
            "esp_notification",
            "esp_refused",
            "inbound_finding",
        }
        assert "jane" not in repr(logs).lower()
        assert "jane" not in repr(answers).lower()


@pytest.mark.sockets
async def test_optgate_serve_takes_esp_webhooks_on_its_web_listener(tmp_path: Path) -> None:
    config = gateway_config(tmp_path, 9, esp_mailgun_signing_keys=KEY.decode())
    async with running(config, parts=("web",)) as gate, aiohttp.ClientSession() as http:
        url = f"http://127.0.0.1:{gate.web_port}"
        store = await open_configured(config)
        try:
            sha256 = normalize(JANE).sha256
            await store.record_sends([Send("m-1", sha256, "news", "marketing", now())])
            async with http.post(
                url + "/hooks/mailgun", json=signed(mailgun_failed(JANE))
            ) as response:
                assert response.status == 200
            holder = await store.holder(sha256)
            assert [(s.scope, s.reason) for s in holder.suppressions] == [
                ("global", Reason.BOUNCED)
            ]
        finally:
            await store.close()
        async with http.get(f"http://127.0.0.1:{gate.api_port}/metrics") as response:
            text = await response.text()  # the admin listener's
        assert 'optgate_esp_notifications_total{outcome="accepted",vendor="mailgun"} 1.0' in text


def test_config_show_hides_the_esp_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in list(os.environ):
        if name.startswith("OPTGATE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPTGATE_ESP_MAILGUN_SIGNING_KEYS", "key-s3cret-one")
    monkeypatch.setenv("OPTGATE_ESP_POSTMARK_CREDENTIALS", "hooks:s3cret-two")
    monkeypatch.setenv("OPTGATE_ESP_SES_TOPICS", "arn:aws:sns:eu-west-1:1:topic")
    assert cli.main(["config", "show", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)["settings"]["esp"]
    assert shown["mailgun_signing_keys"]["value"] == ["<hidden>"]
    assert shown["postmark_credentials"]["value"] == ["<hidden>"]
    assert shown["ses_topics"]["value"] == ["arn:aws:sns:eu-west-1:1:topic"]  # no secret
