"""Findings -> the store: verify tokens, suppress, count soft bounces, audit.

A genuine token is authoritative over the address a report writes; a token
that is not genuine (forged, altered, another system's) makes its finding
change nothing. Without a token the finding's own address is used, and then
nobody vouches for it: a bounce or complaint is recorded with an ``unverified-*``
source (marketing heeds it, transactional mail does not, and the person may lift
it by a mailed link), and an opt-out by mail counts at once only for its
authenticated author, else it is held for a confirmation link
(gateway/inbound/mailed_optouts.py). Every change is audited with the inbound message's
Message-ID and digest, and a second application of the same message changes
nothing: suppressions exist already, a held request is found again, and a soft
bounce is counted once per (recipient, message digest).
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path

import structlog

from gateway import optouts
from gateway.config import Config
from gateway.errors import InvalidToken
from gateway.inbound.authentication import Authentication, Origin
from gateway.inbound.mailed_optouts import OptOuts
from gateway.inbound.model import Classification, Finding, Kind
from gateway.keys import load_keys
from gateway.optouts import InboundNote, Recipient
from gateway.tokens import Confirmation, TokenSigner, is_short
from suppression.address import Address, normalize
from suppression.errors import InvalidAddress
from suppression.model import Source, now
from suppression.scope import GLOBAL, Scope
from suppression.store import InboundApply

log = structlog.get_logger("optgate.inbound")
ACTOR = "inbound"


@dataclass(frozen=True, slots=True)
class Applied:
    """What applying findings did, or would do on a dry run: counts for summaries."""

    unsubscribes: int = 0  # findings acted on, per kind (whether or not already suppressed)
    hard_bounces: int = 0
    soft_bounces: int = 0
    complaints: int = 0
    ignored: int = 0  # IGNORED findings, and findings with no recipient to act on
    forged: int = 0  # findings whose tokens were all not genuine: nothing was changed
    suppressed: int = 0  # suppressions that were new
    held: int = 0  # opt-outs held for a confirmation link (mailed, or mailed before)

    def counts(self) -> dict[str, int]:
        """Every count by name."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def __add__(self, other: Applied) -> Applied:
        return Applied(
            *(getattr(self, f.name) + getattr(other, f.name) for f in dataclasses.fields(self))
        )


_COUNTER = {
    Kind.UNSUBSCRIBE: "unsubscribes",
    Kind.HARD_BOUNCE: "hard_bounces",
    Kind.SOFT_BOUNCE: "soft_bounces",
    Kind.COMPLAINT: "complaints",
}


@dataclass(frozen=True, slots=True)
class Target:
    """Whom a finding concerns, and in which scope an unsubscribe applies."""

    sha256: str
    address: str | None  # normalised plaintext, when the finding named it (not a token)
    scope: Scope
    via: str  # "token" or "address"
    token_issued: int | None = None


class Forged(Exception):
    """Every token of a finding failed verification: the finding changes nothing."""


async def apply(
    classification: Classification,
    *,
    store: InboundApply,
    config: Config,
    dry_run: bool = False,
    signer: TokenSigner | None = None,
    at: datetime | None = None,
    origin: Origin | None = None,
    optouts: OptOuts | None = None,
    channel: Source | None = None,
) -> Applied:
    """Apply every finding of one inbound message; return the counts.

    ``signer`` defaults to the keys of ``[unsubscribe] key_file``; ``at`` is
    when the message arrived (a mailbox's Date), default now: soft bounces
    are counted in the window before it. An opt-out by mail without a genuine
    token needs ``origin`` (the message as it came) and ``optouts``; without
    them it changes nothing. Raises ``Deferred`` when such an opt-out must wait.
    ``channel``: the findings did not come by mail but through a channel that
    vouches for the addresses it names (an ESP's authenticated webhook): it is the
    source and actor of every change, and an unsubscribe it names counts at once.
    """
    context = _Context(
        classification,
        store,
        config,
        dry_run,
        signer or TokenSigner(load_keys(Path(config.unsubscribe.key_file))),
        at or now(),
        origin,
        optouts,
        {},
        channel,
    )
    total = Applied()
    for finding in classification.findings:
        total += await context.apply(finding)
    return total


def _digest(text: str | None) -> str | None:
    return None if text is None else hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class _Context:
    """One message's application: what every finding of it shares."""

    message: Classification
    store: InboundApply
    config: Config
    dry_run: bool
    signer: TokenSigner
    at: datetime
    origin: Origin | None
    optouts: OptOuts | None
    authenticated: dict[str, Authentication]  # the message's, once found: checked / named
    channel: Source | None

    @property
    def actor(self) -> str:
        return self.channel.value if self.channel else ACTOR

    async def apply(self, finding: Finding) -> Applied:
        """One finding: find its recipient, then act by kind."""
        if finding.kind is Kind.IGNORED:
            self._log(finding, "ignored")
            return Applied(ignored=1)
        try:
            target = await self._target(finding)
        except Forged:
            self._log(finding, "forged")
            return Applied(forged=1)
        if target is None:
            self._log(finding, "no-recipient")
            return Applied(ignored=1)
        counted = Applied(**{_COUNTER[finding.kind]: 1})
        if finding.kind is Kind.UNSUBSCRIBE and target.via == "address" and not self.channel:
            return counted + await self._by_mail(finding, target)
        if finding.kind is Kind.SOFT_BOUNCE and not await self._soft_limit_reached(finding, target):
            return counted
        added = await self._suppress(finding, target)
        self._log(finding, "suppressed" if added else "already", target)
        return counted + Applied(suppressed=added)

    async def _target(self, finding: Finding) -> Target | None:
        """The token's recipient if one is genuine, else the finding's address.

        Anyone can write a bounce or a complaint naming any address, so without a
        genuine token such a report counts only for an address optgate has mailed (the
        send ledger holds it); a genuine token the ledger cannot resolve names nobody.
        """
        genuine = False
        for token in finding.tokens:
            try:
                target = await self._resolve(token)
            except InvalidToken as exc:
                log.warning(
                    "inbound_bad_token", problem=str(exc), message_id=self.message.message_id
                )
                continue
            genuine = True
            if target is not None:
                return target
        if finding.tokens and not genuine:
            raise Forged
        if genuine or finding.recipient is None:
            return None
        try:
            address = normalize(finding.recipient)
        except InvalidAddress:
            return None
        if finding.kind is not Kind.UNSUBSCRIBE and not await self.store.sent_to(address.sha256):
            return None
        keep = address.normalized if self.config.store.keep_addresses else None
        return Target(address.sha256, keep, finding.scope or GLOBAL, "address")

    async def _resolve(self, token: str) -> Target | None:
        """A genuine token's recipient (None when the ledger cannot name it exactly)."""
        if not is_short(token):
            claims = self.signer.verify(token)
            if isinstance(claims.scope, Confirmation):
                raise InvalidToken("a confirmation token is not an opt-out")
            return Target(claims.recipient, None, claims.scope, "token", claims.issued)
        short = self.signer.verify_short(token)
        matches = {
            (sha256, scope)
            for sha256, topic in await self.store.sent_to(short.prefix)
            if (scope := short.scope_for(topic)) is not None
        }
        recipients = {sha256 for sha256, _ in matches}
        if len(recipients) != 1:
            log.warning(
                "inbound_token_unresolved",
                candidates=len(recipients),
                message_id=self.message.message_id,
            )
            return None
        (sha256, scope), *_ = sorted(matches)
        return Target(sha256, None, scope, "token", short.issued)

    async def _by_mail(self, finding: Finding, target: Target) -> Applied:
        """An opt-out by mail that no token vouches for (gateway/inbound/mailed_optouts.py)."""
        holder = await self.store.holder(target.sha256)
        if optouts.in_scope(holder.suppressions, GLOBAL):
            self._log(finding, "already", target)
            return Applied()
        if self.optouts is None or self.origin is None or finding.recipient is None:
            self._log(finding, "unconfirmed", target)
            return Applied()
        address = normalize(finding.recipient)
        # only an author asking for itself can be authenticated: no DNS for anyone else
        kind = "checked" if finding.by_author else "named"
        auth = self.authenticated.get(kind)
        if auth is None:
            auth = await self.optouts.authenticate(self.origin, check=finding.by_author)
            self.authenticated[kind] = auth
        author = auth.author is not None and _same(auth.author, address)
        if finding.by_author and author and auth.authenticated:
            if not self.dry_run:
                await self.optouts.may_count(auth)
            added = await self._suppress(
                finding, replace(target, via=f"authenticated {auth.method}")
            )
            self._log(finding, "suppressed" if added else "already", target, auth=auth.method)
            return Applied(suppressed=added)
        if not await self.optouts.known(address, third_party=not finding.by_author):
            self._log(finding, "unknown", target)
            return Applied()
        if self.dry_run:
            self._log(finding, "would-hold", target)
            return Applied(held=1)
        mailed = await self.optouts.hold(
            address, auth, self.message.digest, self._note(finding, target)
        )
        self._log(finding, "held", target, link=mailed.value)
        return Applied(held=1)

    async def _soft_limit_reached(self, finding: Finding, target: Target) -> bool:
        """Count the soft bounce; True once the limit is reached within the window."""
        inbound = self.config.inbound
        since = self.at - timedelta(days=inbound.soft_bounce_days)
        if self.dry_run:
            seen = await self.store.soft_bounces(target.sha256, since, self.at)
            count = len(seen | {self.message.digest})
        else:
            await self.store.record_soft_bounce(
                target.sha256,
                self.message.digest,
                at=self.at,
                actor=self.actor,
                detail=self._note(finding, target).as_dict(),
            )
            count = len(await self.store.soft_bounces(target.sha256, since, self.at))
        reached = count >= inbound.soft_bounce_limit
        if not reached:
            self._log(finding, "counted", target, soft_bounces=count)
        return reached

    async def _suppress(self, finding: Finding, target: Target) -> int:
        """Suppress the target (1 if that was new) by the rules of gateway/optouts.py; a dry
        run only looks."""
        event = optouts.finding_event(
            finding.kind,
            Recipient.hashed(target.sha256, target.address),
            target.scope,
            vouched=target.via != "address",
            channel=self.channel,
            inbound=self._note(finding, target),
            message_id=self.message.message_id,
            token_issued=target.token_issued,
        )
        if self.dry_run:
            holder = await self.store.holder(target.sha256)
            return int(optouts.in_scope(holder.suppressions, event.scope) is None)
        return (await optouts.opt_out(self.store, [event], actor=self.actor)).added

    def _note(self, finding: Finding, target: Target) -> InboundNote:
        """What the audit log keeps about the inbound message (the evidence, erased with the
        subject, also names the message)."""
        return InboundNote(
            _digest(self.message.message_id),
            self.message.digest,
            finding.reason,
            finding.status,
            target.via,
        )

    def _log(
        self, finding: Finding, outcome: str, target: Target | None = None, **extra: object
    ) -> None:
        log.info(
            "inbound_finding",
            kind=finding.kind.value,
            outcome=outcome,
            reason=finding.reason,
            status=finding.status,
            via=target.via if target else None,
            rcpt=target.sha256[:16] if target else None,
            message_id=self.message.message_id,
            dry_run=self.dry_run,
            **extra,
        )


def _same(written: str, address: Address) -> bool:
    """Whether an address as written is the given one."""
    try:
        return normalize(written).sha256 == address.sha256
    except InvalidAddress:
        return False
