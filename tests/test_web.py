"""The web endpoint over real sockets: aiohttp client -> the app -> a SQLite store in tmp_path."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import re
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp import web

from gateway.config import Network, load
from gateway.outbound.pipeline import verdict
from gateway.outbound.policy import MessageClass, Rules
from gateway.runtime.metrics import Metrics
from gateway.runtime.ratelimit import SharedLimiter
from gateway.tokens import Claims, TokenSigner
from gateway.web.endpoint import SECURITY_HEADERS, WebSettings, client_ip, make_app
from gateway.web.pages import mask
from suppression.address import Address, normalize
from suppression.errors import ConfigError
from suppression.model import Consent, ImportItem, Reason, now
from suppression.opening import open_store
from suppression.scope import GLOBAL
from suppression.store import Store
from tests.support.keys import AUDIT_KEY
from tests.support.tiers import needs
from tests.support.tokens import claimed

pytestmark = pytest.mark.pure

JANE = normalize("jane@example.com")  # consented to news and deals; the store keeps her address
HIDDEN = normalize("hidden@example.org")  # consented to news; the store keeps only the hash
NEW = normalize("new@example.net")  # no records yet
KEY = b"k" * 32
MINUTE_LEFT_30 = datetime(2030, 1, 1, 12, 0, 30, tzinfo=UTC)
SETTINGS = WebSettings(
    base_url="https://unsub.example.com",
    company="Example Ltd",
    accent_color="#0b57d0",
    rate_limit=10_000,
    trusted_proxies=(),
    consent_versions={"news": "3"},
)
RULES = Rules(require_consent=True, consent_versions={})


def nets(*texts: str) -> tuple[Network, ...]:
    """Networks as the configuration parses them (a bad one: tests/test_config.py)."""
    return tuple(ipaddress.ip_network(text) for text in texts)


ONE_CLICK = {"List-Unsubscribe": "One-Click"}


@contextlib.asynccontextmanager
async def serving(
    store: Store, signer: TokenSigner, metrics: Metrics, settings: WebSettings = SETTINGS
) -> AsyncIterator[str]:
    """The app on a free loopback port, as it runs in `optgate serve`; yields its URL."""
    # the rate limit's counters in the store, one window for the whole test (30 s before it
    # ends): no minute boundary falls between a test's requests
    limiter = SharedLimiter(store, KEY, clock=lambda: MINUTE_LEFT_30, window=60)
    app = make_app(store=store, signer=signer, metrics=metrics, settings=settings, limiter=limiter)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def seed(store: Store) -> None:
    """JANE on news and deals (with her address), HIDDEN on news (hash only)."""
    records = [
        Consent(JANE.sha256, topic, True, "test", now(), "2", JANE.normalized)
        for topic in ("news", "deals")
    ]
    records.append(Consent(HIDDEN.sha256, "news", True, "test", now(), "2"))
    await store.record_consents(records, actor="test")


@dataclass
class Site:
    """A running endpoint, its store, and a client that keeps no cookies."""

    url: str
    store: Store
    signer: TokenSigner
    metrics: Metrics
    http: aiohttp.ClientSession

    def token(self, who: Address, scope: str = "global", issued: int | None = None) -> str:
        issued = int(time.time()) if issued is None else issued
        return self.signer.issue(Claims(who.sha256, claimed(scope), issued))

    async def call(
        self, method: str, path: str, data: Any = None, **kwargs: Any
    ) -> tuple[aiohttp.ClientResponse, str]:
        async with self.http.request(
            method, self.url + path, data=data, allow_redirects=False, **kwargs
        ) as response:
            return response, await response.text()

    async def events(self) -> int:
        return (await self.store.verify_chain()).events

    async def keeps(self, who: Address, topic: str) -> bool:
        return (await verdict(self.store, who, MessageClass.MARKETING, topic, RULES)).keep


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await open_store(f"sqlite:///{tmp_path / 'optgate.db'}", audit_key=AUDIT_KEY)
    await seed(opened)
    yield opened
    await opened.close()


@contextlib.asynccontextmanager
async def site_for(store: Store, settings: WebSettings = SETTINGS) -> AsyncIterator[Site]:
    signer, metrics = TokenSigner([KEY]), Metrics()
    async with (
        serving(store, signer, metrics, settings) as url,
        aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http,
    ):
        yield Site(url, store, signer, metrics, http)


@pytest.fixture
@needs("sockets")
async def site(store: Store) -> AsyncIterator[Site]:
    async with site_for(store) as running:
        yield running


def unsubscribes(site: Site, channel: str) -> float:
    value = site.metrics.registry.get_sample_value(
        "optgate_unsubscribes_total", {"channel": channel}
    )
    return value or 0.0


# --- RFC 8058 one-click -----------------------------------------------------------------


async def test_gmail_style_one_click_takes_effect_before_the_answer(site: Site) -> None:
    token = site.token(JANE, "topic:news")
    assert await site.keeps(JANE, "news")

    response, text = await site.call(
        "POST",
        f"/u/{token}",
        "List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )

    assert response.status == 200
    assert text == "You are unsubscribed.\n"
    facts = await site.store.lookup_many([JANE], ["global", "topic:news"], "news")
    [record] = facts[JANE.sha256].suppressions
    assert (record.scope, record.reason, record.source) == (
        "topic:news",
        Reason.UNSUBSCRIBED,
        "one-click",
    )
    assert not await site.keeps(JANE, "news")
    assert await site.keeps(JANE, "deals")  # only the token's scope
    assert unsubscribes(site, "one-click") == 1


async def test_multipart_one_click_as_apple_mail_sends_it(site: Site) -> None:
    form = aiohttp.FormData(ONE_CLICK, default_to_multipart=True)

    response, _ = await site.call("POST", f"/u/{site.token(JANE)}", form)

    assert response.status == 200
    assert response.request_info.headers["Content-Type"].startswith("multipart/form-data")
    assert not await site.keeps(JANE, "news")
    assert not await site.keeps(JANE, "deals")  # a global token


async def test_a_repeated_one_click_answers_200_and_adds_nothing(site: Site) -> None:
    token = site.token(JANE, "topic:news")
    await site.call("POST", f"/u/{token}", ONE_CLICK)
    events = await site.events()

    response, _ = await site.call("POST", f"/u/{token}", ONE_CLICK)

    assert response.status == 200
    assert await site.events() == events
    assert unsubscribes(site, "one-click") == 1


@pytest.mark.parametrize("body", [None, {"List-Unsubscribe": "Yes"}, {"via": "email"}])
async def test_a_post_without_the_one_click_field_changes_nothing(
    site: Site, body: Mapping[str, str] | None
) -> None:
    events = await site.events()

    response, text = await site.call("POST", f"/u/{site.token(JANE)}", body)

    assert response.status == 400
    assert "Nothing was changed" in text
    assert await site.events() == events
    assert await site.keeps(JANE, "news")


async def test_the_unsubscribe_is_evidence_in_the_store_and_never_an_ip_in_the_logs(
    site: Site,
) -> None:
    issued = int(time.time()) - 3600
    with structlog.testing.capture_logs() as logs:
        await site.call("POST", f"/u/{site.token(JANE, 'topic:news', issued)}", ONE_CLICK)

    [record] = (await site.store.holder(JANE.sha256)).suppressions
    assert record.evidence is not None
    assert json.loads(record.evidence) == {
        "channel": "one-click",
        "ip": "127.0.0.1",
        "token_issued": datetime.fromtimestamp(issued, UTC).isoformat(),
    }
    event = next(e for e in (await site.store.subject(JANE)).events if e.seq == record.event)
    assert (event.action, event.actor, event.subject) == ("suppress", "web", JANE.sha256)
    detail = json.loads(event.body)["detail"]
    assert (detail["channel"], detail["scope"]) == ("one-click", "topic:news")
    assert detail["token_issued"] == datetime.fromtimestamp(issued, UTC).isoformat()
    assert "127.0.0.1" not in event.body  # the IP is erasable evidence, not in the chain
    assert [entry["event"] for entry in logs] == ["web_unsubscribe"]
    assert "127.0.0.1" not in repr(logs)
    assert JANE.normalized not in repr(logs)


# --- GET never changes anything; pages ------------------------------------------------------


async def test_opening_any_link_changes_nothing(site: Site) -> None:
    before = (await site.events(), await site.store.holder(JANE.sha256))
    paths = [
        f"/u/{site.token(JANE)}",
        f"/u/{site.token(JANE, 'topic:news')}",
        f"/p/{site.token(JANE, 'topic:news')}",
        f"/c/{site.token(JANE, 'confirm:offers')}",
    ]
    for path in paths:
        for method in ("GET", "HEAD"):
            response, _ = await site.call(method, path)
            assert response.status == 200, (method, path)

    assert (await site.events(), await site.store.holder(JANE.sha256)) == before
    assert unsubscribes(site, "one-click") == unsubscribes(site, "web") == 0


async def test_unsubscribe_page_shows_scope_lists_masked_address_and_one_button(
    site: Site,
) -> None:
    token = site.token(JANE, "topic:news")

    response, page = await site.call("GET", f"/u/{token}")

    assert response.content_type == "text/html"
    assert '<html lang="en">' in page
    assert '<meta name="viewport"' in page
    assert "<script" not in page
    assert "Example Ltd" in page
    assert "#0b57d0" in page
    assert "the “news” e-mails from Example Ltd" in page
    assert "<strong>j***@example.com</strong>" in page
    assert "<li>deals</li><li>news</li>" in page
    assert (
        f'<form method="post" action="/u/{token}"><input type="hidden" name="via" value="page">'
        '<button type="submit">Unsubscribe</button></form>'
    ) in page
    assert f'<a href="/p/{token}">' in page


async def test_a_recipient_known_only_by_hash_is_your_address(site: Site) -> None:
    _, page = await site.call("GET", f"/u/{site.token(HIDDEN)}")

    assert "<strong>your address</strong>" in page
    assert "all marketing e-mail from Example Ltd" in page


def test_masking() -> None:
    assert mask("jane@example.com") == "j***@example.com"
    assert mask("j@example.com") == "j***@example.com"
    assert mask(None) == mask("") == ""  # the page then says "your address", in its language


async def test_no_page_shows_the_address_in_full(site: Site) -> None:
    news, everything, offers = (
        site.token(JANE, scope) for scope in ("topic:news", "global", "confirm:offers")
    )
    calls: list[tuple[str, str, Any]] = [
        ("GET", f"/u/{news}", None),
        ("POST", f"/u/{news}", {"via": "page"}),
        ("POST", f"/u/{everything}", {"via": "page"}),
        ("GET", f"/p/{news}?done=unsubscribed&topic=news", None),
        ("GET", f"/c/{offers}", None),
        ("POST", f"/c/{offers}", None),
        ("GET", f"/c/{offers}", None),
        ("GET", f"/u/{news[:-3]}", None),
    ]
    for method, path, data in calls:
        response, page = await site.call(method, path, data)
        assert response.status in (200, 400), path
        assert "jane@" not in page, path
        shows_address = response.status == 200 and (method, path) != ("POST", f"/c/{offers}")
        assert ("j***@example.com" in page) is shows_address, path


async def test_the_page_button_unsubscribes_as_web_and_offers_to_take_it_back(
    site: Site,
) -> None:
    token = site.token(JANE, "topic:news")

    response, page = await site.call("POST", f"/u/{token}", {"via": "page"})

    assert response.status == 200
    assert "<h1>You are unsubscribed</h1>" in page
    assert f'action="/p/{token}"><input type="hidden" name="action" value="resubscribe">' in page
    [record] = (await site.store.holder(JANE.sha256)).suppressions
    assert (record.scope, record.source) == ("topic:news", "web")
    assert json.loads(record.evidence or "{}")["channel"] == "web"
    assert unsubscribes(site, "web") == 1
    assert not await site.keeps(JANE, "news")


# --- bad tokens ---------------------------------------------------------------------------


def forged(site: Site, kind: str, route: str) -> str:
    """A token of one bad kind, for a route."""
    good = site.token(JANE, "confirm:news" if route == "c" else "topic:news")
    middle = len(good) // 2
    swapped = "A" if good[middle] != "A" else "B"
    return {
        "garbage": "not-a-token",
        "truncated": good[:-6],
        "altered": good[:middle] + swapped + good[middle + 1 :],
        "unknown-key": TokenSigner([b"x" * 32]).issue(Claims(JANE.sha256, GLOBAL, 1)),
        "wrong-kind": site.token(JANE, "topic:news" if route == "c" else "confirm:news"),
    }[kind]


BODIES: dict[str, Any] = {
    "u": ONE_CLICK,
    "p": {"action": "unsubscribe-all"},
    "c": None,
}


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("route", ["u", "p", "c"])
@pytest.mark.parametrize("kind", ["garbage", "truncated", "altered", "unknown-key", "wrong-kind"])
async def test_a_bad_token_gets_a_400_page_and_changes_nothing(
    site: Site, kind: str, route: str, method: str
) -> None:
    events, holder = await site.events(), await site.store.holder(JANE.sha256)
    with structlog.testing.capture_logs() as logs:
        response, page = await site.call(
            method, f"/{route}/{forged(site, kind, route)}", BODIES[route]
        )

    assert response.status == 400
    assert "This link is not valid. Nothing was changed." in page
    assert (await site.events(), await site.store.holder(JANE.sha256)) == (events, holder)
    [entry] = logs
    assert entry["event"] == "web_bad_token"
    assert entry["log_level"] == "warning"
    assert entry["reason"]
    assert entry["route"] == route
    assert JANE.sha256[:16] not in repr(logs)
    assert "127.0.0.1" not in repr(logs)


# --- the preference page -------------------------------------------------------------------


async def test_preferences_unsubscribe_one_list_then_resubscribe(site: Site) -> None:
    token = site.token(JANE, "topic:news")
    _, page = await site.call("GET", f"/p/{token}")
    assert ">Unsubscribe from news</button>" in page
    assert ">Unsubscribe from deals</button>" in page

    response, _ = await site.call("POST", f"/p/{token}", {"action": "unsubscribe", "topic": "news"})

    assert response.status == 303
    location = response.headers["Location"]
    assert location == f"/p/{token}?done=unsubscribed&topic=news"
    _, page = await site.call("GET", location)
    assert "You are unsubscribed from “news”." in page
    assert ">Resubscribe to news</button>" in page
    assert not await site.keeps(JANE, "news")
    assert await site.keeps(JANE, "deals")

    response, _ = await site.call("POST", f"/p/{token}", {"action": "resubscribe", "topic": "news"})

    assert response.headers["Location"] == f"/p/{token}?done=resubscribed&topic=news"
    holder = await site.store.holder(JANE.sha256)
    assert holder.suppressions == ()
    consent = next(c for c in holder.consents if c.purpose == "news")
    assert (consent.granted, consent.source, consent.policy_version) == (True, "web", "3")
    assert json.loads(consent.evidence or "{}") == {"channel": "web", "ip": "127.0.0.1"}
    assert await site.keeps(JANE, "news")


async def test_a_repeated_resubscribe_adds_nothing(site: Site) -> None:
    token = site.token(JANE, "topic:news")
    await site.call("POST", f"/p/{token}", {"action": "unsubscribe", "topic": "news"})
    await site.call("POST", f"/p/{token}", {"action": "resubscribe", "topic": "news"})
    events = await site.events()

    response, _ = await site.call("POST", f"/p/{token}", {"action": "resubscribe", "topic": "news"})

    assert response.status == 303
    assert await site.events() == events


async def test_unsubscribe_from_everything_and_back(site: Site) -> None:
    token = site.token(JANE, "topic:deals")

    response, _ = await site.call("POST", f"/p/{token}", {"action": "unsubscribe-all"})

    assert response.headers["Location"] == f"/p/{token}?done=unsubscribed-all"
    assert not await site.keeps(JANE, "deals")
    _, page = await site.call("GET", response.headers["Location"])
    assert "You are unsubscribed from all our e-mail." in page
    assert ">Resubscribe to everything</button>" in page

    await site.call("POST", f"/p/{token}", {"action": "resubscribe-all"})

    assert await site.keeps(JANE, "deals")
    assert await site.keeps(JANE, "news")


async def test_a_bounce_or_a_block_cannot_be_lifted_from_the_page(site: Site) -> None:
    bounced = ImportItem(JANE.sha256, "sha256", None, Reason.BOUNCED)
    await site.store.suppress([bounced], scope="global", source="bounce", actor="test")
    blocked = ImportItem(JANE.sha256, "sha256", None, Reason.MANUAL)
    await site.store.suppress([blocked], scope="topic:news", source="cli", actor="test")
    token = site.token(JANE)
    events = await site.events()

    _, page = await site.call("GET", f"/p/{token}")
    assert "Resubscribe" not in page
    for form in ({"action": "resubscribe-all"}, {"action": "resubscribe", "topic": "news"}):
        response, _ = await site.call("POST", f"/p/{token}", form)
        assert response.status == 400

    assert await site.events() == events


@pytest.mark.parametrize(
    "form",
    [
        {},
        {"action": "delete-everything"},
        {"action": "unsubscribe"},
        {"action": "unsubscribe", "topic": "Not A Topic!"},
        {"action": "resubscribe", "topic": ""},
    ],
)
async def test_a_form_the_page_cannot_act_on_changes_nothing(
    site: Site, form: Mapping[str, str]
) -> None:
    events = await site.events()

    response, page = await site.call("POST", f"/p/{site.token(JANE)}", form)

    assert response.status == 400
    assert "Nothing was changed." in page
    assert await site.events() == events


async def test_the_status_line_shows_fixed_words_only(site: Site) -> None:
    token = site.token(JANE)
    for query in ("done=hacked", "done=unsubscribed&topic=<b>you+won</b>", "done=unsubscribed"):
        _, page = await site.call("GET", f"/p/{token}?{query}")
        assert 'role="status"' not in page, query


# --- double opt-in --------------------------------------------------------------------------


async def test_confirming_a_subscription_records_consent_once(site: Site) -> None:
    issued = int(time.time()) - 60
    token = site.token(NEW, "confirm:news", issued)
    assert not await site.keeps(NEW, "news")
    _, page = await site.call("GET", f"/c/{token}")
    assert "“news”" in page
    assert "your address" in page
    assert f'<form method="post" action="/c/{token}">' in page

    response, page = await site.call("POST", f"/c/{token}")

    assert response.status == 200
    assert "Subscription confirmed" in page
    [consent] = (await site.store.holder(NEW.sha256)).consents
    assert (consent.purpose, consent.granted, consent.source) == ("news", True, "web")
    assert consent.policy_version == "3"
    evidence = json.loads(consent.evidence or "{}")
    assert evidence["ip"] == "127.0.0.1"
    assert evidence["requested_at"] == datetime.fromtimestamp(issued, UTC).isoformat()
    assert evidence["confirmed_at"] == consent.created.isoformat()
    assert await site.keeps(NEW, "news")

    events = await site.events()
    response, page = await site.call("POST", f"/c/{token}")
    assert response.status == 200
    assert "Subscription confirmed" in page
    assert await site.events() == events
    _, page = await site.call("GET", f"/c/{token}")
    assert "already confirmed" in page
    assert "<form" not in page


async def test_confirming_lifts_an_older_unsubscribe_from_that_list_only(site: Site) -> None:
    other = normalize("other@example.net")
    stale = site.token(other, "confirm:news", int(time.time()) - 3600)
    for who in (NEW, other):
        item = ImportItem(who.sha256, "sha256", None, Reason.UNSUBSCRIBED)
        await site.store.suppress([item], scope="topic:news", source="one-click", actor="t")
    late = site.token(NEW, "confirm:news", int(time.time()) + 2)  # asked again afterwards

    await site.call("POST", f"/c/{late}")
    await site.call("POST", f"/c/{stale}")

    assert await site.keeps(NEW, "news")
    assert not await site.keeps(other, "news")  # unsubscribed after the request: stays
    assert [c.purpose for c in (await site.store.holder(other.sha256)).consents] == ["news"]


async def test_a_confirmation_link_older_than_a_revocation_changes_nothing(site: Site) -> None:
    token = site.token(JANE, "confirm:news", int(time.time()) - 3600)
    revoked = Consent(JANE.sha256, "news", False, "cli", now())
    await site.store.record_consents([revoked], actor="test")
    events = await site.events()

    for method in ("GET", "POST"):
        response, page = await site.call(method, f"/c/{token}")
        assert response.status == 200
        assert "This link is out of date" in page

    assert await site.events() == events
    assert not await site.keeps(JANE, "news")


# --- rate limiting, client IP, headers ---------------------------------------------------------


@pytest.mark.sockets
async def test_rate_limit_answers_429_but_never_refuses_a_genuine_one_click(store: Store) -> None:
    async with site_for(store, replace(SETTINGS, rate_limit=3)) as site:
        page = f"/u/{site.token(JANE)}"
        for _ in range(3):
            response, _ = await site.call("GET", page)
            assert response.status == 200
        spoofed = {"X-Forwarded-For": "203.0.113.9"}  # not from a trusted proxy: ignored

        response, text = await site.call("GET", page, headers=spoofed)

        assert response.status == 429
        assert response.headers["Retry-After"] == "30"  # the window's end
        assert "Too many requests" in text
        assert (await site.call("GET", "/healthz"))[0].status == 200
        assert (await site.call("POST", f"/u/{site.token(JANE)}x", ONE_CLICK))[0].status == 429
        response, _ = await site.call("POST", f"/u/{site.token(JANE, 'topic:news')}", ONE_CLICK)
        assert response.status == 200
        assert not await site.keeps(JANE, "news")


@pytest.mark.sockets
async def test_behind_a_trusted_proxy_the_forwarded_client_counts(store: Store) -> None:
    settings = replace(SETTINGS, rate_limit=2, trusted_proxies=nets("127.0.0.0/8"))
    async with site_for(store, settings) as site:
        page = f"/u/{site.token(JANE)}"
        first = {"X-Forwarded-For": "198.51.100.1, 203.0.113.5"}
        statuses = [(await site.call("GET", page, headers=first))[0].status for _ in range(3)]
        assert statuses == [200, 200, 429]
        other = {"X-Forwarded-For": "203.0.113.6"}
        assert (await site.call("GET", page, headers=other))[0].status == 200

        await site.call("POST", page, ONE_CLICK, headers=other)

        [record] = (await site.store.holder(JANE.sha256)).suppressions
        assert json.loads(record.evidence or "{}")["ip"] == "203.0.113.6"


@pytest.mark.parametrize(
    ("peer", "forwarded", "client"),
    [
        ("192.0.2.1", "203.0.113.5", "192.0.2.1"),  # untrusted peer: its header is ignored
        ("10.0.0.2", "203.0.113.5", "203.0.113.5"),
        ("10.0.0.2", "198.51.100.7, 203.0.113.5, 10.0.0.1", "203.0.113.5"),
        ("10.0.0.2", "10.0.0.3", "10.0.0.3"),  # every hop a proxy: the first one
        ("10.0.0.2", None, "10.0.0.2"),
        ("::ffff:10.0.0.2", "203.0.113.5", "203.0.113.5"),
        (None, None, "unknown"),
    ],
)
def test_client_ip(peer: str | None, forwarded: str | None, client: str) -> None:
    assert client_ip(peer, forwarded, nets("10.0.0.0/8")) == client


async def test_limiters_share_their_counts_and_start_again_each_window(store: Store) -> None:
    clock = [MINUTE_LEFT_30]
    # two limiters on one store: two workers (or nodes) counting one client together
    one, two = (SharedLimiter(store, KEY, clock=lambda: clock[0], window=60) for _ in "12")
    taken = [await limiter.take([("web", "192.0.2.1", 5)]) for limiter in (one, two) * 3]
    assert taken == [True] * 5 + [False]
    assert await one.take([("web", "192.0.2.2", 5)])  # a count per client
    assert one.retry_after() == 30
    clock[0] += timedelta(seconds=30)  # the next minute
    assert await two.take([("web", "192.0.2.1", 5)])
    assert one.retry_after() == 60


@pytest.mark.sockets
async def test_security_headers_on_every_answer(store: Store) -> None:
    async with site_for(store, replace(SETTINGS, rate_limit=5)) as site:
        token = site.token(JANE)
        calls: list[tuple[str, str, Any, int]] = [
            ("GET", f"/u/{token}", None, 200),
            ("POST", f"/p/{token}", {"action": "unsubscribe", "topic": "news"}, 303),
            ("GET", "/u/forged", None, 400),
            ("GET", "/metrics", None, 404),  # on the admin listener only
            ("PUT", f"/u/{token}", None, 405),
            ("GET", f"/u/{token}", None, 429),
            ("GET", "/healthz", None, 200),
        ]
        for method, path, data, status in calls:
            response, _ = await site.call(method, path, data)
            assert response.status == status, path
            for name, value in SECURITY_HEADERS.items():
                assert response.headers.get(name) == value, (path, name)
            assert "Server" not in response.headers, path  # aiohttp's says its version
    assert SECURITY_HEADERS["Content-Security-Policy"] == (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    )


@pytest.mark.parametrize("path", ["/", "/u/", "/u/a/b", "/favicon.ico", "/x/u/abc"])
async def test_unknown_paths_are_404(site: Site, path: str) -> None:
    response, page = await site.call("GET", path)
    assert response.status == 404
    assert "There is no page at this address." in page


@pytest.mark.sockets
async def test_link_routes_live_under_the_path_of_base_url(store: Store) -> None:
    settings = replace(SETTINGS, base_url="https://example.com/mail/optgate/")
    async with site_for(store, settings) as site:
        token = site.token(JANE)
        response, page = await site.call("GET", f"/mail/optgate/u/{token}")
        assert response.status == 200
        assert f'action="/mail/optgate/u/{token}"' in page
        assert (await site.call("GET", f"/u/{token}"))[0].status == 404
        assert (await site.call("GET", "/healthz"))[0].status == 200


# --- monitoring -----------------------------------------------------------------------------


@pytest.mark.sockets
async def test_healthz_follows_the_store(tmp_path: Path) -> None:
    store = await open_store(f"sqlite:///{tmp_path / 'health.db'}", audit_key=AUDIT_KEY)
    async with site_for(store) as site:
        response, text = await site.call("GET", "/healthz")
        assert (response.status, text) == (200, "ok")
        await store.close()

        with structlog.testing.capture_logs() as logs:
            health, _ = await site.call("GET", "/healthz")
            page, text = await site.call("GET", f"/u/{site.token(JANE)}")

        assert health.status == 503
        assert (page.status, "Temporarily unavailable" in text) == (503, True)
        assert page.headers["Cache-Control"] == "no-store"
        assert "127.0.0.1" not in repr(logs)


async def test_metrics_count_unsubscribes_by_channel_and_hold_no_address(site: Site) -> None:
    await site.call("POST", f"/u/{site.token(JANE, 'topic:news')}", ONE_CLICK)
    await site.call("POST", f"/u/{site.token(HIDDEN)}", {"via": "page"})

    text = site.metrics.exposition().decode()  # served by the admin listener

    assert 'optgate_unsubscribes_total{channel="one-click"} 1.0' in text
    assert 'optgate_unsubscribes_total{channel="web"} 1.0' in text
    assert "@" not in text


# --- settings and pages ---------------------------------------------------------------------


def test_settings_come_from_the_config() -> None:
    config = load(
        None,
        {
            "OPTGATE_WEB_RATE_LIMIT": "30",
            "OPTGATE_WEB_TRUSTED_PROXIES": "10.0.0.0/8, ::1/128",
            "OPTGATE_WEB_ACCENT_COLOR": "#123",
            "OPTGATE_UNSUBSCRIBE_COMPANY": "Shop & Co",
            "OPTGATE_POLICY_CONSENT_VERSIONS": '{ news = "4" }',
        },
    )

    settings = WebSettings.from_config(config)

    assert settings == WebSettings(
        base_url="http://127.0.0.1:8080",
        company="Shop & Co",
        accent_color="#123",
        rate_limit=30,
        trusted_proxies=nets("10.0.0.0/8", "::1/128"),
        consent_versions={"news": "4"},
        page_note=config.web.page_note,
        postal_address=config.unsubscribe.postal_address,
    )
    defaults = WebSettings.from_config(load(None, {}))
    assert (defaults.rate_limit, defaults.trusted_proxies, defaults.accent_color) == (
        60,
        (),
        "#0b57d0",
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"accent_color": "red;}body{display:none"}, "accent_color"),
        ({"accent_color": "#12345"}, "accent_color"),
    ],
)
def test_bad_settings_name_the_key(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        replace(SETTINGS, **change)


@pytest.mark.sockets
async def test_the_company_name_is_escaped(store: Store) -> None:
    async with site_for(store, replace(SETTINGS, company="<i>Shop</i> & Co")) as site:
        _, page = await site.call("GET", f"/u/{site.token(JANE)}")
    assert "&lt;i&gt;Shop&lt;/i&gt; &amp; Co" in page
    assert "<i>" not in page
    assert not re.search(r"<(script|img|iframe|link rel=\"stylesheet\")", page)


@pytest.mark.sockets
async def test_pages_carry_the_configured_note_and_postal_address(tmp_path: Path) -> None:
    from gateway.config import load
    from gateway.web.endpoint import WebSettings

    config = load(
        None,
        {
            "OPTGATE_WEB_PAGE_NOTE": "Fragen? datenschutz@shop.example",
            "OPTGATE_UNSUBSCRIBE_POSTAL_ADDRESS": "Shop GmbH, Hauptstr. 1 <Berlin>",
        },
    )
    settings = WebSettings.from_config(config)
    assert settings.page_note == "Fragen? datenschutz@shop.example"
    store = await open_store(f"sqlite:///{tmp_path / 'note.db'}", audit_key=AUDIT_KEY)
    try:
        async with site_for(store, settings) as site:
            _, text = await site.call("GET", f"/u/{site.token(JANE)}")
    finally:
        await store.close()
    assert "Fragen? datenschutz@shop.example" in text
    assert "Shop GmbH, Hauptstr. 1 &lt;Berlin&gt;" in text


async def test_a_confirmation_link_expires_after_a_week_but_opt_out_links_do_not(
    site: Site,
) -> None:
    from gateway.web.endpoint import CONFIRM_MAX_AGE

    old = int(time.time()) - CONFIRM_MAX_AGE - 60
    events = await site.events()
    for method in ("GET", "POST"):
        response, page = await site.call(method, f"/c/{site.token(NEW, 'confirm:news', old)}")
        assert response.status == 400
        assert "Nothing was changed" in page
    assert not await site.keeps(NEW, "news")
    assert await site.events() == events

    response, _ = await site.call("POST", f"/u/{site.token(JANE, 'topic:news', old)}", ONE_CLICK)
    assert response.status == 200
    assert not await site.keeps(JANE, "news")
