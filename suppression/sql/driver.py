"""The driver interface the shared store operations run on: a connection, statements
written once with ``$n`` placeholders (``= ANY($n)`` for a list), times as each backend
stores them; and the hooks a store provides (``Driver``)."""

from __future__ import annotations

from collections.abc import (
    AsyncGenerator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
    Sequence,
)
from datetime import datetime
from typing import Any, Protocol, TypeVar

from suppression.audit import Head, OnHead
from suppression.model import Consent, Suppression
from suppression.rows import Time
from suppression.sql.schema import Table

Row = Sequence[Any]
T = TypeVar("T")


class Sql(Protocol):
    """A connection (inside a transaction, or for reads)."""

    lock: str  # what a claiming SELECT ends with: "FOR UPDATE SKIP LOCKED" where there is one
    lock_rows: str  # what a SELECT of rows about to change ends with: "FOR UPDATE" or ""

    async def fetch(self, statement: str, *args: object) -> list[Row]:
        """Rows of a query."""

    def stream(self, statement: str, *args: object) -> AsyncGenerator[Row, None]:
        """Rows of a query, a page at a time (memory flat whatever their number)."""

    async def execute(self, statement: str, *args: object) -> int:
        """Run a statement; the rows it changed."""

    async def executemany(self, statement: str, rows: Iterable[Sequence[object]]) -> None:
        """Run a statement once per row of arguments."""

    def time(self, value: Any) -> datetime:
        """A stored time as an aware datetime."""


class Transaction(Sql, Protocol):
    """A write transaction that holds the audit chain: changes and their event commit
    together, or neither does."""

    async def audit(
        self,
        actor: str,
        action: str,
        subject: str | None,
        detail: Mapping[str, object],
        changed: Sequence[Suppression | Consent] = (),
    ) -> int:
        """Append the chained audit event of this transaction's change (and its webhook
        events, from ``changed``: the rows it added or removed); its sequence number."""

    async def insert(self, table: Table, columns: Sequence[str], rows: Sequence[Row]) -> int:
        """Add rows (in their order) that are not there yet; how many were new."""


class Driver:
    """What a backend gives the operations written once (suppression/sql/*.py): one
    error mapping, for every hook, to StoreError."""

    _parse: Time  # a stored time as an aware datetime
    _on_head: OnHead | None  # the hook given at opening (gateway/runtime/stores.py)

    def _committed(self, head: Head | None) -> None:
        """Tell the hook the head a committed transaction appended (None: it appended none)."""
        if head is not None and self._on_head is not None:
            self._on_head(head)

    async def _sql_write(
        self, work: Callable[[Transaction], Awaitable[T]], *, chain: bool = True
    ) -> T:
        """Run ``work`` in one write transaction; ``chain``: one holding the audit chain
        (PostgreSQL: its lock; nothing unaudited needs it)."""
        raise NotImplementedError

    async def _sql_read(self, work: Callable[[Sql], Awaitable[T]]) -> T:
        """Run ``work`` on a connection for reading."""
        raise NotImplementedError

    async def _sql_peek(self, work: Callable[[Sql], Awaitable[T]]) -> T:
        """A short indexed read of committed rows only (SQLite: inline on the hot-path
        connection, no thread hop)."""
        return await self._sql_read(work)

    def _sql_stream(self, statement: str, *args: object) -> AsyncGenerator[Row, None]:
        """Rows of a query in one snapshot, a page at a time (a caller that may stop early
        closes it: contextlib.aclosing)."""
        raise NotImplementedError
