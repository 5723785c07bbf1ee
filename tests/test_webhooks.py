"""Webhooks out through a real HTTP endpoint: signed per Standard Webhooks (checked with
the specification's own library), every channel's changes, retries for an endpoint that
is down, slow or failing, dead letters, secret rotation, and an optgate killed with
SIGKILL mid-delivery: after the restart every event arrives (duplicates with the same
id), none of a change that rolled back."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import signal
import sqlite3
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from standardwebhooks.webhooks import Webhook as Verifier

from gateway.config import Config, load
from gateway.config import Webhooks as Settings
from gateway.keys import load_keys
from gateway.runtime import webhooks
from gateway.runtime.service import running
from gateway.runtime.stores import opened
from gateway.tokens import Claims, Confirmation, TokenSigner
from suppression.address import normalize
from suppression.errors import ConfigError
from suppression.model import ImportItem, Reason, now
from suppression.outbox import EVENT_TYPES, Delivery, Webhook, new_secret
from suppression.scope import Scope
from tests.support.api import api_key, call
from tests.support.people import FAN, seed
from tests.support.receiver import Got, Receiver
from tests.support.serving import OPTGATE, optgate_serve
from tests.support.smtp import Sink, gateway_config, gateway_env

pytestmark = pytest.mark.pure

FAST = {
    "webhooks_retry_seconds": "1",
    "webhooks_timeout": "1",
    "webhooks_lease": "2",
}


def verify(got: Got, *secrets: str) -> dict[str, Any]:
    """The event, its signature checked with every secret given (the library's check)."""
    for secret in secrets:
        Verifier(secret).verify(got.body, got.headers())
    return got.event


async def hook(config: Config, url: str, **settings: Any) -> Webhook:
    added = Webhook(
        settings.pop("name", "crm"),
        url,
        settings.pop("events", EVENT_TYPES),
        settings.pop("include_address", None),
        new_secret(),
        now(),
    )
    async with opened(config) as store:
        await store.add_webhook(added, actor="test")
    return added


@contextlib.asynccontextmanager
async def endpoint(**behaviour: Any) -> AsyncIterator[Receiver]:
    receiver = Receiver(**behaviour)
    await receiver.start()
    try:
        yield receiver
    finally:
        await receiver.stop()


def test_signatures_are_the_specifications() -> None:
    # the example of the Standard Webhooks specification
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # noqa: S105 - the spec's test vector
    body = b'{"test": 2432232314}'
    assert (
        webhooks.signature(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)
        == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    )


def test_a_rotation_signs_with_both_secrets_until_it_ends() -> None:
    old, fresh = new_secret(), new_secret()
    at = now()
    rotating = Webhook("crm", "http://x", EVENT_TYPES, None, fresh, at, old, at + timedelta(1))
    delivery = Delivery(
        7, "crm", "evt_x_0", "consent.given", '{"sha256":"ab"}', None, at, "pending", 0, at
    )
    body = delivery.payload(False)
    headers = webhooks.signed_headers(rotating, delivery, body, at)
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (old, fresh):  # a receiver holding either secret accepts it
        Verifier(secret).verify(body, headers)
    after = at + timedelta(days=2)
    later = webhooks.signed_headers(rotating, delivery, body, after)
    ts = int(after.timestamp())
    assert later["webhook-signature"] == webhooks.signature(fresh, "evt_x_0", ts, body)


def schedule(settings: Settings, jitter: float) -> list[float]:
    """The waits of a delivery failing every attempt, each made when due, until dead."""
    created = at = now()
    waits: list[float] = []
    while (due := webhooks.retry_at(settings, created, at, len(waits) + 1, jitter)) is not None:
        waits.append((due - at).total_seconds())
        at = due
    return waits


def test_the_retry_schedule_at_the_defaults_gives_up_24_hours_after_the_event() -> None:
    settings = Settings()
    assert (settings.retry_seconds, settings.give_up_after) == (5, 86400)
    waits = schedule(settings, 1.0)
    # 5 s, doubling, then an hour apart
    assert waits[:12] == [5, 10, 20, 40, 80, 160, 320, 640, 1280, 2560, 3600, 3600]
    assert set(waits[10:]) == {3600}
    # the first attempt, 32 retries, the last 84,315 s (23 h 25 min 15 s) after the event;
    # its failure would wait until 87,915 s: past 24 h, so it is dead
    assert len(waits) == 32
    assert sum(waits) == 84315
    created = now()
    last = created + timedelta(seconds=84315)
    assert webhooks.retry_at(settings, created, last, 33, 1.0) is None
    # a wait that ends at 24 h exactly is still made; one second later is not
    day = created + timedelta(seconds=86400)
    assert webhooks.retry_at(settings, created, day - timedelta(hours=1), 20, 1.0) == day
    assert webhooks.retry_at(settings, created, day - timedelta(seconds=3599), 20, 1.0) is None
    # with the jitter at either end, every attempt stays within the 24 h
    for jitter in (1 - webhooks.JITTER, 1 + webhooks.JITTER):
        jittered = schedule(settings, jitter)
        assert 86400 - 3600 * jitter < sum(jittered) <= 86400
        assert max(jittered) == pytest.approx(3600 * jitter)


def test_the_settings_that_cannot_work_are_refused() -> None:
    config = load(None, {"OPTGATE_WEBHOOKS_LEASE": "5", "OPTGATE_WEBHOOKS_TIMEOUT": "10"})
    with pytest.raises(ConfigError, match="lease must be longer than timeout"):
        webhooks.check(config.webhooks)


async def test_every_channel_sends_signed_events(tmp_path: Path, next_hop: Sink) -> None:
    config = gateway_config(tmp_path, next_hop.port, 0, **FAST)
    await seed(config)
    key = await api_key(config, "crm", "read", "write", "erase")
    async with endpoint() as receiver, running(config) as gate:
        crm = await hook(config, receiver.url)
        signer = TokenSigner(load_keys(Path(config.unsubscribe.key_file)))
        fan = normalize(FAN)
        async with aiohttp.ClientSession() as http:  # the one-click of a copy's header
            token = signer.issue(Claims(fan.sha256, Scope.topic("marketing"), int(time.time())))
            one_click = f"http://127.0.0.1:{gate.web_port}/u/{token}"
            answer = await http.post(one_click, data={"List-Unsubscribe": "One-Click"})
            assert answer.status == 200
            confirm = signer.issue(Claims(fan.sha256, Confirmation("news"), int(time.time())))
            page = await http.post(f"http://127.0.0.1:{gate.web_port}/c/{confirm}")
            assert page.status == 200
        port = gate.api_port
        await call(port, "POST", "/api/v1/suppressions", key, {"addresses": ["api@example.com"]})
        await call(
            port,
            "POST",
            "/api/v1/consents",
            key,
            {"addresses": ["c@example.com"], "purpose": "news"},
        )
        imported = tmp_path / "list.csv"
        imported.write_text("email\nimp1@example.com\nimp2@example.com\n")
        cli = await asyncio.create_subprocess_exec(
            OPTGATE, "suppress", "import", str(imported), env=cli_env(tmp_path, next_hop)
        )
        assert await cli.wait() == 0
        await call(port, "DELETE", "/api/v1/suppressions/api%40example.com", key)
        await call(port, "DELETE", "/api/v1/subjects/c%40example.com", key)
        got = await receiver.wait(lambda got: len(got) >= 8)
    events = [verify(g, crm.secret) for g in got]
    seen = [(e["type"], e["data"].get("source"), e["data"].get("actor")) for e in events]
    assert ("suppression.added", "one-click", "web") in seen
    assert ("consent.confirmed", "web", "web") in seen
    assert ("suppression.added", "api", "api:crm") in seen
    assert ("consent.given", "api", "api:crm") in seen
    imports = [a for t, s, a in seen if (t, s) == ("suppression.added", "import")]
    assert len(imports) == 2
    assert all(str(a).startswith("cli:") for a in imports)
    assert ("suppression.removed", "api", "api:crm") in seen
    assert "subject.erased" in {t for t, _, _ in seen}
    assert len({g.id for g in got}) == len(got)  # one id per event
    for g in got:  # names people by hash only ([webhooks] include_address is off)
        assert b"@example.com" not in g.body
    keys = {e["data"].get("key") or e["data"].get("sha256") for e in events}
    assert fan.sha256 in keys


async def settled(config: Config, counts: dict[str, int]) -> None:
    """Wait (bounded) until the outbox holds deliveries in exactly these states."""
    for _ in range(100):
        async with opened(config) as store:
            found = await store.outbox_counts()
        if found == counts:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"outbox {found}, not {counts}")


def cli_env(tmp_path: Path, next_hop: Sink, **settings: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("OPTGATE_")}
    return {**base, **gateway_env(tmp_path, next_hop.port, 0, **FAST, **settings)}


async def test_an_endpoint_down_slow_or_failing_gets_every_event_in_the_end(
    tmp_path: Path, next_hop: Sink
) -> None:
    config = gateway_config(tmp_path, next_hop.port, 0, **FAST)
    down = Receiver()  # not started: its port refuses connections
    async with running(config) as gate:
        await hook(config, down.url, name="down", include_address=True)
        async with endpoint(statuses=[500, 503]) as failing, endpoint(delays=[3.0]) as slow:
            await hook(config, failing.url, name="failing")
            await hook(config, slow.url, name="slow")
            async with opened(config) as store:
                a = normalize("late@example.com")
                await store.suppress(
                    [ImportItem(a.sha256, "sha256", a.normalized, Reason.BOUNCED)],
                    scope="global",
                    source="bounce",
                    actor="inbound",
                )
            # 500, 503, then 204: three attempts of one event, always the same id
            got = await failing.wait(lambda got: len(got) >= 3)
            assert len({g.id for g in got}) == 1
            # the slow one timed out (1 s) and was sent again
            await slow.wait(lambda got: len(got) >= 2)
            assert len(slow.ids()) == 1
            await asyncio.sleep(1.5)
            async with opened(config) as store:
                pending = await store.deliveries("pending", 10)
            assert [d.webhook for d in pending] == ["down"]
            assert pending[0].attempts >= 1
            assert pending[0].status is not None
            assert pending[0].status.startswith("connection failed")
        await down.start()  # it comes back
        try:
            [arrived] = await down.wait(lambda got: len(got) >= 1, seconds=20)
            assert arrived.event["data"]["address"] == "late@example.com"  # this one wants it
            assert arrived.event["data"]["reason"] == "bounced"
            await settled(config, {"delivered": 3})
        finally:
            await down.stop()
        metrics = gate.metrics.exposition().decode()
    delivered = re.search(r'optgate_webhook_deliveries_total\{outcome="delivered"\} (\S+)', metrics)
    failed = re.search(r'optgate_webhook_deliveries_total\{outcome="failed"\} (\S+)', metrics)
    assert delivered is not None
    assert float(delivered.group(1)) == 3
    assert failed is not None
    assert float(failed.group(1)) >= 4  # 500, 503, the timeout, the refused connection(s)
    async with opened(config) as store:
        done = await store.deliveries("delivered", 10)
    assert {d.webhook for d in done} == {"down", "failing", "slow"}
    assert all(d.address is None for d in done)  # a delivered event keeps no address


async def test_a_delivery_that_keeps_failing_is_dead_listed_and_retried(
    tmp_path: Path, next_hop: Sink
) -> None:
    config = gateway_config(tmp_path, next_hop.port, 0, webhooks_give_up_after="2", **FAST)
    async with endpoint(statuses=[500] * 10) as failing, running(config) as gate:
        await hook(config, failing.url)
        async with opened(config) as store:
            await store.record_consents([], actor="t")
            a = normalize("no@example.com")
            await store.suppress(
                [ImportItem(a.sha256, "sha256", None, Reason.MANUAL)],
                scope="global",
                source="cli",
                actor="t",
            )
        for _ in range(100):
            async with opened(config) as store:
                dead = await store.deliveries("dead", 10)
            if dead:
                break
            await asyncio.sleep(0.1)
        [letter] = dead
        assert letter.status == "HTTP 500"
        listing = await asyncio.create_subprocess_exec(
            OPTGATE,
            "webhooks",
            "list",
            "--failed",
            env=cli_env(tmp_path, next_hop, webhooks_give_up_after="2"),
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await listing.communicate()
        assert listing.returncode == 1  # there are failed ones
        assert f"{letter.id}\tcrm\tsuppression.added\t{letter.uid}" in out.decode()
        assert "last: HTTP 500" in out.decode()
        metrics = gate.metrics.exposition().decode()
        assert 'optgate_webhook_deliveries_total{outcome="dead"} 1.0' in metrics
        failing.statuses.clear()
        async with opened(config) as store:
            assert await store.retry_deliveries([letter.id], now(), actor="cli:t") == 1
        # every attempt so far failed; the one after the retry is answered
        await failing.wait(lambda got: len(got) > letter.attempts)
        assert {g.id for g in failing.got} == {letter.uid}
        await settled(config, {"delivered": 1})


async def test_events_survive_an_optgate_killed_mid_delivery(
    tmp_path: Path, next_hop: Sink
) -> None:
    env = gateway_env(tmp_path, next_hop.port, 0, **FAST)
    config = load(None, env)
    await seed(config)
    key = await api_key(config, "crm", "write")
    release = asyncio.Event()
    async with endpoint(release=release) as receiver:
        crm = await hook(config, receiver.url)
        # a change that fails after its outbox row was written: it must roll back whole
        db = sqlite3.connect(config.store.url.removeprefix("sqlite:///"))
        with db:
            db.execute(
                "CREATE TRIGGER doomed AFTER INSERT ON outbox WHEN NEW.data LIKE '%doomed%' "
                "BEGIN SELECT RAISE(ABORT, 'doomed'); END"
            )
        db.close()
        async with optgate_serve(env, "--workers", "2", ready=2) as served:
            _, api = served.address("api")
            people = [f"k{n}@example.com" for n in range(20)]
            for person in people:
                answer = await call(
                    api, "POST", "/api/v1/suppressions", key, {"addresses": [person]}
                )
                assert answer.status == 200
            failed = await call(
                api,
                "POST",
                "/api/v1/consents",
                key,
                {"addresses": [people[0]], "purpose": "doomed"},
            )
            assert failed.status == 503
            await receiver.wait(lambda got: len(got) >= 2)  # deliveries in flight, unanswered
            for pid in served.children():
                os.kill(pid, signal.SIGKILL)
            served.process.kill()
            await served.process.wait()
        release.set()
        async with opened(config) as store:
            expected = {d.uid for d in await store.deliveries(None, 100)}
            assert (await store.outbox_counts()).get("delivered", 0) < len(expected)
        assert len(expected) == 20
        async with optgate_serve(env, "--workers", "2", ready=2):
            await receiver.wait(lambda got: {g.id for g in got} >= expected, seconds=30)
            await settled(config, {"delivered": 20})
    events = [verify(g, crm.secret) for g in receiver.got]
    assert receiver.ids() == expected  # every event, none other
    assert len(receiver.got) >= len(expected)  # (some twice: at least once, same id)
    assert not [e for e in events if e["type"].startswith("consent")]  # the rollback's none
    sent = {e["data"]["key"] for e in events}
    assert sent == {normalize(p).sha256 for p in people}


@pytest.mark.sockets
async def test_an_esp_notification_makes_its_event_too(tmp_path: Path) -> None:
    from tests.support.esp import esp_config, esp_site, postmark_bounce

    config = esp_config(tmp_path, postmark_credentials="hooks:s3cret")
    async with esp_site(config) as site:
        await site.mailed("jane@example.com")
        await hook(config, "http://127.0.0.1:9/crm")
        auth = base64.b64encode(b"hooks:s3cret").decode()
        bounce = postmark_bounce("jane@example.com")
        status, _ = await site.post("/hooks/postmark", bounce, Authorization=f"Basic {auth}")
        assert status == 200
        [waiting] = await site.store.deliveries("pending", 10)
    data = json.loads(waiting.data)
    assert (waiting.type, data["reason"], data["scope"]) == (
        "suppression.added",
        "bounced",
        "global",
    )
    assert data["key"] == normalize("jane@example.com").sha256
