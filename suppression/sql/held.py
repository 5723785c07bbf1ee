"""Requests held for a confirmation link, and the per-source rate counters' statements,
written once over the driver."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from suppression.held_rows import HELD_COLUMNS, to_held
from suppression.model import HeldRequest
from suppression.sql.driver import Driver, Sql, Transaction

_BY_SECRET = f"SELECT {HELD_COLUMNS} FROM held_request WHERE secret = $1"
# take_rate: forget windows over, make each key's counter, lock them in key order (no
# deadlock between nodes counting the same keys), then count one in each
RATE_FORGET = "DELETE FROM rate_window WHERE slot < $1"
RATE_MAKE = "INSERT INTO rate_window (key, slot, count) VALUES ($1, $2, 0) ON CONFLICT DO NOTHING"
RATE_READ = (
    "SELECT key, count FROM rate_window WHERE slot = $1 AND key = ANY($2::text[]) ORDER BY key"
)
RATE_COUNT = "UPDATE rate_window SET count = count + 1 WHERE slot = $1 AND key = ANY($2::text[])"


class Held(Driver):
    """Held requests, once for both stores."""

    async def hold_request(self, request: HeldRequest, *, actor: str) -> HeldRequest:
        """Keep a request until its link is used (audited); the stored one if already known."""

        async def work(tx: Transaction) -> HeldRequest:
            added = await tx.execute(
                f"INSERT INTO held_request ({HELD_COLUMNS}) "
                "VALUES ($1, $2, $3, $4, $5, $6, NULL, NULL) ON CONFLICT DO NOTHING",
                request.secret,
                request.sha256,
                request.action,
                request.scope,
                request.created,
                request.detail,
            )
            if added:
                detail = {"action": request.action, "scope": request.scope}
                await tx.audit(actor, "request-held", request.sha256, detail)
            [row] = await tx.fetch(_BY_SECRET, request.secret)
            return to_held(row, tx.time)

        return await self._sql_write(work)

    async def held_request(self, secret: str) -> HeldRequest | None:
        """The request whose link secret hashes to ``secret``, or None."""

        async def work(sql: Sql) -> HeldRequest | None:
            rows = await sql.fetch(_BY_SECRET, secret)
            return to_held(rows[0], sql.time) if rows else None

        return await self._sql_read(work)

    async def mark_mailed(self, secret: str, *, at: datetime) -> None:
        """Record that a request's link went to the next hop."""

        async def work(tx: Transaction) -> None:
            await tx.execute("UPDATE held_request SET mailed = $1 WHERE secret = $2", at, secret)

        await self._sql_write(work, chain=False)

    async def finish_request(
        self, secret: str, *, at: datetime, actor: str, detail: Mapping[str, object]
    ) -> bool:
        """Mark a request done (audited); False when it was done already."""

        async def work(tx: Transaction) -> bool:
            rows = await tx.fetch(
                "UPDATE held_request SET done = $1 WHERE secret = $2 AND done IS NULL "
                "RETURNING sha256, action",
                at,
                secret,
            )
            if not rows:
                return False
            sha256, action = rows[0]
            await tx.audit(actor, "request-confirmed", sha256, {"action": action, **detail})
            return True

        return await self._sql_write(work)
