"""What the store promises about its data, on both backends: erasure ends all mailing and
leaves no plaintext; the audit log's keyed chain and the state it rebuilds catch tampering."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest

from gateway.outbound.policy import MessageClass, Rules, decide, scopes_for
from suppression.address import normalize
from suppression.audit import GENESIS, event_body, plain_link
from suppression.errors import StoreError
from suppression.model import Consent, ImportItem, Reason, Send, now
from suppression.opening import open_store
from suppression.store import Store
from tests.support.backends import Backend
from tests.support.keys import AUDIT_KEY

pytestmark = pytest.mark.pure

PERSON = "Erin.Example@Example.org"
RULES = Rules(require_consent=True, consent_versions={})


def item(text: str, reason: Reason = Reason.MANUAL) -> ImportItem:
    address = normalize(text)
    return ImportItem(address.sha256, "sha256", address.normalized, reason)


def grant(text: str, purpose: str, when: datetime | None = None) -> Consent:
    address = normalize(text)
    evidence = json.dumps({"ip": "192.0.2.77", "form": f"signup by {address.normalized}"})
    return Consent(
        address.sha256,
        purpose,
        True,
        "web",
        when or now(),
        "3",
        address.normalized,
        evidence,
    )


async def verdict(store: Store, text: str, kind: MessageClass, topic: str) -> tuple[bool, str]:
    address = normalize(text)
    facts = await store.lookup_many([address], scopes_for(kind, topic), topic)
    decided = decide(facts[address.sha256], kind, topic, RULES)
    return decided.keep, decided.reason


async def test_erasure_revokes_every_consent_and_stops_every_class(backend: Backend) -> None:
    store = backend.store
    # consent but no suppression: the case that kept being mailed
    await store.record_consents([grant(PERSON, "news"), grant(PERSON, "deals")], actor="t")
    assert await verdict(store, PERSON, MessageClass.MARKETING, "news") == (True, "consented")

    erased = await store.erase(normalize(PERSON.upper()), actor="dpo")

    assert (erased.cleared, erased.revoked) == (2, 2)
    for kind, topic in [
        (MessageClass.MARKETING, "news"),
        (MessageClass.MARKETING, "deals"),
        (MessageClass.TRANSACTIONAL, "news"),
    ]:
        assert await verdict(store, PERSON, kind, topic) == (False, "erased"), (kind, topic)
    record = await store.subject(normalize(PERSON))
    assert [(c.purpose, c.granted) for c in record.consents[2:]] == [
        ("deals", False),
        ("news", False),
    ]
    assert all(c.evidence is None and c.address is None for c in record.consents)
    [tombstone] = record.suppressions
    assert (tombstone.scope, tombstone.reason, tombstone.address) == ("global", "erased", None)
    assert (await store.verify_chain()).intact

    # only what a consent given from now on allows
    await store.record_consents([grant(PERSON, "news")], actor="t")
    assert await verdict(store, PERSON, MessageClass.MARKETING, "news") == (True, "consented")
    assert await verdict(store, PERSON, MessageClass.MARKETING, "deals") == (False, "erased")
    again = await store.erase(normalize(PERSON), actor="dpo")
    assert again.revoked == 1
    assert await verdict(store, PERSON, MessageClass.MARKETING, "news") == (False, "erased")
    assert (await store.verify_chain()).intact


async def test_erasure_turns_an_opt_out_into_the_tombstone(backend: Backend) -> None:
    store = backend.store
    await store.suppress(
        [item(PERSON, Reason.UNSUBSCRIBED)],
        scope="global",
        source="one-click",
        actor="t",
        evidence='{"ip": "192.0.2.9"}',
    )
    await store.suppress([item(PERSON)], scope="topic:news", source="cli", actor="t")
    await store.erase(normalize(PERSON), actor="dpo")
    reasons = {s.scope: s.reason for s in (await store.subject(normalize(PERSON))).suppressions}
    assert reasons == {"global": Reason.ERASED, "topic:news": Reason.MANUAL}
    assert (await store.verify_chain()).intact


async def test_no_plaintext_in_any_row_after_erasure(backend: Backend) -> None:
    store = backend.store
    a = normalize(PERSON)
    await store.suppress([item(PERSON)], scope="topic:deals", source="import", actor="t")
    await store.suppress(
        [item(PERSON, Reason.BOUNCED)],
        scope="global",
        source="bounce",
        actor="inbound",
        evidence=json.dumps({"message_id": f"<bounce-for-{a.normalized}>"}),
    )
    await store.record_consents([grant(PERSON, "news")], actor="t")
    await store.record_sends([Send("m1", a.sha256, "news", "marketing", now())])
    await store.record_sends(
        [Send("m1", normalize("other@example.org").sha256, "news", "x", now())]
    )
    await store.erase(a, actor="dpo")

    needle = a.normalized.lower()
    for table in ("suppression", "consent", "audit", "send", "soft_bounce"):
        for row in backend.query(f"SELECT * FROM {table}"):
            assert not any(needle in str(value).lower() for value in row), (table, row)


async def test_subject_shows_the_send_ledger(backend: Backend) -> None:
    store = backend.store
    a = normalize(PERSON)
    when = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)
    await store.record_sends(
        [
            Send("k1", a.sha256, "news", "marketing", when),
            Send("k2", a.sha256, "receipts", "transactional", when + timedelta(days=1)),
            Send("k1", normalize("x@example.org").sha256, "news", "marketing", when),
        ]
    )
    record = await store.subject(a)
    assert [(s.message, s.topic, s.kind, s.at) for s in record.sends] == [
        ("k1", "news", "marketing", when),
        ("k2", "receipts", "transactional", when + timedelta(days=1)),
    ]


async def history(store: Store) -> None:
    """Every kind of change the chain vouches for: adds, a lift, consents, an erasure."""
    for n in range(3):
        await store.suppress([item(f"u{n}@example.com")], scope="global", source="cli", actor="t")
    await store.suppress(
        [item("u0@example.com"), item("t1@example.com"), item("t2@example.com")],
        scope="topic:news",
        source="import",
        actor="t",
    )
    await store.unsuppress([normalize("u1@example.com").sha256], scope="global", actor="t")
    await store.record_consents([grant("c1@example.com", "news")], actor="t")
    await store.erase(normalize("c1@example.com"), actor="dpo")
    await store.audit(actor="t", action="subject-access", subject=None)


TAMPERING = [
    ("a live opt-out deleted", "DELETE FROM suppression WHERE key = '{u0}' AND scope = 'global'"),
    ("a reason changed", "UPDATE suppression SET reason = 'bounced' WHERE key = '{u2}'"),
    ("a scope changed", "UPDATE suppression SET scope = 'topic:other' WHERE key = '{t1}'"),
    ("a time changed", "UPDATE suppression SET created = created - interval_1 WHERE key = '{t2}'"),
    ("a lifted row put back", "INSERT INTO suppression SELECT * FROM suppression_u1"),
    ("a revocation deleted", "DELETE FROM consent WHERE granted = {false}"),
    ("a grant rewritten", "UPDATE consent SET purpose = 'deals'"),
]


def _sql(backend: Backend, template: str) -> str:
    keys = {n: normalize(f"{n}@example.com").sha256 for n in ("u0", "u1", "u2", "t1", "t2")}
    postgres = backend.url.startswith("postgresql")
    sql = template.format(**keys, false="false" if postgres else "0")
    interval = "interval '1 hour'" if postgres else "0"
    if not postgres:  # times are text there
        sql = sql.replace("created - interval_1", "'1999' || substr(created, 5)")
    sql = sql.replace("interval_1", interval)
    if "suppression_u1" in sql:
        row = "('{u1}', 'global', 'sha256', NULL, 'manual', 'cli', NULL, {at}, 1)"
        at = "now()" if postgres else "'2026-01-01T00:00:00.000000Z'"
        sql = (
            "INSERT INTO suppression (key, scope, kind, address, reason, source, evidence, "
            f"created, event) VALUES {row.format(u1=keys['u1'], at=at)}"
        )
    return sql


@pytest.mark.parametrize(("what", "tamper"), TAMPERING, ids=[t[0] for t in TAMPERING])
async def test_verify_rebuilds_the_state_and_finds_a_table_edited_behind_its_back(
    backend: Backend, what: str, tamper: str
) -> None:
    store = backend.store
    await history(store)
    clean = await store.verify_chain()
    assert clean.intact, clean
    assert dict(clean.rows) == {"suppression": 6, "consent": 2}

    backend.raw_sql(_sql(backend, tamper))
    report = await store.verify_chain()
    assert report.broken_at is None, "the chain itself holds"
    assert not report.intact, what
    [mismatch] = report.mismatches
    assert mismatch.table == ("consent" if "consent" in tamper else "suppression")
    assert mismatch.events, "the events whose rows differ are named"


COLUMN_EDITS = [
    ("actor", "UPDATE audit SET actor = 'someone else' WHERE seq = 2"),
    ("subject", "UPDATE audit SET subject = 'ff' WHERE seq = 2"),
    ("action", "UPDATE audit SET action = 'unsuppress' WHERE seq = 2"),
]


@pytest.mark.parametrize(("column", "tamper"), COLUMN_EDITS, ids=[c[0] for c in COLUMN_EDITS])
async def test_verify_finds_an_edited_column_beside_the_body(
    backend: Backend, column: str, tamper: str
) -> None:
    await history(backend.store)
    backend.raw_sql(tamper)
    report = await backend.store.verify_chain()
    assert report.broken_at == 2
    assert report.problem == f"its {column} column differs from what was chained"


async def test_verify_finds_an_edited_time_column(backend: Backend) -> None:
    await history(backend.store)
    postgres = backend.url.startswith("postgresql")
    later = "at + interval '1 second'" if postgres else "'1999' || substr(at, 5)"
    backend.raw_sql(f"UPDATE audit SET at = {later} WHERE seq = 2")
    report = await backend.store.verify_chain()
    assert report.broken_at == 2


async def test_a_chain_recomputed_without_the_key_is_caught(backend: Backend) -> None:
    """An attacker who edits an event and recomputes every digest with plain SHA-256
    (or an HMAC under a key of their own) still cannot make the chain verify."""
    await history(backend.store)
    events = [e async for e in backend.store.iter_events()]
    for forge in (plain_link, lambda prev, body: hashlib.sha256(b"x" + body.encode()).hexdigest()):
        head = GENESIS
        for event in events:
            body = event.body.replace('"actor":"t"', '"actor":"x"')
            digest = forge(head, body)
            backend.raw_sql(
                f"UPDATE audit SET body = '{body}', actor = '{json.loads(body)['actor']}', "
                f"prev = '{head}', digest = '{digest}' WHERE seq = {event.seq}"
            )
            head = digest
        report = await backend.store.verify_chain()
        assert report.broken_at == 1
        assert report.problem is not None
        assert "digest" in report.problem


async def test_cutting_the_newest_events_is_caught(backend: Backend) -> None:
    store = backend.store
    await history(store)
    anchored = await store.verify_chain()
    assert anchored.intact
    head = (anchored.events, anchored.head)

    # the newest event added no rows: only the anchor can tell it is gone
    backend.raw_sql(f"DELETE FROM audit WHERE seq = {anchored.events}")
    assert (await store.verify_chain()).intact
    cut = await store.verify_chain([head])
    assert cut.broken_at == anchored.events
    assert cut.problem is not None
    assert "newest events were removed" in cut.problem

    # cutting an event that added rows leaves rows no event vouches for
    backend.raw_sql(f"DELETE FROM audit WHERE seq = {anchored.events - 1}")
    orphans = await store.verify_chain()
    assert [m.table for m in orphans.mismatches] == ["suppression", "consent"]


async def test_an_anchor_the_chain_no_longer_holds_is_caught(backend: Backend) -> None:
    await history(backend.store)
    report = await backend.store.verify_chain()
    other = await backend.store.verify_chain([(3, "0" * 64)])
    assert other.broken_at == 3
    assert (await backend.store.verify_chain([(report.events, report.head)])).intact


async def test_another_key_cannot_verify_the_chain(backend: Backend) -> None:
    await history(backend.store)
    store = await open_store(backend.url, audit_key=b"another key, 16+ bytes")
    try:
        report = await store.verify_chain()
    finally:
        await store.close()
    assert report.broken_at == 1
    assert report.problem is not None
    assert "audit key" in report.problem


def _legacy(backend: Backend, broken: bool = False) -> None:
    """Turn the store into one of schema 4: an unkeyed chain without row sums."""
    postgres = backend.url.startswith("postgresql")
    backend.raw_sql("DELETE FROM audit")
    backend.raw_sql("DELETE FROM suppression")
    backend.raw_sql("DELETE FROM consent")
    head = GENESIS
    when = datetime(2025, 5, 1, tzinfo=UTC)
    stored_time = "'2025-05-01 00:00:00+00'" if postgres else "'2025-05-01T00:00:00.000000Z'"
    for seq, who in ((1, "old1"), (2, "old2")):
        key = normalize(f"{who}@example.com").sha256
        body = event_body(seq, when, "cli:old", "suppress", key, {"scope": "global"})
        digest = plain_link(head, body)
        if broken and seq == 2:
            digest = "1" * 64
        at = "'2025-05-01 00:00:00+00'" if postgres else "'2025-05-01T00:00:00.000000Z'"
        backend.raw_sql(
            f"INSERT INTO audit (seq, at, actor, action, subject, body, prev, digest) VALUES "
            f"({seq}, {at}, 'cli:old', 'suppress', '{key}', '{body}', '{head}', '{digest}')"
        )
        backend.raw_sql(
            "INSERT INTO suppression (key, scope, kind, address, reason, source, evidence, "
            f"created, event) VALUES ('{key}', 'global', 'sha256', '{who}@example.com', "
            f"'manual', 'cli', NULL, {stored_time}, {seq})"
        )
        head = digest
    if postgres:
        backend.raw_sql("UPDATE schema_version SET version = 4")
    else:
        backend.raw_sql("PRAGMA user_version = 4")


async def test_an_unkeyed_chain_is_rekeyed_once_and_vouches_for_its_rows(
    backend: Backend,
) -> None:
    await backend.store.close()
    _legacy(backend)
    store = await open_store(backend.url, audit_key=AUDIT_KEY)
    try:
        report = await store.verify_chain()
        assert report.intact, report
        assert (report.events, dict(report.rows)["suppression"]) == (3, 2)
        events = [e async for e in store.iter_events()]
        assert events[-1].action == "audit-rekey"
        backend.raw_sql(
            f"DELETE FROM suppression WHERE key = '{normalize('old1@example.com').sha256}'"
        )
        [mismatch] = (await store.verify_chain()).mismatches
        assert mismatch.events == (0,), "the rows of the unkeyed era, as a whole"
    finally:
        await store.close()
    backend.store = await open_store(backend.url, audit_key=AUDIT_KEY)  # closed by the fixture


async def test_a_broken_unkeyed_chain_is_never_rekeyed(backend: Backend) -> None:
    await backend.store.close()
    _legacy(backend, broken=True)
    with pytest.raises(StoreError, match="broken at event 2"):
        await open_store(backend.url, audit_key=AUDIT_KEY)
    backend.raw_sql("DELETE FROM audit")
    backend.store = await open_store(backend.url, audit_key=AUDIT_KEY)


async def test_a_read_the_store_cannot_answer_is_a_store_error(backend: Backend) -> None:
    """The same clear error on both backends, never a driver's traceback (a web 503)."""
    store = backend.store
    await store.record_consents([grant(PERSON, "news")], actor="t")
    backend.raw_sql("DROP TABLE consent")
    a = normalize(PERSON)
    reads: list[Callable[[], Awaitable[object]]] = [
        lambda: store.lookup_many([a], ["global"], "news"),
        lambda: store.holder(a.sha256),
        lambda: store.subject(a),
    ]
    for read in reads:
        with pytest.raises(StoreError, match="cannot read"):
            await read()
    with pytest.raises(StoreError, match="cannot read"):
        [c async for c in store.iter_consents(None)]
