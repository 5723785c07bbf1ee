"""`optgate store copy`: SQLite -> PostgreSQL -> SQLite through the real command, every
record alike on all three, digests printed and equal, the audit chain intact; refusals
change nothing; a destination that differs is rolled back."""

from __future__ import annotations

import asyncio
import os
import re
import sqlite3
import tempfile
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from suppression.address import identity, normalize
from suppression.copying import Digest
from suppression.model import PARTNER_OFFERS, Consent, ImportItem, Reason, Send, now
from suppression.opening import open_store
from suppression.partners import Partner, hash_credential
from suppression.sql.tables import TABLES
from tests.support.backends import postgres_database
from tests.support.keys import AUDIT_KEY
from tests.support.serving import OPTGATE

pytestmark = pytest.mark.pure

ANN = normalize("Ann@Example.com")
BOB = normalize("bob@example.org")
DIGEST = re.compile(
    r"^(\w+): ([\d,]+) rows sha256 (\w{64}) -> ([\d,]+) rows sha256 (\w{64}): (\S+)$"
)


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str

    def digests(self) -> dict[str, tuple[str, str, str]]:
        """table -> (rows, digest, match) from the printed lines."""
        found = {}
        for line in self.out.splitlines():
            if m := DIGEST.match(line):
                assert m.group(2) == m.group(4)
                found[m.group(1)] = (m.group(2), m.group(3), m.group(6))
        return found


async def store_copy(source: str, destination: str) -> Result:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPTGATE_")}
    key_file = Path(tempfile.mkdtemp()) / "audit.key"  # the installation's audit key
    key_file.write_text(AUDIT_KEY.hex())
    env["OPTGATE_STORE_AUDIT_KEY_FILE"] = str(key_file)
    process = await asyncio.create_subprocess_exec(
        OPTGATE,
        "store",
        "copy",
        source,
        destination,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return Result(process.returncode, out.decode(), err.decode())


async def fill(url: str) -> None:
    """Every kind of record: key forms, scopes, evidence, consents, the ledger, erasure."""
    store = await open_store(url, audit_key=AUDIT_KEY)
    try:
        ann = ImportItem(ANN.sha256, "sha256", ANN.normalized, Reason.UNSUBSCRIBED)
        await store.suppress(
            [ann], scope="global", source="one-click", actor="test", evidence='{"ip": "x"}'
        )
        md5 = ImportItem(BOB.md5, "md5", None, Reason.IMPORTED)
        await store.suppress([md5], scope="partner:acme", source="import", actor="test")
        domain = ImportItem(identity("@spam.example"), "domain", "@spam.example", Reason.MANUAL)
        await store.suppress([domain], scope="topic:news", source="cli", actor="test")
        await store.record_consents(
            [
                Consent(ANN.sha256, "news", True, "web", now(), "2", ANN.normalized, '{"ip":"y"}'),
                Consent(BOB.sha256, "news", True, "cli", now(), None, BOB.normalized),
                Consent(BOB.sha256, "news", False, "cli", now()),
            ],
            actor="test",
        )
        sent = Send("<m1@shop.example>", ANN.sha256, "news", "marketing", now())
        await store.record_sends([sent])
        await store.record_soft_bounce(
            ANN.sha256, "<dsn1@mx.example>", at=now(), actor="test", detail={"status": "4.2.2"}
        )
        # a partner offer with its fan-out (bytes content, leases, every copy state)
        await store.add_partner(
            Partner("acme", hash_credential("x"), False, now(), rate_per_hour=3), actor="test"
        )
        await store.record_consents(
            [Consent(ANN.sha256, PARTNER_OFFERS, True, "web", now(), None, ANN.normalized)],
            actor="test",
        )
        offer = await store.add_offer("acme", None, b"Subject: \xff\r\n\r\nx\r\n", actor="t")
        await store.add_offer("acme", "news", b"queued", actor="t")
        await store.plan_offers()
        claimed = await store.claim_copies("node", 10, timedelta(minutes=5))
        await store.mark_sent("node", offer, [c.sha256 for c in claimed], lambda moved: None)
        await store.erase(BOB, actor="test")
        await store.audit(actor="test", action="subject-access", subject=ANN.sha256)
    finally:
        await store.close()


async def snapshot(url: str) -> dict[str, Any]:
    """What the Store API shows of a store, comparable across backends."""
    store = await open_store(url, audit_key=AUDIT_KEY)
    try:
        return {
            "suppressions": sorted(
                [s async for s in store.iter_suppressions(None)], key=lambda s: (s.key, s.scope)
            ),
            "consents": [c async for c in store.iter_consents(None)],
            "ann": await store.subject(ANN),
            "bob": await store.subject(BOB),
            "compliance": [c async for c in store.compliance()],
            "soft_bounces": await store.soft_bounces(
                ANN.sha256, datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)
            ),
            "chain": await store.verify_chain(),
            "partners": await store.partners(),
            "offers": await store.offer_statuses(None),
            "offer_1": await store.offer(1),
        }
    finally:
        await store.close()


async def count(url: str, table: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval(f"SELECT count(*) FROM {table}"))
    finally:
        await conn.close()


@pytest.mark.postgres
@pytest.mark.sockets
async def test_sqlite_to_postgres_and_back_keeps_every_record(tmp_path: Path) -> None:
    source = f"sqlite:///{tmp_path / 'source.db'}"
    back = f"sqlite:///{tmp_path / 'back.db'}"
    await fill(source)
    before = await snapshot(source)
    assert before["chain"].events == 11
    assert [o.sent for o in before["offers"]] == [1, 0]
    assert before["soft_bounces"] == {"<dsn1@mx.example>"}
    assert len(before["suppressions"]) == 4  # BOB's erasure left a tombstone
    async with postgres_database() as pg:
        there = await store_copy(source, pg)
        assert there.code == 0, there.err
        assert set(there.digests()) == {t.name for t in TABLES}
        assert {match for _, _, match in there.digests().values()} == {"match"}
        assert f"audit log at the destination intact: 11 events, head {before['chain'].head}" in (
            there.out
        )
        assert await snapshot(pg) == before
        again = await store_copy(pg, back)
        assert again.code == 0, again.err
        assert again.digests() == there.digests()  # the same digest computed on each backend
        # the copied store goes on: new consent ids follow the copied ones
        store = await open_store(pg, audit_key=AUDIT_KEY)
        try:
            await store.record_consents(
                [Consent(ANN.sha256, "news", False, "web", now())], actor="test"
            )
            assert (await store.holder(ANN.sha256)).consented() == (PARTNER_OFFERS,)
            assert (await store.verify_chain()).events == 12
        finally:
            await store.close()
    assert await snapshot(back) == before


@pytest.mark.postgres
@pytest.mark.sockets
async def test_a_non_empty_destination_is_refused_and_left_alone(tmp_path: Path) -> None:
    source = f"sqlite:///{tmp_path / 'source.db'}"
    await fill(source)
    async with postgres_database() as pg:
        assert (await store_copy(source, pg)).code == 0
        events = await count(pg, "audit")
        refused = await store_copy(source, pg)
        assert refused.code == 2
        assert refused.err.startswith("optgate: destination postgresql://")
        assert refused.err.rstrip().endswith(
            "is not empty (table audit has rows): store copy only fills a new, empty store; "
            "nothing was changed"
        )
        assert refused.out == ""
        assert await count(pg, "audit") == events
    into_itself = await store_copy(source, source)
    assert into_itself.code == 2
    assert into_itself.err == "optgate: source and destination are the same store\n"


@pytest.mark.sockets
async def test_a_table_copy_does_not_know_stops_it_before_any_write(tmp_path: Path) -> None:
    source_db, destination_db = tmp_path / "source.db", tmp_path / "destination.db"
    await fill(f"sqlite:///{source_db}")
    with closing(sqlite3.connect(source_db)) as db:
        db.execute("CREATE TABLE mystery (id INTEGER PRIMARY KEY, note TEXT)")
    result = await store_copy(f"sqlite:///{source_db}", f"sqlite:///{destination_db}")
    assert result.code == 2
    assert "source has tables store copy does not know: mystery" in result.err
    assert not destination_db.exists()


@pytest.mark.postgres
@pytest.mark.sockets
async def test_a_destination_that_differs_is_rolled_back(tmp_path: Path) -> None:
    source = f"sqlite:///{tmp_path / 'source.db'}"
    await fill(source)
    async with postgres_database() as pg:
        store = await open_store(
            pg, audit_key=AUDIT_KEY
        )  # the schema, empty; then a trigger that alters rows
        await store.close()
        conn = await asyncpg.connect(pg)
        try:
            await conn.execute(
                "CREATE FUNCTION tamper() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN NEW.evidence := 'tampered'; RETURN NEW; END $$;"
                "CREATE TRIGGER tamper BEFORE INSERT ON suppression "
                "FOR EACH ROW EXECUTE FUNCTION tamper()"
            )
        finally:
            await conn.close()
        result = await store_copy(source, pg)
        assert result.code == 1
        assert result.digests()["suppression"][2] == "MISMATCH"
        assert result.digests()["consent"][2] == "match"
        assert "the destination differs from the source: it was rolled back" in result.out
        assert [await count(pg, t.name) for t in TABLES] == [0] * len(TABLES)


@pytest.mark.postgres
@pytest.mark.sockets
async def test_a_row_the_destination_cannot_hold_is_a_clear_error(tmp_path: Path) -> None:
    source_db = tmp_path / "source.db"
    await fill(f"sqlite:///{source_db}")
    with closing(sqlite3.connect(source_db)) as db, db:
        db.execute("UPDATE suppression SET evidence = ? WHERE kind = 'sha256'", ("a\x00b",))
    async with postgres_database() as pg:
        result = await store_copy(f"sqlite:///{source_db}", pg)
        assert result.code == 2
        assert result.err.startswith("optgate: cannot copy table suppression (after 4 rows): ")
        assert result.err.rstrip().endswith("was rolled back")
        assert "Traceback" not in result.err
        assert await count(pg, "suppression") == 0


@pytest.mark.postgres
@pytest.mark.sockets
async def test_tables_name_every_table_and_column_of_both_schemas(tmp_path: Path) -> None:
    """A table or column added to a migration needs its entry in TABLES, or copies lose it."""
    expected = {t.name: set(t.names) for t in TABLES}
    sqlite_url = f"sqlite:///{tmp_path / 'fresh.db'}"
    await (await open_store(sqlite_url, audit_key=AUDIT_KEY)).close()
    with closing(sqlite3.connect(tmp_path / "fresh.db")) as db:
        names = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        found = {n: {r[1] for r in db.execute(f'PRAGMA table_info("{n}")')} for n in names}
    assert found == expected
    async with postgres_database() as pg:
        await (await open_store(pg, audit_key=AUDIT_KEY)).close()
        conn = await asyncpg.connect(pg)
        try:
            rows = await conn.fetch(
                "SELECT table_name, column_name FROM information_schema.columns "
                "WHERE table_schema = current_schema() AND table_name != 'schema_version'"
            )
        finally:
            await conn.close()
    columns: dict[str, set[str]] = {}
    for table, column in rows:
        columns.setdefault(table, set()).add(column)
    assert columns == expected


def test_the_digest_is_one_form_for_both_backends_values() -> None:
    """Times (any zone) as UTC text, bytes as hex: equal values, equal digests."""
    utc = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    ahead = utc.astimezone(timezone(timedelta(hours=2)))
    one, two, other = Digest(), Digest(), Digest()
    one.add([("k", 1, True, utc, b"\x00\xff", None)])
    two.add([("k", 1, True, ahead, b"\x00\xff", None)])
    other.add([("k", 1, True, utc, b"\x00\xfe", None)])
    assert one.hexdigest() == two.hexdigest() != other.hexdigest()
    assert one.rows == 1
