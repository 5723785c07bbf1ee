"""The outbound path's entry for the SMTP handler: OUTBOUND (gateway/outbound/pipelines.py) run
over one message, the one reply of a transaction (with its DSN), and the verdicts taken
at RCPT in reject mode."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import structlog

from gateway.outbound.message import Decision, Envelope, purpose_of, sender_topic
from gateway.outbound.pipelines import OUTBOUND
from gateway.outbound.policy import IP, ClassRules, MessageClass, Rules, Verdict, decide, scopes_for
from gateway.outbound.signing import Signer
from gateway.outbound.steps import Branding, Mail, NextHop, Services, Verp, decisions, run
from gateway.runtime.metrics import Metrics
from gateway.smtp import dsn
from gateway.smtp.outcomes import Reply, Result
from gateway.tokens import TokenSigner
from suppression.address import Address
from suppression.store import Lookups, Partnering

log = structlog.get_logger("optgate.relay")


async def verdict(
    store: Lookups, address: Address, kind: MessageClass, topic: str, rules: Rules
) -> Verdict:
    """One recipient's verdict straight from the store (for explain and the demo)."""
    purpose = purpose_of(kind, topic)
    facts = await store.lookup_many([address], scopes_for(kind, topic), purpose)
    return decide(facts[address.sha256], kind, purpose, rules)


class Pipeline:
    """Runs one message through OUTBOUND and returns the SMTP reply."""

    def __init__(
        self,
        *,
        store: Partnering,
        relay: NextHop,
        signer: TokenSigner,
        rules: Rules,
        branding: Branding,
        default_topic: str,
        sender_topics: Mapping[str, str],
        ledger_window: timedelta,
        metrics: Metrics,
        classes: ClassRules | None = None,
        resend_uncertain: bool = False,
        dkim: Signer | None = None,
        verp: Verp | None = None,
    ) -> None:
        # cryptography releases the GIL while it signs: one thread per core
        self._signing = ThreadPoolExecutor(os.cpu_count() or 1, thread_name_prefix="optgate-dkim")
        self.services = Services(
            store=store,
            next_hop=relay,
            signer=signer,
            rules=rules,
            branding=branding,
            metrics=metrics,
            default_topic=default_topic,
            sender_topics=sender_topics,
            ledger_window=ledger_window,
            signing=self._signing,
            classes=classes or ClassRules(),
            resend_uncertain=resend_uncertain,
            dkim=dkim,
            verp=verp,
        )

    def envelope_class(self, mail_from: str, client: IP | None) -> tuple[MessageClass, str]:
        """The class a message from this sender and client has without a header."""
        return self.services.classes.classify(mail_from, client)

    def sender_topic(self, mail_from: str) -> str:
        """The topic a message from this envelope sender has without a header."""
        services = self.services
        return sender_topic(mail_from, services.sender_topics, services.default_topic)

    async def verdicts(
        self, recipients: Sequence[str], kind: MessageClass, topic: str
    ) -> list[Decision]:
        """Decide recipients with one store round trip (reject mode's RCPT)."""
        services = self.services
        return await decisions(services.store, services.rules, recipients, kind, topic)

    async def process(self, envelope: Envelope) -> Result:
        """Decide, rewrite, relay and record one message: every recipient's reply."""
        mail = await run(OUTBOUND, Mail(envelope), self.services)
        if mail.result is None:
            raise AssertionError("OUTBOUND answers every message")
        return mail.result

    async def report(self, envelope: Envelope, result: Result, reporting_mta: str) -> Reply:
        """The one reply of an SMTP transaction. Before a 250 with recipients refused for
        good, their DSN goes to the envelope sender from the null sender (never about a
        null-sender message); a DSN the next hop does not take makes the reply 451, so
        the client retries (the delivered copies are then skipped, the refusal repeats)."""
        reply, refused = result.smtp(), result.refused
        if not envelope.mail_from or not refused or reply.code != 250:
            return reply
        failed = [
            dsn.Failed(envelope.rcpt_tos[i], result.replies[i].code, result.replies[i].text)
            for i in refused
        ]
        data = dsn.build(
            mail_from=envelope.mail_from,
            failed=failed,
            original=envelope.content,
            reporting_mta=reporting_mta,
        )
        outcome = await self.services.next_hop.send("", envelope.mail_from, data)
        self.services.metrics.dsns.labels("sent" if outcome.delivered else "failed").inc()
        log.info("dsn", recipients=len(failed), reply=outcome.code)
        if not outcome.delivered:
            return Reply(451, f"4.3.0 the delivery status notification failed: {outcome.code}")
        return reply

    def close(self) -> None:
        """Stop the signing threads."""
        self._signing.shutdown()
