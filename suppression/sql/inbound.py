"""What inbound mail and ESP webhooks keep: the ledger's short-token lookup, soft bounces
and the replay keys of signed notifications, written once over the driver."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from suppression.sql.driver import Driver, Sql, Transaction


class Inbound(Driver):
    """Inbound facts, once for both stores."""

    async def sent_to(self, prefix: str) -> list[tuple[str, str]]:
        """(recipient hash, topic) pairs of the send ledger whose hash starts with ``prefix``."""

        async def work(sql: Sql) -> list[tuple[str, str]]:
            # hex sorts below "g" (COLLATE "C"): the prefix's range in the ledger's index
            rows = await sql.fetch(
                "SELECT DISTINCT sha256, topic FROM send WHERE sha256 >= $1 AND sha256 < $2 "
                "ORDER BY sha256, topic",
                prefix,
                prefix + "g",
            )
            return [(str(sha256), str(topic)) for sha256, topic in rows]

        return await self._sql_peek(work)

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

        async def work(tx: Transaction) -> bool:
            added = await tx.execute(
                "INSERT INTO soft_bounce (sha256, message, at) VALUES ($1, $2, $3) "
                "ON CONFLICT DO NOTHING",
                sha256,
                message,
                at,
            )
            if added:
                await tx.audit(actor, "soft-bounce", sha256, detail)
            return bool(added)

        return await self._sql_write(work)

    async def soft_bounces(self, sha256: str, since: datetime, until: datetime) -> frozenset[str]:
        """The reporting messages of a recipient's soft bounces from ``since`` to ``until``."""

        async def work(sql: Sql) -> frozenset[str]:
            rows = await sql.fetch(
                "SELECT message FROM soft_bounce WHERE sha256 = $1 AND at >= $2 AND at <= $3",
                sha256,
                since,
                until,
            )
            return frozenset(str(row[0]) for row in rows)

        return await self._sql_read(work)

    async def claim_esp_token(
        self, vendor: str, token: str, *, at: datetime, forget_before: datetime
    ) -> bool:
        """Record a notification's replay key; False if it is on record (a replay). Keys
        recorded before ``forget_before`` are forgotten first: a replay that late is stale."""

        async def work(tx: Transaction) -> bool:
            await tx.execute(
                "DELETE FROM esp_token WHERE vendor = $1 AND at < $2", vendor, forget_before
            )
            # a concurrent claim of the same key waits for this one, then adds nothing
            added = await tx.execute(
                "INSERT INTO esp_token (vendor, token, at) VALUES ($1, $2, $3) "
                "ON CONFLICT DO NOTHING",
                vendor,
                token,
                at,
            )
            return bool(added)

        return await self._sql_write(work, chain=False)

    async def release_esp_token(self, vendor: str, token: str) -> None:
        """Forget a key whose notification was not applied, so that the vendor's retry is."""

        async def work(tx: Transaction) -> None:
            await tx.execute(
                "DELETE FROM esp_token WHERE vendor = $1 AND token = $2", vendor, token
            )

        await self._sql_write(work, chain=False)
