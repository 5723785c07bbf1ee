"""The partner fan-out: each node claims copies of running offers and mails them itself.

Per batch: plan queued offers (audience snapshot), claim copies (a lease), then
each offer's claimed copies through pipelines.PARTNER_OFFERS: decide
each recipient again (suppressions and consents of this moment), then for each
kept one the offer as the company's message (``compose``: partner headers filtered
by the allow-list, From and envelope sender the company's), the personal
unsubscribe token of ``partner:NAME``, the rewrite, DKIM, and the relay with a
commit point: the copy is marked sent in the store after its content went to
the next hop and before the final "." (gateway/smtp/relay.py, ``send_committed``).
A node killed at any moment leaves copies either never delivered (claimed:
taken over when the lease ends) or delivered and marked sent (never resent).
"""

from __future__ import annotations

import asyncio
import functools
import secrets
import socket
from datetime import timedelta
from email.utils import formataddr

import structlog

from gateway.config import Partners
from gateway.outbound import mime, pipelines
from gateway.outbound.message import Envelope
from gateway.outbound.pipeline import Pipeline
from gateway.outbound.rewrite import Prepared
from gateway.outbound.steps import Finish, Mail, OfferRun, run
from suppression.errors import OptgateError
from suppression.model import PARTNER_OFFERS, now
from suppression.partners import Claim, CopyState, Offer, OfferState
from suppression.store import OfferQueue

log = structlog.get_logger("optgate.fanout")

IDLE_SECONDS = 1.0  # between polls when there is nothing to do
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

    def __init__(self, store: OfferQueue, owner: str) -> None:
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
        pipeline: Pipeline,
        settings: Partners,
        company: str,
        postal_address: str,
        owner: str | None = None,
    ) -> None:
        self._services = pipeline.services
        self._store = self._services.store
        self._settings, self._company, self._postal = settings, company, postal_address
        self.owner = owner or owner_name()
        self._commits = Commits(self._store, self.owner)
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
        if offer is None or offer.state is not OfferState.RUNNING:
            # paused or cancelled meanwhile: give the copies back untouched
            hashes = [c.sha256 for c in claims]
            await self._store.settle_copies(
                self.owner, offer_id, hashes, CopyState.TODO, retry_at=now()
            )
            return
        settings = self._settings
        batch = OfferRun(
            offer,
            tuple(claims),
            self.owner,
            self._commits.commit,
            settings,
            self._company,
            self._postal,
        )
        envelope = Envelope(
            settings.sender,
            tuple(c.address or "" for c in claims),
            compose(offer, settings, self._company),
        )
        mail = Mail(envelope, offer=batch, prepared=self._prepared.get(offer.id))
        done = await run(pipelines.PARTNER_OFFERS, mail, self._services)
        if done.prepared is not None:  # the rewrite plan of an offer, made once per node
            self._prepared[offer.id] = done.prepared
