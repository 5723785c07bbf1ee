"""The audit chain over the driver: its head, the append of a transaction's event (and
its webhook events), and the one-time keying of an unkeyed chain."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import cast

from suppression.audit import GENESIS, Head, Rekeying, event_body, link
from suppression.errors import StoreError
from suppression.model import Consent, Suppression, now
from suppression.rows import (
    CONSENT_COLUMNS,
    EVENT_COLUMNS,
    PAGE,
    SUPPRESSION_COLUMNS,
    to_consent,
    to_event,
    to_suppression,
)
from suppression.sql.driver import Sql, Transaction
from suppression.sql.integration import Integration
from suppression.statecheck import Sum, consent_hash, legacy_detail, suppression_hash


async def head(sql: Sql) -> tuple[int, str]:
    """The next event's sequence number and the digest it links to."""
    rows = await sql.fetch("SELECT seq, digest FROM audit ORDER BY seq DESC LIMIT 1")
    return (int(rows[0][0]) + 1, str(rows[0][1])) if rows else (1, GENESIS)


async def append(
    sql: Sql,
    key: bytes,
    actor: str,
    action: str,
    subject: str | None,
    detail: Mapping[str, object],
    changed: Sequence[Suppression | Consent] = (),
) -> Head:
    """Append one chained audit event (inside the caller's transaction, which holds the
    chain) and the webhook events of the rows it added or removed (``changed``); the
    chain's new head."""
    seq, prev = await head(sql)
    at = now()
    body = event_body(seq, at, actor, action, subject, detail)
    digest = link(key, prev, body)
    await sql.execute(
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
    await Integration._append_events(
        sql,
        seq=seq,
        ref=digest,
        at=at,
        actor=actor,
        action=action,
        subject=subject,
        detail=detail,
        changed=changed,
    )
    return seq, digest


class Chained:
    """The audit method of a backend's write transaction (a base before its Sql)."""

    _key: bytes  # the chain's key
    appended: Head | None = None  # the head this transaction's last event made

    async def audit(
        self,
        actor: str,
        action: str,
        subject: str | None,
        detail: Mapping[str, object],
        changed: Sequence[Suppression | Consent] = (),
    ) -> int:
        """Append this transaction's event (suppression/sql/driver.py: Transaction.audit)."""
        sql = cast(Sql, self)
        self.appended = await append(sql, self._key, actor, action, subject, detail, changed)
        return self.appended[0]


async def rekey(tx: Transaction, key: bytes, shown: str) -> None:
    """Chain the events of the unkeyed era with the key, and vouch for their rows as a
    whole (inside the migration's transaction)."""
    rekeying, last = Rekeying(key), 0
    while rows := await tx.fetch(
        f"SELECT {EVENT_COLUMNS} FROM audit WHERE seq > $1 ORDER BY seq LIMIT {PAGE}", last
    ):
        events = [to_event(row, tx.time) for row in rows]
        try:
            links = [(*rekeying.step(e), e.seq) for e in events]
        except ValueError as exc:
            raise StoreError(f"cannot upgrade {shown}: {exc}") from None
        await tx.executemany("UPDATE audit SET prev = $1, digest = $2 WHERE seq = $3", links)
        last = events[-1].seq
    if last:
        suppressions, consents = Sum(), Sum()
        async for row in tx.stream(f"SELECT {SUPPRESSION_COLUMNS} FROM suppression"):
            suppressions.add(suppression_hash(to_suppression(row, tx.time)))
        async for row in tx.stream(f"SELECT {CONSENT_COLUMNS} FROM consent"):
            consents.add(consent_hash(to_consent(row, tx.time)))
        detail = legacy_detail(last, rekeying.old.head, suppressions, consents)
        await tx.audit("optgate", "audit-rekey", None, detail)
