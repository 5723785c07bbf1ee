"""The embedded default store: one SQLite file (WAL) through aiosqlite."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import sqlite3
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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import aiosqlite

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

MIGRATIONS: tuple[str | AddColumn, ...] = (
    """
    CREATE TABLE suppression (
        key TEXT NOT NULL,
        scope TEXT NOT NULL,
        kind TEXT NOT NULL,
        address TEXT,
        reason TEXT NOT NULL,
        source TEXT NOT NULL,
        evidence TEXT,
        created TEXT NOT NULL,
        event INTEGER NOT NULL,
        PRIMARY KEY (key, scope)
    ) WITHOUT ROWID;
    CREATE TABLE consent (
        id INTEGER PRIMARY KEY,
        sha256 TEXT NOT NULL,
        purpose TEXT NOT NULL,
        granted INTEGER NOT NULL,
        source TEXT NOT NULL,
        policy_version TEXT,
        address TEXT,
        evidence TEXT,
        created TEXT NOT NULL,
        event INTEGER NOT NULL
    );
    CREATE INDEX consent_by_subject ON consent (sha256, purpose, id);
    CREATE TABLE audit (
        seq INTEGER PRIMARY KEY,
        at TEXT NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        subject TEXT,
        body TEXT NOT NULL,
        prev TEXT NOT NULL,
        digest TEXT NOT NULL
    );
    CREATE INDEX audit_by_subject ON audit (subject);
    """,
    """
    CREATE TABLE send (
        message TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        topic TEXT NOT NULL,
        class TEXT NOT NULL,
        at TEXT NOT NULL,
        PRIMARY KEY (message, sha256)
    ) WITHOUT ROWID;
    CREATE INDEX send_by_subject ON send (sha256, at);
    """,
    # inbound: one row per soft bounce, keyed by the reporting message's digest
    """
    CREATE TABLE soft_bounce (
        sha256 TEXT NOT NULL,
        message TEXT NOT NULL,
        at TEXT NOT NULL,
        PRIMARY KEY (sha256, message)
    ) WITHOUT ROWID;
    """,
    """
    CREATE TABLE partner (
        name TEXT PRIMARY KEY,
        credential TEXT NOT NULL,
        disabled INTEGER NOT NULL DEFAULT 0,
        rate_per_hour INTEGER,
        max_size INTEGER,
        created TEXT NOT NULL
    );
    CREATE TABLE offer (
        id INTEGER PRIMARY KEY,
        partner TEXT NOT NULL REFERENCES partner (name),
        topic TEXT,
        content BLOB NOT NULL,
        state TEXT NOT NULL,
        created TEXT NOT NULL
    );
    CREATE INDEX offer_by_partner ON offer (partner, created);
    CREATE TABLE offer_copy (
        offer INTEGER NOT NULL REFERENCES offer (id),
        sha256 TEXT NOT NULL,
        state TEXT NOT NULL,
        owner TEXT,
        until TEXT NOT NULL,
        PRIMARY KEY (offer, sha256)
    ) WITHOUT ROWID;
    CREATE INDEX offer_copy_open ON offer_copy (state, until);
    """,
    # the audit chain is keyed (HMAC) and records row sums from here on: _rekey
    "",
    # opt-outs by mail: per-source counters (one fixed window each) and the requests
    # held until the address confirms them by a mailed link (IF NOT EXISTS: a store set
    # back to an older schema version runs this again)
    """
    CREATE TABLE IF NOT EXISTS rate_window (
        key TEXT NOT NULL,
        slot INTEGER NOT NULL,
        count INTEGER NOT NULL,
        PRIMARY KEY (key, slot)
    ) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS rate_window_by_slot ON rate_window (slot);
    CREATE TABLE IF NOT EXISTS held_request (
        secret TEXT PRIMARY KEY,
        sha256 TEXT NOT NULL,
        action TEXT NOT NULL,
        scope TEXT NOT NULL,
        created TEXT NOT NULL,
        detail TEXT NOT NULL,
        mailed TEXT,
        done TEXT
    ) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS held_request_by_subject ON held_request (sha256);
    """,
    # ESP webhooks: each signed notification's replay key, accepted once (gateway/esp)
    """
    CREATE TABLE IF NOT EXISTS esp_token (
        vendor TEXT NOT NULL,
        token TEXT NOT NULL,
        at TEXT NOT NULL,
        PRIMARY KEY (vendor, token)
    ) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS esp_token_by_time ON esp_token (vendor, at);
    """,
    # integration (issue 17): API keys, webhook endpoints and their outbox
    "\n".join(table.ddl("sqlite") for table in INTEGRATION_TABLES),
    SEND_CAMPAIGN,
    SEND_STATE,
)
KEYED_CHAIN = 5  # the schema version whose migration is _rekey

MMAP_BYTES = 1 << 36
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)  # the lease time of a copy never claimed
# how long the commit point may wait for another process's write lock (it blocks the loop)
COMMIT_POINT_WAIT_MS = 500
CACHE_KIB = 32768


def _time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _suppression(row: Sequence[Any]) -> Suppression:
    return to_suppression(row, _parse_time)


def _consent(row: Sequence[Any]) -> Consent:
    return to_consent(row, _parse_time)


def _event(row: Sequence[Any]) -> AuditEvent:
    return to_event(row, _parse_time)


def _send(row: Sequence[Any]) -> Send:
    return to_send(row, _parse_time)


def _marks(count: int) -> str:
    return ",".join("?" * count)


def _qmarks(sql: str) -> str:
    """A shared statement with SQLite's placeholders."""
    return re.sub(r"\$\d+", "?", sql)


@functools.lru_cache(maxsize=256)
def _numbered(sql: str) -> str:
    """A shared statement with SQLite's numbered placeholders ($3 -> ?3: reusable, any order)."""
    return re.sub(r"\$(\d+)", r"?\1", sql)


def _arg(value: object) -> object:
    """An argument as SQLite stores it: times as UTC text, booleans as 0/1."""
    if isinstance(value, datetime):
        return _time(value)
    return int(value) if isinstance(value, bool) else value


class _Sql:
    """The shared statements' driver on the store's writer connection (suppression/sql/)."""

    lock = ""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db

    async def fetch(self, statement: str, *args: object) -> list[Row]:
        async with self._db.execute(_numbered(statement), [_arg(a) for a in args]) as cursor:
            return list(await cursor.fetchall())

    async def stream(self, statement: str, *args: object) -> AsyncIterator[Row]:
        async with self._db.execute(_numbered(statement), [_arg(a) for a in args]) as cursor:
            while rows := await cursor.fetchmany(PAGE):
                for row in rows:
                    yield row

    async def execute(self, statement: str, *args: object) -> int:
        cursor = await self._db.execute(_numbered(statement), [_arg(a) for a in args])
        return int(cursor.rowcount)

    async def executemany(self, statement: str, rows: Iterable[Sequence[object]]) -> None:
        await self._db.executemany(_numbered(statement), ([_arg(a) for a in r] for r in rows))

    def time(self, value: Any) -> datetime:
        return _parse_time(value)


class _Transaction(_Sql):
    """A write transaction of the store, with its audit chain."""

    def __init__(self, store: SQLiteStore) -> None:
        super().__init__(store._db)
        self._store = store

    async def audit(
        self,
        actor: str,
        action: str,
        subject: str | None,
        detail: Mapping[str, object],
        changed: Sequence[Suppression | Consent] = (),
    ) -> int:
        return await self._store._audit(actor, action, subject, detail, changed)


def _partner(row: Sequence[Any]) -> Partner:
    return to_partner(row, _parse_time)


def _offer(row: Sequence[Any]) -> Offer:
    return to_offer(row, _parse_time)


def _held(row: Sequence[Any]) -> HeldRequest:
    return to_held(row, _parse_time)


def _connect(path: str, synchronous: str) -> sqlite3.Connection:
    """A plain connection for the hot path: autocommit, mmap'd reads, patient with locks."""
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA busy_timeout = 5000")
    db.execute(f"PRAGMA synchronous = {synchronous}")
    # lookups of a large store read pages without a syscall each
    db.execute(f"PRAGMA mmap_size = {MMAP_BYTES}")
    return db


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


class SQLiteStore(Integration):
    """Store on one SQLite database file."""

    def __init__(
        self, db: aiosqlite.Connection, hot: sqlite3.Connection, path: str, audit_key: bytes
    ) -> None:
        self._db = db
        self._path = path
        self._key = audit_key
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

    @classmethod
    async def open(cls, path: str, audit_key: bytes, *, create: bool = True) -> SQLiteStore:
        """Open the file, switch to WAL and run pending migrations.

        Without ``create`` a file without optgate's schema is ``StoreMissing``.
        """
        try:
            hot = _connect(path, "FULL")
            hot.execute("PRAGMA query_only = 1")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open SQLite store {path}: {exc}") from None
        db = await aiosqlite.connect(path, isolation_level=None)
        store = cls(db, hot, path, audit_key)
        try:
            await store._prepare(create)
        except (sqlite3.Error, StoreError) as exc:
            await store.close()
            if isinstance(exc, StoreError):
                raise
            raise StoreError(f"cannot use SQLite store {path}: {exc}") from None
        return store

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
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            if number == KEYED_CHAIN:
                await self._write(functools.partial(self._rekey, number))
                continue
            if isinstance(script, AddColumn):
                script = await self._column_script(script)
            await self._db.executescript(
                f"BEGIN IMMEDIATE; {script}; PRAGMA user_version = {number}; COMMIT;"
            )

    async def _column_script(self, change: AddColumn) -> str:
        """ALTER TABLE for a column the table lacks, else nothing (SQLite has no IF NOT
        EXISTS for columns: a store set back to an older version runs this again)."""
        async with self._db.execute(f"PRAGMA table_info({change.table})") as cursor:
            present = {row[1] for row in await cursor.fetchall()}
        return "" if change.column.name in present else change.ddl("sqlite")

    async def _sql_write(self, work: Callable[[_Transaction], Awaitable[T]]) -> T:
        async def run() -> T:
            return await work(_Transaction(self))

        result: T = await self._write(run)
        return result

    async def _sql_read(self, work: Callable[[_Sql], Awaitable[T]]) -> T:
        with self._reading():
            return await work(_Sql(self._db))

    async def _version(self) -> int:
        async with self._db.execute("PRAGMA user_version") as cursor:
            row = await cursor.fetchone()
        return int(row[0]) if row else 0

    async def _rekey(self, version: int) -> None:
        """Chain the events of the unkeyed era with the key, and vouch for their rows as a
        whole (inside the caller's transaction, with the schema version)."""
        rekeying, last = Rekeying(self._key), 0
        while events := await self._all(
            f"SELECT {EVENT_COLUMNS} FROM audit WHERE seq > ? ORDER BY seq LIMIT {PAGE}",
            (last,),
            _event,
        ):
            try:
                links = [(*rekeying.step(e), e.seq) for e in events]
            except ValueError as exc:
                raise StoreError(f"cannot upgrade SQLite store {self._path}: {exc}") from None
            await self._db.executemany("UPDATE audit SET prev = ?, digest = ? WHERE seq = ?", links)
            last = events[-1].seq
        if last:
            suppressions, consents = Sum(), Sum()
            async for s in self.iter_suppressions(None):
                suppressions.add(suppression_hash(s))
            async for c in self.iter_consents(None):
                consents.add(consent_hash(c))
            detail = legacy_detail(last, rekeying.old.head, suppressions, consents)
            await self._audit("optgate", "audit-rekey", None, detail)
        await self._db.execute(f"PRAGMA user_version = {version}")

    async def close(self) -> None:
        """Close the connections."""
        self._ledger_thread.shutdown()
        self._ledger_db.close()
        self._commit_db.close()
        self._hot.close()
        await self._db.close()

    @contextlib.contextmanager
    def _reading(self) -> Iterator[None]:
        """Read errors as the StoreError PostgreSQL gives (the one mapping for reads)."""
        try:
            yield
        except (sqlite3.Error, ValueError) as exc:  # ValueError: closed, or a bad stored time
            raise StoreError(f"cannot read SQLite store {self._path}: {exc}") from None

    async def _write(self, work: Any) -> Any:
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
                result = await work()
                await self._db.commit()
            except sqlite3.Error as exc:
                await self._db.rollback()
                raise StoreError(f"cannot write to SQLite store {self._path}: {exc}") from None
            except BaseException:
                await self._db.rollback()
                raise
            return result

    async def _head(self) -> tuple[int, str]:
        """The next event's sequence number and the digest it links to."""
        async with self._db.execute(
            "SELECT seq, digest FROM audit ORDER BY seq DESC LIMIT 1"
        ) as cursor:
            last = await cursor.fetchone()
        return (last[0] + 1, last[1]) if last else (1, GENESIS)

    async def _audit(
        self,
        actor: str,
        action: str,
        subject: str | None,
        detail: Mapping[str, object],
        changed: Sequence[Suppression | Consent] = (),
    ) -> int:
        """Append one chained audit event (inside the caller's transaction) and the webhook
        events of the rows it added or removed (``changed``)."""
        seq, prev = await self._head()
        at = now()
        body = event_body(seq, at, actor, action, subject, detail)
        digest = link(self._key, prev, body)
        await self._db.execute(
            "INSERT INTO audit (seq, at, actor, action, subject, body, prev, digest) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (seq, _time(at), actor, action, subject, body, prev, digest),
        )
        await self._append_events(
            _Sql(self._db),
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

        async def work() -> BatchResult:
            seq, _ = await self._head()
            at = now()
            now_text = _time(at)
            before = self._db.total_changes
            await self._db.executemany(
                "INSERT OR IGNORE INTO suppression "
                "(key, scope, kind, address, reason, source, evidence, created, event) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                suppression_rows(
                    unique,
                    scope=scope,
                    source=source,
                    evidence=evidence,
                    event=seq,
                    created=lambda when: _time(when) if when else now_text,
                ),
            )
            added = self._db.total_changes - before
            if added:
                keys = None if added == len(unique) else await self._added(list(unique), scope, seq)
                subject, detail = suppress_event(unique, note, scope, source, added)
                rows = list(
                    added_records(unique, scope=scope, source=source, event=seq, at=at, added=keys)
                )
                detail |= rows_detail(rows)
                await self._audit(actor, "suppress", subject, detail, rows)
            return batch_result(len(items), len(unique), added, seq)

        result: BatchResult = await self._write(work)
        return result

    async def _added(self, keys: list[str], scope: str, event: int) -> set[str]:
        """Which of a batch's stored keys its event added (the others were there)."""
        added: set[str] = set()
        for start in range(0, len(keys), PAGE):
            chunk = keys[start : start + PAGE]
            async with self._db.execute(
                f"SELECT key FROM suppression WHERE scope = ? AND event = ? "
                f"AND key IN ({_marks(len(chunk))})",
                (scope, event, *chunk),
            ) as cursor:
                added.update(row[0] for row in await cursor.fetchall())
        return added

    def suppression_import(
        self, *, actor: str, note: Mapping[str, object]
    ) -> contextlib.AbstractAsyncContextManager[SuppressionImport]:
        """A suppression import run (suppression/sqlite_imports.py)."""
        from suppression import sqlite_imports  # it builds on this module

        return sqlite_imports.suppression_run(self, actor, note)

    def consent_import(
        self, *, actor: str, note: Mapping[str, object]
    ) -> contextlib.AbstractAsyncContextManager[ConsentImport]:
        """A consent import run (suppression/sqlite_imports.py)."""
        from suppression import sqlite_imports

        return sqlite_imports.consent_run(self, actor, note)

    async def unsuppress(self, keys: Sequence[str], *, scope: str, actor: str) -> int:
        """Delete suppressions of a scope; audited per key."""

        async def work() -> int:
            removed = 0
            for key in dict.fromkeys(keys):
                forms = (key, "@" + key) if len(key) == 64 else ("#" + key,)
                gone = await self._all(
                    f"DELETE FROM suppression WHERE key IN ({_marks(len(forms))}) AND scope = ? "
                    f"RETURNING {SUPPRESSION_COLUMNS}",
                    (*forms, scope),
                    _suppression,
                )
                if gone:
                    removed += 1
                    detail = {"scope": scope, **removed_detail(gone)}
                    await self._audit(actor, "unsuppress", key, detail, gone)
            return removed

        result: int = await self._write(work)
        return result

    async def record_consents(self, consents: Sequence[Consent], *, actor: str) -> int:
        """Append consent records with one audit event."""

        async def work() -> int:
            await self._append_consents(consents, actor)
            return len(consents)

        if not consents:
            return 0
        result: int = await self._write(work)
        return result

    async def _append_consents(self, consents: Sequence[Consent], actor: str) -> None:
        """Insert consent records and their audit event (inside the caller's transaction)."""
        event, _ = await self._head()
        subject, detail = consent_event(consents)
        records = [replace(c, event=event) for c in consents]
        detail |= rows_detail(consents=records)
        await self._audit(actor, "consent", subject, detail, records)
        await self._insert_consents(records)

    async def _insert_consents(self, consents: Sequence[Consent]) -> None:
        """Insert consent records as they are, their event included."""
        await self._db.executemany(
            f"INSERT INTO consent ({CONSENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    c.sha256,
                    c.purpose,
                    int(c.granted),
                    c.source,
                    _time(c.created),
                    c.policy_version,
                    c.address,
                    c.evidence,
                    c.event,
                )
                for c in consents
            ],
        )

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
            f"SELECT {SUPPRESSION_COLUMNS} FROM suppression WHERE key IN ({_marks(len(owners))})",
            tuple(owners),
        ).fetchall()
        for row in rows:
            if row[2] in scopes:
                record = _suppression(row)
                for owner in owners[row[0]]:
                    found[owner].append(record)
        consents: dict[str, Consent] = {}
        if purpose is not None:
            rows = self._hot.execute(
                f"SELECT {CONSENT_COLUMNS} FROM consent "
                f"WHERE sha256 IN ({_marks(len(found))}) AND purpose = ? ORDER BY created, id",
                (*found, purpose),
            ).fetchall()
            for row in rows:
                consent = _consent(row)
                consents[consent.sha256] = consent
        done: dict[str, str | None] = {}
        if ledger is not None:
            rows = self._hot.execute(
                f"SELECT sha256, state FROM send WHERE message = ? AND at >= ? "
                f"AND sha256 IN ({_marks(len(found))})",
                (ledger.message, _time(ledger.since), *found),
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

    async def audit(
        self, *, actor: str, action: str, subject: str | None, detail: Mapping[str, object] = {}
    ) -> int:
        """Append a stand-alone audit event."""

        async def work() -> int:
            return await self._audit(actor, action, subject, detail)

        result: int = await self._write(work)
        return result

    async def record_sends(self, sends: Sequence[Send]) -> None:
        """Remember delivered copies (the send ledger); concurrent messages share a commit."""
        if sends:
            await self._ledger.add(sends)

    def _record_sends(self, sends: Sequence[Send]) -> None:
        db = self._ledger_db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(
                "INSERT OR REPLACE INTO send (message, sha256, topic, class, at, campaign, state) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (s.message, s.sha256, s.topic, s.kind, _time(s.at), s.campaign, s.state)
                    for s in sends
                    if s.state != UNSENT
                ],
            )
            db.executemany(
                "DELETE FROM send WHERE message = ? AND sha256 = ?",
                [(s.message, s.sha256) for s in sends if s.state == UNSENT],
            )
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    async def compliance(self) -> AsyncIterator[OptOutCheck]:
        """Opt-outs (address keys) joined with the non-transactional sends after them."""
        with self._reading():
            async for check in self._compliance():
                yield check

    async def _compliance(self) -> AsyncIterator[OptOutCheck]:
        async with self._db.execute(
            "SELECT s.key, s.scope, s.reason, s.source, s.created, count(d.sha256), max(d.at) "
            "FROM suppression s LEFT JOIN send d ON d.sha256 = s.key AND d.at > s.created "
            "AND d.class != 'transactional' "
            "AND (s.scope = 'global' OR s.scope = 'topic:' || d.topic) "
            "WHERE s.kind = 'sha256' GROUP BY s.key, s.scope ORDER BY s.created"
        ) as cursor:
            while rows := await cursor.fetchmany(PAGE):
                for key, scope, reason, source, created, count, last in rows:
                    yield OptOutCheck(
                        key,
                        scope,
                        Reason(reason),
                        source,
                        _parse_time(created),
                        count,
                        _parse_time(last) if last else None,
                    )

    async def holder(self, sha256: str) -> Holder:
        """Suppressions and latest consent per purpose of one identity hash.

        Read on the hot-path connection, which only ever sees committed rows.
        """
        with self._reading():
            suppressions = [
                _suppression(row)
                for row in self._hot.execute(
                    f"SELECT {SUPPRESSION_COLUMNS} FROM suppression WHERE key = ? ORDER BY scope",
                    (sha256,),
                )
            ]
            records = [
                _consent(row)
                for row in self._hot.execute(
                    f"SELECT {CONSENT_COLUMNS} FROM consent WHERE sha256 = ? ORDER BY created, id",
                    (sha256,),
                )
            ]
        return Holder.of(suppressions, records)

    async def subject(self, address: Address) -> SubjectRecord:
        """Every suppression, consent, send and audit event about an address."""
        keys = stored_keys(address)
        suppressions = await self._all(
            f"SELECT {SUPPRESSION_COLUMNS} FROM suppression WHERE key IN (?, ?, ?) "
            "ORDER BY created",
            keys,
            _suppression,
        )
        consents = await self._all(
            f"SELECT {CONSENT_COLUMNS} FROM consent WHERE sha256 = ? ORDER BY id",
            (address.sha256,),
            _consent,
        )
        sends = await self._all(
            f"SELECT {SEND_COLUMNS} FROM send WHERE sha256 = ? ORDER BY at",
            (address.sha256,),
            _send,
        )
        seqs = {s.event for s in suppressions} | {c.event for c in consents}
        events = await self._all(
            f"SELECT {EVENT_COLUMNS} FROM audit "
            f"WHERE subject IN (?, ?, ?) OR seq IN ({_marks(len(seqs))}) ORDER BY seq",
            (address.sha256, address.md5, address.domain_key, *seqs),
            _event,
        )
        return SubjectRecord(tuple(suppressions), tuple(consents), tuple(events), tuple(sends))

    async def _all(self, sql: str, params: Sequence[object], convert: Any) -> list[Any]:
        with self._reading():
            async with self._db.execute(sql, params) as cursor:
                return [convert(row) for row in await cursor.fetchall()]

    async def erase(self, address: Address, *, actor: str) -> Erasure:
        """Delete plaintext and evidence, revoke every consent, leave a tombstone; then
        checkpoint the WAL so that no old page with the plaintext stays in it."""

        async def work() -> Erasure:
            seq, _ = await self._head()
            cleared = (
                await self._db.execute(
                    "UPDATE suppression SET address = NULL, evidence = NULL "
                    "WHERE key IN (?, ?) AND (address IS NOT NULL OR evidence IS NOT NULL)",
                    (address.sha256, "#" + address.md5),
                )
            ).rowcount
            cleared += (
                await self._db.execute(
                    "UPDATE consent SET address = NULL, evidence = NULL "
                    "WHERE sha256 = ? AND (address IS NOT NULL OR evidence IS NOT NULL)",
                    (address.sha256,),
                )
            ).rowcount
            history = await self._all(
                f"SELECT {CONSENT_COLUMNS} FROM consent WHERE sha256 = ? ORDER BY created, id",
                (address.sha256,),
                _consent,
            )
            revocations, tombstone = erasure_records(address.sha256, history, event=seq, at=now())
            replaced = await self._all(
                f"DELETE FROM suppression WHERE key = ? AND scope = 'global' "
                f"RETURNING {SUPPRESSION_COLUMNS}",
                (address.sha256,),
                _suppression,
            )
            await self._db.execute(
                "INSERT INTO suppression "
                "(key, scope, kind, address, reason, source, evidence, created, event) "
                "VALUES (?, 'global', 'sha256', NULL, ?, ?, NULL, ?, ?)",
                (
                    address.sha256,
                    Reason.ERASED.value,
                    tombstone.source,
                    _time(tombstone.created),
                    seq,
                ),
            )
            await self._insert_consents(revocations)
            await self._db.execute(_numbered(ERASE_OUTBOX), (address.sha256, address.md5))
            detail = {
                "cleared": cleared,
                "revoked": len(revocations),
                **rows_detail([tombstone], revocations),
                **removed_detail(replaced),
            }
            await self._audit(actor, "erase", address.sha256, detail)
            return Erasure(cleared, len(revocations))

        result: Erasure = await self._write(work)
        await self._checkpoint()
        return result

    async def _checkpoint(self) -> None:
        """Copy the WAL into the database and truncate it (waits for readers: busy_timeout)."""
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

    async def iter_suppressions(self, scope: str | None) -> AsyncIterator[Suppression]:
        """Stream suppressions in key order, a page at a time."""
        where, params = ("WHERE scope = ?", (scope,)) if scope else ("", ())
        with self._reading():
            async with self._db.execute(
                f"SELECT {SUPPRESSION_COLUMNS} FROM suppression {where}", params
            ) as cursor:
                while rows := await cursor.fetchmany(PAGE):
                    for row in rows:
                        yield _suppression(row)

    async def iter_consents(self, purpose: str | None) -> AsyncIterator[Consent]:
        """Stream consent records in the order they were made."""
        where, params = ("WHERE purpose = ?", (purpose,)) if purpose else ("", ())
        with self._reading():
            async with self._db.execute(
                f"SELECT {CONSENT_COLUMNS} FROM consent {where} ORDER BY id", params
            ) as cursor:
                while rows := await cursor.fetchmany(PAGE):
                    for row in rows:
                        yield _consent(row)

    async def iter_events(self) -> AsyncGenerator[AuditEvent, None]:
        """Stream the audit log in sequence order."""
        with self._reading():
            async with self._db.execute(
                f"SELECT {EVENT_COLUMNS} FROM audit ORDER BY seq"
            ) as cursor:
                while rows := await cursor.fetchmany(PAGE):
                    for row in rows:
                        yield _event(row)

    async def verify_chain(self, expect: Sequence[tuple[int, str]] = ()) -> ChainReport:
        """Walk the audit log and rebuild the state it vouches for (statecheck.verify)."""
        return await verify(self, self._key, expect)

    # --- inbound: short tokens resolve through the ledger; soft bounces are counted ---

    async def sent_to(self, prefix: str) -> list[tuple[str, str]]:
        """(recipient hash, topic) pairs of the send ledger whose hash starts with ``prefix``."""
        # hex sorts below "g": the prefix's range in the ledger's index
        with self._reading():
            rows = self._hot.execute(
                "SELECT DISTINCT sha256, topic FROM send WHERE sha256 >= ? AND sha256 < ? "
                "ORDER BY sha256, topic",
                (prefix, prefix + "g"),
            ).fetchall()
        return [(sha256, topic) for sha256, topic in rows]

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

        async def work() -> bool:
            cursor = await self._db.execute(
                "INSERT OR IGNORE INTO soft_bounce (sha256, message, at) VALUES (?, ?, ?)",
                (sha256, message, _time(at)),
            )
            if cursor.rowcount:
                await self._audit(actor, "soft-bounce", sha256, detail)
            return bool(cursor.rowcount)

        result: bool = await self._write(work)
        return result

    async def soft_bounces(self, sha256: str, since: datetime, until: datetime) -> frozenset[str]:
        """The reporting messages of a recipient's soft bounces from ``since`` to ``until``."""
        rows = await self._all(
            "SELECT message FROM soft_bounce WHERE sha256 = ? AND at >= ? AND at <= ?",
            (sha256, _time(since), _time(until)),
            lambda row: row[0],
        )
        return frozenset(rows)

    # --- ESP webhooks: the replay keys of signed notifications, each accepted once ---------

    async def claim_esp_token(
        self, vendor: str, token: str, *, at: datetime, forget_before: datetime
    ) -> bool:
        """Record a notification's replay key; False if it is on record (a replay). Keys
        recorded before ``forget_before`` are forgotten first: a replay that late is stale."""

        async def work() -> bool:
            await self._db.execute(
                "DELETE FROM esp_token WHERE vendor = ? AND at < ?", (vendor, _time(forget_before))
            )
            cursor = await self._db.execute(
                "INSERT OR IGNORE INTO esp_token (vendor, token, at) VALUES (?, ?, ?)",
                (vendor, token, _time(at)),
            )
            return bool(cursor.rowcount)

        result: bool = await self._write(work)
        return result

    async def release_esp_token(self, vendor: str, token: str) -> None:
        """Forget a key whose notification was not applied, so that the vendor's retry is."""

        async def work() -> None:
            await self._db.execute(
                "DELETE FROM esp_token WHERE vendor = ? AND token = ?", (vendor, token)
            )

        await self._write(work)

    # --- partners, offers and their fan-out (suppression/partners.py) ---------------------

    async def add_partner(self, partner: Partner, *, actor: str) -> None:
        """Register a partner (its credential already hashed); an existing name is an error."""

        async def work() -> None:
            try:
                await self._db.execute(
                    "INSERT INTO partner (name, credential, disabled, rate_per_hour, max_size, "
                    "created) VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        partner.name,
                        partner.credential,
                        int(partner.disabled),
                        partner.rate_per_hour,
                        partner.max_size,
                        _time(partner.created),
                    ),
                )
            except sqlite3.IntegrityError:
                raise OptgateError(f"partner {partner.name!r} exists already") from None
            await self._audit(actor, "partner-add", None, {"partner": partner.name})

        await self._write(work)

    async def partners(self) -> list[Partner]:
        """Every partner, by name."""
        return await self._all(f"SELECT {PARTNER_COLUMNS} FROM partner ORDER BY name", (), _partner)

    async def partner(self, name: str) -> Partner | None:
        """One partner, or None."""
        found = await self._all(
            f"SELECT {PARTNER_COLUMNS} FROM partner WHERE name = ?", (name,), _partner
        )
        return found[0] if found else None

    async def disable_partner(self, name: str, *, actor: str) -> bool:
        """Refuse the partner's submissions from now on; False if it was disabled already."""

        async def work() -> bool:
            cursor = await self._db.execute(
                "UPDATE partner SET disabled = 1 WHERE name = ? AND disabled = 0", (name,)
            )
            if cursor.rowcount:
                await self._audit(actor, "partner-disable", None, {"partner": name})
            return bool(cursor.rowcount)

        if await self.partner(name) is None:
            raise UnknownPartner(f"no partner named {name!r}")
        result: bool = await self._write(work)
        return result

    async def add_offer(
        self, partner: str, topic: str | None, content: bytes, *, actor: str
    ) -> int:
        """Store an offer durably (queued); its id. Committed when this returns."""

        async def work() -> int:
            cursor = await self._db.execute(
                "INSERT INTO offer (partner, topic, content, state, created) "
                "VALUES (?, ?, ?, ?, ?)",
                (partner, topic, content, OfferState.QUEUED.value, _time(now())),
            )
            offer = int(cursor.lastrowid or 0)
            await self._audit(
                actor, "offer", None, {"partner": partner, "offer": offer, "topic": topic}
            )
            return offer

        result: int = await self._write(work)
        return result

    async def offers_since(self, partner: str, since: datetime) -> int:
        """How many offers a partner submitted since a time (its rate limit)."""
        rows = await self._all(
            "SELECT count(*) FROM offer WHERE partner = ? AND created >= ?",
            (partner, _time(since)),
            lambda row: int(row[0]),
        )
        return int(rows[0])

    async def offer(self, offer_id: int) -> Offer | None:
        """One offer with its content, or None."""
        found = await self._all(
            f"SELECT {OFFER_COLUMNS} FROM offer WHERE id = ?", (offer_id,), _offer
        )
        return found[0] if found else None

    async def offer_statuses(self, partner: str | None) -> list[OfferStatus]:
        """Offers (of one partner, or all) with the counts of their fan-out, oldest first."""
        where, params = ("WHERE o.partner = ?", (partner,)) if partner else ("", ())
        return await self._all(
            status_sql(where),
            params,
            lambda row: offer_status(row, _parse_time),
        )

    async def change_offer(self, offer_id: int, action: str, *, actor: str) -> OfferState:
        """Pause, resume or cancel an offer; its new state (an error if the move is not allowed)."""
        _, target = TRANSITIONS[action]

        async def work() -> OfferState:
            async with self._db.execute(
                "SELECT state FROM offer WHERE id = ?", (offer_id,)
            ) as cursor:
                row = await cursor.fetchone()
            check_transition(offer_id, row[0] if row else None, action)
            if target is OfferState.RUNNING:
                state = OfferState.RUNNING if await self._planned(offer_id) else OfferState.QUEUED
            else:
                state = target
            await self._db.execute(
                "UPDATE offer SET state = ? WHERE id = ?", (state.value, offer_id)
            )
            await self._audit(actor, f"offer-{action}", None, {"offer": offer_id})
            return state

        result: OfferState = await self._write(work)
        return result

    async def _planned(self, offer_id: int) -> bool:
        async with self._db.execute(
            "SELECT 1 FROM offer_copy WHERE offer = ? LIMIT 1", (offer_id,)
        ) as cursor:
            return await cursor.fetchone() is not None

    async def plan_offers(self) -> int:
        """Take the audience of every queued offer (one snapshot each); how many offers."""
        if not self._open_offers(OfferState.QUEUED):
            return 0

        async def work() -> int:
            async with self._db.execute(
                "SELECT id, topic FROM offer WHERE state = ? ORDER BY id",
                (OfferState.QUEUED.value,),
            ) as cursor:
                queued = list(await cursor.fetchall())
            for offer_id, topic in queued:
                await self._db.execute(
                    _qmarks(audience_sql(topic is not None, f"'{_time(EPOCH)}'")),
                    (offer_id, *((topic,) if topic else ())),
                )
                await self._db.execute(
                    "UPDATE offer SET state = ? WHERE id = ?",
                    (OfferState.RUNNING.value, offer_id),
                )
            return len(queued)

        result: int = await self._write(work)
        return result

    def _open_offers(self, state: OfferState) -> bool:
        """A cheap read (no write lock) before a worker's poll takes the writer."""
        with self._reading():
            row = self._hot.execute("SELECT 1 FROM offer WHERE state = ? LIMIT 1", (state.value,))
            return row.fetchone() is not None

    async def claim_copies(self, owner: str, limit: int, lease: timedelta) -> list[Claim]:
        """Lease up to ``limit`` open copies of running offers (SQLite: under the write lock)."""
        if not self._open_offers(OfferState.RUNNING):
            return []

        async def work() -> list[tuple[int, str]]:
            at = now()
            async with self._db.execute(
                "UPDATE offer_copy SET state = 'claimed', owner = ?, until = ? "
                "WHERE (offer, sha256) IN (SELECT c.offer, c.sha256 FROM offer_copy c "
                "JOIN offer o ON o.id = c.offer WHERE o.state = 'running' "
                "AND c.state IN ('todo', 'claimed') AND c.until < ? LIMIT ?) "
                "RETURNING offer, sha256",
                (owner, _time(at + lease), _time(at), limit),
            ) as cursor:
                return [(int(r[0]), str(r[1])) for r in await cursor.fetchall()]

        claimed: list[tuple[int, str]] = await self._write(work)
        if not claimed:
            return []
        hashes = sorted({sha for _, sha in claimed})
        known: dict[str, str] = {}
        for start in range(0, len(hashes), PAGE):
            chunk = hashes[start : start + PAGE]
            async with self._db.execute(
                f"SELECT sha256, address FROM consent WHERE address IS NOT NULL "
                f"AND sha256 IN ({_marks(len(chunk))}) ORDER BY id",
                chunk,
            ) as cursor:
                known.update({str(r[0]): str(r[1]) for r in await cursor.fetchall()})
        return [Claim(offer, sha, known.get(sha)) for offer, sha in claimed]

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
        return await self._move(owner, offer, sha256s, state, ("claimed", "sent"), retry_at)

    async def _move(
        self,
        owner: str,
        offer: int,
        sha256s: Sequence[str],
        state: CopyState,
        old: tuple[str, ...],
        retry_at: datetime | None,
    ) -> set[str]:
        if not sha256s:
            return set()

        async def work() -> set[str]:
            moved: set[str] = set()
            for start in range(0, len(sha256s), PAGE):
                chunk = list(sha256s[start : start + PAGE])
                until = ", until = ?" if retry_at else ""
                async with self._db.execute(
                    f"UPDATE offer_copy SET state = ?{until} WHERE offer = ? AND owner = ? "
                    f"AND state IN ({_marks(len(old))}) AND sha256 IN ({_marks(len(chunk))}) "
                    "RETURNING sha256",
                    (
                        state.value,
                        *((_time(retry_at),) if retry_at else ()),
                        offer,
                        owner,
                        *old,
                        *chunk,
                    ),
                ) as cursor:
                    moved.update(str(r[0]) for r in await cursor.fetchall())
            return moved

        result: set[str] = await self._write(work)
        return result

    async def mark_sent(
        self, owner: str, offer: int, sha256s: Sequence[str], then: Callable[[set[str]], None]
    ) -> set[str]:
        """The commit point: one transaction on the event loop's thread (an fsync, a few
        ms, while this process's other writers wait their turn), then ``then(moved)``
        with nothing in between. Another process's lock held longer than
        COMMIT_POINT_WAIT_MS is an error: the copies stay claimed and are tried again."""
        async with self._writing:
            db = self._commit_db
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    moved = {
                        str(row[0])
                        for start in range(0, len(sha256s), PAGE)
                        for row in db.execute(
                            "UPDATE offer_copy SET state = 'sent' WHERE offer = ? AND owner = ? "
                            "AND state = 'claimed' AND sha256 IN "
                            f"({_marks(len(sha256s[start : start + PAGE]))}) RETURNING sha256",
                            (offer, owner, *sha256s[start : start + PAGE]),
                        ).fetchall()
                    }
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise StoreError(f"cannot write to SQLite store {self._path}: {exc}") from None
            then(moved)
        return moved

    async def finish_offers(self) -> int:
        """Mark running offers with no open copy done; how many."""
        if not self._open_offers(OfferState.RUNNING):
            return 0

        async def work() -> int:
            cursor = await self._db.execute(_qmarks(FINISH_SQL), (OfferState.DONE.value,))
            return int(cursor.rowcount)

        result: int = await self._write(work)
        return result

    async def partner_optouts(self, partner: str) -> list[tuple[str, str | None]]:
        """(identity hash, plaintext if kept) of everyone who opted out of a partner's offers."""
        return await self._all(
            _qmarks(OPTOUTS_SQL),
            (f"partner:{partner}",),
            lambda row: (str(row[0]), row[1]),
        )

    # --- opt-outs by mail: per-source rate limits, requests held for a link ---

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
        try:
            return await loop.run_in_executor(
                self._ledger_thread, self._take_rate, buckets, keys, slot, stale
            )
        except (sqlite3.Error, RuntimeError) as exc:  # RuntimeError: closed (its thread too)
            raise StoreError(f"cannot write to SQLite store {self._path}: {exc}") from None

    def _take_rate(
        self, buckets: Sequence[tuple[str, int]], keys: list[str], slot: int, stale: int
    ) -> bool:
        db = self._ledger_db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("DELETE FROM rate_window WHERE slot < ?", (stale,))
            counts = dict(
                db.execute(
                    f"SELECT key, count FROM rate_window WHERE slot = ? "
                    f"AND key IN ({_marks(len(keys))})",
                    (slot, *keys),
                ).fetchall()
            )
            if not within_limits(buckets, counts):
                db.execute("ROLLBACK")
                return False
            db.executemany(
                "INSERT INTO rate_window (key, slot, count) VALUES (?, ?, 1) "
                "ON CONFLICT (key, slot) DO UPDATE SET count = count + 1",
                [(key, slot) for key in keys],
            )
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return True

    async def hold_request(self, request: HeldRequest, *, actor: str) -> HeldRequest:
        """Keep a request until its link is used (audited); the stored one if already known."""

        async def work() -> HeldRequest:
            cursor = await self._db.execute(
                f"INSERT OR IGNORE INTO held_request ({HELD_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, NULL, NULL)",
                (
                    request.secret,
                    request.sha256,
                    request.action,
                    request.scope,
                    _time(request.created),
                    request.detail,
                ),
            )
            if cursor.rowcount:
                detail = {"action": request.action, "scope": request.scope}
                await self._audit(actor, "request-held", request.sha256, detail)
            stored: list[HeldRequest] = await self._all(
                f"SELECT {HELD_COLUMNS} FROM held_request WHERE secret = ?",
                (request.secret,),
                _held,
            )
            return stored[0]

        result: HeldRequest = await self._write(work)
        return result

    async def held_request(self, secret: str) -> HeldRequest | None:
        """The request whose link secret hashes to ``secret``, or None."""
        found: list[HeldRequest] = await self._all(
            f"SELECT {HELD_COLUMNS} FROM held_request WHERE secret = ?", (secret,), _held
        )
        return found[0] if found else None

    async def mark_mailed(self, secret: str, *, at: datetime) -> None:
        """Record that a request's link went to the next hop."""

        async def work() -> None:
            await self._db.execute(
                "UPDATE held_request SET mailed = ? WHERE secret = ?", (_time(at), secret)
            )

        await self._write(work)

    async def finish_request(
        self, secret: str, *, at: datetime, actor: str, detail: Mapping[str, object]
    ) -> bool:
        """Mark a request done (audited); False when it was done already."""

        async def work() -> bool:
            cursor = await self._db.execute(
                "UPDATE held_request SET done = ? WHERE secret = ? AND done IS NULL "
                "RETURNING sha256, action",
                (_time(at), secret),
            )
            row = await cursor.fetchone()
            if row is None:
                return False
            await self._audit(actor, "request-confirmed", row[0], {"action": row[1], **detail})
            return True

        result: bool = await self._write(work)
        return result
