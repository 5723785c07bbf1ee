"""Copy a whole store to another (SQLite <-> PostgreSQL), streaming, verified per table.

Table-driven: the schema declared once (suppression/sql/tables.py: ``TABLES``)
names every table with its columns, each typed so it converts between the
backends, and the order that makes the copy and its digest reproducible. A
source table the schema does not declare stops the copy before anything is
written.

The source is read in one snapshot, a batch at a time; the destination is
written in one transaction (COPY into PostgreSQL) that commits only if every
table's row count and digest, computed on both sides, match. Memory stays
flat whatever the size.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import aiosqlite
import asyncpg

from suppression.errors import OptgateError, StoreError
from suppression.opening import open_store, sqlite_path
from suppression.postgres import safe_url
from suppression.sql.schema import Kind, Table
from suppression.sql.tables import TABLES
from suppression.sqlite_values import parse_time, time_text

_FAILURES = (OSError, sqlite3.Error, asyncpg.PostgresError, asyncpg.InterfaceError)
Row = tuple[Any, ...]
BATCH = 5000
# bookkeeping of the schema itself (each store makes its own), not data
NOT_COPIED = frozenset({"schema_version"})


@dataclass(frozen=True)
class Copied:
    """One table's figures on both sides."""

    table: str
    source_rows: int
    source_digest: str
    destination_rows: int
    destination_digest: str

    @property
    def matches(self) -> bool:
        """Counts and digests agree."""
        return (self.source_rows, self.source_digest) == (
            self.destination_rows,
            self.destination_digest,
        )


class Mismatch(Exception):
    """The destination does not hold what was read: its transaction is rolled back."""


def _canonical(value: Any) -> Any:
    if isinstance(value, bytes | memoryview):
        return bytes(value).hex()
    return time_text(value) if isinstance(value, datetime) else value


class Digest:
    """SHA-256 over a table's rows in order, each as canonical JSON (times as UTC text,
    bytes as hex)."""

    def __init__(self) -> None:
        self.rows = 0
        self._hash = hashlib.sha256()

    def add(self, rows: Sequence[Row]) -> None:
        """Take the next rows."""
        for row in rows:
            line = json.dumps([_canonical(v) for v in row], ensure_ascii=False)
            self._hash.update(line.encode() + b"\n")
        self.rows += len(rows)

    def hexdigest(self) -> str:
        """The digest so far."""
        return self._hash.hexdigest()


class Side(Protocol):
    """One store's tables, raw: rows of neutral values (str, int, bool, aware datetime)."""

    shown: str

    async def tables(self) -> set[str]:
        """The tables that exist."""

    async def has_rows(self, table: str) -> bool:
        """Whether a table that exists holds a row."""

    def read(self, table: Table) -> AsyncIterator[list[Row]]:
        """The table's rows in its order, a batch at a time."""

    async def write(self, table: Table, rows: list[Row]) -> None:
        """Append rows (inside the open transaction)."""

    async def finish(self, table: Table) -> None:
        """After a table's last batch."""

    def transaction(self, *, write: bool) -> contextlib.AbstractAsyncContextManager[None]:
        """One snapshot (reading) or one all-or-nothing transaction (writing)."""

    async def close(self) -> None:
        """Release the connection."""


class SQLiteSide:
    """A SQLite store's file."""

    def __init__(self, db: aiosqlite.Connection, shown: str) -> None:
        self._db, self.shown = db, shown

    @classmethod
    async def open(cls, url: str) -> SQLiteSide:
        """Connect (to a store opened before, so the file exists)."""
        db = await aiosqlite.connect(sqlite_path(url), isolation_level=None)
        await db.execute("PRAGMA busy_timeout = 5000")
        return cls(db, url)

    async def tables(self) -> set[str]:
        """Tables of the file (not SQLite's own)."""
        async with self._db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        ) as cursor:
            return {row[0] for row in await cursor.fetchall()}

    async def has_rows(self, table: str) -> bool:
        """Whether the table holds a row."""
        async with self._db.execute(f'SELECT 1 FROM "{table}" LIMIT 1') as cursor:
            return await cursor.fetchone() is not None

    async def read(self, table: Table) -> AsyncIterator[list[Row]]:
        """Rows converted from SQLite's storage (times as text, booleans as 0/1)."""
        convert = _converters(table, {"time": parse_time, "bool": bool})
        columns = ", ".join(f'"{n}"' for n in table.names)
        async with self._db.execute(
            f'SELECT {columns} FROM "{table.name}" ORDER BY {table.order}'
        ) as cursor:
            while rows := await cursor.fetchmany(BATCH):
                yield [convert(row) for row in rows]

    async def write(self, table: Table, rows: list[Row]) -> None:
        """INSERT the rows as SQLite stores them."""
        convert = _converters(table, {"time": time_text, "bool": int})
        columns = ", ".join(f'"{n}"' for n in table.names)
        marks = ", ".join("?" * len(table.columns))
        await self._db.executemany(
            f'INSERT INTO "{table.name}" ({columns}) VALUES ({marks})',
            [convert(row) for row in rows],
        )

    async def finish(self, table: Table) -> None:
        """Nothing: an INTEGER PRIMARY KEY continues after the largest id by itself."""

    @contextlib.asynccontextmanager
    async def transaction(self, *, write: bool) -> AsyncIterator[None]:
        """BEGIN (a WAL snapshot) or BEGIN IMMEDIATE; rolled back on any error."""
        await self._db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            yield
        except BaseException:
            await self._db.rollback()
            raise
        await self._db.commit()

    async def close(self) -> None:
        """Close the connection."""
        await self._db.close()


class PostgresSide:
    """A PostgreSQL store's database."""

    def __init__(self, conn: asyncpg.Connection, shown: str) -> None:
        self._conn, self.shown = conn, shown

    @classmethod
    async def open(cls, url: str) -> PostgresSide:
        """Connect."""
        conn = await asyncpg.connect(url, server_settings={"timezone": "UTC"})
        return cls(conn, safe_url(url))

    async def tables(self) -> set[str]:
        """Tables of the connection's schema."""
        rows = await self._conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
        )
        return {row[0] for row in rows}

    async def has_rows(self, table: str) -> bool:
        """Whether the table holds a row."""
        return bool(await self._conn.fetchval(f'SELECT EXISTS (SELECT 1 FROM "{table}")'))

    async def read(self, table: Table) -> AsyncIterator[list[Row]]:
        """Rows through a server-side cursor (inside the open transaction)."""
        columns = ", ".join(f'"{n}"' for n in table.names)
        batch: list[Row] = []
        sql = f'SELECT {columns} FROM "{table.name}" ORDER BY {table.order}'
        async for row in self._conn.cursor(sql, prefetch=BATCH):
            batch.append(tuple(row))
            if len(batch) == BATCH:
                yield batch
                batch = []
        if batch:
            yield batch

    async def write(self, table: Table, rows: list[Row]) -> None:
        """COPY the rows in."""
        await self._conn.copy_records_to_table(table.name, records=rows, columns=table.names)

    async def finish(self, table: Table) -> None:
        """Move an identity column's sequence past the copied ids."""
        if table.identity:
            await self._conn.execute(
                f"SELECT setval(pg_get_serial_sequence('{table.name}', '{table.identity}'), "
                f'max("{table.identity}")) FROM "{table.name}" HAVING count(*) > 0'
            )

    @contextlib.asynccontextmanager
    async def transaction(self, *, write: bool) -> AsyncIterator[None]:
        """A read-only repeatable-read snapshot, or one transaction for the whole copy."""
        if write:
            async with self._conn.transaction():
                yield
        else:
            async with self._conn.transaction(isolation="repeatable_read", readonly=True):
                yield

    async def close(self) -> None:
        """Close the connection."""
        await self._conn.close()


def _converters(
    table: Table, by_kind: dict[Kind, Callable[[Any], Any]]
) -> Callable[[Sequence[Any]], Row]:
    """A row converter applying ``by_kind`` to the non-null values of those kinds."""
    steps = [by_kind.get(c.kind) for c in table.columns]

    def convert(row: Sequence[Any]) -> Row:
        return tuple(
            v if step is None or v is None else step(v) for step, v in zip(steps, row, strict=True)
        )

    return convert


@contextlib.asynccontextmanager
async def _side(url: str) -> AsyncIterator[Side]:
    """Raw access to the store a URL names (errors as StoreError)."""
    side: Side
    try:
        if url.startswith("sqlite://"):
            side = await SQLiteSide.open(url)
        else:
            side = await PostgresSide.open(url)
    except (*_FAILURES, ValueError) as exc:
        raise StoreError(f"cannot open {safe_url(url)}: {exc}") from None
    try:
        yield side
    finally:
        await side.close()


async def _check_empty(url: str) -> None:
    """Refuse a destination that holds any row (before anything is created there)."""
    if url.startswith("sqlite://") and not await asyncio.to_thread(Path(sqlite_path(url)).exists):
        return
    async with _side(url) as destination:
        for name in sorted(await destination.tables() - NOT_COPIED):
            if await destination.has_rows(name):
                raise OptgateError(
                    f"destination {destination.shown} is not empty (table {name} has rows): "
                    "store copy only fills a new, empty store; nothing was changed"
                )


async def _migrate(url: str, audit_key: bytes, *, create: bool) -> None:
    store = await open_store(url, audit_key=audit_key, create=create)
    await store.close()


async def copy_store(
    source_url: str,
    destination_url: str,
    progress: Callable[[Copied], None],
    *,
    audit_key: bytes,
) -> list[Copied]:
    """Copy every table; ``progress`` gets each table's figures as it is done. Both
    stores' audit chains are keyed with ``audit_key`` (the installation's).

    Raises ``Mismatch`` (the destination rolled back) when a table's count or
    digest differs between the sides.
    """
    if source_url == destination_url:
        raise OptgateError("source and destination are the same store")
    # (opening a store brings it to this optgate's schema; a missing source is an error)
    await _migrate(source_url, audit_key, create=False)
    async with _side(source_url) as source:
        unknown = await source.tables() - NOT_COPIED - {t.name for t in TABLES}
        if unknown:
            raise OptgateError(
                f"source has tables store copy does not know: {', '.join(sorted(unknown))} "
                "(declare them in suppression/sql/tables.py); nothing was changed"
            )
        await _check_empty(destination_url)
        await _migrate(destination_url, audit_key, create=True)  # the schema, empty
        async with (
            _side(destination_url) as destination,
            source.transaction(write=False),
            destination.transaction(write=True),
        ):
            done = [await _copy_table(source, destination, table, progress) for table in TABLES]
            if not all(c.matches for c in done):
                raise Mismatch("the destination differs from the source: it was rolled back")
    return done


async def _copy_table(
    source: Side, destination: Side, table: Table, progress: Callable[[Copied], None]
) -> Copied:
    read, written = Digest(), Digest()
    try:
        async for rows in source.read(table):
            read.add(rows)
            await destination.write(table, rows)
        await destination.finish(table)
        async for rows in destination.read(table):
            written.add(rows)
    except (*_FAILURES, ValueError) as exc:  # ValueError: a stored time that does not parse
        problem = " ".join(str(exc).split()) or type(exc).__name__
        raise StoreError(
            f"cannot copy table {table.name} (after {read.rows:,} rows): {problem}; "
            f"{destination.shown} was rolled back"
        ) from None
    copied = Copied(table.name, read.rows, read.hexdigest(), written.rows, written.hexdigest())
    progress(copied)
    return copied
