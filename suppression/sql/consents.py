"""Consent records, written once over the driver."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from dataclasses import replace

from suppression.model import Consent
from suppression.rows import CONSENT_COLUMNS, consent_event, to_consent
from suppression.sql.audit import head
from suppression.sql.driver import Driver, Transaction
from suppression.sql.tables import CONSENT
from suppression.statecheck import rows_detail

_COLUMNS = CONSENT_COLUMNS.split(", ")


async def insert_consents(tx: Transaction, consents: Sequence[Consent]) -> None:
    """Insert consent records as they are, their event included, in order (ids follow)."""
    if consents:
        rows = [
            (
                c.sha256,
                c.purpose,
                c.granted,
                c.source,
                c.created,
                c.policy_version,
                c.address,
                c.evidence,
                c.event,
            )
            for c in consents
        ]
        await tx.insert(CONSENT, _COLUMNS, rows)


async def append_consents(tx: Transaction, consents: Sequence[Consent], actor: str) -> None:
    """Insert consent records and their audit event (inside the caller's transaction)."""
    event, _ = await head(tx)
    subject, detail = consent_event(consents)
    records = [replace(c, event=event) for c in consents]
    detail |= rows_detail(consents=records)
    await tx.audit(actor, "consent", subject, detail, records)
    await insert_consents(tx, records)


class Consents(Driver):
    """Consent records, once for both stores."""

    async def record_consents(self, consents: Sequence[Consent], *, actor: str) -> int:
        """Append consent records with one audit event."""
        if not consents:
            return 0

        async def work(tx: Transaction) -> int:
            await append_consents(tx, consents, actor)
            return len(consents)

        return await self._sql_write(work)

    async def iter_consents(self, purpose: str | None) -> AsyncIterator[Consent]:
        """Stream consent records in the order they were made."""
        where, args = (" WHERE purpose = $1", [purpose]) if purpose else ("", [])
        statement = f"SELECT {CONSENT_COLUMNS} FROM consent{where} ORDER BY id"
        async with aclosing(self._sql_stream(statement, *args)) as rows:
            async for row in rows:
                yield to_consent(row, self._parse)
