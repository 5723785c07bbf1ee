"""The SQLite store's import runs (suppression/store.py: SuppressionImport, ConsentImport).

A part of SQLiteStore in a module of its own: it works on the store's writer
connection and lock, and appends to its audit chain through ``_audit``. The
store passes itself in (Writer: what a run uses of it), so the dependency goes
one way: suppression/sqlite.py imports this module, never the other way round.

Suppressions are staged in a private temporary database ATTACHed to the writer
connection (``ATTACH ''``: SQLite deletes its file when it is detached or the
process dies; no journal, no fsync), each batch in statements that touch only
that database, run on the connection's thread while the importer reads the
next batch (SQLite runs them without the GIL). ``commit`` takes the write lock
once and adds everything with one ``INSERT ... SELECT ... ORDER BY key``:
SQLite sorts the run in bounded memory (spilling to temporary files) and then
fills the primary key in order, which costs a fraction of inserting batches of
random keys, each batch touching pages all over the index. A row is staged as
its key, address and the number of its "shape" (kind, scope, reason, source),
since every value bound costs time, 10,000 rows to a statement; times and
evidence go in only for the rows that have them.

The run's audit event carries the row sum of what it added (statecheck), made
while staging for the event number the chain's head promised when the run
began (rows.ImportSum); if another writer appended meanwhile, or some rows were
there already, the sum is made again from the rows the event added.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from itertools import chain, repeat
from typing import Any, Protocol, TypeVar, cast

import aiosqlite

from suppression.audit import Head
from suppression.errors import StoreError
from suppression.model import BatchResult, Consent, ConsentItem, ImportRows, now
from suppression.rows import (
    CONSENT_STATEMENT,
    PAGE,
    SUPPRESSION_COLUMNS,
    ImportSum,
    new_consents,
    stored,
)
from suppression.sqlite_values import (
    CACHE_KIB,
    consent_of,
    question_marks,
    suppression_of,
    time_text,
)
from suppression.statecheck import Sum, consent_hash, suppression_hash

T = TypeVar("T")

Shape = tuple[str, str, str, str]  # kind, scope, reason, source
_RUNS = itertools.count(1)  # names of attached run databases, unique in the process
# The merge's sort: SQLite keeps up to a page cache's worth of rows in memory per sort
# thread before it spills to a temporary file, so a small cache during the merge keeps
# memory low, and is faster too (measured: 1,000,000 rows, 8 MiB with a helper thread
# 1.1 s, the store's usual 32 MiB without one 1.7 s).
SORT_THREADS = 2  # helper threads SQLite may use (PRAGMA threads)
MERGE_CACHE_KIB = 4096
ROWS_A_STATEMENT = 10_000  # staged rows bound to one INSERT (3 values each; SQLite allows 32766)
_PLAIN = "INSERT INTO {0}.row (key, shape, address) VALUES "
_TIMED = "INSERT INTO {0}.row (key, shape, address, created, evidence) VALUES "


class Writer(Protocol):
    """What an import run uses of the SQLite store (suppression/sqlite.py's SQLiteStore)."""

    _db: aiosqlite.Connection  # the writer connection
    _path: str  # for messages
    _writing: asyncio.Lock  # the writer connection's users take turns

    async def _write(self, work: Callable[[], Awaitable[T]]) -> T:
        """Run ``work`` in one IMMEDIATE transaction (the lock taken)."""

    async def _head(self) -> tuple[int, str]:
        """The audit chain's next event number and its head."""

    def _committed(self, head: Head | None) -> None:
        """Tell the opening's hook the head a committed run appended."""

    async def _audit(
        self, actor: str, action: str, subject: str | None, detail: Mapping[str, object]
    ) -> Head:
        """Append an audit event in the open transaction; the head it makes."""

    async def _insert_consents(self, consents: Sequence[Consent]) -> None:
        """Insert consent records in the open transaction."""

    async def _all(self, sql: str, params: Sequence[object], convert: Any) -> list[Any]:
        """Every row of a query on the writer connection, converted."""


@contextlib.asynccontextmanager
async def suppression_run(
    store: Writer, actor: str, note: Mapping[str, object]
) -> AsyncIterator[SuppressionRun]:
    """Attach the run's staging database; detach (and so delete) it at the end."""
    name = f"import_{next(_RUNS)}"
    db = store._db
    async with store._writing:
        await db.execute(f"ATTACH DATABASE '' AS {name}")
        await db.execute(f"PRAGMA {name}.journal_mode = OFF")
        await db.execute(f"PRAGMA {name}.synchronous = OFF")
        await db.execute(
            f"CREATE TABLE {name}.shape (id INTEGER PRIMARY KEY, kind TEXT NOT NULL, "
            "scope TEXT NOT NULL, reason TEXT NOT NULL, source TEXT NOT NULL)"
        )
        await db.execute(
            f"CREATE TABLE {name}.row (key TEXT NOT NULL, shape INTEGER NOT NULL, "
            "address TEXT NOT NULL, created TEXT, evidence TEXT)"
        )
        event, _ = await store._head()
    run = SuppressionRun(store, name, event, actor, note)
    try:
        yield run
    finally:
        with contextlib.suppress(Exception):  # the run's own error is the one that counts
            await run.staged()
        async with store._writing:
            await db.execute(f"DETACH DATABASE {name}")


class SuppressionRun:
    """Staged batches, written by ``commit``."""

    def __init__(
        self, store: Writer, name: str, event: int, actor: str, note: Mapping[str, object]
    ) -> None:
        self._store, self._name, self._actor, self._note = store, name, actor, note
        self._shapes: dict[Shape, int] = {}
        self._sum = ImportSum(event, now())
        self._plain = _PLAIN.format(name) + ",".join(["(?, ?, ?)"] * ROWS_A_STATEMENT)
        self._staging: asyncio.Task[None] | None = None

    async def staged(self) -> None:
        """Wait for the batch being staged; its error, if it failed."""
        staging, self._staging = self._staging, None
        if staging is not None:
            await staging

    async def add(self, segments: Sequence[ImportRows]) -> None:
        """Stage a batch in the run's own database while the caller reads the next one: the
        batch's first statement (most of its rows) is with the connection's thread when
        this returns, and SQLite runs it without the GIL. The previous batch is waited
        for first."""
        shapes, fresh = self._shapes, []
        plain: list[str | int] = []  # key, shape, address, key, shape, address, ...
        timed: list[tuple[str, int, str, str | None, str | None]] = []
        for segment in segments:
            kind, scope, reason, source = segment.shape
            value = (kind, scope, reason.value, source)
            number = shapes.get(value, 0)
            if not number:
                number = shapes[value] = len(shapes) + 1
                fresh.append((number, *value))
            keys = segment.keys
            if kind != "sha256":
                keys = [stored(key, kind) for key in keys]
            # "" for no address (the staging column is NOT NULL; most segments have none)
            addresses = cast("list[str]", segment.addresses)
            if None in segment.addresses:
                addresses = [address or "" for address in segment.addresses]
            if segment.created is None or segment.evidence is None:
                plain += chain.from_iterable(zip(keys, repeat(number), addresses, strict=False))
                continue
            times = [time_text(when) if when else None for when in segment.created]
            timed += zip(keys, repeat(number), addresses, times, segment.evidence, strict=False)
        self._sum.add(segments)
        await self.staged()
        self._staging = asyncio.create_task(self._stage(fresh, plain, timed))
        await asyncio.sleep(0)  # the task hands its first statement to the thread

    async def _stage(
        self,
        fresh: Sequence[tuple[object, ...]],
        plain: list[str | int],
        timed: list[tuple[str, int, str, str | None, str | None]],
    ) -> None:
        """The batch's statements, each its own transaction of the run's database (no
        journal: a failed run's database is dropped whole)."""
        db, name = self._store._db, self._name
        step = 3 * ROWS_A_STATEMENT
        whole = len(plain) - len(plain) % step
        rest = plain[whole:]
        async with self._store._writing:
            for start in range(0, whole, step):
                await db.execute(self._plain, plain[start : start + step])
            leftover = zip(rest[::3], rest[1::3], rest[2::3], strict=True)
            await db.executemany(_PLAIN.format(name) + "(?, ?, ?)", leftover)
            await db.executemany(_TIMED.format(name) + "(?, ?, ?, ?, ?)", timed)
            await db.executemany(f"INSERT INTO {name}.shape VALUES (?, ?, ?, ?, ?)", fresh)

    async def commit(self) -> BatchResult:
        """Add the staged rows not there yet, in key order, with one audit event."""
        store, db = self._store, self._store._db
        await self.staged()
        staged = self._sum.count

        async def work() -> tuple[BatchResult, Head | None]:
            seq, _ = await store._head()
            await db.execute(f"PRAGMA threads = {SORT_THREADS}")
            await db.execute(f"PRAGMA main.cache_size = -{MERGE_CACHE_KIB}")
            try:
                cursor = await db.execute(*self._merge(seq))
            finally:
                await db.execute("PRAGMA threads = 0")
                await db.execute(f"PRAGMA main.cache_size = -{CACHE_KIB}")
            added, appended = cursor.rowcount, None
            unique = staged if added == staged else await self._unique()
            if added:
                fast = added == staged and seq == self._sum.event
                rows = self._sum.sum() if fast else await self._added(seq)
                detail = {
                    **self._note,
                    "read": staged,
                    "added": added,
                    "scopes": sorted({shape[1] for shape in self._shapes}),
                    "sources": sorted({shape[3] for shape in self._shapes}),
                    "rows": {"suppression": rows.as_json()},
                }
                appended = await store._audit(self._actor, "suppress", None, detail)
            return BatchResult(added, unique - added, staged - unique, seq), appended

        result, appended = await store._write(work)
        store._committed(appended)
        return result

    def _merge(self, seq: int) -> tuple[str, Sequence[object]]:
        """The statement that adds the staged rows in key order, and its parameters. Rows
        of one shape (the usual run) take its columns as parameters rather than from a
        join: the sorter then carries a key, an address and a row number a row (1,000,000
        rows: a fifth less time)."""
        into = (
            "INSERT OR IGNORE INTO main.suppression "
            "(key, scope, kind, address, reason, source, evidence, created, event) "
        )
        at, name = time_text(self._sum.at), self._name
        if len(self._shapes) == 1:
            [(kind, scope, reason, source)] = self._shapes
            return (
                f"{into}SELECT key, ?, ?, nullif(address, ''), ?, ?, evidence, "
                f"coalesce(created, ?), ? FROM {name}.row ORDER BY key, rowid",
                (scope, kind, reason, source, at, seq),
            )
        return (
            f"{into}SELECT r.key, s.scope, s.kind, nullif(r.address, ''), s.reason, s.source, "
            "r.evidence, coalesce(r.created, ?), ? "
            f"FROM {name}.row r JOIN {name}.shape s ON s.id = r.shape "
            "ORDER BY r.key, s.scope, r.rowid",
            (at, seq),
        )

    async def _unique(self) -> int:
        """Distinct (key, scope) pairs staged (needed only when some were not added)."""
        async with self._store._db.execute(
            f"SELECT count(*) FROM (SELECT 1 FROM {self._name}.row r "
            f"JOIN {self._name}.shape s ON s.id = r.shape GROUP BY r.key, s.scope)"
        ) as cursor:
            row = await cursor.fetchone()
        return int(row[0]) if row else 0

    async def _added(self, event: int) -> Sum:
        """The row sum of what the event added, read back from the table."""
        total = Sum()
        async with self._store._db.execute(
            f"SELECT {SUPPRESSION_COLUMNS} FROM main.suppression WHERE event = ?", (event,)
        ) as cursor:
            while found := await cursor.fetchmany(PAGE):
                for row in found:
                    total.add(suppression_hash(suppression_of(row)))
        return total


@contextlib.asynccontextmanager
async def consent_run(
    store: Writer, actor: str, note: Mapping[str, object]
) -> AsyncIterator[ConsentRun]:
    """One IMMEDIATE transaction for the whole run, rolled back unless it commits."""
    db = store._db
    async with store._writing:
        try:
            await db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise StoreError(f"cannot write to SQLite store {store._path}: {exc}") from None
        try:
            seq, _ = await store._head()
            run = ConsentRun(store, seq, actor, note)
            yield run
        except sqlite3.Error as exc:
            await db.rollback()
            raise StoreError(f"cannot write to SQLite store {store._path}: {exc}") from None
        except BaseException:
            await db.rollback()
            raise
        if not run.committed:
            await db.rollback()


class ConsentRun:
    """Batches appended inside the run's transaction, all pointing to its one event."""

    def __init__(self, store: Writer, event: int, actor: str, note: Mapping[str, object]) -> None:
        self._store, self._event, self._actor, self._note = store, event, actor, note
        self._rows = Sum()
        self._granted = self._revoked = 0
        self._purposes: set[str] = set()
        self.committed = False

    async def add(self, items: Sequence[ConsentItem]) -> BatchResult:
        """Append the batch's records not on record (nor added earlier by this run)."""
        hashes = sorted({i.consent.sha256 for i in items})
        purposes = sorted({i.consent.purpose for i in items})
        known = []
        for start in range(0, len(hashes), PAGE):
            chunk = hashes[start : start + PAGE]
            known += await self._store._all(
                f"SELECT {CONSENT_STATEMENT} FROM consent WHERE sha256 IN "
                f"({question_marks(len(chunk))}) AND purpose IN ({question_marks(len(purposes))})",
                (*chunk, *purposes),
                consent_of,
            )
        fresh, result = new_consents(items, known, self._event)
        if fresh:
            records = [replace(c, event=self._event) for c in fresh]
            await self._store._insert_consents(records)
            self._rows.merge(Sum.of(map(consent_hash, records)))
            self._granted += sum(c.granted for c in records)
            self._revoked += sum(not c.granted for c in records)
            self._purposes.update(c.purpose for c in records)
        return result

    async def commit(self) -> None:
        """Append the run's audit event (if it added anything) and commit."""
        appended = None
        if self._rows.count:
            detail = {
                **self._note,
                "added": self._rows.count,
                "granted": self._granted,
                "revoked": self._revoked,
                "purposes": sorted(self._purposes),
                "rows": {"consent": self._rows.as_json()},
            }
            appended = await self._store._audit(self._actor, "consent", None, detail)
            if appended[0] != self._event:  # the lock is held: nobody else can append
                raise StoreError(f"audit chain moved in the import ({appended[0]}, {self._event})")
        await self._store._db.commit()
        self.committed = True
        self._store._committed(appended)
