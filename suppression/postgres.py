"""The shared store for several nodes: PostgreSQL through an asyncpg pool."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from suppression.address import Address
from suppression.audit import GENESIS, Rekeying, event_body, link
from suppression.errors import OptgateError, StoreError, StoreMissing
from suppression.held_rows import HELD_COLUMNS, rate_slot, stale_slot, to_held, within_limits
from suppression.model import (
    AuditEvent,
    BatchResult,
    Consent,
    Facts,
    HeldRequest,
    ImportItem,
    Ledger,
    OptOutCheck,
    Reason,
    Send,
    Suppression,
    now,
)
from suppression.offer_rows import (
    FINISH_SQL,
    OFFER_COLUMNS,
    OPTOUTS_SQL,
    PARTNER_COLUMNS,
    audience_sql,
    check_transition,
    offer_status,
    status_sql,
    to_offer,
    to_partner,
)
from suppression.partners import (
    TRANSITIONS,
    Claim,
    CopyState,
    Offer,
    OfferState,
    OfferStatus,
    Partner,
    UnknownPartner,
)
from suppression.rows import (
    CONSENT_COLUMNS,
    EVENT_COLUMNS,
    PAGE,
    SEND_COLUMNS,
    SUPPRESSION_COLUMNS,
    added_records,
    batch_result,
    consent_event,
    erasure_records,
    stored_keys,
    suppress_event,
    suppression_rows,
    to_consent,
    to_event,
    to_send,
    to_suppression,
    unique_items,
)
from suppression.sql.driver import Row
from suppression.sql.integration import (
    ERASE_OUTBOX,
    SEND_CAMPAIGN,
    Integration,
)
from suppression.sql.integration import TABLES as INTEGRATION_TABLES
from suppression.sql.ledger import SEND_STATE, UNSENT, UNSETTLED
from suppression.sql.schema import AddColumn
from suppression.statecheck import (
    ChainReport,
    Sum,
    consent_hash,
    legacy_detail,
    removed_detail,
    rows_detail,
    suppression_hash,
    verify,
)
from suppression.store import ConsentImport, Erasure, Holder, SubjectRecord, SuppressionImport

T = TypeVar("T")

# The same tables as the SQLite store (and the same `#`/`@` key prefixes), with
# timestamps as timestamptz. Each entry is one schema version.
MIGRATIONS: tuple[str | AddColumn, ...] = (
    """
    CREATE TABLE suppression (
        key TEXT COLLATE "C" NOT NULL,
        scope TEXT COLLATE "C" NOT NULL,
        kind TEXT NOT NULL,
        address TEXT,
        reason TEXT NOT NULL,
        source TEXT NOT NULL,
        evidence TEXT,
        created TIMESTAMPTZ NOT NULL,
        event BIGINT NOT NULL,
        PRIMARY KEY (key, scope)
    );
    CREATE TABLE consent (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        sha256 TEXT COLLATE "C" NOT NULL,
        purpose TEXT COLLATE "C" NOT NULL,
        granted BOOLEAN NOT NULL,
        source TEXT NOT NULL,
        policy_version TEXT,
        address TEXT,
        evidence TEXT,
        created TIMESTAMPTZ NOT NULL,
        event BIGINT NOT NULL
    );
    CREATE INDEX consent_by_subject ON consent (sha256, purpose, id);
    CREATE TABLE audit (
        seq BIGINT PRIMARY KEY,
        at TIMESTAMPTZ NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        subject TEXT COLLATE "C",
        body TEXT NOT NULL,
        prev TEXT NOT NULL,
        digest TEXT NOT NULL
    );
    CREATE INDEX audit_by_subject ON audit (subject);
    """,
    """
    CREATE TABLE send (
        message TEXT COLLATE "C" NOT NULL,
        sha256 TEXT COLLATE "C" NOT NULL,
        topic TEXT NOT NULL,
        class TEXT NOT NULL,
        at TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (message, sha256)
    );
    CREATE INDEX send_by_subject ON send (sha256, at);
    """,
    # inbound: one row per soft bounce, keyed by the reporting message's digest
    """
    CREATE TABLE soft_bounce (
        sha256 TEXT COLLATE "C" NOT NULL,
        message TEXT COLLATE "C" NOT NULL,
        at TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (sha256, message)
    );
    """,
    """
    CREATE TABLE partner (
        name TEXT COLLATE "C" PRIMARY KEY,
        credential TEXT NOT NULL,
        disabled BOOLEAN NOT NULL DEFAULT false,
        rate_per_hour INTEGER,
        max_size INTEGER,
        created TIMESTAMPTZ NOT NULL
    );
    CREATE TABLE offer (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        partner TEXT COLLATE "C" NOT NULL REFERENCES partner (name),
        topic TEXT,
        content BYTEA NOT NULL,
        state TEXT NOT NULL,
        created TIMESTAMPTZ NOT NULL
    );
    CREATE INDEX offer_by_partner ON offer (partner, created);
    CREATE TABLE offer_copy (
        offer BIGINT NOT NULL REFERENCES offer (id),
        sha256 TEXT COLLATE "C" NOT NULL,
        state TEXT NOT NULL,
        owner TEXT,
        until TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (offer, sha256)
    );
    CREATE INDEX offer_copy_open ON offer_copy (state, until);
    """,
    # the audit chain is keyed (HMAC) and records row sums from here on: _rekey
    "",
    # opt-outs by mail: per-source counters (one fixed window each) and the requests
    # held until the address confirms them by a mailed link (IF NOT EXISTS: a store set
    # back to an older schema version runs this again)
    """
    CREATE TABLE IF NOT EXISTS rate_window (
        key TEXT COLLATE "C" NOT NULL,
        slot BIGINT NOT NULL,
        count INTEGER NOT NULL,
        PRIMARY KEY (key, slot)
    );
    CREATE INDEX IF NOT EXISTS rate_window_by_slot ON rate_window (slot);
    CREATE TABLE IF NOT EXISTS held_request (
        secret TEXT COLLATE "C" PRIMARY KEY,
        sha256 TEXT COLLATE "C" NOT NULL,
        action TEXT NOT NULL,
        scope TEXT NOT NULL,
        created TIMESTAMPTZ NOT NULL,
        detail TEXT NOT NULL,
        mailed TIMESTAMPTZ,
        done TIMESTAMPTZ
    );
    CREATE INDEX IF NOT EXISTS held_request_by_subject ON held_request (sha256);
    """,
    # ESP webhooks: each signed notification's replay key, accepted once (gateway/esp)
    """
    CREATE TABLE IF NOT EXISTS esp_token (
        vendor TEXT COLLATE "C" NOT NULL,
        token TEXT COLLATE "C" NOT NULL,
        at TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (vendor, token)
    );
    CREATE INDEX IF NOT EXISTS esp_token_by_time ON esp_token (vendor, at);
    """,
    # integration (issue 17): API keys, webhook endpoints and their outbox
    "\n".join(table.ddl("postgresql") for table in INTEGRATION_TABLES),
    SEND_CAMPAIGN,
    SEND_STATE,
)
KEYED_CHAIN = 5  # the schema version whose migration is _rekey

# advisory lock keys (any constants, unique to optgate): one serialises schema
# migrations of nodes starting at once, one every append to the audit chain
MIGRATE_LOCK = 0x6F707467_00000001
AUDIT_LOCK = 0x6F707467_00000002

# batches at least this big go through COPY into a temporary table
COPY_THRESHOLD = 1000
POOL_SIZE = 10
CONNECT_TIMEOUT = 10.0

# Suppressions (in the given scopes), the latest consent per recipient for the
# purpose, and the ledger check, in one statement: one round trip per message.
_LOOKUP = f"""
SELECT 's', {SUPPRESSION_COLUMNS}, NULL::boolean
FROM suppression WHERE key = ANY($1::text[]) AND scope = ANY($2::text[])
UNION ALL
SELECT 'c', sha256, purpose, policy_version, NULL, source, created, address, evidence, event,
       granted
FROM (
    SELECT DISTINCT ON (sha256) * FROM consent
    WHERE sha256 = ANY($3::text[]) AND purpose = $4::text
    ORDER BY sha256, created DESC, id DESC
) latest
UNION ALL
SELECT 'd', sha256, state, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
FROM send WHERE message = $5::text AND at >= $6::timestamptz AND sha256 = ANY($3::text[])
"""


def _utc(value: datetime) -> datetime:
    """Aware UTC (a naive time is local time, as in the SQLite store)."""
    return value.astimezone(UTC)


def _count(status: str) -> int:
    """Rows a command changed, from its status ("INSERT 0 5", "DELETE 2")."""
    return int(status.rsplit(" ", 1)[-1])


def safe_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{parts.username}@{host}" if parts.username else host
        if parts.port is not None:
            netloc += f":{parts.port}"
        return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        return "postgresql://…"


_FAILURES = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


async def require_schema(url: str) -> None:
    """StoreMissing unless the database exists and holds optgate's schema."""
    try:
        conn = await asyncpg.connect(url, timeout=CONNECT_TIMEOUT)
    except asyncpg.InvalidCatalogNameError:
        raise StoreMissing(safe_url(url), " (no such database: create it first)") from None
    except (*_FAILURES, ValueError) as exc:
        shown = safe_url(url)
        raise StoreError(f"cannot open PostgreSQL store {shown}: {_one_line(exc)}") from None
    try:
        if await conn.fetchval("SELECT to_regclass('schema_version')") is None:
            raise StoreMissing(safe_url(url), " (the database holds no optgate schema)")
    finally:
        await conn.close()


class _Sql:
    """The shared statements' driver on one pooled connection (suppression/sql/)."""

    lock = "FOR UPDATE SKIP LOCKED"

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def fetch(self, statement: str, *args: object) -> list[Row]:
        return list(await self._conn.fetch(statement, *args))

    async def stream(self, statement: str, *args: object) -> AsyncIterator[Row]:
        # (inside the caller's transaction; other statements may run between pages)
        cursor = await self._conn.cursor(statement, *args)
        while rows := await cursor.fetch(PAGE):
            for row in rows:
                yield row

    async def execute(self, statement: str, *args: object) -> int:
        return _count(await self._conn.execute(statement, *args))

    async def executemany(self, statement: str, rows: Iterable[Sequence[object]]) -> None:
        await self._conn.executemany(statement, rows)

    def time(self, value: Any) -> datetime:
        return value  # type: ignore[no-any-return]


class _Transaction(_Sql):
    """A write transaction holding the audit chain lock."""

    def __init__(self, store: PostgresStore, conn: Any) -> None:
        super().__init__(conn)
        self._store = store

    async def audit(
        self,
        actor: str,
        action: str,
        subject: str | None,
        detail: Mapping[str, object],
        changed: Sequence[Suppression | Consent] = (),
    ) -> int:
        return await self._store._audit(self._conn, actor, action, subject, detail, changed)


class PostgresStore(Integration):
    """Store on one PostgreSQL database, shared by any number of nodes."""

    def __init__(self, pool: asyncpg.Pool, url: str, audit_key: bytes) -> None:
        self._pool = pool
        self._url = safe_url(url)
        self._key = audit_key

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        try:
            yield
        except _FAILURES as exc:
            raise StoreError(
                f"cannot {doing} PostgreSQL store {self._url}: {_one_line(exc)}"
            ) from None

    @classmethod
    async def open(
        cls, url: str, audit_key: bytes, *, pool_size: int = POOL_SIZE, create: bool = True
    ) -> PostgresStore:
        """Connect a pool and run pending migrations.

        Without ``create`` a database without optgate's schema is ``StoreMissing``.
        """
        try:
            pool = await asyncpg.create_pool(
                url,
                min_size=1,
                max_size=pool_size,
                timeout=CONNECT_TIMEOUT,
                server_settings={"timezone": "UTC", "application_name": "optgate"},
            )
        except asyncpg.InvalidCatalogNameError:
            raise StoreMissing(safe_url(url), " (no such database: create it first)") from None
        except (*_FAILURES, ValueError) as exc:
            raise StoreError(
                f"cannot open PostgreSQL store {safe_url(url)}: {_one_line(exc)}"
            ) from None
        store = cls(pool, url, audit_key)
        try:
            with store._errors("open"):
                await store._migrate(create)
        except BaseException:
            await pool.close()
            raise
        return store

    async def _migrate(self, create: bool) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            # nodes starting at once migrate one after another
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATE_LOCK)
            # (a role that may only read can open a migrated store)
            if await conn.fetchval("SELECT to_regclass('schema_version')") is None:
                if not create:
                    raise StoreMissing(self._url, " (the database holds no optgate schema)")
                await conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
            version = await conn.fetchval("SELECT max(version) FROM schema_version") or 0
            if version > len(MIGRATIONS):
                raise StoreError(
                    f"store {self._url} has schema {version}, newer than this optgate "
                    f"({len(MIGRATIONS)}): upgrade optgate"
                )
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                if number == KEYED_CHAIN:
                    await conn.execute("SELECT pg_advisory_xact_lock($1)", AUDIT_LOCK)
                    await self._rekey(conn)
                else:
                    await conn.execute(
                        script.ddl("postgresql") if isinstance(script, AddColumn) else script
                    )
                await conn.execute("DELETE FROM schema_version")
                await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", number)

    async def _rekey(self, conn: Any) -> None:
        """Chain the events of the unkeyed era with the key, and vouch for their rows as a
        whole (inside the migration's transaction)."""
        rekeying, last = Rekeying(self._key), 0
        while rows := await conn.fetch(
            f"SELECT {EVENT_COLUMNS} FROM audit WHERE seq > $1 ORDER BY seq LIMIT {PAGE}", last
        ):
            events = [to_event(row) for row in rows]
            try:
                links = [(*rekeying.step(e), e.seq) for e in events]
            except ValueError as exc:
                raise StoreError(f"cannot upgrade PostgreSQL store {self._url}: {exc}") from None
            await conn.executemany("UPDATE audit SET prev = $1, digest = $2 WHERE seq = $3", links)
            last = events[-1].seq
        if last:
            suppressions, consents = Sum(), Sum()
            async for row in conn.cursor(f"SELECT {SUPPRESSION_COLUMNS} FROM suppression"):
                suppressions.add(suppression_hash(to_suppression(row)))
            async for row in conn.cursor(f"SELECT {CONSENT_COLUMNS} FROM consent"):
                consents.add(consent_hash(to_consent(row)))
            detail = legacy_detail(last, rekeying.old.head, suppressions, consents)
            await self._audit(conn, "optgate", "audit-rekey", None, detail)

    async def close(self) -> None:
        """Close every connection of the pool."""
        await self._pool.close()

    async def _write(self, work: Any) -> Any:
        """Run ``work(conn)`` in one transaction holding the audit chain lock.

        The lock is taken before the chain's head is read, so two writers (on
        this node or another) never link two events to the same predecessor.
        """
        with self._errors("write to"):
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", AUDIT_LOCK)
                return await work(conn)

    async def _sql_write(self, work: Callable[[_Transaction], Awaitable[T]]) -> T:
        async def run(conn: Any) -> T:
            return await work(_Transaction(self, conn))

        result: T = await self._write(run)
        return result

    async def _sql_read(self, work: Callable[[_Sql], Awaitable[T]]) -> T:
        with self._errors("read"):
            async with self._pool.acquire() as conn:
                return await work(_Sql(conn))

    @staticmethod
    async def _head(conn: Any) -> tuple[int, str]:
        last = await conn.fetchrow("SELECT seq, digest FROM audit ORDER BY seq DESC LIMIT 1")
        return (last[0] + 1, last[1]) if last else (1, GENESIS)

    async def _audit(
        self,
        conn: Any,
        actor: str,
        action: str,
        subject: str | None,
        detail: Mapping[str, object],
        changed: Sequence[Suppression | Consent] = (),
    ) -> int:
        """Append one chained audit event (inside the caller's locked transaction) and the
        webhook events of the rows it added or removed (``changed``)."""
        seq, prev = await self._head(conn)
        at = now()
        body = event_body(seq, at, actor, action, subject, detail)
        digest = link(self._key, prev, body)
        await conn.execute(
            f"INSERT INTO audit ({EVENT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            seq,
            at,
            actor,
            action,
            subject,
            body,
            prev,
            digest,
        )
        await self._append_events(
            _Sql(conn),
            seq=seq,
            ref=digest,
            at=at,
            actor=actor,
            action=action,
            subject=subject,
            detail=detail,
            changed=changed,
        )
        return seq

    async def suppress(
        self,
        items: Sequence[ImportItem],
        *,
        scope: str,
        source: str,
        actor: str,
        evidence: str | None = None,
        note: Mapping[str, object] | None = None,
    ) -> BatchResult:
        """Add suppressions in one transaction with one audit event (none if nothing is new)."""
        unique = unique_items(items)

        async def work(conn: Any) -> BatchResult:
            seq, _ = await self._head(conn)
            at = now()
            rows = suppression_rows(
                unique,
                scope=scope,
                source=source,
                evidence=evidence,
                event=seq,
                created=lambda when: _utc(when) if when else at,
            )
            added = await self._insert_suppressions(conn, rows)
            if added:
                keys = None
                if added != len(unique):
                    found = await conn.fetch(
                        "SELECT key FROM suppression "
                        "WHERE scope = $1 AND event = $2 AND key = ANY($3::text[])",
                        scope,
                        seq,
                        list(unique),
                    )
                    keys = {row[0] for row in found}
                subject, detail = suppress_event(unique, note, scope, source, added)
                records = list(
                    added_records(unique, scope=scope, source=source, event=seq, at=at, added=keys)
                )
                detail |= rows_detail(records)
                await self._audit(conn, actor, "suppress", subject, detail, records)
            return batch_result(len(items), len(unique), added, seq)

        result: BatchResult = await self._write(work)
        return result

    def suppression_import(
        self, *, actor: str, note: Mapping[str, object]
    ) -> contextlib.AbstractAsyncContextManager[SuppressionImport]:
        """A suppression import run (suppression/postgres_imports.py)."""
        from suppression import postgres_imports  # it builds on this module

        return postgres_imports.suppression_run(self, actor, note)

    def consent_import(
        self, *, actor: str, note: Mapping[str, object]
    ) -> contextlib.AbstractAsyncContextManager[ConsentImport]:
        """A consent import run (suppression/postgres_imports.py)."""
        from suppression import postgres_imports

        return postgres_imports.consent_run(self, actor, note)

    @staticmethod
    async def _insert_suppressions(conn: Any, rows: list[tuple[Any, ...]]) -> int:
        """Insert rows that are not there yet; return how many were new."""
        columns = "key, scope, kind, address, reason, source, evidence, created, event"
        if not rows:
            return 0
        if len(rows) < COPY_THRESHOLD:
            status = await conn.execute(
                f"INSERT INTO suppression ({columns}) "
                "SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], "
                "$5::text[], $6::text[], $7::text[], $8::timestamptz[], $9::bigint[]) "
                "ON CONFLICT DO NOTHING",
                *(list(column) for column in zip(*rows, strict=True)),
            )
            return _count(status)
        await conn.execute(
            "CREATE TEMPORARY TABLE IF NOT EXISTS suppression_in "
            "(LIKE suppression INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        )
        await conn.execute("TRUNCATE suppression_in")
        await conn.copy_records_to_table(
            "suppression_in", records=rows, columns=columns.split(", ")
        )
        status = await conn.execute(
            f"INSERT INTO suppression ({columns}) SELECT {columns} FROM suppression_in "
            "ON CONFLICT DO NOTHING"
        )
        return _count(status)

    async def unsuppress(self, keys: Sequence[str], *, scope: str, actor: str) -> int:
        """Delete suppressions of a scope; audited per key."""

        async def work(conn: Any) -> int:
            removed = 0
            for key in dict.fromkeys(keys):
                forms = [key, "@" + key] if len(key) == 64 else ["#" + key]
                gone = [
                    to_suppression(row)
                    for row in await conn.fetch(
                        "DELETE FROM suppression WHERE key = ANY($1::text[]) AND scope = $2 "
                        f"RETURNING {SUPPRESSION_COLUMNS}",
                        forms,
                        scope,
                    )
                ]
                if gone:
                    removed += 1
                    detail = {"scope": scope, **removed_detail(gone)}
                    await self._audit(conn, actor, "unsuppress", key, detail, gone)
            return removed

        result: int = await self._write(work)
        return result

    async def record_consents(self, consents: Sequence[Consent], *, actor: str) -> int:
        """Append consent records with one audit event."""
        if not consents:
            return 0

        async def work(conn: Any) -> int:
            await self._append_consents(conn, consents, actor)
            return len(consents)

        result: int = await self._write(work)
        return result

    async def _append_consents(self, conn: Any, consents: Sequence[Consent], actor: str) -> None:
        """Insert consent records and their audit event (inside the caller's transaction)."""
        event, _ = await self._head(conn)
        subject, detail = consent_event(consents)
        records = [replace(c, event=event) for c in consents]
        detail |= rows_detail(consents=records)
        await self._audit(conn, actor, "consent", subject, detail, records)
        await self._insert_consents(conn, records)

    @staticmethod
    async def _insert_consents(conn: Any, consents: Sequence[Consent]) -> None:
        """Insert consent records as they are, their event included, in order."""
        rows = [
            (
                c.sha256,
                c.purpose,
                c.granted,
                c.source,
                _utc(c.created),
                c.policy_version,
                c.address,
                c.evidence,
                c.event,
            )
            for c in consents
        ]
        # WITH ORDINALITY: ids follow the order of the input
        await conn.execute(
            f"INSERT INTO consent ({CONSENT_COLUMNS}) "
            f"SELECT {CONSENT_COLUMNS} FROM unnest($1::text[], $2::text[], "
            "$3::boolean[], $4::text[], $5::timestamptz[], $6::text[], $7::text[], "
            "$8::text[], $9::bigint[]) WITH ORDINALITY "
            f"AS t({CONSENT_COLUMNS}, n) ORDER BY n",
            *(list(column) for column in zip(*rows, strict=True)),
        )

    async def lookup_many(
        self,
        recipients: Sequence[Address],
        scopes: Sequence[str],
        purpose: str | None,
        ledger: Ledger | None = None,
    ) -> dict[str, Facts]:
        """Suppressions in the given scopes, the latest consent for purpose, earlier delivery.

        One statement, so one round trip per message.
        """
        owners: dict[str, list[str]] = {}
        for address in recipients:
            for key in stored_keys(address):
                owners.setdefault(key, []).append(address.sha256)
        found: dict[str, list[Suppression]] = {a.sha256: [] for a in recipients}
        if not found:
            return {}
        with self._errors("read"):
            rows = await self._pool.fetch(
                _LOOKUP,
                list(owners),
                list(scopes),
                list(found),
                purpose,
                ledger.message if ledger else None,
                _utc(ledger.since) if ledger else None,
            )
        consents: dict[str, Consent] = {}
        done: dict[str, str | None] = {}
        for row in rows:
            tag = row[0]
            if tag == "s":
                record = to_suppression(row[1:10])
                for owner in owners[row[1]]:
                    found[owner].append(record)
            elif tag == "c":
                # tag, sha256, purpose, policy_version, -, source, created, address, evidence,
                # event, granted
                consent = to_consent(tuple(row[i] for i in (1, 2, 10, 5, 6, 3, 7, 8, 9)))
                consents[consent.sha256] = consent
            else:
                done[row[1]] = row[2]
        return {
            key: Facts(
                tuple(found[key]),
                consents.get(key),
                key in done and done[key] not in UNSETTLED,
                done.get(key) in UNSETTLED,
            )
            for key in found
        }

    async def audit(
        self, *, actor: str, action: str, subject: str | None, detail: Mapping[str, object] = {}
    ) -> int:
        """Append a stand-alone audit event."""

        async def work(conn: Any) -> int:
            return await self._audit(conn, actor, action, subject, detail)

        result: int = await self._write(work)
        return result

    async def record_sends(self, sends: Sequence[Send]) -> None:
        """Remember delivered copies (the send ledger) in one statement."""
        if not sends:
            return
        # one row per (message, recipient), the last one wins (as INSERT OR REPLACE)
        latest = {(s.message, s.sha256): s for s in sends}
        rows = [
            (s.message, s.sha256, s.topic, s.kind, _utc(s.at), s.campaign, s.state)
            for s in latest.values()
            if s.state != UNSENT
        ]
        gone = [s for s in latest.values() if s.state == UNSENT]
        with self._errors("write to"):
            async with self._pool.acquire() as conn, conn.transaction():
                if rows:
                    await conn.execute(
                        "INSERT INTO send (message, sha256, topic, class, at, campaign, state) "
                        "SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], "
                        "$5::timestamptz[], $6::text[], $7::text[]) "
                        "ON CONFLICT (message, sha256) DO UPDATE SET at = excluded.at, "
                        "campaign = excluded.campaign, state = excluded.state",
                        *(list(column) for column in zip(*rows, strict=True)),
                    )
                if gone:
                    await conn.execute(
                        "DELETE FROM send WHERE (message, sha256) IN "
                        "(SELECT * FROM unnest($1::text[], $2::text[]))",
                        [s.message for s in gone],
                        [s.sha256 for s in gone],
                    )

    async def _stream(self, sql: str, *args: Any) -> AsyncGenerator[Any, None]:
        """Rows of a query through a server-side cursor, a page at a time."""
        with self._errors("read"):
            async with (
                self._pool.acquire() as conn,
                conn.transaction(isolation="repeatable_read", readonly=True),
            ):
                async for row in conn.cursor(sql, *args, prefetch=PAGE):
                    yield row

    async def compliance(self) -> AsyncIterator[OptOutCheck]:
        """Opt-outs (address keys) joined with the non-transactional sends after them."""
        async for key, scope, reason, source, created, count, last in self._stream(
            "SELECT s.key, s.scope, s.reason, s.source, s.created, count(d.sha256), max(d.at) "
            "FROM suppression s LEFT JOIN send d ON d.sha256 = s.key AND d.at > s.created "
            "AND d.class != 'transactional' "
            "AND (s.scope = 'global' OR s.scope = 'topic:' || d.topic) "
            "WHERE s.kind = 'sha256' GROUP BY s.key, s.scope ORDER BY s.created"
        ):
            yield OptOutCheck(key, scope, Reason(reason), source, created, count, last)

    async def holder(self, sha256: str) -> Holder:
        """Suppressions and latest consent per purpose of one identity hash."""
        with self._errors("read"):
            async with self._pool.acquire() as conn:
                suppressions = [
                    to_suppression(row)
                    for row in await conn.fetch(
                        f"SELECT {SUPPRESSION_COLUMNS} FROM suppression WHERE key = $1 "
                        "ORDER BY scope",
                        sha256,
                    )
                ]
                records = [
                    to_consent(row)
                    for row in await conn.fetch(
                        f"SELECT {CONSENT_COLUMNS} FROM consent WHERE sha256 = $1 "
                        "ORDER BY created, id",
                        sha256,
                    )
                ]
        return Holder.of(suppressions, records)

    async def subject(self, address: Address) -> SubjectRecord:
        """Every suppression, consent, send and audit event about an address."""
        with self._errors("read"):
            async with self._pool.acquire() as conn:
                suppressions = [
                    to_suppression(row)
                    for row in await conn.fetch(
                        f"SELECT {SUPPRESSION_COLUMNS} FROM suppression "
                        "WHERE key = ANY($1::text[]) ORDER BY created",
                        list(stored_keys(address)),
                    )
                ]
                consents = [
                    to_consent(row)
                    for row in await conn.fetch(
                        f"SELECT {CONSENT_COLUMNS} FROM consent WHERE sha256 = $1 ORDER BY id",
                        address.sha256,
                    )
                ]
                sends = [
                    to_send(row)
                    for row in await conn.fetch(
                        f"SELECT {SEND_COLUMNS} FROM send WHERE sha256 = $1 ORDER BY at",
                        address.sha256,
                    )
                ]
                seqs = sorted(
                    {s.event for s in suppressions if s.event is not None}
                    | {c.event for c in consents if c.event is not None}
                )
                events = [
                    to_event(row)
                    for row in await conn.fetch(
                        f"SELECT {EVENT_COLUMNS} FROM audit "
                        "WHERE subject = ANY($1::text[]) OR seq = ANY($2::bigint[]) ORDER BY seq",
                        [address.sha256, address.md5, address.domain_key],
                        seqs,
                    )
                ]
        return SubjectRecord(tuple(suppressions), tuple(consents), tuple(events), tuple(sends))

    async def erase(self, address: Address, *, actor: str) -> Erasure:
        """Delete plaintext and evidence, revoke every consent, leave a tombstone.

        The old row versions stay in the table files until VACUUM reclaims them
        (docs/ARCHITECTURE.md, Storage); no statement optgate runs can read them.
        """

        async def work(conn: Any) -> Erasure:
            seq, _ = await self._head(conn)
            cleared = _count(
                await conn.execute(
                    "UPDATE suppression SET address = NULL, evidence = NULL "
                    "WHERE key = ANY($1::text[]) "
                    "AND (address IS NOT NULL OR evidence IS NOT NULL)",
                    [address.sha256, "#" + address.md5],
                )
            )
            cleared += _count(
                await conn.execute(
                    "UPDATE consent SET address = NULL, evidence = NULL "
                    "WHERE sha256 = $1 AND (address IS NOT NULL OR evidence IS NOT NULL)",
                    address.sha256,
                )
            )
            history = [
                to_consent(row)
                for row in await conn.fetch(
                    f"SELECT {CONSENT_COLUMNS} FROM consent WHERE sha256 = $1 ORDER BY created, id",
                    address.sha256,
                )
            ]
            revocations, tombstone = erasure_records(address.sha256, history, event=seq, at=now())
            replaced = [
                to_suppression(row)
                for row in await conn.fetch(
                    "DELETE FROM suppression WHERE key = $1 AND scope = 'global' "
                    f"RETURNING {SUPPRESSION_COLUMNS}",
                    address.sha256,
                )
            ]
            await conn.execute(
                "INSERT INTO suppression "
                "(key, scope, kind, address, reason, source, evidence, created, event) "
                "VALUES ($1, 'global', 'sha256', NULL, $2, $3, NULL, $4, $5)",
                address.sha256,
                Reason.ERASED.value,
                tombstone.source,
                tombstone.created,
                seq,
            )
            if revocations:
                await self._insert_consents(conn, revocations)
            await conn.execute(ERASE_OUTBOX, address.sha256, address.md5)
            detail = {
                "cleared": cleared,
                "revoked": len(revocations),
                **rows_detail([tombstone], revocations),
                **removed_detail(replaced),
            }
            await self._audit(conn, actor, "erase", address.sha256, detail)
            return Erasure(cleared, len(revocations))

        result: Erasure = await self._write(work)
        return result

    async def iter_suppressions(self, scope: str | None) -> AsyncIterator[Suppression]:
        """Stream suppressions in key order through a server-side cursor."""
        if scope:
            rows = self._stream(
                f"SELECT {SUPPRESSION_COLUMNS} FROM suppression WHERE scope = $1", scope
            )
        else:
            rows = self._stream(f"SELECT {SUPPRESSION_COLUMNS} FROM suppression")
        async for row in rows:
            yield to_suppression(row)

    async def iter_consents(self, purpose: str | None) -> AsyncIterator[Consent]:
        """Stream consent records in the order they were made."""
        if purpose:
            rows = self._stream(
                f"SELECT {CONSENT_COLUMNS} FROM consent WHERE purpose = $1 ORDER BY id", purpose
            )
        else:
            rows = self._stream(f"SELECT {CONSENT_COLUMNS} FROM consent ORDER BY id")
        async for row in rows:
            yield to_consent(row)

    async def iter_events(self) -> AsyncGenerator[AuditEvent, None]:
        """Stream the audit log in sequence order through a server-side cursor."""
        async for row in self._stream(f"SELECT {EVENT_COLUMNS} FROM audit ORDER BY seq"):
            yield to_event(row)

    async def verify_chain(self, expect: Sequence[tuple[int, str]] = ()) -> ChainReport:
        """Walk the audit log and rebuild the state it vouches for (statecheck.verify)."""
        return await verify(self, self._key, expect)

    # --- inbound: short tokens resolve through the ledger; soft bounces are counted ---

    async def sent_to(self, prefix: str) -> list[tuple[str, str]]:
        """(recipient hash, topic) pairs of the send ledger whose hash starts with ``prefix``."""
        with self._errors("read"):
            # hex sorts below "g" (COLLATE "C"): the prefix's range in the ledger's index
            rows = await self._pool.fetch(
                "SELECT DISTINCT sha256, topic FROM send WHERE sha256 >= $1 AND sha256 < $2 "
                "ORDER BY sha256, topic",
                prefix,
                prefix + "g",
            )
        return [(row[0], row[1]) for row in rows]

    async def record_soft_bounce(
        self,
        sha256: str,
        message: str,
        *,
        at: datetime,
        actor: str,
        detail: Mapping[str, object],
    ) -> bool:
        """Count one soft bounce per (recipient, reporting message), audited; False if known."""

        async def work(conn: Any) -> bool:
            status = await conn.execute(
                "INSERT INTO soft_bounce (sha256, message, at) VALUES ($1, $2, $3) "
                "ON CONFLICT DO NOTHING",
                sha256,
                message,
                _utc(at),
            )
            if _count(status):
                await self._audit(conn, actor, "soft-bounce", sha256, detail)
            return bool(_count(status))

        result: bool = await self._write(work)
        return result

    async def soft_bounces(self, sha256: str, since: datetime, until: datetime) -> frozenset[str]:
        """The reporting messages of a recipient's soft bounces from ``since`` to ``until``."""
        with self._errors("read"):
            rows = await self._pool.fetch(
                "SELECT message FROM soft_bounce WHERE sha256 = $1 AND at >= $2 AND at <= $3",
                sha256,
                _utc(since),
                _utc(until),
            )
        return frozenset(row[0] for row in rows)

    # --- ESP webhooks: the replay keys of signed notifications, each accepted once ---------

    async def claim_esp_token(
        self, vendor: str, token: str, *, at: datetime, forget_before: datetime
    ) -> bool:
        """Record a notification's replay key; False if it is on record (a replay). Keys
        recorded before ``forget_before`` are forgotten first: a replay that late is stale."""
        with self._errors("write to"):
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute(
                    "DELETE FROM esp_token WHERE vendor = $1 AND at < $2",
                    vendor,
                    _utc(forget_before),
                )
                # a concurrent claim of the same key waits for this one, then adds nothing
                status = await conn.execute(
                    "INSERT INTO esp_token (vendor, token, at) VALUES ($1, $2, $3) "
                    "ON CONFLICT DO NOTHING",
                    vendor,
                    token,
                    _utc(at),
                )
        return bool(_count(status))

    async def release_esp_token(self, vendor: str, token: str) -> None:
        """Forget a key whose notification was not applied, so that the vendor's retry is."""
        with self._errors("write to"):
            await self._pool.execute(
                "DELETE FROM esp_token WHERE vendor = $1 AND token = $2", vendor, token
            )

    # --- partners, offers and their fan-out (suppression/partners.py) ---------------------

    async def add_partner(self, partner: Partner, *, actor: str) -> None:
        """Register a partner (its credential already hashed); an existing name is an error."""

        async def work(conn: Any) -> None:
            status = await conn.execute(
                f"INSERT INTO partner ({PARTNER_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6) "
                "ON CONFLICT DO NOTHING",
                partner.name,
                partner.credential,
                partner.disabled,
                partner.rate_per_hour,
                partner.max_size,
                _utc(partner.created),
            )
            if not _count(status):
                raise OptgateError(f"partner {partner.name!r} exists already")
            await self._audit(conn, actor, "partner-add", None, {"partner": partner.name})

        await self._write(work)

    async def partners(self) -> list[Partner]:
        """Every partner, by name."""
        with self._errors("read"):
            rows = await self._pool.fetch(f"SELECT {PARTNER_COLUMNS} FROM partner ORDER BY name")
        return [to_partner(row) for row in rows]

    async def partner(self, name: str) -> Partner | None:
        """One partner, or None."""
        with self._errors("read"):
            row = await self._pool.fetchrow(
                f"SELECT {PARTNER_COLUMNS} FROM partner WHERE name = $1", name
            )
        return to_partner(row) if row else None

    async def disable_partner(self, name: str, *, actor: str) -> bool:
        """Refuse the partner's submissions from now on; False if it was disabled already."""

        async def work(conn: Any) -> bool:
            status = await conn.execute(
                "UPDATE partner SET disabled = true WHERE name = $1 AND NOT disabled", name
            )
            if _count(status):
                await self._audit(conn, actor, "partner-disable", None, {"partner": name})
            return bool(_count(status))

        if await self.partner(name) is None:
            raise UnknownPartner(f"no partner named {name!r}")
        result: bool = await self._write(work)
        return result

    async def add_offer(
        self, partner: str, topic: str | None, content: bytes, *, actor: str
    ) -> int:
        """Store an offer durably (queued); its id. Committed when this returns."""

        async def work(conn: Any) -> int:
            offer = int(
                await conn.fetchval(
                    "INSERT INTO offer (partner, topic, content, state, created) "
                    "VALUES ($1, $2, $3, $4, $5) RETURNING id",
                    partner,
                    topic,
                    content,
                    OfferState.QUEUED.value,
                    now(),
                )
            )
            detail = {"partner": partner, "offer": offer, "topic": topic}
            await self._audit(conn, actor, "offer", None, detail)
            return offer

        result: int = await self._write(work)
        return result

    async def offers_since(self, partner: str, since: datetime) -> int:
        """How many offers a partner submitted since a time (its rate limit)."""
        with self._errors("read"):
            count = await self._pool.fetchval(
                "SELECT count(*) FROM offer WHERE partner = $1 AND created >= $2",
                partner,
                _utc(since),
            )
        return int(count)

    async def offer(self, offer_id: int) -> Offer | None:
        """One offer with its content, or None."""
        with self._errors("read"):
            row = await self._pool.fetchrow(
                f"SELECT {OFFER_COLUMNS} FROM offer WHERE id = $1", offer_id
            )
        return to_offer(row) if row else None

    async def offer_statuses(self, partner: str | None) -> list[OfferStatus]:
        """Offers (of one partner, or all) with the counts of their fan-out, oldest first."""
        with self._errors("read"):
            if partner:
                rows = await self._pool.fetch(status_sql("WHERE o.partner = $1"), partner)
            else:
                rows = await self._pool.fetch(status_sql(""))
        return [offer_status(row) for row in rows]

    async def change_offer(self, offer_id: int, action: str, *, actor: str) -> OfferState:
        """Pause, resume or cancel an offer; its new state (an error if the move is not allowed)."""
        _, target = TRANSITIONS[action]

        async def work(conn: Any) -> OfferState:
            state = await conn.fetchval(
                "SELECT state FROM offer WHERE id = $1 FOR UPDATE", offer_id
            )
            check_transition(offer_id, state, action)
            new = target
            if target is OfferState.RUNNING:
                planned = await conn.fetchval(
                    "SELECT EXISTS (SELECT 1 FROM offer_copy WHERE offer = $1)", offer_id
                )
                new = OfferState.RUNNING if planned else OfferState.QUEUED
            await conn.execute("UPDATE offer SET state = $1 WHERE id = $2", new.value, offer_id)
            await self._audit(conn, actor, f"offer-{action}", None, {"offer": offer_id})
            return new

        result: OfferState = await self._write(work)
        return result

    async def plan_offers(self) -> int:
        """Take the audience of queued offers, one snapshot each; nodes skip each other's."""
        planned = 0
        with self._errors("write to"):
            while True:
                async with self._pool.acquire() as conn, conn.transaction():
                    row = await conn.fetchrow(
                        "SELECT id, topic FROM offer WHERE state = $1 ORDER BY id LIMIT 1 "
                        "FOR UPDATE SKIP LOCKED",
                        OfferState.QUEUED.value,
                    )
                    if row is None:
                        return planned
                    topic = row["topic"]
                    await conn.execute(
                        audience_sql(topic is not None, "'epoch'"),
                        row["id"],
                        *((topic,) if topic else ()),
                    )
                    await conn.execute(
                        "UPDATE offer SET state = $1 WHERE id = $2",
                        OfferState.RUNNING.value,
                        row["id"],
                    )
                    planned += 1

    async def claim_copies(self, owner: str, limit: int, lease: timedelta) -> list[Claim]:
        """Lease up to ``limit`` open copies of running offers: FOR UPDATE SKIP LOCKED."""
        with self._errors("write to"):
            async with self._pool.acquire() as conn:
                rows = await conn.fetch(
                    "UPDATE offer_copy c SET state = 'claimed', owner = $1, until = now() + $2 "
                    "FROM (SELECT x.offer, x.sha256 FROM offer_copy x "
                    "JOIN offer o ON o.id = x.offer AND o.state = 'running' "
                    "WHERE x.state IN ('todo', 'claimed') AND x.until < now() "
                    "LIMIT $3 FOR UPDATE OF x SKIP LOCKED) pick "
                    "WHERE c.offer = pick.offer AND c.sha256 = pick.sha256 "
                    "RETURNING c.offer, c.sha256",
                    owner,
                    lease,
                    limit,
                )
                if not rows:
                    return []
                known = {
                    r["sha256"]: r["address"]
                    for r in await conn.fetch(
                        "SELECT DISTINCT ON (sha256) sha256, address FROM consent "
                        "WHERE sha256 = ANY($1::text[]) AND address IS NOT NULL "
                        "ORDER BY sha256, id DESC",
                        list({r["sha256"] for r in rows}),
                    )
                }
        return [Claim(int(r["offer"]), r["sha256"], known.get(r["sha256"])) for r in rows]

    async def settle_copies(
        self,
        owner: str,
        offer: int,
        sha256s: Sequence[str],
        state: CopyState,
        *,
        retry_at: datetime | None = None,
    ) -> set[str]:
        """Move this owner's copies to a state; the hashes that moved (others were taken over)."""
        if not sha256s:
            return set()
        with self._errors("write to"):
            rows = await self._pool.fetch(
                "UPDATE offer_copy SET state = $1, until = COALESCE($2, until) "
                "WHERE offer = $3 AND owner = $4 AND state IN ('claimed', 'sent') "
                "AND sha256 = ANY($5::text[]) RETURNING sha256",
                state.value,
                _utc(retry_at) if retry_at else None,
                offer,
                owner,
                list(sha256s),
            )
        return {r["sha256"] for r in rows}

    async def mark_sent(
        self, owner: str, offer: int, sha256s: Sequence[str], then: Callable[[set[str]], None]
    ) -> set[str]:
        """The commit point. The UPDATE runs in a transaction; ``then`` runs right after the
        COMMIT is written to the server, not after its answer: once the server has the
        COMMIT, the death of this process no longer stops it, and until then the copies
        stay claimed (so a death in between costs nothing). The window left is one turn
        of the event loop, where waiting for the answer would be a round trip."""
        with self._errors("write to"):
            async with self._pool.acquire() as conn:
                transaction = conn.transaction()
                await transaction.start()
                try:
                    rows = await conn.fetch(
                        "UPDATE offer_copy SET state = 'sent' WHERE offer = $1 AND owner = $2 "
                        "AND state = 'claimed' AND sha256 = ANY($3::text[]) RETURNING sha256",
                        offer,
                        owner,
                        list(sha256s),
                    )
                except BaseException:
                    await transaction.rollback()
                    raise
                moved = {r["sha256"] for r in rows}
                committing = asyncio.ensure_future(transaction.commit())
                await asyncio.sleep(0)  # the commit's task writes COMMIT in its first step
                then(moved)
                await committing
        return moved

    async def finish_offers(self) -> int:
        """Mark running offers with no open copy done; how many."""
        with self._errors("write to"):
            status = await self._pool.execute(FINISH_SQL, OfferState.DONE.value)
        return _count(status)

    async def partner_optouts(self, partner: str) -> list[tuple[str, str | None]]:
        """(identity hash, plaintext if kept) of everyone who opted out of a partner's offers."""
        with self._errors("read"):
            rows = await self._pool.fetch(OPTOUTS_SQL, f"partner:{partner}")
        return [(row[0], row[1]) for row in rows]

    # --- opt-outs by mail: per-source rate limits, requests held for a link ---

    async def take_rate(
        self, buckets: Sequence[tuple[str, int]], *, window: int, at: datetime
    ) -> bool:
        """Count one event in each bucket's current window if none is full; else nothing.

        Rows are locked in key order (no deadlock between nodes counting the same keys);
        the audit lock is not taken: nothing here is audited.
        """
        slot = rate_slot(at, window)
        keys = sorted({key for key, _ in buckets})
        with self._errors("write to"):
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute("DELETE FROM rate_window WHERE slot < $1", stale_slot(at))
                await conn.executemany(
                    "INSERT INTO rate_window (key, slot, count) VALUES ($1, $2, 0) "
                    "ON CONFLICT DO NOTHING",
                    [(key, slot) for key in keys],
                )
                rows = await conn.fetch(
                    "SELECT key, count FROM rate_window WHERE slot = $1 AND key = ANY($2) "
                    "ORDER BY key FOR UPDATE",
                    slot,
                    keys,
                )
                if not within_limits(buckets, {row[0]: row[1] for row in rows}):
                    return False
                await conn.execute(
                    "UPDATE rate_window SET count = count + 1 WHERE slot = $1 AND key = ANY($2)",
                    slot,
                    keys,
                )
        return True

    async def hold_request(self, request: HeldRequest, *, actor: str) -> HeldRequest:
        """Keep a request until its link is used (audited); the stored one if already known."""

        async def work(conn: Any) -> HeldRequest:
            status = await conn.execute(
                f"INSERT INTO held_request ({HELD_COLUMNS}) "
                "VALUES ($1, $2, $3, $4, $5, $6, NULL, NULL) ON CONFLICT DO NOTHING",
                request.secret,
                request.sha256,
                request.action,
                request.scope,
                _utc(request.created),
                request.detail,
            )
            if _count(status):
                detail = {"action": request.action, "scope": request.scope}
                await self._audit(conn, actor, "request-held", request.sha256, detail)
            row = await conn.fetchrow(
                f"SELECT {HELD_COLUMNS} FROM held_request WHERE secret = $1", request.secret
            )
            return to_held(row)

        result: HeldRequest = await self._write(work)
        return result

    async def held_request(self, secret: str) -> HeldRequest | None:
        """The request whose link secret hashes to ``secret``, or None."""
        with self._errors("read"):
            row = await self._pool.fetchrow(
                f"SELECT {HELD_COLUMNS} FROM held_request WHERE secret = $1", secret
            )
        return to_held(row) if row is not None else None

    async def mark_mailed(self, secret: str, *, at: datetime) -> None:
        """Record that a request's link went to the next hop."""
        with self._errors("write to"):
            await self._pool.execute(
                "UPDATE held_request SET mailed = $1 WHERE secret = $2", _utc(at), secret
            )

    async def finish_request(
        self, secret: str, *, at: datetime, actor: str, detail: Mapping[str, object]
    ) -> bool:
        """Mark a request done (audited); False when it was done already."""

        async def work(conn: Any) -> bool:
            row = await conn.fetchrow(
                "UPDATE held_request SET done = $1 WHERE secret = $2 AND done IS NULL "
                "RETURNING sha256, action",
                _utc(at),
                secret,
            )
            if row is None:
                return False
            await self._audit(
                conn, actor, "request-confirmed", row[0], {"action": row[1], **detail}
            )
            return True

        result: bool = await self._write(work)
        return result
