"""The embedded default store: one SQLite file (WAL) through aiosqlite. A driver for the
operations written once (suppression/sql/store.py): connections, transactions, ``$n``
statements as SQLite's, times as UTC text, the inline hot path, the batched commit of
the send ledger and the one error mapping."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import re
import sqlite3
from collections.abc import (
    AsyncGenerator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any, TypeVar

import aiosqlite

from suppression.address import Address
from suppression.audit import Head, OnHead
from suppression.errors import StoreError, StoreMissing
from suppression.held_rows import rate_slot, stale_slot, within_limits
from suppression.model import Consent, Facts, Ledger, Send, Suppression
from suppression.rows import (
    CONSENT_COLUMNS,
    PAGE,
    SUPPRESSION_COLUMNS,
    stored_keys,
)
from suppression.sql import audit
from suppression.sql.consents import insert_consents
from suppression.sql.driver import Row, Transaction
from suppression.sql.held import RATE_COUNT, RATE_FORGET, RATE_MAKE, RATE_READ
from suppression.sql.ledger import SEND_FORGET, SEND_UPSERT, UNSETTLED, ledger_rows
from suppression.sql.partners import MARK_SENT
from suppression.sql.schema import AddColumn, Rekey, Table
from suppression.sql.store import SqlStore
from suppression.sql.tables import MIGRATIONS
from suppression.sqlite_values import (
    CACHE_KIB,
    consent_of,
    parse_time,
    question_marks,
    suppression_of,
    time_text,
)
from suppression.store import ConsentImport, SuppressionImport

T = TypeVar("T")

MMAP_BYTES = 1 << 36
# how long the commit point may wait for another process's write lock (it blocks the loop)
COMMIT_POINT_WAIT_MS = 500
# how long the relay's commit point waits for the write lock on the loop before it leaves
# the copies' rows to the ledger's thread
HOLD_WAIT_MS = 10


@functools.lru_cache(maxsize=256)
def _sqlite(statement: str) -> str:
    """A shared statement as SQLite's: ``= ANY($n)`` reads a JSON array, casts go,
    ``$3`` becomes ``?3`` (reusable, any order)."""
    statement = re.sub(
        r"= ANY\(\$(\d+)(::\w+\[\])?\)", r"IN (SELECT value FROM json_each($\1))", statement
    )
    statement = re.sub(r"::\w+(\[\])?", "", statement)
    return re.sub(r"\$(\d+)", r"?\1", statement)


def _arg(value: object) -> object:
    """An argument as SQLite stores it: times as UTC text, booleans as 0/1, lists as JSON."""
    if isinstance(value, datetime):
        return time_text(value)
    if isinstance(value, list | tuple):
        return json.dumps(list(value))
    return int(value) if isinstance(value, bool) else value


def _args(values: Iterable[object]) -> list[object]:
    return [_arg(a) for a in values]


class _Sql:
    """The shared statements' driver on the store's writer connection."""

    lock = ""
    lock_rows = ""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db

    async def fetch(self, statement: str, *args: object) -> list[Row]:
        async with self._db.execute(_sqlite(statement), _args(args)) as cursor:
            return list(await cursor.fetchall())

    async def stream(self, statement: str, *args: object) -> AsyncGenerator[Row, None]:
        async with self._db.execute(_sqlite(statement), _args(args)) as cursor:
            while rows := await cursor.fetchmany(PAGE):
                for row in rows:
                    yield row

    async def execute(self, statement: str, *args: object) -> int:
        cursor = await self._db.execute(_sqlite(statement), _args(args))
        return int(cursor.rowcount)

    async def executemany(self, statement: str, rows: Iterable[Sequence[object]]) -> None:
        await self._db.executemany(_sqlite(statement), (_args(r) for r in rows))

    def time(self, value: Any) -> datetime:
        return parse_time(value)


class _Transaction(audit.Chained, _Sql):
    """A write transaction of the store, with its audit chain."""

    def __init__(self, store: SQLiteStore) -> None:
        super().__init__(store._db)
        self._key = store._key

    async def insert(self, table: Table, columns: Sequence[str], rows: Sequence[Row]) -> int:
        marks = ", ".join(f"${n}" for n in range(1, len(columns) + 1))
        cursor = await self._db.executemany(
            _sqlite(
                f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({marks}) "
                "ON CONFLICT DO NOTHING"
            ),
            (_args(r) for r in rows),
        )
        return int(cursor.rowcount)


class _Peek(_Sql):
    """The hot-path connection (committed rows only), inline on the event loop."""

    def __init__(self, hot: sqlite3.Connection) -> None:
        self._hot = hot

    async def fetch(self, statement: str, *args: object) -> list[Row]:
        return list(self._hot.execute(_sqlite(statement), _args(args)).fetchall())

    async def stream(self, statement: str, *args: object) -> AsyncGenerator[Row, None]:
        for row in await self.fetch(statement, *args):
            yield row

    async def execute(self, statement: str, *args: object) -> int:
        raise StoreError("the hot-path connection only reads")

    async def executemany(self, statement: str, rows: Iterable[Sequence[object]]) -> None:
        raise StoreError("the hot-path connection only reads")


def _connect(path: str, synchronous: str) -> sqlite3.Connection:
    """A plain connection for the hot path: autocommit, mmap'd reads, patient with locks."""
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA busy_timeout = 5000")
    db.execute(f"PRAGMA synchronous = {synchronous}")
    # lookups of a large store read pages without a syscall each
    db.execute(f"PRAGMA mmap_size = {MMAP_BYTES}")
    return db


@contextlib.contextmanager
def _immediate(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One IMMEDIATE transaction on a plain connection: committed, or rolled back."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _write_sends(db: sqlite3.Connection, sends: Sequence[Send]) -> None:
    """Send ledger rows in one transaction (state ``unsent``: the row removed)."""
    kept, gone = ledger_rows(sends)
    with _immediate(db):
        db.executemany(_sqlite(SEND_UPSERT), [_args(row) for row in kept])
        db.executemany(_sqlite(SEND_FORGET), gone)


class GroupCommit:
    """Writes rows on a thread, one transaction for all that arrived meanwhile.

    Each caller waits until its rows are committed; under load, one commit
    (and one thread hop) serves many messages.
    """

    def __init__(self, write: Callable[[list[Send]], None], thread: ThreadPoolExecutor) -> None:
        self._write, self._thread = write, thread
        self._rows: list[Send] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def add(self, rows: Sequence[Send]) -> None:
        """Queue rows and wait for their commit."""
        waiter = asyncio.get_running_loop().create_future()
        self._rows.extend(rows)
        self._waiters.append(waiter)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        await waiter

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        while self._rows:
            rows, waiters = self._rows, self._waiters
            self._rows, self._waiters = [], []
            try:
                await loop.run_in_executor(self._thread, self._write, rows)
            except Exception as exc:  # each waiter gets the error
                for waiter in waiters:
                    waiter.set_exception(exc)
            else:
                for waiter in waiters:
                    waiter.set_result(None)


Held = tuple[Sequence[Send], Callable[[], None], asyncio.Future[None]]


class LoopCommit:
    """The relay's commit point: the held rows of every copy that reached it in one turn
    of the event loop, committed in one transaction on the loop's own thread (a WAL
    append, no fsync), each copy's ``then`` (its final ".") called straight after, with
    no other task in between. When another writer holds the lock longer than
    HOLD_WAIT_MS, the rows go through the ledger's thread instead (``fallback``); a
    death between that commit and the "." leaves a copy uncertain that never went out.
    """

    def __init__(self, db: sqlite3.Connection, fallback: GroupCommit) -> None:
        self._db, self._fallback = db, fallback
        self._waiting: list[Held] = []
        self._late: set[asyncio.Task[None]] = set()

    async def add(self, rows: Sequence[Send], then: Callable[[], None]) -> None:
        """Queue rows; ``then()`` runs once they are committed; wait for both."""
        loop = asyncio.get_running_loop()
        if not self._waiting:
            loop.call_soon(self._commit)
        waiter = loop.create_future()
        self._waiting.append((rows, then, waiter))
        await waiter

    def _commit(self) -> None:
        held, self._waiting = self._waiting, []
        rows = [row for sends, _, _ in held for row in sends]
        try:
            _write_sends(self._db, rows)
        except sqlite3.OperationalError as exc:
            if not _locked(exc):
                _fail(held, exc)
                return
            task = asyncio.get_running_loop().create_task(self._through_thread(held, rows))
            self._late.add(task)
            task.add_done_callback(self._late.discard)
        except sqlite3.Error as exc:
            _fail(held, exc)
        else:
            _finish(held)

    async def _through_thread(self, held: list[Held], rows: list[Send]) -> None:
        try:
            await self._fallback.add(rows)
        except Exception as exc:  # each waiter gets the error
            _fail(held, exc)
        else:
            _finish(held)


def _locked(exc: sqlite3.OperationalError) -> bool:
    return exc.sqlite_errorcode in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def _finish(held: Sequence[Held]) -> None:
    """Every copy's "." first (its row is committed: a cancelled waiter too), then the
    waiters."""
    for _, then, _ in held:
        then()
    for _, _, waiter in held:
        if not waiter.done():
            waiter.set_result(None)


def _fail(held: Sequence[Held], exc: BaseException) -> None:
    for _, _, waiter in held:
        if not waiter.done():
            waiter.set_exception(exc)


class SQLiteStore(SqlStore):
    """Store on one SQLite database file."""

    def __init__(
        self,
        db: aiosqlite.Connection,
        hot: sqlite3.Connection,
        path: str,
        audit_key: bytes,
        on_head: OnHead | None,
    ) -> None:
        self._db = db
        self._path = path
        self._key = audit_key
        self._on_head = on_head
        self._writing = asyncio.Lock()
        # the per-message work (lookups, the send ledger) has a connection and a
        # thread of its own: one thread hop each; in WAL mode reads never wait
        self._hot = hot
        # the send ledger: a power cut may lose its last commits, which costs at
        # most a duplicate copy on a retry; no fsync per message
        self._ledger_db = _connect(path, "NORMAL")
        # the fan-out's commit point: committed on the event loop's own thread, so that
        # nothing runs between the commit and the final "." it allows (see mark_sent).
        # NORMAL and no checkpoints here: a COMMIT is then one write to the WAL, which
        # a killed process cannot take back, with no fsync after it for a kill to land
        # in (an fsync there would be a window of milliseconds in which the copies are
        # marked sent but their "." not written). A power cut may lose the last marks:
        # those copies go out once more after the restart, never zero times.
        self._commit_db = _connect(path, "NORMAL")
        self._commit_db.execute(f"PRAGMA busy_timeout = {COMMIT_POINT_WAIT_MS}")
        self._commit_db.execute("PRAGMA wal_autocheckpoint = 0")
        self._ledger_thread = ThreadPoolExecutor(1, thread_name_prefix="optgate-ledger")
        self._ledger = GroupCommit(self._record_sends, self._ledger_thread)
        # the relay's commit point (hold_sends), on the loop's thread: no checkpoint there,
        # and a short wait for the lock before the rows take the ledger's thread
        self._hold_db = _connect(path, "NORMAL")
        self._hold_db.execute(f"PRAGMA busy_timeout = {HOLD_WAIT_MS}")
        self._hold_db.execute("PRAGMA wal_autocheckpoint = 0")
        self._holding = LoopCommit(self._hold_db, self._ledger)

    @classmethod
    async def open(
        cls, path: str, audit_key: bytes, *, create: bool = True, on_head: OnHead | None = None
    ) -> SQLiteStore:
        """Open the file, switch to WAL and run pending migrations.

        Without ``create`` a file without optgate's schema is ``StoreMissing``;
        ``on_head`` is told the head of each committed transaction that appended.
        """
        try:
            hot = _connect(path, "FULL")
            hot.execute("PRAGMA query_only = 1")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open SQLite store {path}: {exc}") from None
        db = await aiosqlite.connect(path, isolation_level=None)
        store = cls(db, hot, path, audit_key, on_head)
        try:
            await store._prepare(create)
        except (sqlite3.Error, StoreError) as exc:
            await store.close()
            if isinstance(exc, StoreError):
                raise
            raise StoreError(f"cannot use SQLite store {path}: {exc}") from None
        return store

    _parse = staticmethod(parse_time)

    async def _prepare(self, create: bool) -> None:
        await self._db.execute("PRAGMA busy_timeout = 5000")
        if not create and await self._version() == 0:  # before WAL: nothing is written
            raise StoreMissing(self._path, " (the file holds no optgate schema)")
        await self._db.execute("PRAGMA journal_mode = WAL")
        # FULL (the default): a committed opt-out survives a power cut
        await self._db.execute("PRAGMA synchronous = FULL")
        # erased plaintext must not linger in free pages
        await self._db.execute("PRAGMA secure_delete = ON")
        await self._db.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        version = await self._version()
        if version > len(MIGRATIONS):
            raise StoreError(
                f"store {self._path} has schema {version}, newer than this optgate "
                f"({len(MIGRATIONS)}): upgrade optgate"
            )
        for number, step in enumerate(MIGRATIONS[version:], start=version + 1):
            if isinstance(step, Rekey):
                await self._sql_write(functools.partial(self._rekey, number))
                continue
            script = step.ddl("sqlite")
            if isinstance(step, AddColumn) and step.column.name in await self._columns(step):
                script = ""  # SQLite has no IF NOT EXISTS for columns: set back, run again
            await self._db.executescript(
                f"BEGIN IMMEDIATE; {script}; PRAGMA user_version = {number}; COMMIT;"
            )

    async def _columns(self, change: AddColumn) -> set[str]:
        async with self._db.execute(f"PRAGMA table_info({change.table})") as cursor:
            return {row[1] for row in await cursor.fetchall()}

    async def _rekey(self, version: int, tx: Transaction) -> None:
        await audit.rekey(tx, self._key, f"SQLite store {self._path}")
        await self._db.execute(f"PRAGMA user_version = {version}")

    async def _version(self) -> int:
        async with self._db.execute("PRAGMA user_version") as cursor:
            row = await cursor.fetchone()
        return int(row[0]) if row else 0

    async def close(self) -> None:
        """Close the connections."""
        self._ledger_thread.shutdown()
        self._ledger_db.close()
        self._commit_db.close()
        self._hold_db.close()
        self._hot.close()
        await self._db.close()

    # --- the driver hooks (suppression/sql/driver.py), each error a StoreError ---

    @contextlib.contextmanager
    def _reading(self) -> Iterator[None]:
        """Read errors as StoreError (the one mapping for reads)."""
        try:
            yield
        except (sqlite3.Error, ValueError) as exc:  # ValueError: closed, or a bad stored time
            raise StoreError(f"cannot read SQLite store {self._path}: {exc}") from None

    @contextlib.contextmanager
    def _writing_errors(self) -> Iterator[None]:
        """Write errors as StoreError (the one mapping for writes)."""
        try:
            yield
        except (sqlite3.Error, RuntimeError) as exc:  # RuntimeError: closed (a thread too)
            raise StoreError(f"cannot write to SQLite store {self._path}: {exc}") from None

    async def _write(self, work: Callable[[], Awaitable[T]]) -> T:
        """Run an async write function inside one IMMEDIATE transaction.

        Transactions of concurrent sessions share one connection, so they
        take turns; other processes wait on SQLite's own lock (busy_timeout).
        """
        async with self._writing:
            try:
                await self._db.execute("BEGIN IMMEDIATE")
            except (sqlite3.OperationalError, ValueError) as exc:  # ValueError: closed
                raise StoreError(f"cannot write to SQLite store {self._path}: {exc}") from None
            try:
                with self._writing_errors():
                    result = await work()
                    await self._db.commit()
            except BaseException:
                await self._db.rollback()
                raise
            return result

    async def _sql_write(
        self, work: Callable[[Transaction], Awaitable[T]], *, chain: bool = True
    ) -> T:
        tx = _Transaction(self)
        result = await self._write(lambda: work(tx))
        self._committed(tx.appended)
        return result

    async def _sql_read(self, work: Callable[[_Sql], Awaitable[T]]) -> T:
        with self._reading():
            return await work(_Sql(self._db))

    async def _sql_peek(self, work: Callable[[_Sql], Awaitable[T]]) -> T:
        with self._reading():
            return await work(_Peek(self._hot))

    async def _sql_stream(self, statement: str, *args: object) -> AsyncGenerator[Row, None]:
        with self._reading():
            async with contextlib.aclosing(_Sql(self._db).stream(statement, *args)) as rows:
                async for row in rows:
                    yield row

    # --- what the import runs build on (suppression/sqlite_imports.py) ---

    async def _head(self) -> tuple[int, str]:
        return await audit.head(_Sql(self._db))

    async def _audit(
        self,
        actor: str,
        action: str,
        subject: str | None,
        detail: Mapping[str, object],
        changed: Sequence[Suppression | Consent] = (),
    ) -> Head:
        return await audit.append(
            _Transaction(self), self._key, actor, action, subject, detail, changed
        )

    async def _insert_consents(self, consents: Sequence[Consent]) -> None:
        await insert_consents(_Transaction(self), consents)

    async def _all(self, sql: str, params: Sequence[object], convert: Any) -> list[Any]:
        with self._reading():
            async with self._db.execute(sql, params) as cursor:
                return [convert(row) for row in await cursor.fetchall()]

    def suppression_import(
        self, *, actor: str, note: Mapping[str, object]
    ) -> contextlib.AbstractAsyncContextManager[SuppressionImport]:
        """A suppression import run (suppression/sqlite_imports.py)."""
        from suppression import sqlite_imports  # on first use: most commands never import

        return sqlite_imports.suppression_run(self, actor, note)

    def consent_import(
        self, *, actor: str, note: Mapping[str, object]
    ) -> contextlib.AbstractAsyncContextManager[ConsentImport]:
        """A consent import run (suppression/sqlite_imports.py)."""
        from suppression import sqlite_imports

        return sqlite_imports.consent_run(self, actor, note)

    # --- the hot path, the send ledger, the rate counters, the commit point ---
    async def lookup_many(
        self,
        recipients: Sequence[Address],
        scopes: Sequence[str],
        purpose: str | None,
        ledger: Ledger | None = None,
    ) -> dict[str, Facts]:
        """Suppressions in the given scopes, the latest consent for purpose, earlier delivery.

        The hot path of every message runs inline: in WAL mode a reader never
        waits for a lock, the queries take tens of microseconds, and a hop to
        a thread costs several times that (measured: 70 us inline, 370 us
        through an executor).
        """
        with self._reading():
            return self._lookup(list(recipients), frozenset(scopes), purpose, ledger)

    def _lookup(
        self,
        recipients: list[Address],
        scopes: frozenset[str],
        purpose: str | None,
        ledger: Ledger | None,
    ) -> dict[str, Facts]:
        owners: dict[str, list[str]] = {}
        for address in recipients:
            for key in stored_keys(address):
                owners.setdefault(key, []).append(address.sha256)
        found: dict[str, list[Suppression]] = {a.sha256: [] for a in recipients}
        rows = self._hot.execute(
            f"SELECT {SUPPRESSION_COLUMNS} FROM suppression "
            f"WHERE key IN ({question_marks(len(owners))})",
            tuple(owners),
        ).fetchall()
        for row in rows:
            if row[2] in scopes:
                record = suppression_of(row)
                for owner in owners[row[0]]:
                    found[owner].append(record)
        consents: dict[str, Consent] = {}
        if purpose is not None:
            rows = self._hot.execute(
                f"SELECT {CONSENT_COLUMNS} FROM consent "
                f"WHERE sha256 IN ({question_marks(len(found))}) AND purpose = ? "
                "ORDER BY created, id",
                (*found, purpose),
            ).fetchall()
            for row in rows:
                consent = consent_of(row)
                consents[consent.sha256] = consent
        done: dict[str, str | None] = {}
        if ledger is not None:
            rows = self._hot.execute(
                f"SELECT sha256, state FROM send WHERE message = ? AND at >= ? "
                f"AND sha256 IN ({question_marks(len(found))})",
                (ledger.message, time_text(ledger.since), *found),
            ).fetchall()
            done = {row[0]: row[1] for row in rows}
        return {
            key: Facts(
                tuple(found[key]),
                consents.get(key),
                key in done and done[key] not in UNSETTLED,
                done.get(key) in UNSETTLED,
            )
            for key in found
        }

    async def record_sends(self, sends: Sequence[Send]) -> None:
        """Remember delivered copies (the send ledger); concurrent messages share a commit."""
        if sends:
            with self._writing_errors():
                await self._ledger.add(sends)

    def _record_sends(self, sends: Sequence[Send]) -> None:
        _write_sends(self._ledger_db, sends)

    async def hold_sends(self, sends: Sequence[Send], then: Callable[[], None]) -> None:
        """The relay's commit point (LoopCommit): ``sends`` committed, then ``then()``."""
        with self._writing_errors():
            await self._holding.add(sends, then)

    async def take_rate(
        self, buckets: Sequence[tuple[str, int]], *, window: int, at: datetime
    ) -> bool:
        """Count one event in each bucket's current window if none is full; else nothing.

        On the send ledger's thread and connection (synchronous NORMAL: a commit without
        an fsync; a power cut may forget the last counts, never an opt-out): every web
        request and API call is counted, and an fsync each would halve their rate.
        """
        slot, stale = rate_slot(at, window), stale_slot(at)
        keys = sorted({key for key, _ in buckets})
        loop = asyncio.get_running_loop()
        with self._writing_errors():
            return await loop.run_in_executor(
                self._ledger_thread, self._take_rate, buckets, keys, slot, stale
            )

    def _take_rate(
        self, buckets: Sequence[tuple[str, int]], keys: list[str], slot: int, stale: int
    ) -> bool:
        with _immediate(self._ledger_db) as db:
            db.execute(_sqlite(RATE_FORGET), (stale,))
            counts = dict(db.execute(_sqlite(RATE_READ), _args((slot, keys))).fetchall())
            if not within_limits(buckets, counts):
                return False  # (nothing was counted: the forgetting commits alone)
            db.executemany(_sqlite(RATE_MAKE), [(key, slot) for key in keys])
            db.execute(_sqlite(RATE_COUNT), _args((slot, keys)))
        return True

    async def mark_sent(
        self, owner: str, offer: int, sha256s: Sequence[str], then: Callable[[set[str]], None]
    ) -> set[str]:
        """The commit point: one transaction on the event loop's thread (an fsync, a few
        ms, while this process's other writers wait their turn), then ``then(moved)``
        with nothing in between. Another process's lock held longer than
        COMMIT_POINT_WAIT_MS is an error: the copies stay claimed and are tried again."""
        async with self._writing:
            with self._writing_errors(), _immediate(self._commit_db) as db:
                rows = db.execute(_sqlite(MARK_SENT), _args((offer, owner, list(sha256s))))
                moved = {str(row[0]) for row in rows.fetchall()}
            then(moved)
        return moved

    async def _erased(self) -> None:
        """Copy the WAL into the database and truncate it (waits for readers: busy_timeout),
        so that no old page with the erased plaintext stays in it."""
        try:
            async with self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)") as cursor:
                row = await cursor.fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot checkpoint SQLite store {self._path}: {exc}") from None
        if row is None or row[0]:
            raise StoreError(
                f"the erasure is committed, but readers of {self._path} kept its write-ahead "
                "log from being emptied, so it may still hold the erased plaintext: run "
                "'optgate subject erase' again once the load is lower"
            )
