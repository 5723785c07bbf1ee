"""The message's way through optgate, one visible sequence of steps.

parse -> classify -> look up (one store round trip) -> decide per recipient
-> skip copies a retry already delivered -> rewrite -> relay -> record.
Only the store and relay steps do I/O, through the objects passed in.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta

import structlog

from gateway import dsn, mime
from gateway.errors import BadControlHeader, Phase, smtp_reply
from gateway.footers import Footers
from gateway.metrics import Metrics
from gateway.outcomes import ALREADY, DROPPED, UNCERTAIN, Reply, Result, of_copy
from gateway.policy import IP, ClassRules, MessageClass, Rules, Verdict, decide, scopes_for
from gateway.relay import Outcome, Relay
from gateway.rewrite import Footer, Links, Prepared, prepare, strip_headers
from gateway.signing import Signer, for_next_hop
from gateway.tokens import Claims, TokenSigner
from gateway.xforward import Forwarded
from suppression.address import Address, normalize
from suppression.errors import InvalidAddress, OptgateError
from suppression.model import Ledger, Send, check_name, now
from suppression.scope import Scope
from suppression.sql.ledger import HELD, UNSENT
from suppression.sql.ledger import UNCERTAIN as UNCERTAIN_STATE
from suppression.store import Store

log = structlog.get_logger("optgate.relay")
# Rewriting a message this large runs in a worker thread, off the event loop.
OFFLOAD_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class Envelope:
    """What the SMTP session received."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    content: bytes
    mail_options: tuple[str, ...] = ()
    client: Forwarded | None = None  # the original client (XFORWARD, else the session's)


@dataclass(frozen=True, slots=True)
class Classified:
    """A message's class, topic and identity, from its control headers."""

    kind: MessageClass
    topic: str
    message_id: str
    ledger_key: str
    campaign: str | None = None  # X-Optgate-Campaign: the Feedback-ID's first field
    class_by: str = "header"  # what gave the class: header, sender, domain, network, default

    @property
    def feedback_id(self) -> str:
        """Feedback-ID without its sender id: [campaign:]topic:class (Gmail's FBL fields)."""
        fields = (self.campaign, self.topic, self.kind.value)
        return ":".join(f for f in fields if f)


@dataclass(frozen=True, slots=True)
class Branding:
    """What each kept copy is given: links, List-Id, Feedback-ID, footer."""

    base_url: str
    mailto: str
    list_domain: str
    feedback_id: str
    footers: Footers

    def links(self, token: str, short: str) -> Links:
        """Personal unsubscribe links: the web link's token, the mailto's short token."""
        local, _, domain = self.mailto.partition("@")
        return Links(f"{self.base_url.rstrip('/')}/u/{token}", f"{local}+{short}@{domain}")

    def footer(self, topic: str) -> Footer:
        """The footer of one topic, in the language of each message."""
        return self.footers.topic(topic)


@dataclass(frozen=True, slots=True)
class Verp:
    """The per-recipient envelope sender ``bounce+TOKEN@domain`` (the token is short)."""

    local: str
    domain: str
    transactional: bool  # transactional mail gets one too

    def sender(self, token: str) -> str:
        """The envelope sender of one copy."""
        return f"{self.local}+{token}@{self.domain}"


def header_values(content: bytes, names: Collection[str]) -> dict[str, str]:
    """The first value of each named header field (lower-case names), unfolded."""
    block = mime.split_headers(content, 0, len(content))
    values: dict[str, str] = {}
    for field in block.fields:
        if field.name in names and field.name not in values:
            raw = content[field.start : field.end].partition(b":")[2]
            values[field.name] = b" ".join(raw.split()).decode("utf-8", "replace")
    return values


def classify(
    content: bytes,
    mail_from: str,
    default_topic: str,
    sender_topics: Mapping[str, str],
    classes: ClassRules | None = None,
    client: IP | None = None,
) -> Classified:
    """Class and topic from X-Optgate-* headers, else the envelope rules (``classes`` by
    sender, domain, client network; ``sender_topics``), else the defaults."""
    headers = header_values(
        content, ("x-optgate-class", "x-optgate-topic", "x-optgate-campaign", "message-id")
    )
    raw_class = headers.get("x-optgate-class", "").lower()
    by = "header"
    if not raw_class:
        by_envelope = (classes or ClassRules()).classify(mail_from, client)
        raw_class, by = by_envelope[0].value, by_envelope[1]
    try:
        kind = MessageClass(raw_class)
    except ValueError:
        raise BadControlHeader(
            f"X-Optgate-Class {raw_class!r} is not one of "
            f"{', '.join(c.value for c in MessageClass)}",
            "X-Optgate-Class",
            raw_class,
        ) from None
    topic = headers.get("x-optgate-topic", "").lower() or sender_topic(
        mail_from, sender_topics, default_topic
    )
    try:
        check_name(topic, "X-Optgate-Topic")
    except OptgateError as exc:
        raise BadControlHeader(str(exc), "X-Optgate-Topic", topic) from None
    campaign = headers.get("x-optgate-campaign", "").lower() or None
    if campaign is not None:
        try:
            check_name(campaign, "X-Optgate-Campaign")
        except OptgateError as exc:
            raise BadControlHeader(str(exc), "X-Optgate-Campaign", campaign) from None
    message_id = headers.get("message-id", "")
    return Classified(kind, topic, message_id, ledger_key(message_id, content), campaign, by)


def ledger_key(message_id: str, content: bytes) -> str:
    """The send ledger's name for a message: its Message-ID and a digest of its content,
    so a retry of the same bytes is recognised and a new message reusing an old
    Message-ID is not (it is mailed again)."""
    digest = hashlib.sha256(content).hexdigest()
    return hashlib.sha256(f"{message_id}\0{digest}".encode()).hexdigest()[:32]


def sender_topic(mail_from: str, rules: Mapping[str, str], default: str) -> str:
    """The topic configured for an envelope sender (address first, then @domain)."""
    sender = mail_from.strip().lower()
    return rules.get(sender) or rules.get("@" + sender.rpartition("@")[2]) or default


@dataclass(frozen=True, slots=True)
class Decision:
    """One envelope recipient: as given, parsed, and decided."""

    raw: str
    address: Address | None
    verdict: Verdict
    delivered: bool = False  # a retry: the next hop already accepted this copy
    uncertain: bool = False  # a retry: this copy went out before, its reply was lost

    @property
    def sha256(self) -> str:
        """The recipient's identity ('' when the address is invalid)."""
        return self.address.sha256 if self.address else ""


INVALID = Verdict(False, "invalid", "the address is not valid")


def purpose_of(kind: MessageClass, topic: str) -> str:
    """The consent a message needs: its topic, or partner-offers for partner mail."""
    return "partner-offers" if kind is MessageClass.PARTNER else topic


async def verdict(
    store: Store, address: Address, kind: MessageClass, topic: str, rules: Rules
) -> Verdict:
    """One recipient's verdict straight from the store (for explain and the demo)."""
    purpose = purpose_of(kind, topic)
    facts = await store.lookup_many([address], scopes_for(kind, topic), purpose)
    return decide(facts[address.sha256], kind, purpose, rules)


def _parse(rcpt: str) -> Address | None:
    try:
        return normalize(rcpt)
    except InvalidAddress:
        return None


class Pipeline:
    """Runs one message through every step and returns the SMTP reply."""

    def __init__(
        self,
        *,
        store: Store,
        relay: Relay,
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
        self._store, self._relay, self._signer = store, relay, signer
        self._rules, self._branding = rules, branding
        self._default_topic, self._sender_topics = default_topic, sender_topics
        self._classes = classes or ClassRules()
        self._window = ledger_window
        self._resend_uncertain = resend_uncertain
        self._metrics = metrics
        self._dkim = dkim
        self._verp = verp
        # cryptography releases the GIL while it signs: one thread per core
        self._signing = ThreadPoolExecutor(os.cpu_count() or 1, thread_name_prefix="optgate-dkim")

    def classify(self, envelope: Envelope) -> Classified:
        """Classify a message with the configured defaults."""
        return classify(
            envelope.content,
            envelope.mail_from,
            self._default_topic,
            self._sender_topics,
            self._classes,
            envelope.client.client_ip if envelope.client else None,
        )

    def envelope_class(self, mail_from: str, client: IP | None) -> tuple[MessageClass, str]:
        """The class a message from this sender and client has without a header."""
        return self._classes.classify(mail_from, client)

    def sender_topic(self, mail_from: str) -> str:
        """The topic a message from this envelope sender has without a header."""
        return sender_topic(mail_from, self._sender_topics, self._default_topic)

    async def verdicts(
        self,
        recipients: Sequence[str],
        kind: MessageClass,
        topic: str,
        ledger_key: str | None = None,
        partner: str | None = None,
    ) -> list[Decision]:
        """Decide every recipient with one store round trip (which also reads the ledger)."""
        parsed = [(raw, _parse(raw)) for raw in recipients]
        valid = [a for _, a in parsed if a is not None]
        purpose = purpose_of(kind, topic)
        ledger = Ledger(ledger_key, now() - self._window) if ledger_key else None
        scopes = scopes_for(kind, topic, partner)
        facts = await self._store.lookup_many(valid, scopes, purpose, ledger)
        return [
            Decision(
                raw,
                a,
                decide(facts[a.sha256], kind, purpose, self._rules),
                facts[a.sha256].delivered,
                facts[a.sha256].uncertain,
            )
            if a is not None
            else Decision(raw, None, INVALID)
            for raw, a in parsed
        ]

    async def process(self, envelope: Envelope) -> Result:
        """Decide, rewrite, relay and record one message: every recipient's reply."""
        started = time.perf_counter()
        try:
            message = self.classify(envelope)
        except BadControlHeader as exc:
            # the value is the sender's: logged as its keyed digest (gateway/logs.py)
            log.warning("message_refused", header=exc.header, value=exc.value)
            self._metrics.messages.labels("5xx").inc()
            code, _, text = smtp_reply(exc, Phase.DATA).partition(" ")
            return Result((Reply(int(code), text),) * len(envelope.rcpt_tos))
        with self._metrics.lookup_seconds.time():
            decided = await self.verdicts(
                envelope.rcpt_tos, message.kind, message.topic, message.ledger_key
            )
        kept = list({d.address.sha256: d for d in decided if d.address and d.verdict.keep}.values())
        for d in decided:
            verdict = "keep" if d.verdict.keep else "drop"
            reason = (
                "already-delivered"
                if d.delivered
                else "uncertain"
                if d.uncertain and not self._resend_uncertain
                else d.verdict.reason
            )
            self._metrics.recipients.labels(verdict, reason).inc()
            log.info(
                "recipient",
                verdict=verdict,
                reason=reason,
                topic=message.topic,
                kind=message.kind.value,
                class_by=message.class_by,
                message_id=message.message_id,
                rcpt=d.sha256[:16] or None,
            )
        skipped = [d for d in kept if self._skipped(d)]
        for d in skipped:
            self._metrics.already_delivered.inc()
            log.info(
                "already_delivered" if d.delivered else "uncertain_skipped",
                message_id=message.message_id,
                rcpt=d.sha256[:16],
            )
        todo = [d for d in kept if not self._skipped(d)]
        outcomes = await self._deliver(envelope, message, todo) if todo else {}
        result = Result(tuple(self._reply(d, outcomes) for d in decided))
        elapsed = time.perf_counter() - started
        self._metrics.smtp_seconds.observe(elapsed)
        reply = result.smtp()
        self._metrics.messages.labels(f"{reply.code // 100}xx").inc()
        log.info(
            "message",
            message_id=message.message_id,
            recipients=len(decided),
            kept=len(kept),
            relayed=sum(1 for o in outcomes.values() if o.delivered),
            already=len(skipped),
            uncertain=sum(1 for o in outcomes.values() if o.uncertain),
            refused=sum(1 for o in outcomes.values() if not o.delivered and not o.temporary),
            reply=reply.code,
            ms=round(elapsed * 1000, 2),
        )
        return result

    def _skipped(self, rcpt: Decision) -> bool:
        """A copy not sent again: delivered before, or uncertain under [relay] uncertain = skip."""
        return rcpt.delivered or (rcpt.uncertain and not self._resend_uncertain)

    def _reply(self, rcpt: Decision, outcomes: Mapping[str, Outcome]) -> Reply:
        """One recipient's reply: dropped, already done, or its copy's outcome."""
        if not rcpt.verdict.keep or rcpt.address is None:
            return DROPPED
        if self._skipped(rcpt):
            return ALREADY if rcpt.delivered else UNCERTAIN
        outcome = outcomes[rcpt.sha256]
        if outcome.uncertain and not self._resend_uncertain:
            return UNCERTAIN
        return of_copy(outcome)

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
        outcome = await self._relay.send("", envelope.mail_from, data)
        self._metrics.dsns.labels("sent" if outcome.delivered else "failed").inc()
        log.info("dsn", recipients=len(failed), reply=outcome.code)
        if not outcome.delivered:
            return Reply(451, f"4.3.0 the delivery status notification failed: {outcome.code}")
        return reply

    async def _deliver(
        self, envelope: Envelope, message: Classified, todo: list[Decision]
    ) -> dict[str, Outcome]:
        """Each copy's outcome, by recipient hash; deliveries go into the ledger."""
        if message.kind is MessageClass.TRANSACTIONAL:
            # exempt from opt-outs, so no unsubscribe links: only our control headers go
            plain = strip_headers(envelope.content)
            copies = [
                self._relay_copy(envelope, message, d, plain, self._sender(envelope, message, d))
                for d in todo
            ]
        else:
            prepared = await self._prepare(envelope, message)
            copies = [
                self._relay_copy(
                    envelope,
                    message,
                    d,
                    *self.personal(prepared, self._claims(message, d), envelope.mail_from),
                )
                for d in todo
            ]
        outcomes = [await copies[0]] if len(copies) == 1 else await asyncio.gather(*copies)
        # held rows settle: delivered, uncertain (reply lost), or removed (not taken)
        await self._store.record_sends(
            [
                self._ledger_row(message, d, _settled_state(o))
                for d, o in zip(todo, outcomes, strict=True)
            ]
        )
        return {d.sha256: o for d, o in zip(todo, outcomes, strict=True)}

    def _ledger_row(self, message: Classified, rcpt: Decision, state: str | None) -> Send:
        return Send(
            message.ledger_key,
            rcpt.sha256,
            message.topic,
            message.kind.value,
            now(),
            message.campaign,
            state,
        )

    async def _prepare(self, envelope: Envelope, message: Classified) -> Prepared:
        """Plan the rewrite once per message (in a thread when the message is large)."""
        return await self.prepare(
            envelope.content,
            message.message_id,
            footer=self._branding.footer(message.topic),
            list_id=f"{message.topic} <{message.topic}.{self._branding.list_domain}>",
            feedback_id=f"{message.feedback_id}:{self._branding.feedback_id}",
        )

    async def prepare(
        self,
        content: bytes,
        message_id: str,
        *,
        footer: Footer,
        list_id: str,
        feedback_id: str,
    ) -> Prepared:
        """Plan the rewrite of a message once (in a thread when it is large)."""
        work = functools.partial(
            prepare,
            content,
            footer=footer,
            list_id=list_id,
            feedback_id=feedback_id,
        )
        big = len(content) > OFFLOAD_BYTES
        prepared = await asyncio.to_thread(work) if big else work()
        if prepared.skipped_parts:
            log.warning("footer_skipped", message_id=message_id, parts=list(prepared.skipped_parts))
        return prepared

    def _claims(self, message: Classified, rcpt: Decision) -> Claims:
        return Claims(rcpt.sha256, Scope.topic(message.topic), int(time.time()))

    def personal(self, prepared: Prepared, claims: Claims, mail_from: str) -> tuple[bytes, str]:
        """The copy for one recipient, with links carrying its own tokens; its envelope
        sender (the VERP address when configured; a null sender stays null)."""
        short = self._signer.issue_short(claims)
        data = prepared.render(self._branding.links(self._signer.issue(claims), short))
        if self._verp is None or not mail_from:
            return data, mail_from
        return data, self._verp.sender(short)

    def _sender(self, envelope: Envelope, message: Classified, rcpt: Decision) -> str:
        """A transactional copy's envelope sender: its own, or VERP when configured."""
        if self._verp is None or not self._verp.transactional or not envelope.mail_from:
            return envelope.mail_from
        return self._verp.sender(self._signer.issue_short(self._claims(message, rcpt)))

    async def sign(self, data: bytes, message_id: str) -> bytes:
        """DKIM-sign a copy after its rewrite (in a thread: RSA takes about a millisecond),
        made 7bit first when the next hop does not offer 8BITMIME (RFC 6152)."""
        seven_bit = not await self._relay.offers_8bitmime()
        if self._dkim is None and not seven_bit:
            return data
        loop = asyncio.get_running_loop()
        work = functools.partial(for_next_hop, data, self._dkim, seven_bit=seven_bit)
        signed, done = await loop.run_in_executor(self._signing, work)
        if self._dkim is not None and not done:
            log.warning("dkim_unsigned", message_id=message_id)
        return signed

    def close(self) -> None:
        """Stop the signing threads."""
        self._signing.shutdown()

    async def _relay_copy(
        self, envelope: Envelope, message: Classified, rcpt: Decision, data: bytes, sender: str
    ) -> Outcome:
        data = await self.sign(data, message.message_id)

        async def hold(finish: Callable[[], None]) -> bool:
            # the ledger has the copy as held before its final "." goes out: a death
            # from here on leaves it uncertain, never sent twice
            await self._store.record_sends([self._ledger_row(message, rcpt, HELD)])
            finish()
            return True

        outcome = await self._relay.send_committed(
            sender, rcpt.raw, data, hold, envelope.mail_options, envelope.client
        )
        if outcome is None:  # hold() never declines
            raise AssertionError("a held copy was abandoned")
        if outcome.uncertain:
            self._metrics.uncertain.inc()
            log.warning("reply_lost", rcpt=rcpt.sha256[:16], message_id=message.message_id)
        elif not outcome.delivered:
            self._metrics.relay_errors.labels(
                "temporary" if outcome.temporary else "permanent"
            ).inc()
            log.warning(
                "relay_failed",
                code=outcome.code,
                rcpt=rcpt.sha256[:16],
                message_id=message.message_id,
            )
        return outcome


def _settled_state(outcome: Outcome) -> str | None:
    """A copy's ledger state after the next hop's answer (None: delivered)."""
    if outcome.delivered:
        return None
    return UNCERTAIN_STATE if outcome.uncertain else UNSENT
