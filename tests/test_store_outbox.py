"""The integration tables on both stores: webhook events written in the transaction of the
change they tell of, leased deliveries, API keys, suppression listings, rates."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from suppression import importing
from suppression.address import normalize
from suppression.apikeys import new_key, split_key
from suppression.errors import OptgateError, StoreError
from suppression.fields import Row
from suppression.model import Consent, ImportItem, Reason, Send, now
from suppression.outbox import EVENT_TYPES, Webhook, new_secret
from suppression.scope import GLOBAL
from suppression.sql.integration import SuppressionFilter, decode_cursor, stored_cursor_of
from tests.support.backends import Backend

pytestmark = pytest.mark.pure

A, B = "a@example.com", "b@example.com"


def item(text: str, reason: Reason = Reason.MANUAL) -> ImportItem:
    address = normalize(text)
    return ImportItem(address.sha256, "sha256", address.normalized, reason)


def hook(name: str = "crm", events: tuple[str, ...] = EVENT_TYPES) -> Webhook:
    return Webhook(name, f"http://127.0.0.1:9/{name}", events, None, new_secret(), now())


def grant(text: str, purpose: str = "news", *, granted: bool = True, **extra: str) -> Consent:
    address = normalize(text)
    evidence = json.dumps(extra) if extra else None
    return Consent(
        address.sha256, purpose, granted, "api", now(), "2", address.normalized, evidence
    )


async def pending(backend: Backend) -> list[tuple[str, str, str, str | None, str]]:
    rows = backend.query("SELECT webhook, type, data, address, uid FROM outbox ORDER BY id")
    return [(str(r[0]), str(r[1]), str(r[2]), r[3], str(r[4])) for r in rows]


async def test_no_endpoint_no_events(backend: Backend) -> None:
    await backend.store.suppress([item(A)], scope="global", source="cli", actor="t")
    assert await pending(backend) == []


async def test_a_suppression_becomes_one_event_per_endpoint_that_wants_it(
    backend: Backend,
) -> None:
    store = backend.store
    await store.add_webhook(hook("crm"), actor="t")
    await store.add_webhook(hook("shop", ("consent.given",)), actor="t")
    await store.suppress(
        [item(A, Reason.UNSUBSCRIBED), item(B)], scope="topic:news", source="one-click", actor="web"
    )
    rows = await pending(backend)
    assert [(w, t) for w, t, *_ in rows] == [("crm", "suppression.added")] * 2
    data = [json.loads(r[2]) for r in rows]
    assert {d["key"] for d in data} == {normalize(A).sha256, normalize(B).sha256}
    assert {d["scope"] for d in data} == {"topic:news"}
    assert {d["source"] for d in data} == {"one-click"}
    assert {d["actor"] for d in data} == {"web"}
    assert "@" not in rows[0][2]  # the payload names people by hash
    assert {r[3] for r in rows} == {A, B}  # the address waits beside it
    assert len({r[4] for r in rows}) == 2  # event ids are unique
    # a batch that adds nothing makes no event
    await store.suppress([item(A)], scope="topic:news", source="cli", actor="t")
    assert len(await pending(backend)) == 2


async def test_lifts_consents_and_erasure_make_their_events(backend: Backend) -> None:
    store = backend.store
    await store.add_webhook(hook(), actor="t")
    a = normalize(A)
    await store.suppress([item(A)], scope="global", source="cli", actor="t")
    await store.unsuppress([a.sha256], scope="global", actor="api:crm")
    await store.record_consents([grant(A), grant(B, granted=False)], actor="api:crm")
    await store.record_consents([grant(B, confirmed_at=now().isoformat())], actor="web")
    await store.erase(a, actor="cli:root")
    rows = await pending(backend)
    assert [t for _, t, *_ in rows] == [
        "suppression.added",
        "suppression.removed",
        "consent.given",
        "consent.revoked",
        "consent.confirmed",
        "subject.erased",
    ]
    removed = json.loads(rows[1][2])
    assert (removed["key"], removed["scope"], removed["actor"]) == (a.sha256, "global", "api:crm")
    assert json.loads(rows[2][2])["purpose"] == "news"
    assert json.loads(rows[5][2]) == {"sha256": a.sha256, "actor": "cli:root"}
    # erasure took the address out of every pending event about the subject, not others'
    addresses = {
        json.loads(data).get("key") or json.loads(data)["sha256"]: address
        for _, _, data, address, _ in rows
    }
    assert addresses[a.sha256] is None
    assert addresses[normalize(B).sha256] == B


async def test_events_of_a_change_that_rolls_back_are_never_written(backend: Backend) -> None:
    store = backend.store
    await store.add_webhook(hook(), actor="t")
    # a failure after the outbox row is written, inside the same transaction
    if backend.url.startswith("sqlite"):
        backend.raw_sql(
            "CREATE TRIGGER boom AFTER INSERT ON outbox WHEN NEW.data LIKE '%\"doomed\"%' "
            "BEGIN SELECT RAISE(ABORT, 'doomed'); END"
        )
    else:
        backend.raw_sql(
            "CREATE FUNCTION boom() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "IF NEW.data LIKE '%\"doomed\"%' THEN RAISE EXCEPTION 'doomed'; END IF; "
            "RETURN NEW; END $$; CREATE TRIGGER boom AFTER INSERT ON outbox "
            "FOR EACH ROW EXECUTE FUNCTION boom()"
        )
    events = (await store.verify_chain()).events
    with pytest.raises(StoreError):
        await store.record_consents([grant(A, "doomed")], actor="t")
    assert backend.query("SELECT count(*) FROM consent") == [(0,)]
    assert (await store.verify_chain()).events == events
    assert await pending(backend) == []
    await store.record_consents([grant(A)], actor="t")
    assert [t for _, t, *_ in await pending(backend)] == ["consent.given"]


async def test_deliveries_are_leased_settled_by_their_owner_retried_and_dead(
    backend: Backend,
) -> None:
    store = backend.store
    await store.add_webhook(hook(), actor="t")
    await store.suppress([item(A), item(B)], scope="global", source="cli", actor="t")
    at = now()
    first = await store.claim_deliveries("n1", 10, at=at, until=at + timedelta(seconds=60))
    assert len(first) == 2
    assert await store.claim_deliveries("n2", 10, at=at, until=at + timedelta(seconds=60)) == []
    one, two = first
    assert one.uid != two.uid
    assert await store.delivered("n1", one.id, "HTTP 204", at)
    assert not await store.delivered("n1", one.id, "HTTP 204", at)  # once
    # the lease of the second ran out: another node takes it, the first may not settle it
    later = at + timedelta(seconds=61)
    [taken] = await store.claim_deliveries("n2", 10, at=later, until=later + timedelta(60))
    assert (taken.id, taken.uid) == (two.id, two.uid)
    assert not await store.undelivered("n1", two.id, "HTTP 500", later)
    assert await store.undelivered("n2", two.id, "HTTP 500", later + timedelta(seconds=5))
    assert await store.claim_deliveries("n2", 10, at=later, until=later) == []
    again = later + timedelta(seconds=5)
    [retried] = await store.claim_deliveries("n3", 10, at=again, until=again + timedelta(60))
    assert retried.attempts == 1
    assert retried.status == "HTTP 500"
    assert await store.undelivered("n3", retried.id, "timeout", None)  # dead
    assert await store.outbox_counts() == {"delivered": 1, "dead": 1}
    [dead] = await store.deliveries("dead", 10)
    assert (dead.id, dead.status, dead.attempts, dead.address) == (two.id, "timeout", 2, B)
    [done] = await store.deliveries("delivered", 10)
    assert done.address is None  # a delivered event keeps no address
    assert await store.retry_deliveries(None, again, actor="cli:root") == 1
    assert len(await store.claim_deliveries("n4", 10, at=again, until=again)) == 1
    assert await store.prune_deliveries(at + timedelta(seconds=1)) == 1
    assert await store.outbox_counts() == {"pending": 1}


async def test_endpoints_rotate_and_go_with_their_deliveries(backend: Backend) -> None:
    store = backend.store
    crm = hook()
    await store.add_webhook(crm, actor="t")
    with pytest.raises(OptgateError, match="exists already"):
        await store.add_webhook(hook(), actor="t")
    until = now() + timedelta(hours=24)
    fresh = new_secret()
    assert await store.rotate_webhook("crm", fresh, until, actor="t")
    [rotated] = await store.webhooks()
    assert rotated.secrets_at(now()) == (fresh, crm.secret)
    assert rotated.secrets_at(until + timedelta(seconds=1)) == (fresh,)
    assert rotated.events == EVENT_TYPES
    assert rotated.include_address is None
    await store.suppress([item(A)], scope="global", source="cli", actor="t")
    assert await store.remove_webhook("crm", actor="t")
    assert not await store.remove_webhook("crm", actor="t")
    assert await store.outbox_counts() == {}
    assert (await store.verify_chain()).intact


async def test_api_keys_are_kept_as_digests_and_revoked_by_name(backend: Backend) -> None:
    store = backend.store
    text, key = new_key("crm", ("read", "write"))
    await store.add_api_key(key, actor="cli:root")
    with pytest.raises(OptgateError, match="exists already"):
        await store.add_api_key(new_key("crm", ("read",))[1], actor="cli:root")
    split = split_key(text)
    assert split is not None
    key_id, secret = split
    assert key_id == key.id
    assert secret not in str(backend.query("SELECT * FROM api_key"))
    found = await store.api_key(key.id)
    assert found is not None
    assert found.matches(secret)
    assert not found.matches(secret[:-1] + "x")
    assert found.scopes == ("read", "write")
    assert await store.revoke_api_key("crm", now(), actor="cli:root")
    assert not await store.revoke_api_key("crm", now(), actor="cli:root")
    await store.add_api_key(new_key("crm", ("erase",))[1], actor="cli:root")  # the name is free
    keys = await store.api_keys()
    assert [(k.name, k.revoked is None) for k in keys] == [("crm", False), ("crm", True)]
    actions = [e.action for e in [e async for e in store.iter_events()]]
    assert actions.count("api-key-add") == 2
    assert "api-key-revoke" in actions


async def test_suppressions_are_listed_in_pages_with_filters(backend: Backend) -> None:
    store = backend.store
    texts = [f"p{n}@example.com" for n in range(25)]
    await store.suppress([item(t) for t in texts], scope="global", source="import", actor="t")
    await store.suppress([item(t) for t in texts[:5]], scope="topic:news", source="cli", actor="t")
    seen: list[tuple[str, str]] = []
    f = SuppressionFilter()
    while page := await store.list_suppressions(f, 7):
        seen += [(s.key, s.scope) for s in page]
        f = SuppressionFilter(after=decode_cursor(stored_cursor_of(page[-1])))
    assert len(seen) == 30
    assert len(set(seen)) == 30
    assert seen == sorted(seen)
    news = await store.list_suppressions(SuppressionFilter(scope="topic:news"), 100)
    assert len(news) == 5
    assert {s.source for s in news} == {"cli"}
    assert len(await store.list_suppressions(SuppressionFilter(source="import"), 100)) == 25
    assert await store.list_suppressions(SuppressionFilter(reason="bounced"), 100) == []
    assert await store.list_suppressions(SuppressionFilter(since=now()), 100) == []
    assert len(await store.list_suppressions(SuppressionFilter(until=now()), 100)) == 30


async def test_rates_count_sends_and_the_opt_outs_after_them(backend: Backend) -> None:
    store = backend.store
    start = now() - timedelta(hours=1)
    people = [normalize(f"r{n}@example.com") for n in range(10)]
    sends = [
        Send(f"m{n}", p.sha256, "news", "marketing", start, "spring" if n < 6 else None)
        for n, p in enumerate(people)
    ]
    sends.append(Send("t1", people[0].sha256, "news", "transactional", start))
    await store.record_sends(sends)
    await store.suppress(
        [ImportItem(people[0].sha256, "sha256", None, Reason.COMPLAINED)],
        scope="global",
        source="complaint",
        actor="t",
    )
    await store.suppress(
        [ImportItem(people[7].sha256, "sha256", None, Reason.UNSUBSCRIBED)],
        scope="topic:news",
        source="one-click",
        actor="t",
    )
    # an opt-out from another topic's list does not count against news
    await store.suppress(
        [ImportItem(people[8].sha256, "sha256", None, Reason.UNSUBSCRIBED)],
        scope="topic:deals",
        source="one-click",
        actor="t",
    )
    rows = {(r.topic, r.campaign): r for r in await store.rates(start - timedelta(minutes=1))}
    assert set(rows) == {("news", None), ("news", "spring")}
    spring, plain = rows["news", "spring"], rows["news", None]
    assert (spring.sent, spring.complained, spring.unsubscribed) == (6, 1, 0)
    assert (plain.sent, plain.complained, plain.unsubscribed) == (4, 0, 1)
    assert spring.flag == "over"
    assert plain.flag == "ok"
    assert await store.rates(now() + timedelta(minutes=1)) == []


async def test_limits_of_different_windows_share_the_counters(backend: Backend) -> None:
    store = backend.store
    at = datetime(2030, 1, 1, 10, 10, tzinfo=UTC)
    assert await store.take_rate([("hourly", 1)], window=3600, at=at)
    for _ in range(3):
        await store.take_rate([("minute", 5)], window=60, at=at + timedelta(seconds=120))
    # the minute limiter's clean-up kept the hour's count
    assert not await store.take_rate([("hourly", 1)], window=3600, at=at + timedelta(seconds=1))


async def test_import_runs_make_an_event_per_row_they_added(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    from suppression import rows as shared_rows
    from suppression.sql import integration

    monkeypatch.setattr(integration, "PAGE", 4)  # events read back a few rows at a time
    assert shared_rows.PAGE > 4
    store = backend.store
    await store.add_webhook(hook(), actor="t")
    texts = [f"i{n}@example.com" for n in range(10)]
    await store.suppress([item(texts[0])], scope="global", source="cli", actor="t")
    await importing.import_suppressions(
        store,
        Given([Row(n, text, "address") for n, text in enumerate(texts, 1)]),
        options=importing.SuppressionOptions(scope=GLOBAL),
        actor="cli:ops",
        note={"file": "list.csv", "format": "csv"},
    )
    await importing.import_consents(
        store,
        Given([Row(n, text, "address") for n, text in enumerate(texts[:3], 1)]),
        options=importing.ConsentOptions(purpose="news"),
        actor="cli:ops",
        note={"file": "c.csv", "format": "csv"},
    )
    rows = await pending(backend)
    imported = [json.loads(r[2]) for r in rows if json.loads(r[2])["actor"] == "cli:ops"]
    added = [d for d in imported if "key" in d]
    assert sorted(d["key"] for d in added) == sorted(normalize(t).sha256 for t in texts[1:])
    assert {d["source"] for d in added} == {"import"}
    assert [t for _, t, *_ in rows].count("consent.given") == 3
    assert len({r[4] for r in rows}) == len(rows)  # every event its own id
    assert {r[3] for r in rows if r[1] == "suppression.added"} >= set(texts[1:])


@dataclass
class Given:
    """Rows as a reader gives them."""

    rows: list[Row]
    source: str = "list.csv"
    format: str = "csv"

    def __iter__(self) -> Iterator[Row]:
        return iter(self.rows)

    def records(self) -> Iterator[Row]:
        return iter(self.rows)


async def test_an_event_by_hash_alone_gets_the_address_the_store_keeps(backend: Backend) -> None:
    store = backend.store
    await store.add_webhook(hook(), actor="t")
    a, b = normalize(A), normalize(B)
    await store.record_consents([grant(A)], actor="t")  # the store keeps A's address
    by_token = [ImportItem(x.sha256, "sha256", None, Reason.UNSUBSCRIBED) for x in (a, b)]
    await store.suppress(by_token, scope="global", source="one-click", actor="web")
    addresses = {json.loads(r[2]).get("key"): r[3] for r in await pending(backend)}
    assert addresses[a.sha256] == A
    assert addresses[b.sha256] is None  # nobody knows B's
