"""Partners, offers and their fan-out's copies, written once over the driver (the commit
point, ``mark_sent``, is each backend's: MARK_SENT is its statement)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from suppression.errors import OptgateError
from suppression.model import now
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
from suppression.sql.driver import Driver, Sql, Transaction

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)  # the lease time of a copy never claimed
MARK_SENT = (
    "UPDATE offer_copy SET state = 'sent' WHERE offer = $1 AND owner = $2 "
    "AND state = 'claimed' AND sha256 = ANY($3::text[]) RETURNING sha256"
)
_CLAIM = (
    "UPDATE offer_copy SET state = 'claimed', owner = $1, until = $2 "
    "WHERE (offer, sha256) IN (SELECT c.offer, c.sha256 FROM offer_copy c "
    "JOIN offer o ON o.id = c.offer WHERE o.state = 'running' "
    "AND c.state IN ('todo', 'claimed') AND c.until < $3 LIMIT $4 {lock}) "
    "RETURNING offer, sha256"
)


class Partners(Driver):
    """Partners and offers, once for both stores."""

    async def add_partner(self, partner: Partner, *, actor: str) -> None:
        """Register a partner (its credential already hashed); an existing name is an error."""

        async def work(tx: Transaction) -> None:
            added = await tx.execute(
                f"INSERT INTO partner ({PARTNER_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6) "
                "ON CONFLICT DO NOTHING",
                partner.name,
                partner.credential,
                partner.disabled,
                partner.rate_per_hour,
                partner.max_size,
                partner.created,
            )
            if not added:
                raise OptgateError(f"partner {partner.name!r} exists already")
            await tx.audit(actor, "partner-add", None, {"partner": partner.name})

        await self._sql_write(work)

    async def partners(self) -> list[Partner]:
        """Every partner, by name."""

        async def work(sql: Sql) -> list[Partner]:
            rows = await sql.fetch(f"SELECT {PARTNER_COLUMNS} FROM partner ORDER BY name")
            return [to_partner(row, sql.time) for row in rows]

        return await self._sql_read(work)

    async def partner(self, name: str) -> Partner | None:
        """One partner, or None."""

        async def work(sql: Sql) -> Partner | None:
            rows = await sql.fetch(f"SELECT {PARTNER_COLUMNS} FROM partner WHERE name = $1", name)
            return to_partner(rows[0], sql.time) if rows else None

        return await self._sql_read(work)

    async def disable_partner(self, name: str, *, actor: str) -> bool:
        """Refuse the partner's submissions from now on; False if it was disabled already."""

        async def work(tx: Transaction) -> bool:
            changed = await tx.execute(
                "UPDATE partner SET disabled = $2 WHERE name = $1 AND disabled = $3",
                name,
                True,
                False,
            )
            if changed:
                await tx.audit(actor, "partner-disable", None, {"partner": name})
            return bool(changed)

        if await self.partner(name) is None:
            raise UnknownPartner(f"no partner named {name!r}")
        return await self._sql_write(work)

    async def add_offer(
        self, partner: str, topic: str | None, content: bytes, *, actor: str
    ) -> int:
        """Store an offer durably (queued); its id. Committed when this returns."""

        async def work(tx: Transaction) -> int:
            [(offer,)] = await tx.fetch(
                "INSERT INTO offer (partner, topic, content, state, created) "
                "VALUES ($1, $2, $3, $4, $5) RETURNING id",
                partner,
                topic,
                content,
                OfferState.QUEUED.value,
                now(),
            )
            detail = {"partner": partner, "offer": int(offer), "topic": topic}
            await tx.audit(actor, "offer", None, detail)
            return int(offer)

        return await self._sql_write(work)

    async def offers_since(self, partner: str, since: datetime) -> int:
        """How many offers a partner submitted since a time (its rate limit)."""

        async def work(sql: Sql) -> int:
            [(count,)] = await sql.fetch(
                "SELECT count(*) FROM offer WHERE partner = $1 AND created >= $2", partner, since
            )
            return int(count)

        return await self._sql_read(work)

    async def offer(self, offer_id: int) -> Offer | None:
        """One offer with its content, or None."""

        async def work(sql: Sql) -> Offer | None:
            rows = await sql.fetch(f"SELECT {OFFER_COLUMNS} FROM offer WHERE id = $1", offer_id)
            return to_offer(rows[0], sql.time) if rows else None

        return await self._sql_read(work)

    async def offer_statuses(self, partner: str | None) -> list[OfferStatus]:
        """Offers (of one partner, or all) with the counts of their fan-out, oldest first."""

        async def work(sql: Sql) -> list[OfferStatus]:
            if partner:
                rows = await sql.fetch(status_sql("WHERE o.partner = $1"), partner)
            else:
                rows = await sql.fetch(status_sql(""))
            return [offer_status(row, sql.time) for row in rows]

        return await self._sql_read(work)

    async def change_offer(self, offer_id: int, action: str, *, actor: str) -> OfferState:
        """Pause, resume or cancel an offer; its new state (an error if the move is not allowed)."""
        _, target = TRANSITIONS[action]

        async def work(tx: Transaction) -> OfferState:
            rows = await tx.fetch(f"SELECT state FROM offer WHERE id = $1 {tx.lock_rows}", offer_id)
            check_transition(offer_id, rows[0][0] if rows else None, action)
            new = target
            if target is OfferState.RUNNING:
                planned = await tx.fetch(
                    "SELECT 1 FROM offer_copy WHERE offer = $1 LIMIT 1", offer_id
                )
                new = OfferState.RUNNING if planned else OfferState.QUEUED
            await tx.execute("UPDATE offer SET state = $1 WHERE id = $2", new.value, offer_id)
            await tx.audit(actor, f"offer-{action}", None, {"offer": offer_id})
            return new

        return await self._sql_write(work)

    async def _open_offers(self, state: OfferState) -> bool:
        """A cheap read (no write lock) before a worker's poll takes the writer."""

        async def work(sql: Sql) -> bool:
            return bool(
                await sql.fetch("SELECT 1 FROM offer WHERE state = $1 LIMIT 1", state.value)
            )

        return await self._sql_peek(work)

    async def plan_offers(self) -> int:
        """Take the audience of queued offers, one snapshot (and transaction) each; nodes
        skip each other's."""

        async def work(tx: Transaction) -> bool:
            rows = await tx.fetch(
                f"SELECT id, topic FROM offer WHERE state = $1 ORDER BY id LIMIT 1 {tx.lock}",
                OfferState.QUEUED.value,
            )
            if not rows:
                return False
            offer_id, topic = rows[0]
            topics = (topic,) if topic else ()
            await tx.execute(audience_sql(topic is not None), offer_id, EPOCH, *topics)
            await tx.execute(
                "UPDATE offer SET state = $1 WHERE id = $2", OfferState.RUNNING.value, offer_id
            )
            return True

        planned = 0
        if await self._open_offers(OfferState.QUEUED):
            while await self._sql_write(work, chain=False):
                planned += 1
        return planned

    async def claim_copies(self, owner: str, limit: int, lease: timedelta) -> list[Claim]:
        """Lease up to ``limit`` open copies of running offers (never one another node's
        lease holds: PostgreSQL skips rows another transaction locked)."""
        if not await self._open_offers(OfferState.RUNNING):
            return []

        async def work(tx: Transaction) -> list[Claim]:
            at = now()
            lock = tx.lock.replace("UPDATE", "UPDATE OF c")
            rows = await tx.fetch(_CLAIM.format(lock=lock), owner, at + lease, at, limit)
            if not rows:
                return []
            found = await tx.fetch(
                "SELECT sha256, address FROM consent WHERE address IS NOT NULL "
                "AND sha256 = ANY($1::text[]) ORDER BY id",
                sorted({str(sha) for _, sha in rows}),
            )
            known = {str(sha): str(address) for sha, address in found}  # the latest wins
            return [Claim(int(offer), str(sha), known.get(str(sha))) for offer, sha in rows]

        return await self._sql_write(work, chain=False)

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
        if not sha256s:
            return set()

        async def work(tx: Transaction) -> set[str]:
            rows = await tx.fetch(
                "UPDATE offer_copy SET state = $1, until = COALESCE($2::timestamptz, until) "
                "WHERE offer = $3 AND owner = $4 AND state IN ('claimed', 'sent') "
                "AND sha256 = ANY($5::text[]) RETURNING sha256",
                state.value,
                retry_at,
                offer,
                owner,
                list(sha256s),
            )
            return {str(row[0]) for row in rows}

        return await self._sql_write(work, chain=False)

    async def finish_offers(self) -> int:
        """Mark running offers with no open copy done; how many."""
        if not await self._open_offers(OfferState.RUNNING):
            return 0

        async def work(tx: Transaction) -> int:
            return await tx.execute(FINISH_SQL, OfferState.DONE.value)

        return await self._sql_write(work, chain=False)

    async def partner_optouts(self, partner: str) -> list[tuple[str, str | None]]:
        """(identity hash, plaintext if kept) of everyone who opted out of a partner's offers."""

        async def work(sql: Sql) -> list[tuple[str, str | None]]:
            rows = await sql.fetch(OPTOUTS_SQL, f"partner:{partner}")
            return [(str(row[0]), row[1]) for row in rows]

        return await self._sql_read(work)
