"""Partner offers' own steps: an offer's class, the relay whose commit point is the offer
queue's (a copy is marked sent before its final "."), and the record that settles each
claimed copy. The other steps of PARTNER_OFFERS are the outbound ones
(gateway/outbound/steps.py)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import replace
from datetime import timedelta

import structlog

from gateway.outbound.message import Classified
from gateway.outbound.policy import MessageClass
from gateway.outbound.rewrite import FooterTemplates
from gateway.outbound.steps import (
    Copy,
    Finish,
    Mail,
    OfferRun,
    Rewrite,
    Services,
    count_failure,
    ledger_row,
    relay_each,
)
from gateway.smtp.relay import Outcome
from suppression.model import PARTNER_OFFERS, now
from suppression.partners import CopyState
from suppression.store import Partnering

log = structlog.get_logger("optgate.fanout")

RETRY = timedelta(minutes=1)  # a copy the next hop deferred (4xx) is tried again after this


def offer_run(mail: Mail) -> OfferRun:
    """The offer batch a partner step works on; an error on a message that is not one."""
    if mail.offer is None:
        raise RuntimeError("a partner offer's step ran on a message that is not an offer")
    return mail.offer


class ClassifyOffer:
    """An offer is partner mail of its audience topic (else partner-offers), named by its
    id in the ledger; its footer and List-Id are the partner programme's."""

    name = "classify"

    async def __call__(self, mail: Mail, services: Services) -> Mail:
        """Classify the offer."""
        run = offer_run(mail)
        offer, settings, branding = run.offer, run.settings, services.branding
        message = Classified(
            MessageClass.PARTNER,
            offer.topic or PARTNER_OFFERS,
            f"offer-{offer.id}",
            f"offer-{offer.id}",
            partner=offer.partner,
            audience=offer.topic,
            class_by="offer",
        )
        text, html = (
            template.replace("{partner}", offer.partner).replace("{company}", run.company)
            for template in (settings.footer_text, settings.footer_html)
        )
        rewrite = Rewrite(
            FooterTemplates(text, html, run.postal_address),
            f"{PARTNER_OFFERS} <{PARTNER_OFFERS}.{branding.list_domain}>",
            f"{offer.id}:{offer.partner}:partner:{branding.feedback_id}",
        )
        # no ledger lookup: the offer queue's copy states say what went out
        return replace(mail, message=message, ledger=None, rewrite=rewrite)


class RelayClaimed:
    """Each copy to the next hop with the offer queue's commit point: the store marks it
    sent (only while this worker still owns it) before its final "." goes out."""

    name = "relay"

    async def __call__(self, mail: Mail, services: Services) -> Mail:
        """Relay every copy that goes out, all at once."""
        return await relay_each(mail, functools.partial(self._copy, offer_run(mail), services))

    @staticmethod
    async def _copy(run: OfferRun, services: Services, copy: Copy) -> Outcome | None:
        offer, sha = run.offer.id, copy.decision.sha256

        async def commit(finish: Finish) -> bool:
            return await run.commit(offer, sha, finish)

        outcome = await services.next_hop.send_committed(
            copy.sender, copy.decision.raw, copy.data, commit
        )
        if outcome is None:
            log.warning("fanout_taken_over", offer=offer, rcpt=sha[:16])
        elif outcome.uncertain:
            log.warning("fanout_reply_lost", offer=offer, rcpt=sha[:16])
        elif not outcome.delivered:
            count_failure(services, outcome)
            log.warning("fanout_relay_failed", offer=offer, code=outcome.code, rcpt=sha[:16])
        return outcome


class RecordClaimed:
    """Copies that went out (an uncertain one too: never twice) in the ledger and marked
    sent; deferred ones back in the queue for a retry (failed once the offer is older
    than [partners] retry_hours, as an MTA's queue lifetime ends), refused ones failed,
    the others suppressed; one log line per batch."""

    name = "record"

    async def __call__(self, mail: Mail, services: Services) -> Mail:
        """Settle every claimed copy."""
        run = offer_run(mail)
        message, offer = mail.classified, run.offer
        kept = [(claim.sha256, c) for claim, c in zip(run.claims, mail.copies, strict=True)]
        sent = [(sha, c.outcome) for sha, c in kept if c.sends and c.outcome is not None]
        went = [sha for sha, o in sent if o.delivered or o.uncertain]
        failed = [(sha, o) for sha, o in sent if not o.uncertain]
        expired = now() - offer.created > timedelta(hours=run.settings.retry_hours)
        temporary = [sha for sha, o in failed if o.temporary and not expired]
        refused = [sha for sha, o in failed if not o.delivered and (expired or not o.temporary)]
        suppressed = [sha for sha, c in kept if not c.sends]
        store = services.store
        await _settle(store, run, suppressed, CopyState.SUPPRESSED)
        if len(suppressed) == len(kept):
            return mail
        await store.record_sends([ledger_row(message, sha, None) for sha in went])
        # marked again: a copy whose "." went out but whose commit failed is still claimed
        await _settle(store, run, went, CopyState.SENT)
        await _settle(store, run, temporary, CopyState.TODO, RETRY)
        await _settle(store, run, refused, CopyState.FAILED)
        log.info(
            "fanout_batch",
            offer=offer.id,
            claimed=len(run.claims),
            sent=sum(1 for _, o in sent if o.delivered),
            suppressed=len(suppressed),
            deferred=len(temporary),
            failed=len(refused),
        )
        return mail


async def _settle(
    store: Partnering,
    run: OfferRun,
    hashes: Sequence[str],
    state: CopyState,
    retry: timedelta | None = None,
) -> None:
    if hashes:
        retry_at = now() + retry if retry is not None else None
        await store.settle_copies(run.owner, run.offer.id, hashes, state, retry_at=retry_at)
