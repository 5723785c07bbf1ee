"""The partner fan-out: each node claims copies of running offers and mails them itself.

Per batch: plan queued offers (audience snapshot), claim copies (a lease),
decide each recipient again (suppressions and consents of this moment), then for
each kept one: the offer as the company's message (partner headers filtered by
the allow-list, From and envelope sender the company's), the personal
unsubscribe token of ``partner:NAME``, the rewrite, DKIM, and the relay with a
commit point: the copy is marked sent in the store after its content went to
the next hop and before the final "." (gateway/relay.py, ``send_committed``).
A node killed at any moment leaves copies either never delivered (claimed:
taken over when the lease ends) or delivered and marked sent (never resent).
"""

from __future__ import annotations

import asyncio
import functools
import secrets
import socket
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from email.utils import formataddr

import structlog

from gateway import mime
from gateway.config import Partners
from gateway.metrics import Metrics
from gateway.pipeline import Pipeline
from gateway.policy import MessageClass
from gateway.relay import Outcome, Relay
from gateway.rewrite import FooterTemplates, Prepared
from gateway.tokens import Claims
from suppression.errors import OptgateError
from suppression.model import PARTNER_OFFERS, Send, now
from suppression.partners import Claim, CopyState, Offer, OfferState
from suppression.scope import Scope
from suppression.store import Partnering

log = structlog.get_logger("optgate.fanout")
Finish = Callable[[], None]

IDLE_SECONDS = 1.0  # between polls when there is nothing to do
RETRY = timedelta(minutes=1)  # a copy the next hop deferred (4xx) is tried again after this
# fields optgate writes itself: never taken from the partner, whatever the allow-list says
OURS = frozenset({"from", "sender", "reply-to", "to", "cc", "bcc", "message-id", "return-path"})


def compose(offer: Offer, settings: Partners, company: str) -> bytes:
    """The offer as the company sends it: allow-listed partner fields, our addressing."""
    block = mime.split_headers(offer.content, 0, len(offer.content))
    allowed = {name.lower() for name in settings.headers} - OURS
    kept = b"".join(
        offer.content[f.start : f.end] for f in block.fields if f.name and f.name in allowed
    )
    display = f"{offer.partner} via {company}"
    ours = (
        f"From: {formataddr((display, settings.sender))}\r\n"
        f"To: {PARTNER_OFFERS}:;\r\n"
        f"Message-ID: <offer-{offer.id}.{offer.partner}@{settings.audience_domain}>\r\n"
    ).encode()
    # what follows the fields without a separating empty line (such as an obsolete
    # "Name : value" field) is body text, never a field of the copy
    separator = b"" if block.body_start > block.end else b"\r\n"
    return ours + kept + separator + offer.content[block.end :]


def owner_name() -> str:
    """This worker's name on its claims: host, and a random part per start."""
    return f"{socket.gethostname()}:{secrets.token_hex(4)}"


class Commits:
    """Marks copies sent, many in one store transaction (those that arrive meanwhile)."""

    def __init__(self, store: Partnering, owner: str) -> None:
        self._store, self._owner = store, owner
        self._waiting: dict[tuple[int, str], tuple[asyncio.Future[bool], Finish]] = {}
        self._flusher: asyncio.Task[None] | None = None

    async def commit(self, offer: int, sha256: str, finish: Finish) -> bool:
        """Mark the copy sent and call ``finish`` as soon as the store has it (in the step
        that learns it, before any other task runs); False when another node took it over."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting[offer, sha256] = future, finish
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting, {}
            by_offer: dict[int, list[str]] = {}
            for offer, sha in batch:
                by_offer.setdefault(offer, []).append(sha)
            moved: set[tuple[int, str]] = set()
            for offer, hashes in by_offer.items():
                ends = functools.partial(_end_all, batch, offer)
                try:
                    done = await self._store.mark_sent(self._owner, offer, hashes, ends)
                except OptgateError as exc:
                    log.error("fanout_commit_failed", error=str(exc))
                    continue
                moved |= {(offer, sha) for sha in done}
            for key, (future, _) in batch.items():
                future.set_result(key in moved)


def _end_all(
    batch: dict[tuple[int, str], tuple[asyncio.Future[bool], Finish]], offer: int, done: set[str]
) -> None:
    """Write the final "." of every copy the store has just marked sent."""
    for sha in done:
        batch[offer, sha][1]()


class FanOut:
    """The background worker of one node."""

    def __init__(
        self,
        *,
        store: Partnering,
        relay: Relay,
        pipeline: Pipeline,
        settings: Partners,
        company: str,
        postal_address: str,
        list_domain: str,
        feedback_id: str,
        metrics: Metrics,
        owner: str | None = None,
    ) -> None:
        self._store, self._relay, self._pipeline = store, relay, pipeline
        self._settings, self._company = settings, company
        self._postal, self._list_domain, self._feedback = postal_address, list_domain, feedback_id
        self._metrics = metrics
        self.owner = owner or owner_name()
        self._commits = Commits(store, self.owner)
        self._prepared: dict[int, Prepared] = {}
        self._news = asyncio.Event()

    def wake(self) -> None:
        """An offer was just accepted here: start now rather than at the next poll."""
        self._news.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Work until ``stop`` is set; a store failure waits and tries again."""
        log.info("fanout_started", owner=self.owner)
        while not stop.is_set():
            try:
                busy = await self.step()
            except OptgateError as exc:
                log.error("fanout_failed", error=str(exc))
                busy = False
            if not busy:
                await self._idle(stop)

    async def _idle(self, stop: asyncio.Event) -> None:
        """Until stopped, woken, or IDLE_SECONDS passed (offers accepted by other nodes)."""
        waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._news.wait())]
        try:
            await asyncio.wait(waits, timeout=IDLE_SECONDS, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()
        self._news.clear()

    async def step(self) -> bool:
        """One batch; False when there was nothing to do."""
        await self._store.plan_offers()
        lease = timedelta(seconds=self._settings.lease)
        claims = await self._store.claim_copies(self.owner, self._settings.batch, lease)
        if not claims:
            await self._store.finish_offers()
            self._prepared.clear()  # idle: plans are cheap to make again
            return False
        by_offer: dict[int, list[Claim]] = {}
        for claim in claims:
            by_offer.setdefault(claim.offer, []).append(claim)
        for offer_id, batch in by_offer.items():
            await self._offer_batch(offer_id, batch)
        return True

    async def _offer_batch(self, offer_id: int, claims: list[Claim]) -> None:
        offer = await self._store.offer(offer_id)
        hashes = [c.sha256 for c in claims]
        if offer is None or offer.state is not OfferState.RUNNING:
            # paused or cancelled meanwhile: give the copies back untouched
            await self._settle(offer_id, hashes, CopyState.TODO, retry=timedelta(0))
            return
        mailable = [c for c in claims if c.address]
        decisions = await self._pipeline.verdicts(
            [c.address or "" for c in mailable],
            MessageClass.PARTNER,
            offer.topic or PARTNER_OFFERS,
            partner=offer.partner,
        )
        kept = [c for c, d in zip(mailable, decisions, strict=True) if d.verdict.keep]
        if offer.topic and kept:
            # the audience topic's own consent and suppression, as of now
            topical = await self._pipeline.verdicts(
                [c.address or "" for c in kept], MessageClass.MARKETING, offer.topic
            )
            kept = [c for c, d in zip(kept, topical, strict=True) if d.verdict.keep]
        keep = {c.sha256 for c in kept}
        await self._settle(offer_id, [h for h in hashes if h not in keep], CopyState.SUPPRESSED)
        if not kept:
            return
        prepared = await self._prepare(offer)
        outcomes = await asyncio.gather(*(self._copy(offer, prepared, c) for c in kept))
        # an uncertain copy (no reply after the end of data) stays sent: never twice
        failed = [(c, o) for c, o in zip(kept, outcomes, strict=True) if o and not o.uncertain]
        # a copy deferred for too long fails, as an MTA's queue lifetime ends, so the
        # offer can finish
        expired = now() - offer.created > timedelta(hours=self._settings.retry_hours)
        temporary = [c.sha256 for c, o in failed if o.temporary and not expired]
        refused = [c.sha256 for c, o in failed if not o.delivered and (expired or not o.temporary)]
        went = [
            c.sha256
            for c, o in zip(kept, outcomes, strict=True)
            if o and (o.delivered or o.uncertain)
        ]
        at = now()
        topic = offer.topic or PARTNER_OFFERS
        await self._store.record_sends(
            [Send(f"offer-{offer.id}", sha, topic, "partner", at) for sha in went]
        )
        # marked again: a copy whose "." went out but whose commit failed is still claimed
        await self._settle(offer_id, went, CopyState.SENT)
        await self._settle(offer_id, temporary, CopyState.TODO, retry=RETRY)
        await self._settle(offer_id, refused, CopyState.FAILED)
        log.info(
            "fanout_batch",
            offer=offer_id,
            claimed=len(claims),
            sent=sum(1 for o in outcomes if o and o.delivered),
            suppressed=len(claims) - len(kept),
            deferred=len(temporary),
            failed=len(refused),
        )

    async def _settle(
        self, offer: int, hashes: Sequence[str], state: CopyState, retry: timedelta | None = None
    ) -> None:
        if hashes:
            retry_at = now() + retry if retry is not None else None
            await self._store.settle_copies(self.owner, offer, hashes, state, retry_at=retry_at)

    async def _prepare(self, offer: Offer) -> Prepared:
        """The rewrite plan of an offer, made once per node."""
        if offer.id not in self._prepared:
            text, html = (
                template.replace("{partner}", offer.partner).replace("{company}", self._company)
                for template in (self._settings.footer_text, self._settings.footer_html)
            )
            footer = FooterTemplates(text, html, self._postal)
            self._prepared[offer.id] = await self._pipeline.prepare(
                compose(offer, self._settings, self._company),
                f"offer-{offer.id}",
                footer=footer,
                list_id=f"{PARTNER_OFFERS} <{PARTNER_OFFERS}.{self._list_domain}>",
                feedback_id=f"{offer.id}:{offer.partner}:partner:{self._feedback}",
            )
        return self._prepared[offer.id]

    async def _copy(self, offer: Offer, prepared: Prepared, claim: Claim) -> Outcome | None:
        """One recipient's copy: tokens, rewrite, DKIM, relay (from the VERP address when
        [inbound] has domains, else [partners] sender) with the commit point."""
        claims = Claims(claim.sha256, Scope.partner(offer.partner), int(time.time()))
        data, sender = self._pipeline.personal(prepared, claims, self._settings.sender)
        data = await self._pipeline.sign(data, f"offer-{offer.id}")

        async def commit(finish: Finish) -> bool:
            return await self._commits.commit(offer.id, claim.sha256, finish)

        outcome = await self._relay.send_committed(sender, claim.address or "", data, commit)
        if outcome is None:
            log.warning("fanout_taken_over", offer=offer.id, rcpt=claim.sha256[:16])
        elif outcome.uncertain:
            log.warning("fanout_reply_lost", offer=offer.id, rcpt=claim.sha256[:16])
        elif not outcome.delivered:
            self._metrics.relay_errors.labels(
                "temporary" if outcome.temporary else "permanent"
            ).inc()
            log.warning(
                "fanout_relay_failed", offer=offer.id, code=outcome.code, rcpt=claim.sha256[:16]
            )
        return outcome
