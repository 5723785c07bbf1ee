"""The driver interface the shared store operations run on: one connection, the
statements written once with ``$n`` placeholders, times as each backend stores them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

from suppression.model import Consent, Suppression

Row = Sequence[Any]


class Sql(Protocol):
    """A connection (inside a transaction, or for reads)."""

    lock: str  # what a claiming SELECT ends with: "FOR UPDATE SKIP LOCKED" where there is one

    async def fetch(self, statement: str, *args: object) -> list[Row]:
        """Rows of a query."""

    def stream(self, statement: str, *args: object) -> AsyncIterator[Row]:
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
