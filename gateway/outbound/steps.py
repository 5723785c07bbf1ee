"""The steps of the outbound path, and the one value they hand along (issue 16).

A step is a small object with a ``name`` and ``async __call__(mail, services)``: it
reads what the steps before it wrote into the frozen ``Mail`` and returns a new one
with its own part filled in (Mailman's handlers, with a typed value for ``msgdata``).
Only decide, relay and record do I/O, through ``Services``; gateway/outbound/pipelines.py
declares the ordered lists and ``run`` walks one. Partner offers' own steps (their
classify, relay and record) are in gateway/partners/steps.py.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any, Protocol, TypeVar

import structlog

from gateway.config import Partners
from gateway.errors import BadControlHeader, Phase, smtp_reply
from gateway.outbound.footers import Footers
from gateway.outbound.message import (
    INVALID,
    Classified,
    Decision,
    Envelope,
    classify_headers,
    purpose_of,
)
from gateway.outbound.policy import ClassRules, MessageClass, Rules, decide, scopes_for
from gateway.outbound.rewrite import Footer, Links, Prepared, prepare, strip_headers
from gateway.outbound.signing import Signer, for_next_hop
from gateway.runtime.metrics import Metrics
from gateway.smtp.outcomes import ALREADY, DROPPED, UNCERTAIN, Reply, Result, of_copy
from gateway.smtp.relay import Commit, Outcome
from gateway.smtp.xforward import Forwarded
from gateway.tokens import Claims, TokenSigner
from suppression.address import Address, normalize
from suppression.errors import InvalidAddress
from suppression.model import Ledger, Send, now
from suppression.partners import Claim, Offer
from suppression.sql.ledger import HELD, UNSENT
from suppression.sql.ledger import UNCERTAIN as UNCERTAIN_STATE
from suppression.store import Lookups, Partnering

log = structlog.get_logger("optgate.relay")
# Rewriting a message this large runs in a worker thread, off the event loop.
OFFLOAD_BYTES = 256 * 1024
Finish = Callable[[], None]
V = TypeVar("V")


def evolve(value: V, **changes: Any) -> V:
    """``dataclasses.replace`` for the steps' frozen, slotted values (Mail, Copy) at under
    two thirds of its cost: the new value's slots are set from ``changes`` or copied,
    without replace's field scan and keyword ``__init__``. Each step of each message
    copies its Mail; these classes have no ``__post_init__`` and only init fields, so
    the result is the one replace gives."""
    cls = type(value)
    names: tuple[str, ...] = cls.__slots__  # type: ignore[attr-defined]
    new = object.__new__(cls)
    given = len(changes)
    for name in names:
        if name in changes:
            given -= 1
            object.__setattr__(new, name, changes[name])
        else:
            object.__setattr__(new, name, getattr(value, name))
    if given:
        unknown = sorted(set(changes) - set(names))
        raise TypeError(f"{cls.__name__} has no field {unknown[0]!r}")
    return new


# --- what the steps work with -----------------------------------------------------------


class NextHop(Protocol):
    """What the steps ask of the next hop (gateway/smtp/relay.py's Relay)."""

    async def offers_8bitmime(self) -> bool:
        """Whether the next hop takes 8-bit content."""

    async def send(
        self, mail_from: str, rcpt: str, data: bytes, options: Sequence[str] = ()
    ) -> Outcome:
        """Relay one copy."""

    async def send_committed(
        self,
        mail_from: str,
        rcpt: str,
        data: bytes,
        commit: Commit,
        options: Sequence[str] = (),
        xforward: Forwarded | None = None,
    ) -> Outcome | None:
        """Relay one copy with a commit point before its final "." (``xforward``: the
        message's original client, for the next hop's log)."""


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


@dataclass(frozen=True, slots=True, kw_only=True)
class Services:
    """Everything a step may use besides the Mail: the store, the next hop, keys, settings."""

    store: Partnering
    next_hop: NextHop
    signer: TokenSigner
    rules: Rules
    branding: Branding
    metrics: Metrics
    default_topic: str
    sender_topics: Mapping[str, str]
    ledger_window: timedelta
    signing: Executor  # DKIM runs here, off the event loop
    classes: ClassRules = field(default_factory=ClassRules)  # mail without X-Optgate-Class
    resend_uncertain: bool = False
    dkim: Signer | None = None
    verp: Verp | None = None


@dataclass(frozen=True, slots=True)
class Rewrite:
    """What render adds to a kept copy besides its tokens (None for transactional mail)."""

    footer: Footer
    list_id: str
    feedback_id: str


@dataclass(frozen=True, slots=True)
class OfferRun:
    """One batch of a partner offer's claimed copies: the fan-out's part of a Mail."""

    offer: Offer
    claims: tuple[Claim, ...]  # in the order of the envelope's recipients
    owner: str  # this worker, on its claims
    commit: Callable[[int, str, Finish], Awaitable[bool]]  # mark one copy sent, then finish
    settings: Partners
    company: str
    postal_address: str


@dataclass(frozen=True, slots=True)
class Copy:
    """One envelope recipient on its way: decided, then (when it goes out) rendered,
    signed and relayed."""

    decision: Decision
    duplicate: bool = False  # decide: an earlier recipient is the same address, its copy serves
    skipped: bool = False  # skip_delivered: out before (a retry), not sent again
    data: bytes = b""  # render, then sign
    sender: str = ""  # render: this copy's envelope sender (VERP when configured)
    outcome: Outcome | None = None  # relay (None from a partner relay: taken over)

    @property
    def sends(self) -> bool:
        """Whether this copy goes to the next hop."""
        keep = self.decision.verdict.keep and self.decision.address is not None
        return keep and not self.duplicate and not self.skipped


@dataclass(frozen=True, slots=True)
class Mail:
    """One message (or one batch of an offer's copies) on its way; each field says which
    step writes it. A Mail with a ``result`` is answered: no further step runs."""

    envelope: Envelope
    started: float = field(default_factory=time.perf_counter)
    offer: OfferRun | None = None  # a partner offer's batch (the fan-out)
    message: Classified | None = None  # classify
    ledger: Ledger | None = None  # classify: how a retry is recognised (None: never)
    rewrite: Rewrite | None = None  # classify (None: transactional, control headers stripped)
    copies: tuple[Copy, ...] = ()  # decide, one per envelope recipient in envelope order
    lookup_seconds: float = 0.0  # decide
    prepared: Prepared | None = None  # render (an offer's comes from an earlier batch)
    result: Result | None = None  # record (or classify, refusing the message)

    @property
    def classified(self) -> Classified:
        """The message's class; an error when classify has not run."""
        if self.message is None:
            raise RuntimeError("a step that needs the message's class ran before classify")
        return self.message

    @property
    def sending(self) -> list[tuple[int, Copy]]:
        """The copies that go to the next hop, with their positions."""
        return [(i, c) for i, c in enumerate(self.copies) if c.sends]

    def with_copies(self, changed: Mapping[int, Copy], **also: Any) -> Mail:
        """This Mail with the copies at the given positions replaced (itself when none are),
        and the other fields in ``also``, in one copy."""
        if not changed and not also:
            return self
        copies = self.copies
        if changed:
            copies = tuple(changed.get(i, c) for i, c in enumerate(copies))
        return evolve(self, copies=copies, **also)


class Step(Protocol):
    """One step of a pipeline."""

    name: str

    async def __call__(self, mail: Mail, services: Services) -> Mail:
        """The Mail with this step's part done."""


Steps = tuple[Step, ...]


async def run(steps: Steps, mail: Mail, services: Services) -> Mail:
    """Each step in turn, until the Mail is answered."""
    for step in steps:
        if mail.result is not None:
            break
        mail = await step(mail, services)
    return mail


# --- the steps --------------------------------------------------------------------------


class Classify:
    """Class, topic, campaign and ledger key from the X-Optgate-* headers, else the
    envelope: the class by sender, domain and original client's network ([policy]
    transactional_*, marketing_senders), the topic by sender, else the defaults; a bad
    control header answers every recipient 550."""

    name = "classify"

    async def __call__(self, mail: Mail, services: Services) -> Mail:
        """Classify, or refuse the message."""
        envelope = mail.envelope
        try:
            message = classify_headers(
                envelope.content,
                envelope.mail_from,
                services.default_topic,
                services.sender_topics,
                services.classes,
                envelope.client.client_ip if envelope.client else None,
            )
        except BadControlHeader as exc:
            # the value is the sender's: logged as its keyed digest (gateway/runtime/logs.py)
            log.warning("message_refused", header=exc.header, value=exc.value)
            services.metrics.messages.labels("5xx").inc()
            code, _, text = smtp_reply(exc, Phase.DATA).partition(" ")
            return evolve(mail, result=Result((Reply(int(code), text),) * len(envelope.rcpt_tos)))
        branding = services.branding
        rewrite = (
            None
            if message.kind is MessageClass.TRANSACTIONAL
            else Rewrite(
                branding.footer(message.topic),
                f"{message.topic} <{message.topic}.{branding.list_domain}>",
                f"{message.feedback_id}:{branding.feedback_id}",
            )
        )
        ledger = Ledger(message.ledger_key, now() - services.ledger_window)
        return evolve(mail, message=message, ledger=ledger, rewrite=rewrite)


def _parse(rcpt: str) -> Address | None:
    try:
        return normalize(rcpt)
    except InvalidAddress:
        return None


async def decisions(
    store: Lookups,
    rules: Rules,
    recipients: Sequence[str],
    kind: MessageClass,
    topic: str,
    ledger: Ledger | None = None,
    partner: str | None = None,
) -> list[Decision]:
    """Decide every recipient with one store round trip (which also reads the ledger)."""
    parsed = [(raw, _parse(raw)) for raw in recipients]
    valid = [a for _, a in parsed if a is not None]
    purpose = purpose_of(kind, topic)
    facts = await store.lookup_many(valid, scopes_for(kind, topic, partner), purpose, ledger)
    return [
        Decision(
            raw,
            a,
            decide(facts[a.sha256], kind, purpose, rules),
            facts[a.sha256].delivered,
            facts[a.sha256].uncertain,
        )
        if a is not None
        else Decision(raw, None, INVALID)
        for raw, a in parsed
    ]


class Decide:
    """Every recipient's verdict from one store lookup (suppressions, consent, the ledger);
    a partner offer's kept ones once more for its audience topic. A recipient given twice
    is one copy."""

    name = "decide"

    async def __call__(self, mail: Mail, services: Services) -> Mail:
        """Decide each envelope recipient."""
        message = mail.classified
        started = time.perf_counter()
        decided = await decisions(
            services.store,
            services.rules,
            mail.envelope.rcpt_tos,
            message.kind,
            message.topic,
            mail.ledger,
            message.partner,
        )
        if message.audience:
            # the audience topic's own consent and suppression, as of now
            kept = [i for i, d in enumerate(decided) if d.verdict.keep]
            topical = await decisions(
                services.store,
                services.rules,
                [decided[i].raw for i in kept],
                MessageClass.MARKETING,
                message.audience,
            )
            for i, again in zip(kept, topical, strict=True):
                if not again.verdict.keep:
                    decided[i] = replace(decided[i], verdict=again.verdict)
        seconds = time.perf_counter() - started
        seen: set[str] = set()
        copies = []
        for d in decided:
            keep = d.verdict.keep and d.address is not None
            copies.append(Copy(d, duplicate=keep and d.sha256 in seen))
            if keep:
                seen.add(d.sha256)
        return evolve(mail, copies=tuple(copies), lookup_seconds=seconds)


def skips(decision: Decision, resend_uncertain: bool) -> bool:
    """A copy not sent again: delivered before, or uncertain under [relay] uncertain = skip."""
    return decision.delivered or (decision.uncertain and not resend_uncertain)


class SkipDelivered:
    """Copies a retry of this message would send again: those the ledger has as delivered,
    and as uncertain (unless [relay] uncertain = resend), are not sent."""

    name = "skip_delivered"

    async def __call__(self, mail: Mail, services: Services) -> Mail:
        """Mark the copies not sent again."""
        return mail.with_copies(
            {
                i: evolve(c, skipped=True)
                for i, c in mail.sending
                if skips(c.decision, services.resend_uncertain)
            }
        )


class Render:
    """Each copy that goes out, made personal: the rewrite planned once per message (footer,
    List-Id, Feedback-ID, List-Unsubscribe) rendered with the recipient's tokens, and its
    envelope sender (VERP); transactional mail only loses its control headers."""

    name = "render"

    async def __call__(self, mail: Mail, services: Services) -> Mail:
        """Render every copy that goes out."""
        sending = mail.sending
        if not sending:
            return mail
        message, envelope = mail.classified, mail.envelope
        if mail.rewrite is None:
            # exempt from opt-outs, so no unsubscribe links: only our control headers go
            plain = strip_headers(envelope.content)
            return mail.with_copies(
                {
                    i: evolve(c, data=plain, sender=_plain_sender(services, mail, c))
                    for i, c in sending
                }
            )
        prepared = mail.prepared
        if prepared is None:
            prepared = await _prepare(envelope.content, message, mail.rewrite)
        changed = {}
        for i, c in sending:
            claims = Claims(c.decision.sha256, message.token_scope, int(time.time()))
            short = services.signer.issue_short(claims)
            links = services.branding.links(services.signer.issue(claims), short)
            sender = envelope.mail_from
            if services.verp is not None and sender:
                sender = services.verp.sender(short)
            changed[i] = evolve(c, data=prepared.render(links), sender=sender)
        return mail.with_copies(changed, prepared=prepared)


async def _prepare(content: bytes, message: Classified, rewrite: Rewrite) -> Prepared:
    """Plan the rewrite once per message (in a thread when the message is large)."""
    work = functools.partial(
        prepare,
        content,
        footer=rewrite.footer,
        list_id=rewrite.list_id,
        feedback_id=rewrite.feedback_id,
    )
    prepared = await asyncio.to_thread(work) if len(content) > OFFLOAD_BYTES else work()
    if prepared.skipped_parts:
        log.warning(
            "footer_skipped", message_id=message.message_id, parts=list(prepared.skipped_parts)
        )
    return prepared


def _plain_sender(services: Services, mail: Mail, copy: Copy) -> str:
    """A transactional copy's envelope sender: its own, or VERP when configured."""
    mail_from, verp = mail.envelope.mail_from, services.verp
    if verp is None or not verp.transactional or not mail_from:
        return mail_from
    message = mail.classified
    claims = Claims(copy.decision.sha256, message.token_scope, int(time.time()))
    return verp.sender(services.signer.issue_short(claims))


class Sign:
    """Each rendered copy made 7bit when the next hop lacks 8BITMIME (RFC 6152), then
    DKIM-signed (in threads: RSA takes about a millisecond)."""

    name = "sign"

    async def __call__(self, mail: Mail, services: Services) -> Mail:
        """Sign every copy that goes out."""
        sending = mail.sending
        if not sending:
            return mail
        seven_bit = not await services.next_hop.offers_8bitmime()
        if services.dkim is None and not seven_bit:
            return mail
        loop = asyncio.get_running_loop()
        message_id = mail.classified.message_id
        done = await asyncio.gather(
            *(
                loop.run_in_executor(
                    services.signing,
                    functools.partial(for_next_hop, c.data, services.dkim, seven_bit=seven_bit),
                )
                for _, c in sending
            )
        )
        changed = {}
        for (i, c), (signed, ok) in zip(sending, done, strict=True):
            if services.dkim is not None and not ok:
                log.warning("dkim_unsigned", message_id=message_id)
            changed[i] = evolve(c, data=signed)
        return mail.with_copies(changed)


def ledger_row(message: Classified, sha256: str, state: str | None) -> Send:
    """The send ledger's row of one copy of a message."""
    return Send(
        message.ledger_key,
        sha256,
        message.topic,
        message.kind.value,
        now(),
        message.campaign,
        state,
    )


def count_failure(services: Services, outcome: Outcome) -> None:
    """A copy the next hop did not take, by kind."""
    kind = "temporary" if outcome.temporary else "permanent"
    services.metrics.relay_errors.labels(kind).inc()


async def relay_each(mail: Mail, send: Callable[[Copy], Awaitable[Outcome | None]]) -> Mail:
    """Every copy that goes out through ``send``, all at once, with its outcome."""
    sending = mail.sending
    if len(sending) == 1:  # no task of its own for the one copy (most messages)
        outcomes: Sequence[Outcome | None] = [await send(sending[0][1])]
    else:
        outcomes = await asyncio.gather(*(send(c) for _, c in sending))
    return mail.with_copies(
        {i: evolve(c, outcome=o) for (i, c), o in zip(sending, outcomes, strict=True)}
    )


class RelayHeld:
    """Each copy to the next hop with a commit point: the ledger holds it before its final
    "." goes out, so a death from there on leaves it uncertain, never sent twice."""

    name = "relay"

    async def __call__(self, mail: Mail, services: Services) -> Mail:
        """Relay every copy that goes out, all at once."""
        return await relay_each(mail, functools.partial(self._copy, mail, services))

    @staticmethod
    async def _copy(mail: Mail, services: Services, copy: Copy) -> Outcome:
        message, sha = mail.classified, copy.decision.sha256

        async def hold(finish: Finish) -> bool:
            await services.store.hold_sends([ledger_row(message, sha, HELD)], finish)
            return True

        outcome = await services.next_hop.send_committed(
            copy.sender,
            copy.decision.raw,
            copy.data,
            hold,
            mail.envelope.mail_options,
            mail.envelope.client,
        )
        if outcome is None:  # hold() never declines
            raise AssertionError("a held copy was abandoned")
        if outcome.uncertain:
            services.metrics.uncertain.inc()
            log.warning("reply_lost", rcpt=sha[:16], message_id=message.message_id)
        elif not outcome.delivered:
            count_failure(services, outcome)
            log.warning(
                "relay_failed", code=outcome.code, rcpt=sha[:16], message_id=message.message_id
            )
        return outcome


def settled_state(outcome: Outcome) -> str | None:
    """A held copy's ledger state after the next hop's answer (None: delivered)."""
    if outcome.delivered:
        return None
    return UNCERTAIN_STATE if outcome.uncertain else UNSENT


class Record:
    """The ledger's held rows settled (delivered; uncertain: reply lost; removed: refused or
    deferred, a retry sends it again); every recipient's reply; the log line per recipient
    and per message, and the metrics."""

    name = "record"

    async def __call__(self, mail: Mail, services: Services) -> Mail:
        """Settle, answer, log and count."""
        message, metrics = mail.classified, services.metrics
        sent = [(c.decision.sha256, c.outcome) for _, c in mail.sending if c.outcome]
        if sent:
            await services.store.record_sends(
                [ledger_row(message, sha, settled_state(o)) for sha, o in sent]
            )
        metrics.lookup_seconds.observe(mail.lookup_seconds)
        resend = services.resend_uncertain
        for c in mail.copies:
            d = c.decision
            verdict = "keep" if d.verdict.keep else "drop"
            reason = (
                "already-delivered"
                if d.delivered
                else "uncertain"
                if d.uncertain and not resend
                else d.verdict.reason
            )
            metrics.recipients.labels(verdict, reason).inc()
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
        skipped = [c.decision for c in mail.copies if c.skipped]
        for d in skipped:
            (metrics.already_delivered if d.delivered else metrics.uncertain_skipped).inc()
            log.info(
                "already_delivered" if d.delivered else "uncertain_skipped",
                message_id=message.message_id,
                rcpt=d.sha256[:16],
            )
        result = replies(mail.copies, resend)
        elapsed = time.perf_counter() - mail.started
        metrics.smtp_seconds.observe(elapsed)
        answer = result.smtp()
        metrics.messages.labels(f"{answer.code // 100}xx").inc()
        outcomes = [o for _, o in sent]
        log.info(
            "message",
            message_id=message.message_id,
            recipients=len(mail.copies),
            kept=sum(1 for c in mail.copies if c.decision.verdict.keep and not c.duplicate),
            relayed=sum(1 for o in outcomes if o.delivered),
            already=len(skipped),
            uncertain=sum(1 for o in outcomes if o.uncertain),
            refused=sum(1 for o in outcomes if not o.delivered and not o.temporary),
            reply=answer.code,
            ms=round(elapsed * 1000, 2),
        )
        return evolve(mail, result=result)


def replies(copies: Sequence[Copy], resend_uncertain: bool) -> Result:
    """Every recipient's reply: dropped, not sent again, or the outcome of its copy (a
    recipient given twice has the first one's)."""
    firsts = {c.decision.sha256: c for c in copies if c.sends or c.skipped}
    return Result(tuple(_reply(c, firsts, resend_uncertain) for c in copies))


def _reply(copy: Copy, firsts: Mapping[str, Copy], resend_uncertain: bool) -> Reply:
    d = copy.decision
    if not d.verdict.keep or d.address is None:
        return DROPPED
    first = firsts[d.sha256]
    if first.skipped:
        return ALREADY if d.delivered else UNCERTAIN
    if first.outcome is None:
        raise RuntimeError("record ran before relay")
    if first.outcome.uncertain and not resend_uncertain:
        return UNCERTAIN
    return of_copy(first.outcome)
