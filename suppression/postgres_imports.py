"""The PostgreSQL store's import runs (suppression/store.py: SuppressionImport, ConsentImport).

A part of PostgresStore in a module of its own: it uses the store's pool, error
mapping and ``_audit``. The store passes itself in (Pooled: what a run uses of
it), so the dependency goes one way: suppression/postgres.py imports this
module, never the other way round.

A suppression run holds one connection and one transaction from start to end.
Batches go by COPY into a temporary table of that transaction (ON COMMIT DROP:
no other session sees it, and a kill, which ends the session, drops it);
``commit`` takes the audit chain's lock only then, adds every staged row with
one ``INSERT ... SELECT ... ORDER BY key ... ON CONFLICT DO NOTHING`` and
appends the run's audit event, so other writers wait for the merge only. A
consent run holds the lock from its first batch, since each batch is compared
with the records on file, this run's own earlier ones included.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import replace
from typing import Any, Protocol

import asyncpg

from suppression.audit import Head
from suppression.errors import StoreError
from suppression.model import BatchResult, Consent, ConsentItem, ImportRows, now
from suppression.postgres_common import AUDIT_LOCK, FAILURES, row_count
from suppression.rows import (
    CONSENT_STATEMENT,
    PAGE,
    SUPPRESSION_COLUMNS,
    ImportSum,
    new_consents,
    stored,
    to_consent,
    to_suppression,
)
from suppression.statecheck import Sum, consent_hash, suppression_hash

_COLUMNS = ("n", "key", "kind", "scope", "address", "reason", "source", "evidence", "created")


class Pooled(Protocol):
    """What an import run uses of the PostgreSQL store (suppression/postgres.py's
    PostgresStore)."""

    _pool: asyncpg.Pool

    def _errors(self, doing: str) -> contextlib.AbstractContextManager[None]:
        """Errors as StoreError (the one mapping)."""

    async def _head(self, conn: Any) -> tuple[int, str]:
        """The audit chain's next event number and its head, on ``conn``."""

    def _committed(self, head: Head | None) -> None:
        """Tell the opening's hook the head a committed run appended."""

    async def _audit(
        self, conn: Any, actor: str, action: str, subject: str | None, detail: Mapping[str, object]
    ) -> Head:
        """Append an audit event in ``conn``'s transaction; the head it makes."""

    async def _insert_consents(self, conn: Any, consents: Sequence[Consent]) -> None:
        """Insert consent records in ``conn``'s transaction."""


@contextlib.asynccontextmanager
async def _transaction(store: Pooled) -> AsyncIterator[tuple[Any, Any]]:
    """A pooled connection and its open transaction, rolled back unless the run committed
    it; errors become StoreError."""
    with store._errors("import into"):
        async with store._pool.acquire() as conn:
            transaction = conn.transaction()
            await transaction.start()
            try:
                yield conn, transaction
            finally:
                if conn.is_in_transaction():  # not committed: an error, a run left early
                    with contextlib.suppress(*FAILURES):  # a lost connection rolls back too
                        await transaction.rollback()


@contextlib.asynccontextmanager
async def suppression_run(
    store: Pooled, actor: str, note: Mapping[str, object]
) -> AsyncIterator[SuppressionRun]:
    """The run's transaction and staging table; nothing stays unless it commits."""
    async with _transaction(store) as (conn, transaction):
        await conn.execute(
            'CREATE TEMPORARY TABLE import_row (n BIGINT NOT NULL, key TEXT COLLATE "C" '
            'NOT NULL, kind TEXT NOT NULL, scope TEXT COLLATE "C" NOT NULL, address TEXT, '
            "reason TEXT NOT NULL, source TEXT NOT NULL, evidence TEXT, created TIMESTAMPTZ) "
            "ON COMMIT DROP"
        )
        event, _ = await store._head(conn)
        yield SuppressionRun(store, conn, transaction, ImportSum(event, now()), actor, note)


class SuppressionRun:
    """Batches copied into the run's table, written by ``commit``."""

    def __init__(
        self,
        store: Pooled,
        conn: Any,
        transaction: Any,
        rows: ImportSum,
        actor: str,
        note: Mapping[str, object],
    ) -> None:
        self._store, self._conn, self._transaction = store, conn, transaction
        self._actor, self._sum, self._note = actor, rows, note
        self._counter = itertools.count()
        self._scopes: set[str] = set()
        self._sources: set[str] = set()

    async def add(self, segments: Sequence[ImportRows]) -> None:
        """COPY a batch into the run's table."""
        counter, records = self._counter, []
        for segment in segments:
            kind, scope, reason, source = segment.shape
            self._scopes.add(scope)
            self._sources.add(source)
            rows = len(segment.keys)
            times = segment.created or [None] * rows
            evidence = segment.evidence or [None] * rows
            for key, address, created, kept in zip(
                segment.keys, segment.addresses, times, evidence, strict=True
            ):
                kept_key = key if kind == "sha256" else stored(key, kind)
                n, why = next(counter), reason.value
                records.append((n, kept_key, kind, scope, address, why, source, kept, created))
        self._sum.add(segments)
        with self._store._errors("import into"):
            await self._conn.copy_records_to_table("import_row", records=records, columns=_COLUMNS)

    async def commit(self) -> BatchResult:
        """Take the audit lock, add the rows not there yet in key order, append the event."""
        conn, staged = self._conn, self._sum.count
        with self._store._errors("import into"):
            await conn.execute("SELECT pg_advisory_xact_lock($1)", AUDIT_LOCK)
            seq, _ = await self._store._head(conn)
            status = await conn.execute(
                "INSERT INTO suppression "
                "(key, scope, kind, address, reason, source, evidence, created, event) "
                "SELECT key, scope, kind, address, reason, source, evidence, "
                "coalesce(created, $1), $2 FROM import_row ORDER BY key, scope, n "
                "ON CONFLICT DO NOTHING",
                self._sum.at,
                seq,
            )
            added, appended = row_count(status), None
            unique = staged
            if added != staged:
                unique = int(
                    await conn.fetchval(
                        "SELECT count(*) FROM (SELECT DISTINCT key, scope FROM import_row) d"
                    )
                )
            if added:
                fast = added == staged and seq == self._sum.event
                rows = self._sum.sum() if fast else await self._added(seq)
                detail = {
                    **self._note,
                    "read": staged,
                    "added": added,
                    "scopes": sorted(self._scopes),
                    "sources": sorted(self._sources),
                    "rows": {"suppression": rows.as_json()},
                }
                appended = await self._store._audit(conn, self._actor, "suppress", None, detail)
            await self._transaction.commit()
        self._store._committed(appended)
        return BatchResult(added, unique - added, staged - unique, seq)

    async def _added(self, event: int) -> Sum:
        """The row sum of what the event added, read back from the table."""
        total = Sum()
        async for row in self._conn.cursor(
            f"SELECT {SUPPRESSION_COLUMNS} FROM suppression WHERE event = $1", event, prefetch=PAGE
        ):
            total.add(suppression_hash(to_suppression(row)))
        return total


@contextlib.asynccontextmanager
async def consent_run(
    store: Pooled, actor: str, note: Mapping[str, object]
) -> AsyncIterator[ConsentRun]:
    """The run's transaction, holding the audit chain's lock throughout."""
    async with _transaction(store) as (conn, transaction):
        await conn.execute("SELECT pg_advisory_xact_lock($1)", AUDIT_LOCK)
        seq, _ = await store._head(conn)
        yield ConsentRun(store, conn, transaction, seq, actor, note)


class ConsentRun:
    """Batches appended inside the run's transaction, all pointing to its one event."""

    def __init__(
        self,
        store: Pooled,
        conn: Any,
        transaction: Any,
        event: int,
        actor: str,
        note: Mapping[str, object],
    ) -> None:
        self._store, self._conn, self._transaction = store, conn, transaction
        self._event, self._actor, self._note = event, actor, note
        self._rows = Sum()
        self._granted = self._revoked = 0
        self._purposes: set[str] = set()

    async def add(self, items: Sequence[ConsentItem]) -> BatchResult:
        """Append the batch's records not on record (nor added earlier by this run)."""
        with self._store._errors("import into"):
            known = await self._conn.fetch(
                f"SELECT {CONSENT_STATEMENT} FROM consent "
                "WHERE sha256 = ANY($1::text[]) AND purpose = ANY($2::text[])",
                sorted({i.consent.sha256 for i in items}),
                sorted({i.consent.purpose for i in items}),
            )
            fresh, result = new_consents(items, map(to_consent, known), self._event)
            records = [replace(c, event=self._event) for c in fresh]
            if records:
                await self._store._insert_consents(self._conn, records)
        self._rows.merge(Sum.of(map(consent_hash, records)))
        self._granted += sum(c.granted for c in records)
        self._revoked += sum(not c.granted for c in records)
        self._purposes.update(c.purpose for c in records)
        return result

    async def commit(self) -> None:
        """Append the run's audit event (if it added anything) and commit."""
        appended = None
        with self._store._errors("import into"):
            if self._rows.count:
                detail = {
                    **self._note,
                    "added": self._rows.count,
                    "granted": self._granted,
                    "revoked": self._revoked,
                    "purposes": sorted(self._purposes),
                    "rows": {"consent": self._rows.as_json()},
                }
                appended = await self._store._audit(
                    self._conn, self._actor, "consent", None, detail
                )
                if appended[0] != self._event:  # the lock is held: nobody else can append
                    raise StoreError(
                        f"audit chain moved in the import ({appended[0]}, {self._event})"
                    )
            await self._transaction.commit()
        self._store._committed(appended)
