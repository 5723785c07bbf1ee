"""Suppressions, the audit log's reads and erasure, written once over the driver."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from contextlib import aclosing

from suppression.address import Address
from suppression.held_rows import HELD_COLUMNS, to_held
from suppression.model import (
    AuditEvent,
    BatchResult,
    HeldRequest,
    ImportItem,
    OptOutCheck,
    Reason,
    Suppression,
    now,
)
from suppression.outbox import Delivery
from suppression.rows import (
    CONSENT_COLUMNS,
    EVENT_COLUMNS,
    SEND_COLUMNS,
    SUPPRESSION_COLUMNS,
    added_records,
    batch_result,
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
from suppression.sql.audit import head
from suppression.sql.consents import insert_consents
from suppression.sql.driver import Driver, Sql, Transaction
from suppression.sql.integration import DELIVERY_COLUMNS, ERASE_OUTBOX, delivery
from suppression.sql.tables import SUPPRESSION
from suppression.statecheck import removed_detail, rows_detail
from suppression.store import Erasure, Holder, OfferCopy, SoftBounce, SubjectRecord

_COMPLIANCE = (
    "SELECT s.key, s.scope, s.reason, s.source, s.created, count(d.sha256), max(d.at) "
    "FROM suppression s LEFT JOIN send d ON d.sha256 = s.key AND d.at > s.created "
    "AND d.class != 'transactional' "
    "AND (s.scope = 'global' OR s.scope = 'topic:' || d.topic) "
    "WHERE s.kind = 'sha256' GROUP BY s.key, s.scope ORDER BY s.created"
)
_BY_KEYS = f"SELECT {SUPPRESSION_COLUMNS} FROM suppression WHERE key = ANY($1::text[])"
_HISTORY = f"SELECT {CONSENT_COLUMNS} FROM consent WHERE sha256 = $1 ORDER BY created, id"


class Suppressions(Driver):
    """Suppressions and the audit log, once for both stores."""

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

        async def work(tx: Transaction) -> BatchResult:
            seq, _ = await head(tx)
            at = now()
            rows = suppression_rows(
                unique,
                scope=scope,
                source=source,
                evidence=evidence,
                event=seq,
                created=lambda when: when or at,
            )
            added = await tx.insert(SUPPRESSION, SUPPRESSION.names, rows) if rows else 0
            if added:
                keys = None
                if added != len(unique):
                    found = await tx.fetch(
                        "SELECT key FROM suppression "
                        "WHERE scope = $1 AND event = $2 AND key = ANY($3::text[])",
                        scope,
                        seq,
                        list(unique),
                    )
                    keys = {str(row[0]) for row in found}
                subject, detail = suppress_event(unique, note, scope, source, added)
                records = list(
                    added_records(unique, scope=scope, source=source, event=seq, at=at, added=keys)
                )
                detail |= rows_detail(records)
                await tx.audit(actor, "suppress", subject, detail, records)
            return batch_result(len(items), len(unique), added, seq)

        return await self._sql_write(work)

    async def unsuppress(self, keys: Sequence[str], *, scope: str, actor: str) -> int:
        """Delete suppressions of a scope; audited per key."""

        async def work(tx: Transaction) -> int:
            removed = 0
            for key in dict.fromkeys(keys):
                forms = [key, "@" + key] if len(key) == 64 else ["#" + key]
                rows = await tx.fetch(
                    "DELETE FROM suppression WHERE key = ANY($1::text[]) AND scope = $2 "
                    f"RETURNING {SUPPRESSION_COLUMNS}",
                    forms,
                    scope,
                )
                gone = [to_suppression(row, tx.time) for row in rows]
                if gone:
                    removed += 1
                    detail = {"scope": scope, **removed_detail(gone)}
                    await tx.audit(actor, "unsuppress", key, detail, gone)
            return removed

        return await self._sql_write(work)

    async def audit(
        self, *, actor: str, action: str, subject: str | None, detail: Mapping[str, object] = {}
    ) -> int:
        """Append a stand-alone audit event."""

        async def work(tx: Transaction) -> int:
            return await tx.audit(actor, action, subject, detail)

        return await self._sql_write(work)

    async def compliance(self) -> AsyncIterator[OptOutCheck]:
        """Opt-outs (address keys) joined with the non-transactional sends after them."""
        parse = self._parse
        async with aclosing(self._sql_stream(_COMPLIANCE)) as rows:
            async for key, scope, reason, source, created, count, last in rows:
                at = parse(created)
                yield OptOutCheck(
                    key, scope, Reason(reason), source, at, count, parse(last) if last else None
                )

    async def holder(self, sha256: str) -> Holder:
        """Suppressions and latest consent per purpose of one identity hash (committed rows)."""

        async def work(sql: Sql) -> Holder:
            suppressions = await sql.fetch(
                f"SELECT {SUPPRESSION_COLUMNS} FROM suppression WHERE key = $1 ORDER BY scope",
                sha256,
            )
            records = await sql.fetch(_HISTORY, sha256)
            return Holder.of(
                [to_suppression(row, sql.time) for row in suppressions],
                [to_consent(row, sql.time) for row in records],
            )

        return await self._sql_peek(work)

    async def subject(self, address: Address) -> SubjectRecord:
        """Every suppression, consent, send and audit event about an address."""

        async def work(sql: Sql) -> SubjectRecord:
            rows = await sql.fetch(f"{_BY_KEYS} ORDER BY created", list(stored_keys(address)))
            suppressions = [to_suppression(row, sql.time) for row in rows]
            rows = await sql.fetch(
                f"SELECT {CONSENT_COLUMNS} FROM consent WHERE sha256 = $1 ORDER BY id",
                address.sha256,
            )
            consents = [to_consent(row, sql.time) for row in rows]
            rows = await sql.fetch(
                f"SELECT {SEND_COLUMNS} FROM send WHERE sha256 = $1 ORDER BY at", address.sha256
            )
            sends = [to_send(row, sql.time) for row in rows]
            seqs = sorted(
                {s.event for s in suppressions if s.event is not None}
                | {c.event for c in consents if c.event is not None}
            )
            rows = await sql.fetch(
                f"SELECT {EVENT_COLUMNS} FROM audit "
                "WHERE subject = ANY($1::text[]) OR seq = ANY($2::bigint[]) ORDER BY seq",
                [address.sha256, address.md5, address.domain_key],
                seqs,
            )
            events = [to_event(row, sql.time) for row in rows]
            return SubjectRecord(
                tuple(suppressions),
                tuple(consents),
                tuple(events),
                tuple(sends),
                *await _held_about(sql, address),
            )

        return await self._sql_read(work)

    async def erase(self, address: Address, *, actor: str) -> Erasure:
        """Delete plaintext and evidence, revoke every consent, leave a tombstone; then
        let the backend drop old copies of the pages it can (``_erased``)."""

        async def work(tx: Transaction) -> Erasure:
            seq, _ = await head(tx)
            cleared = await tx.execute(
                "UPDATE suppression SET address = NULL, evidence = NULL "
                "WHERE key = ANY($1::text[]) AND (address IS NOT NULL OR evidence IS NOT NULL)",
                [address.sha256, "#" + address.md5],
            )
            cleared += await tx.execute(
                "UPDATE consent SET address = NULL, evidence = NULL "
                "WHERE sha256 = $1 AND (address IS NOT NULL OR evidence IS NOT NULL)",
                address.sha256,
            )
            history = [to_consent(row, tx.time) for row in await tx.fetch(_HISTORY, address.sha256)]
            revocations, tombstone = erasure_records(address.sha256, history, event=seq, at=now())
            rows = await tx.fetch(
                "DELETE FROM suppression WHERE key = $1 AND scope = 'global' "
                f"RETURNING {SUPPRESSION_COLUMNS}",
                address.sha256,
            )
            replaced = [to_suppression(row, tx.time) for row in rows]
            await tx.execute(
                f"INSERT INTO suppression ({', '.join(SUPPRESSION.names)}) "
                "VALUES ($1, 'global', 'sha256', NULL, $2, $3, NULL, $4, $5)",
                address.sha256,
                Reason.ERASED.value,
                tombstone.source,
                tombstone.created,
                seq,
            )
            await insert_consents(tx, revocations)
            await tx.execute(ERASE_OUTBOX, address.sha256, address.md5)
            detail = {
                "cleared": cleared,
                "revoked": len(revocations),
                **rows_detail([tombstone], revocations),
                **removed_detail(replaced),
            }
            await tx.audit(actor, "erase", address.sha256, detail)
            return Erasure(cleared, len(revocations))

        result = await self._sql_write(work)
        await self._erased()
        return result

    async def _erased(self) -> None:
        """After an erasure's commit (SQLite: empty the write-ahead log)."""

    async def iter_suppressions(self, scope: str | None) -> AsyncIterator[Suppression]:
        """Stream suppressions in key order, a page at a time."""
        where, args = (" WHERE scope = $1", [scope]) if scope else ("", [])
        statement = f"SELECT {SUPPRESSION_COLUMNS} FROM suppression{where}"
        async with aclosing(self._sql_stream(statement, *args)) as rows:
            async for row in rows:
                yield to_suppression(row, self._parse)

    async def iter_events(self) -> AsyncGenerator[AuditEvent, None]:
        """Stream the audit log in sequence order."""
        statement = f"SELECT {EVENT_COLUMNS} FROM audit ORDER BY seq"
        async with aclosing(self._sql_stream(statement)) as rows:
            async for row in rows:
                yield to_event(row, self._parse)


async def _held_about(
    sql: Sql, address: Address
) -> tuple[
    tuple[HeldRequest, ...], tuple[SoftBounce, ...], tuple[Delivery, ...], tuple[OfferCopy, ...]
]:
    """The subject's held requests, soft bounces, webhook outbox events and offer copies."""
    key = address.sha256
    rows = await sql.fetch(
        f"SELECT {HELD_COLUMNS} FROM held_request WHERE sha256 = $1 ORDER BY created", key
    )
    held = tuple(to_held(row, sql.time) for row in rows)
    rows = await sql.fetch("SELECT message, at FROM soft_bounce WHERE sha256 = $1 ORDER BY at", key)
    bounces = tuple(SoftBounce(message, sql.time(at)) for message, at in rows)
    rows = await sql.fetch(
        f"SELECT {DELIVERY_COLUMNS} FROM outbox WHERE key IN ($1, $2) ORDER BY id",
        key,
        address.md5,
    )
    deliveries = tuple(delivery(row, sql) for row in rows)
    rows = await sql.fetch(
        "SELECT c.offer, o.partner, c.state, c.until FROM offer_copy c "
        "JOIN offer o ON o.id = c.offer WHERE c.sha256 = $1 ORDER BY c.offer",
        key,
    )
    copies = tuple(OfferCopy(int(o), partner, state, sql.time(t)) for o, partner, state, t in rows)
    return held, bounces, deliveries, copies
