"""The shared store for several nodes: PostgreSQL through an asyncpg pool. A driver for
the operations written once (suppression/sql/store.py): the pool, transactions that
hold the audit chain's advisory lock, COPY and unnest for bulk rows, row locks, the
one-statement hot path and the one error mapping."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import (
    AsyncGenerator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from suppression.address import Address
from suppression.audit import Head, OnHead
from suppression.errors import StoreError, StoreMissing
from suppression.held_rows import rate_slot, stale_slot, within_limits
from suppression.model import Consent, Facts, Ledger, Send, Suppression
from suppression.postgres_common import AUDIT_LOCK, FAILURES, MIGRATE_LOCK, row_count
from suppression.rows import (
    PAGE,
    SUPPRESSION_COLUMNS,
    stored_keys,
    to_consent,
    to_suppression,
)
from suppression.sql import audit
from suppression.sql.consents import insert_consents
from suppression.sql.driver import Row, Sql, Transaction
from suppression.sql.held import RATE_COUNT, RATE_FORGET, RATE_MAKE, RATE_READ
from suppression.sql.ledger import SEND_FORGET, SEND_UPSERT, UNSETTLED, ledger_rows
from suppression.sql.partners import MARK_SENT
from suppression.sql.schema import ARRAY, Rekey, Table
from suppression.sql.store import SqlStore
from suppression.sql.tables import MIGRATIONS
from suppression.store import ConsentImport, SuppressionImport

T = TypeVar("T")

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
_UPSERT_SENDS = SEND_UPSERT.replace(
    "VALUES ($1, $2, $3, $4, $5, $6, $7)",
    "SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], "
    "$6::text[], $7::text[])",
)


def _utc(value: datetime) -> datetime:
    """Aware UTC (a naive time is local time, as in the SQLite store)."""
    return value.astimezone(UTC)


def _arg(value: object) -> object:
    return _utc(value) if isinstance(value, datetime) else value


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


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


async def require_schema(url: str) -> None:
    """StoreMissing unless the database exists and holds optgate's schema."""
    try:
        conn = await asyncpg.connect(url, timeout=CONNECT_TIMEOUT)
    except asyncpg.InvalidCatalogNameError:
        raise StoreMissing(safe_url(url), " (no such database: create it first)") from None
    except (*FAILURES, ValueError) as exc:
        shown = safe_url(url)
        raise StoreError(f"cannot open PostgreSQL store {shown}: {_one_line(exc)}") from None
    try:
        if await conn.fetchval("SELECT to_regclass('schema_version')") is None:
            raise StoreMissing(safe_url(url), " (the database holds no optgate schema)")
    finally:
        await conn.close()


class _Sql:
    """The shared statements' driver on one pooled connection."""

    lock = "FOR UPDATE SKIP LOCKED"
    lock_rows = "FOR UPDATE"

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def fetch(self, statement: str, *args: object) -> list[Row]:
        return list(await self._conn.fetch(statement, *map(_arg, args)))

    async def stream(self, statement: str, *args: object) -> AsyncGenerator[Row, None]:
        # (inside the caller's transaction; other statements may run between pages)
        cursor = await self._conn.cursor(statement, *map(_arg, args))
        while rows := await cursor.fetch(PAGE):
            for row in rows:
                yield row

    async def execute(self, statement: str, *args: object) -> int:
        return row_count(await self._conn.execute(statement, *map(_arg, args)))

    async def executemany(self, statement: str, rows: Iterable[Sequence[object]]) -> None:
        await self._conn.executemany(statement, [tuple(map(_arg, row)) for row in rows])

    def time(self, value: Any) -> datetime:
        return value  # type: ignore[no-any-return]


class _Transaction(audit.Chained, _Sql):
    """A write transaction (holding the audit chain lock where it audits)."""

    def __init__(self, conn: Any, key: bytes) -> None:
        super().__init__(conn)
        self._key = key

    async def insert(self, table: Table, columns: Sequence[str], rows: Sequence[Row]) -> int:
        names = ", ".join(columns)
        values = [tuple(map(_arg, row)) for row in rows]
        if len(rows) >= COPY_THRESHOLD and table.identity is None:
            staged = f"{table.name}_in"
            await self._conn.execute(
                f"CREATE TEMPORARY TABLE IF NOT EXISTS {staged} "
                f"(LIKE {table.name} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
            )
            await self._conn.execute(f"TRUNCATE {staged}")
            await self._conn.copy_records_to_table(staged, records=values, columns=list(columns))
            return await self.execute(
                f"INSERT INTO {table.name} ({names}) SELECT {names} FROM {staged} "
                "ON CONFLICT DO NOTHING"
            )
        arrays = ", ".join(
            f"${n}::{ARRAY[table.column(c).kind]}[]" for n, c in enumerate(columns, start=1)
        )
        # WITH ORDINALITY: rows (and ids) follow the order of the input
        return await self.execute(
            f"INSERT INTO {table.name} ({names}) SELECT {names} FROM unnest({arrays}) "
            f"WITH ORDINALITY AS t({names}, n) ORDER BY n ON CONFLICT DO NOTHING",
            *(list(column) for column in zip(*values, strict=True)),
        )


class PostgresStore(SqlStore):
    """Store on one PostgreSQL database, shared by any number of nodes."""

    _parse = staticmethod(lambda value: value)

    def __init__(
        self, pool: asyncpg.Pool, url: str, audit_key: bytes, on_head: OnHead | None
    ) -> None:
        self._pool = pool
        self._url = safe_url(url)
        self._key = audit_key
        self._on_head = on_head

    @contextlib.contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        """Errors as StoreError (the one mapping)."""
        try:
            yield
        except FAILURES as exc:
            raise StoreError(
                f"cannot {doing} PostgreSQL store {self._url}: {_one_line(exc)}"
            ) from None

    @classmethod
    async def open(
        cls,
        url: str,
        audit_key: bytes,
        *,
        pool_size: int = POOL_SIZE,
        create: bool = True,
        on_head: OnHead | None = None,
    ) -> PostgresStore:
        """Connect a pool and run pending migrations.

        Without ``create`` a database without optgate's schema is ``StoreMissing``;
        ``on_head`` is told the head of each committed transaction that appended.
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
        except (*FAILURES, ValueError) as exc:
            raise StoreError(
                f"cannot open PostgreSQL store {safe_url(url)}: {_one_line(exc)}"
            ) from None
        store = cls(pool, url, audit_key, on_head)
        try:
            with store._errors("open"):
                await store._migrate(create)
        except BaseException:
            await pool.close()
            raise
        return store

    async def _migrate(self, create: bool) -> None:
        rekeyed = None
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
            for number, step in enumerate(MIGRATIONS[version:], start=version + 1):
                if isinstance(step, Rekey):
                    await conn.execute("SELECT pg_advisory_xact_lock($1)", AUDIT_LOCK)
                    shown = f"PostgreSQL store {self._url}"
                    tx = _Transaction(conn, self._key)
                    await audit.rekey(tx, self._key, shown)
                    rekeyed = tx.appended
                else:
                    await conn.execute(step.ddl("postgresql"))
                await conn.execute("DELETE FROM schema_version")
                await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", number)
        self._committed(rekeyed)

    async def close(self) -> None:
        """Close every connection of the pool."""
        await self._pool.close()

    # --- the driver hooks (suppression/sql/driver.py) ---

    async def _sql_write(
        self, work: Callable[[Transaction], Awaitable[T]], *, chain: bool = True
    ) -> T:
        """One transaction; with ``chain`` it takes the audit chain lock before the chain's
        head is read, so two writers (on this node or another) never link two events to
        the same predecessor."""
        with self._errors("write to"):
            async with self._pool.acquire() as conn, conn.transaction():
                if chain:
                    await conn.execute("SELECT pg_advisory_xact_lock($1)", AUDIT_LOCK)
                tx = _Transaction(conn, self._key)
                result = await work(tx)
        self._committed(tx.appended)
        return result

    async def _sql_read(self, work: Callable[[Sql], Awaitable[T]]) -> T:
        with self._errors("read"):
            async with self._pool.acquire() as conn:
                return await work(_Sql(conn))

    async def _sql_stream(self, statement: str, *args: object) -> AsyncGenerator[Row, None]:
        """Rows through a server-side cursor in a read-only snapshot."""
        with self._errors("read"):
            async with (
                self._pool.acquire() as conn,
                conn.transaction(isolation="repeatable_read", readonly=True),
            ):
                async for row in conn.cursor(statement, *map(_arg, args), prefetch=PAGE):
                    yield row

    # --- what the import runs build on (suppression/postgres_imports.py) ---

    @staticmethod
    async def _head(conn: Any) -> tuple[int, str]:
        return await audit.head(_Sql(conn))

    async def _audit(
        self,
        conn: Any,
        actor: str,
        action: str,
        subject: str | None,
        detail: Mapping[str, object],
        changed: Sequence[Suppression | Consent] = (),
    ) -> Head:
        tx = _Transaction(conn, self._key)
        return await audit.append(tx, self._key, actor, action, subject, detail, changed)

    async def _insert_consents(self, conn: Any, consents: Sequence[Consent]) -> None:
        await insert_consents(_Transaction(conn, self._key), consents)

    def suppression_import(
        self, *, actor: str, note: Mapping[str, object]
    ) -> contextlib.AbstractAsyncContextManager[SuppressionImport]:
        """A suppression import run (suppression/postgres_imports.py)."""
        from suppression import postgres_imports  # on first use: most commands never import

        return postgres_imports.suppression_run(self, actor, note)

    def consent_import(
        self, *, actor: str, note: Mapping[str, object]
    ) -> contextlib.AbstractAsyncContextManager[ConsentImport]:
        """A consent import run (suppression/postgres_imports.py)."""
        from suppression import postgres_imports

        return postgres_imports.consent_run(self, actor, note)

    # --- the hot path, the send ledger, the rate counters, the commit point ---

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

    async def hold_sends(self, sends: Sequence[Send], then: Callable[[], None]) -> None:
        """The relay's commit point: ``sends`` committed, then ``then()`` (a death between
        the server's commit and its answer here leaves a copy uncertain that never went
        out: the window is a network round trip, as for any client of a remote store)."""
        await self.record_sends(sends)
        then()

    async def record_sends(self, sends: Sequence[Send]) -> None:
        """Remember delivered copies (the send ledger) in one transaction: SEND_UPSERT's
        rows in one statement (unnest), not one each."""
        kept, gone = ledger_rows(sends)

        async def work(tx: Transaction) -> None:
            if kept:
                columns = [list(map(_arg, column)) for column in zip(*kept, strict=True)]
                await tx.execute(_UPSERT_SENDS, *columns)
            if gone:
                await tx.executemany(SEND_FORGET, gone)

        if sends:
            await self._sql_write(work, chain=False)

    async def take_rate(
        self, buckets: Sequence[tuple[str, int]], *, window: int, at: datetime
    ) -> bool:
        """Count one event in each bucket's current window if none is full; else nothing.

        Rows are locked in key order (no deadlock between nodes counting the same keys);
        the audit lock is not taken: nothing here is audited.
        """
        slot = rate_slot(at, window)
        keys = sorted({key for key, _ in buckets})

        async def work(tx: Transaction) -> bool:
            await tx.execute(RATE_FORGET, stale_slot(at))
            await tx.executemany(RATE_MAKE, [(key, slot) for key in keys])
            rows = await tx.fetch(f"{RATE_READ} {tx.lock_rows}", slot, keys)
            if not within_limits(buckets, {row[0]: row[1] for row in rows}):
                return False
            await tx.execute(RATE_COUNT, slot, keys)
            return True

        return await self._sql_write(work, chain=False)

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
                        MARK_SENT,
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
