"""The Store contract: one suite, run against every implementation."""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
import stat
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from suppression.address import identity, normalize
from suppression.errors import StoreError, StoreMissing
from suppression.model import BatchResult, Consent, ConsentItem, ImportItem, Reason, Send, now
from suppression.opening import open_store
from suppression.store import Store
from tests.support.backends import Backend, postgres_database, postgres_sql
from tests.support.keys import AUDIT_KEY

pytestmark = pytest.mark.pure


def item(text: str, reason: Reason = Reason.MANUAL) -> ImportItem:
    address = normalize(text)
    return ImportItem(address.sha256, "sha256", address.normalized, reason)


async def test_suppressed_address_is_found_in_its_scope_only(backend: Backend) -> None:
    store = backend.store
    await store.suppress([item("a@example.com")], scope="topic:news", source="cli", actor="t")
    a, b = normalize("A@Example.com"), normalize("b@example.com")

    facts = await store.lookup_many([a, b], ["global", "topic:news"], None)
    assert [s.scope for s in facts[a.sha256].suppressions] == ["topic:news"]
    assert facts[b.sha256].suppressions == ()
    other = await store.lookup_many([a], ["global", "topic:deals"], None)
    assert other[a.sha256].suppressions == ()


async def test_domain_and_md5_suppressions_match_addresses(backend: Backend) -> None:
    store = backend.store
    domain = ImportItem(identity("@blocked.example"), "domain", "@blocked.example", Reason.MANUAL)
    md5 = ImportItem(normalize("m@example.org").md5, "md5", None, Reason.IMPORTED)
    await store.suppress([domain, md5], scope="global", source="import", actor="t")
    x, m, ok = (normalize(a) for a in ("x@blocked.example", "M@example.org", "ok@example.org"))

    facts = await store.lookup_many([x, m, ok], ["global"], None)
    assert facts[x.sha256].suppressions[0].kind == "domain"
    assert facts[m.sha256].suppressions[0].kind == "md5"
    assert facts[ok.sha256].suppressions == ()


async def test_resuppressing_counts_present_and_duplicates(backend: Backend) -> None:
    store = backend.store
    first = await store.suppress(
        [item("a@example.com"), item("a@example.com"), item("b@example.com")],
        scope="global",
        source="import",
        actor="t",
    )
    assert (first.added, first.present, first.duplicates) == (2, 0, 1)
    again = await store.suppress(
        [item("a@example.com")], scope="global", source="import", actor="t"
    )
    assert (again.added, again.present, again.duplicates) == (0, 1, 0)


async def test_a_batch_that_adds_nothing_leaves_no_audit_event(backend: Backend) -> None:
    store = backend.store
    await store.suppress([item("a@example.com")], scope="global", source="cli", actor="t")
    again = await store.suppress([item("a@example.com")], scope="global", source="cli", actor="t")
    assert again.added == 0
    assert (await store.verify_chain()).events == 1


async def test_existing_suppression_keeps_its_original_reason(backend: Backend) -> None:
    store = backend.store
    await store.suppress(
        [item("a@example.com", Reason.COMPLAINED)], scope="global", source="complaint", actor="t"
    )
    await store.suppress(
        [item("a@example.com", Reason.IMPORTED)], scope="global", source="import", actor="t"
    )
    a = normalize("a@example.com")
    facts = await store.lookup_many([a], ["global"], None)
    assert facts[a.sha256].suppressions[0].reason is Reason.COMPLAINED


async def test_unsuppress_lifts_and_is_audited(backend: Backend) -> None:
    store = backend.store
    a = normalize("a@example.com")
    await store.suppress([item("a@example.com")], scope="global", source="cli", actor="t")
    assert await store.unsuppress([a.sha256, a.sha256], scope="global", actor="alice") == 1
    assert await store.unsuppress([a.sha256], scope="global", actor="alice") == 0
    facts = await store.lookup_many([a], ["global"], None)
    assert facts[a.sha256].suppressions == ()
    actions = [(e.action, e.actor) for e in (await store.subject(a)).events]
    assert ("unsuppress", "alice") in actions


def consent(
    text: str,
    purpose: str,
    granted: bool = True,
    version: str | None = None,
    when: datetime | None = None,
) -> Consent:
    address = normalize(text)
    return Consent(
        address.sha256,
        purpose,
        granted,
        "test",
        when or now(),
        version,
        address.normalized,
        '{"ip": "192.0.2.1"}',
    )


async def test_latest_consent_record_wins_and_revocation_is_kept(backend: Backend) -> None:
    store = backend.store
    a = normalize("a@example.com")
    await store.record_consents([consent("a@example.com", "news", version="1")], actor="t")
    await store.record_consents([consent("a@example.com", "news", granted=False)], actor="t")
    facts = await store.lookup_many([a], ["global"], "news")
    latest = facts[a.sha256].consent
    assert latest is not None
    assert latest.granted is False
    assert len((await store.subject(a)).consents) == 2
    other = await store.lookup_many([a], ["global"], "deals")
    assert other[a.sha256].consent is None


async def test_erase_keeps_the_hash_and_the_suppression(backend: Backend) -> None:
    store = backend.store
    a = normalize("a@example.com")
    await store.suppress(
        [item("a@example.com", Reason.UNSUBSCRIBED)],
        scope="global",
        source="one-click",
        actor="t",
        evidence='{"ip": "192.0.2.9"}',
    )
    await store.record_consents([consent("a@example.com", "news")], actor="t")

    assert (await store.erase(a, actor="dpo")).cleared == 2
    record = await store.subject(a)
    assert record.suppressions[0].address is None
    assert record.suppressions[0].evidence is None
    assert record.consents[0].address is None
    assert record.consents[0].evidence is None
    facts = await store.lookup_many([a], ["global"], "news")
    # the opt-out became the tombstone: global, keyed by the hash alone, reason erased
    (tombstone,) = facts[a.sha256].suppressions
    assert (tombstone.reason, tombstone.address, tombstone.kind) == (Reason.ERASED, None, "sha256")
    latest = facts[a.sha256].consent
    assert latest is not None
    assert not latest.granted, "every consent is revoked"
    assert any(e.action == "erase" and e.actor == "dpo" for e in record.events)
    assert (await store.verify_chain()).intact
    assert all("a@example.com" not in e.body for e in record.events)


def timed(record: Consent, given: bool = True) -> ConsentItem:
    return ConsentItem(record, timed=given)


async def add_consents(store: Store, *batches: list[ConsentItem]) -> list[BatchResult]:
    """One consent import run of these batches, committed; each batch's counts."""
    async with store.consent_import(actor="t", note={"file": "test"}) as run:
        results = [await run.add(batch) for batch in batches]
        await run.commit()
    return results


async def test_consent_import_skips_records_on_record(backend: Backend) -> None:
    store = backend.store
    # a time with microseconds, given in another zone: compared as an instant
    when = datetime(2024, 5, 6, 9, 8, 9, 123456, tzinfo=timezone(timedelta(hours=2)))
    a, b = consent("a@example.com", "news", when=when), consent("b@example.com", "news")
    # a later batch of the same run: duplicates; another run: already present
    later = replace(a, created=when + timedelta(microseconds=1))
    first, same_run = await add_consents(
        store, [timed(a), timed(a), timed(b)], [timed(a), timed(later)]
    )
    assert (first.added, first.present, first.duplicates) == (2, 0, 1)
    assert (same_run.added, same_run.present, same_run.duplicates) == (1, 0, 1)
    events = (await store.verify_chain()).events
    records = [c async for c in store.iter_consents(None)]

    again = (await add_consents(store, [timed(a), timed(b), timed(later)]))[0]
    assert (again.added, again.present, again.duplicates) == (0, 3, 0)
    assert [c async for c in store.iter_consents(None)] == records
    assert (await store.verify_chain()).events == events, "a batch adding nothing is not audited"

    # each part of the statement tells records apart; plaintext and evidence do not
    others = [
        replace(a, sha256=normalize("c@example.com").sha256),
        replace(a, purpose="deals"),
        replace(a, granted=False),
        replace(a, source="shop"),
        replace(a, policy_version="2"),
    ]
    same = replace(a, address=None, evidence='{"ip": "198.51.100.7"}')
    mixed = (await add_consents(store, [timed(r) for r in [*others, same]]))[0]
    assert (mixed.added, mixed.present, mixed.duplicates) == (5, 1, 0)


async def test_consent_rows_without_a_time_match_the_statement_at_any_time(
    backend: Backend,
) -> None:
    store = backend.store
    old = consent("a@example.com", "news", when=datetime(2020, 1, 1, tzinfo=UTC))
    await store.record_consents([old], actor="t")
    await store.record_consents([consent("a@example.com", "news", granted=False)], actor="t")
    # a stale list without times re-imported later does not grant again
    stale = replace(old, created=now())
    result = (await add_consents(store, [timed(stale, False), timed(stale, False)]))[0]
    assert (result.added, result.present, result.duplicates) == (0, 1, 1)
    a = normalize("a@example.com")
    latest = (await store.lookup_many([a], ["global"], "news"))[a.sha256].consent
    assert latest is not None
    assert latest.granted is False
    # a row with its own time is a record of its own
    renewed = (await add_consents(store, [timed(stale)]))[0]
    assert renewed.added == 1


async def test_consent_import_tolerates_duplicates_already_stored(backend: Backend) -> None:
    store = backend.store
    a = normalize("a@example.com")
    record = consent("a@example.com", "news", when=datetime(2024, 1, 1, tzinfo=UTC))
    # what imports before this check left behind: the same record twice
    await store.record_consents([record, record], actor="t")
    assert (await store.erase(a, actor="dpo")).cleared == 2
    result = (await add_consents(store, [timed(record)]))[0]
    assert (result.added, result.present, result.duplicates) == (0, 1, 0)
    stored = (await store.subject(a)).consents
    assert [c.granted for c in stored] == [True, True, False], "erasure revoked the consent"
    assert all(c.address is None and c.evidence is None for c in stored), "erased stays erased"


async def test_audit_chain_verifies_and_detects_tampering(backend: Backend) -> None:
    store = backend.store
    for n in range(5):
        await store.suppress([item(f"u{n}@example.com")], scope="global", source="cli", actor="t")
    report = await store.verify_chain()
    assert (report.events, report.broken_at) == (5, None)

    backend.raw_sql("UPDATE audit SET body = replace(body, '\"t\"', '\"mallory\"') WHERE seq = 3")
    broken = await store.verify_chain()
    assert broken.broken_at == 3
    assert broken.problem is not None


async def test_audit_chain_detects_a_removed_event(backend: Backend) -> None:
    store = backend.store
    for n in range(4):
        await store.suppress([item(f"u{n}@example.com")], scope="global", source="cli", actor="t")
    backend.raw_sql("DELETE FROM audit WHERE seq = 2")
    assert (await store.verify_chain()).broken_at == 3


async def test_subject_lists_the_batch_event_that_suppressed_it(backend: Backend) -> None:
    store = backend.store
    items = [item(f"u{n}@example.com") for n in range(3)]
    await store.suppress(
        items, scope="global", source="import", actor="importer", evidence="file.csv"
    )
    record = await store.subject(normalize("u1@example.com"))
    assert [e.actor for e in record.events] == ["importer"]
    assert record.suppressions[0].event == record.events[0].seq


async def test_iter_suppressions_streams_every_row_of_a_scope(backend: Backend) -> None:
    store = backend.store
    await store.suppress(
        [item(f"u{n}@example.com") for n in range(12000)],
        scope="global",
        source="import",
        actor="t",
    )
    await store.suppress([item("t@example.com")], scope="topic:x", source="cli", actor="t")
    assert len([s async for s in store.iter_suppressions("global")]) == 12000
    assert len([s async for s in store.iter_suppressions(None)]) == 12001


async def test_times_are_kept_in_utc(backend: Backend) -> None:
    store = backend.store
    when = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
    await store.suppress(
        [ImportItem(normalize("a@example.com").sha256, "sha256", None, Reason.BOUNCED, when)],
        scope="global",
        source="import",
        actor="t",
    )
    [record] = [s async for s in store.iter_suppressions(None)]
    assert record.created == when


async def test_reopening_keeps_data_and_a_newer_schema_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    store = await open_store(url, audit_key=AUDIT_KEY)
    await store.suppress([item("a@example.com")], scope="global", source="cli", actor="t")
    await store.close()
    store = await open_store(url, audit_key=AUDIT_KEY)
    assert len([s async for s in store.iter_suppressions(None)]) == 1
    await store.close()
    with sqlite3.connect(tmp_path / "s.db") as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(StoreError, match="newer than this optgate"):
        await open_store(url, audit_key=AUDIT_KEY)


async def test_unwritable_store_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a directory\n")
    with pytest.raises(StoreError, match="cannot make directory"):
        await open_store(f"sqlite:///{tmp_path / 'a-file' / 'dir' / 's.db'}", audit_key=AUDIT_KEY)
    missing = tmp_path / "missing" / "dir" / "s.db"
    with pytest.raises(StoreMissing, match=f"no optgate store at {missing}"):
        await open_store(f"sqlite:///{missing}", audit_key=AUDIT_KEY, create=False)
    assert not missing.parent.parent.exists()
    store = await open_store(f"sqlite:///{missing}", audit_key=AUDIT_KEY)  # serve, store migrate
    await store.close()
    assert stat.S_IMODE(missing.parent.stat().st_mode) == 0o700


async def test_locked_store_is_a_clear_error_and_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = await open_store(f"sqlite:///{path}", audit_key=AUDIT_KEY)
    locker = sqlite3.connect(path, timeout=0)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        await store._db.execute("PRAGMA busy_timeout = 100")  # type: ignore[attr-defined]
        with pytest.raises(StoreError, match="cannot write"):
            await store.suppress([item("a@example.com")], scope="global", source="cli", actor="t")
    finally:
        locker.rollback()
        locker.close()
    assert [s async for s in store.iter_suppressions(None)] == []
    await store.close()


async def test_holder_shows_a_hash_its_suppressions_and_current_consents(backend: Backend) -> None:
    store = backend.store
    a = normalize("a@example.com")
    await store.record_consents([consent("a@example.com", "news")], actor="t")
    await store.record_consents([consent("a@example.com", "deals")], actor="t")
    await store.record_consents([consent("a@example.com", "deals", granted=False)], actor="t")
    await store.suppress([item("a@example.com")], scope="topic:news", source="web", actor="t")
    holder = await store.holder(a.sha256)
    assert holder.address == "a@example.com"
    assert holder.consented() == ("news",)
    assert [c.purpose for c in holder.consents] == ["deals", "news"]
    assert [s.scope for s in holder.suppressions] == ["topic:news"]
    nobody = await store.holder(normalize("b@example.com").sha256)
    assert (nobody.address, nobody.suppressions, nobody.consents) == (None, (), ())


@pytest.mark.postgres
async def test_postgres_reopening_keeps_data_and_a_newer_schema_is_refused() -> None:
    async with postgres_database() as url:
        store = await open_store(url, audit_key=AUDIT_KEY)
        await store.suppress([item("a@example.com")], scope="global", source="cli", actor="t")
        await store.close()
        # several nodes starting at once: migrations take turns, none fails
        stores = await asyncio.gather(*(open_store(url, audit_key=AUDIT_KEY) for _ in range(3)))
        assert len([s async for s in stores[0].iter_suppressions(None)]) == 1
        for store in stores:
            await store.close()
        postgres_sql(url)("UPDATE schema_version SET version = 99")
        with pytest.raises(StoreError, match="newer than this optgate"):
            await open_store(url, audit_key=AUDIT_KEY)


@pytest.mark.postgres
async def test_postgres_nodes_never_fork_the_audit_chain() -> None:
    async with postgres_database() as url:
        first, second = (
            await open_store(url, audit_key=AUDIT_KEY),
            await open_store(url, audit_key=AUDIT_KEY),
        )
        try:
            await asyncio.gather(
                *(
                    node.suppress(
                        [item(f"u{n}@example.com")], scope="global", source="cli", actor="t"
                    )
                    for n in range(20)
                    for node in (first, second)
                ),
                *(node.audit(actor="t", action="access", subject=None) for node in (first, second)),
            )
            report = await first.verify_chain()
            assert (report.events, report.broken_at) == (22, None)
        finally:
            await first.close()
            await second.close()


@pytest.mark.postgres
async def test_postgres_bulk_import_and_ledger_match_sqlite_semantics() -> None:
    async with postgres_database() as url:
        store = await open_store(url, audit_key=AUDIT_KEY)
        try:
            items = [item(f"u{n}@example.com") for n in range(3000)]
            first = await store.suppress(
                items[:2000] + items[:10], scope="global", source="import", actor="t"
            )
            assert (first.added, first.present, first.duplicates) == (2000, 0, 10)
            rest = await store.suppress(items[1000:], scope="global", source="import", actor="t")
            assert (rest.added, rest.present, rest.duplicates) == (1000, 1000, 0)
            assert (await store.verify_chain()).events == 2
        finally:
            await store.close()


@pytest.mark.sockets
async def test_unreachable_postgres_is_a_clear_error_without_the_password() -> None:
    with pytest.raises(StoreError, match="cannot open PostgreSQL store") as caught:
        await open_store("postgresql://optgate:s3cret@127.0.0.1:1/optgate", audit_key=AUDIT_KEY)
    assert "s3cret" not in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.postgres
async def test_postgres_permission_denied_is_a_clear_error() -> None:
    async with postgres_database() as url:
        await (await open_store(url, audit_key=AUDIT_KEY)).close()
        role = f"optgate_reader_{secrets.token_hex(4)}"
        postgres_sql(url)(
            f"CREATE ROLE {role} LOGIN; GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}"
        )
        try:
            parts = urlsplit(url)
            netloc = f"{role}@{parts.hostname}:{parts.port or 5432}"
            store = await open_store(urlunsplit(parts._replace(netloc=netloc)), audit_key=AUDIT_KEY)
            try:
                assert [s async for s in store.iter_suppressions(None)] == []
                with pytest.raises(StoreError, match="cannot write to PostgreSQL store"):
                    await store.suppress(
                        [item("a@example.com")], scope="global", source="cli", actor="t"
                    )
            finally:
                await store.close()
        finally:
            postgres_sql(url)(f"DROP OWNED BY {role}; DROP ROLE {role}")


# --- inbound: the ledger behind short tokens; soft bounces -----------------------------


async def test_sent_to_finds_ledger_recipients_by_hash_prefix(backend: Backend) -> None:
    store = backend.store
    one, two = normalize("one@example.com").sha256, normalize("two@example.com").sha256
    at = datetime(2026, 1, 2, tzinfo=UTC)
    await store.record_sends(
        [
            Send("m1", one, "news", "marketing", at),
            Send("m2", one, "news", "marketing", at),
            Send("m3", one, "deals", "marketing", at),
            Send("m1", two, "news", "marketing", at),
        ]
    )
    assert await store.sent_to(one[:16]) == sorted([(one, "deals"), (one, "news")])
    assert await store.sent_to(one) == sorted([(one, "deals"), (one, "news")])
    assert await store.sent_to(two[:16]) == [(two, "news")]
    assert await store.sent_to("") == sorted([(one, "deals"), (one, "news"), (two, "news")])
    near = one[:15] + format((int(one[15], 16) + 1) % 16, "x")  # the next prefix
    assert await store.sent_to(near) == []


async def test_soft_bounces_count_once_per_reporting_message_within_a_window(
    backend: Backend,
) -> None:
    store = backend.store
    who = normalize("full@example.com").sha256
    early, late = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 20, tzinfo=UTC)
    detail = {"message_id": "<dsn@mx.example>"}
    assert await store.record_soft_bounce(who, "a" * 64, at=early, actor="t", detail=detail)
    assert await store.record_soft_bounce(who, "b" * 64, at=late, actor="t", detail=detail)
    events = (await store.verify_chain()).events
    assert not await store.record_soft_bounce(who, "b" * 64, at=late, actor="t", detail=detail)
    assert (await store.verify_chain()).events == events  # a repeat writes nothing
    assert await store.soft_bounces(who, early, late) == {"a" * 64, "b" * 64}
    assert await store.soft_bounces(who, datetime(2026, 1, 10, tzinfo=UTC), late) == {"b" * 64}
    # a window ends too: an old report (its Date) does not count the bounces after it
    assert await store.soft_bounces(who, early, datetime(2026, 1, 10, tzinfo=UTC)) == {"a" * 64}
    assert await store.soft_bounces(normalize("x@example.com").sha256, early, late) == frozenset()
    record = await store.subject(normalize("full@example.com"))
    bounces = [e for e in record.events if e.action == "soft-bounce"]
    assert len(bounces) == 2
    assert "<dsn@mx.example>" in bounces[0].body


async def test_an_esp_replay_key_is_accepted_once_until_forgotten(backend: Backend) -> None:
    store = backend.store
    t0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    later = t0 + timedelta(minutes=5)
    claim = store.claim_esp_token
    assert await claim("mailgun", "tok-1", at=t0, forget_before=t0 - timedelta(minutes=10))
    assert not await claim("mailgun", "tok-1", at=later, forget_before=t0 - timedelta(minutes=5))
    assert await claim("sendgrid", "tok-1", at=later, forget_before=t0)  # another vendor's key
    # a key whose notification failed is released: the vendor's retry is taken
    await store.release_esp_token("mailgun", "tok-1")
    assert await claim("mailgun", "tok-1", at=later, forget_before=t0 - timedelta(minutes=5))
    # keys older than forget_before are dropped: the table stays as small as the window
    assert await claim("mailgun", "tok-2", at=later, forget_before=later + timedelta(seconds=1))
    rows = backend.query("SELECT vendor, token FROM esp_token ORDER BY vendor, token")
    assert rows == [("mailgun", "tok-2"), ("sendgrid", "tok-1")]
    # bookkeeping, not a record about anyone: the audit log is untouched
    assert (await store.verify_chain()).events == 0


async def test_concurrent_claims_of_one_esp_key_on_any_node_accept_one(backend: Backend) -> None:
    at = now()
    results = await asyncio.gather(
        *(
            backend.store.claim_esp_token("mailgun", "same", at=at, forget_before=at)
            for _ in range(8)
        )
    )
    assert sorted(results) == [False] * 7 + [True]
    # another node (or worker) on the same database sees the key too
    other = await open_store(backend.url, audit_key=AUDIT_KEY)
    try:
        assert not await other.claim_esp_token("mailgun", "same", at=at, forget_before=at)
    finally:
        await other.close()


async def test_a_revocation_without_a_time_is_never_lost_to_an_older_one(
    backend: Backend,
) -> None:
    store = backend.store
    a = normalize("a@example.com")
    revoked = replace(consent("a@example.com", "news", granted=False), source="crm")
    first = (await add_consents(store, [timed(revoked, False)]))[0]
    assert first.added == 1
    # the person grants again on the web; the CRM's next export revokes again
    await store.record_consents(
        [replace(consent("a@example.com", "news"), source="web")], actor="t"
    )
    again = (await add_consents(store, [timed(replace(revoked, created=now()), False)]))[0]
    assert (again.added, again.present) == (1, 0)
    latest = (await store.lookup_many([a], ["global"], "news"))[a.sha256].consent
    assert latest is not None
    assert latest.granted is False
    # and that revocation, now the latest record, is on record for the next import
    third = (await add_consents(store, [timed(replace(revoked, created=now()), False)]))[0]
    assert (third.added, third.present) == (0, 1)


async def test_a_failing_statement_is_a_store_error_on_both_backends(backend: Backend) -> None:
    """One error mapping per backend: the send ledger's batched writes (SQLite's own
    thread), reads, streams and the hot path all fail as StoreError, never a driver's
    exception."""
    store, at = backend.store, now()
    for table in ("send", "soft_bounce", "consent"):
        backend.raw_sql(f"DROP TABLE {table}")
    with pytest.raises(StoreError, match="cannot write"):
        await store.record_sends([Send("<m@x>", "0" * 64, "news", "marketing", at)])
    with pytest.raises(StoreError, match="cannot read"):
        await store.soft_bounces("0" * 64, at - timedelta(days=1), at)
    with pytest.raises(StoreError, match="cannot read"):
        await store.sent_to("00")
    with pytest.raises(StoreError, match="cannot read"):
        [c async for c in store.iter_consents(None)]
    with pytest.raises(StoreError, match="cannot read"):
        await store.lookup_many([normalize("a@example.com")], ["global"], "news")
