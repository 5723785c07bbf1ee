"""The one way opt-outs and consents reach the store: events, evidence, rules, actions.

Every channel turns what it was told into a ``SuppressionEvent`` (or consents) and
calls an action here: the web endpoint (one-click, the pages, held requests' links),
mail sent back (gateway/inbound/apply.py), ESP webhooks (through apply), the command
line, the REST API and the demo. The rules decide what each may do:

    the scope an unsubscribe takes     the token's (a short one's: gateway/tokens.py), a
                                       page's choice, an ESP list's; else global. Bounces
                                       and complaints: always global
    reason and source of a finding     FINDINGS; a bounce or complaint no genuine token
                                       vouches for: unverified-* (anyone can write one)
    which suppressions stop            a hard reason (bounced, complained, invalid, erased)
    transactional mail                 that is vouched for (stops_transactional)
    what a resubscribe may lift        the recipient's own unsubscribe, or a report nobody
                                       vouched for; never a bounce, complaint or block
    what a mailed lift link may lift   a report nobody vouched for (unverified-*) only

Evidence is a frozen value per channel: ``record()`` is kept on the row (and erased
with its subject), ``note()`` goes in the audit event (never erased: no IP, no
address). Scopes are typed here and rendered to text only for the store.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from gateway.errors import NotYours
from gateway.inbound.model import Kind
from suppression.address import Address, identity, md5_identity, normalize, normalize_domain
from suppression.model import (
    BatchResult,
    Consent,
    ImportItem,
    KeyKind,
    Reason,
    Source,
    Suppression,
    now,
)
from suppression.scope import GLOBAL, Scope
from suppression.store import Holder, OptOuts

# --- rules ----------------------------------------------------------------------------

# Suppressions that stop transactional mail too: the address cannot or must not receive.
HARD_REASONS = frozenset({Reason.BOUNCED, Reason.COMPLAINED, Reason.INVALID, Reason.ERASED})
# Reports no genuine token vouches for: only marketing heeds them, their subject may lift them.
UNVERIFIED_SOURCES = frozenset({Source.UNVERIFIED_BOUNCE, Source.UNVERIFIED_COMPLAINT})

# what a finding does when a genuine token (or a vouching channel) names its recipient
FINDINGS: Mapping[Kind, tuple[Reason, Source]] = {
    Kind.UNSUBSCRIBE: (Reason.UNSUBSCRIBED, Source.MAILBOX),
    Kind.HARD_BOUNCE: (Reason.BOUNCED, Source.BOUNCE),
    Kind.SOFT_BOUNCE: (Reason.BOUNCED, Source.BOUNCE),
    Kind.COMPLAINT: (Reason.COMPLAINED, Source.COMPLAINT),
}
# the same named by its address alone: anyone can write a report naming anyone
UNVERIFIED: Mapping[Source, Source] = {
    Source.BOUNCE: Source.UNVERIFIED_BOUNCE,
    Source.COMPLAINT: Source.UNVERIFIED_COMPLAINT,
}


def stops_transactional(record: Suppression) -> bool:
    """Whether a suppression stops transactional mail too: a hard reason, vouched for."""
    return record.reason in HARD_REASONS and record.source not in UNVERIFIED_SOURCES


def may_resubscribe(record: Suppression) -> bool:
    """Whether the recipient may take a suppression back: one they made, or a report
    nobody vouched for."""
    return record.reason is Reason.UNSUBSCRIBED or record.source in UNVERIFIED_SOURCES


def link_may_lift(record: Suppression) -> bool:
    """Whether a lift link mailed to the address may lift it: an unverified report only."""
    return record.source in UNVERIFIED_SOURCES


def finding_rule(kind: Kind, *, vouched: bool, channel: Source | None) -> tuple[Reason, Source]:
    """Reason and source of a finding's suppression. ``vouched``: a genuine token named the
    recipient; ``channel``: a channel that vouches for the addresses it names (an ESP's
    authenticated webhook) is the source of all it reports."""
    reason, source = FINDINGS[kind]
    if channel is not None:
        return reason, channel
    return reason, source if vouched else UNVERIFIED.get(source, source)


def finding_scope(kind: Kind, named: Scope) -> Scope:
    """The scope a finding suppresses in: an unsubscribe the one it names, else global."""
    return named if kind is Kind.UNSUBSCRIBE else GLOBAL


def in_scope(records: Sequence[Suppression], scope: Scope) -> Suppression | None:
    """The record of a scope among one key's suppressions."""
    text = str(scope)
    return next((s for s in records if s.scope == text), None)


def answered(holder: Holder, purpose: str, issued: int) -> Consent | None:
    """The recipient's latest choice on a purpose, if made since a link was issued
    (a confirmation link then changes nothing: it is used once)."""
    latest = next((c for c in holder.consents if c.purpose == purpose), None)
    return latest if latest is not None and latest.created.timestamp() >= issued else None


# --- evidence -------------------------------------------------------------------------


class Evidence(Protocol):
    """What a channel knows about a change."""

    def record(self) -> dict[str, object]:
        """Kept on the new rows; erased with their subject."""

    def note(self) -> dict[str, object]:
        """Kept in the audit event, never erased: no IP, no address."""


def _iso(unix: int) -> str:
    return datetime.fromtimestamp(unix, UTC).isoformat()


@dataclass(frozen=True, slots=True)
class LinkEvidence:
    """An opt-out by a token's link: one-click, or a page's button."""

    channel: Source  # one-click or web
    ip: str
    token_issued: int  # unix seconds

    def record(self) -> dict[str, object]:
        """Channel, client IP, the token's issue time."""
        return {"channel": self.channel, "ip": self.ip, "token_issued": _iso(self.token_issued)}

    def note(self) -> dict[str, object]:
        """Channel and the token's issue time."""
        return {"channel": self.channel, "token_issued": _iso(self.token_issued)}


@dataclass(frozen=True, slots=True)
class InboundNote:
    """What the audit log keeps about an inbound message (or an ESP's event): never erased,
    so the sender-chosen Message-ID (which may hold an address) only as its digest."""

    message_id_sha256: str | None
    digest: str
    finding: str  # the finding's reason ("dsn 5.1.1", "arf abuse", ...)
    status: str | None
    via: str  # "token", "address" or "authenticated METHOD"

    def as_dict(self) -> dict[str, object]:
        """As the audit event and a held request's detail keep it."""
        return {
            "message_id_sha256": self.message_id_sha256,
            "digest": self.digest,
            "finding": self.finding,
            "status": self.status,
            "via": self.via,
        }

    @classmethod
    def parse(cls, text: str) -> InboundNote:
        """From a held request's detail (JSON written by ``as_dict``)."""
        data = json.loads(text)
        return cls(
            data.get("message_id_sha256"),
            str(data.get("digest", "")),
            str(data.get("finding", "")),
            data.get("status"),
            str(data.get("via", "")),
        )


@dataclass(frozen=True, slots=True)
class InboundEvidence:
    """A finding of mail sent back, or of an ESP's event."""

    channel: Source
    inbound: InboundNote
    message_id: str | None  # the inbound message's own Message-ID (erased with the row)
    token_issued: int | None = None

    def record(self) -> dict[str, object]:
        """The note, the channel and the Message-ID (and the token's issue time)."""
        data = {"channel": self.channel.value, **self.note(), "message_id": self.message_id}
        if self.token_issued is not None:
            data["token_issued"] = self.token_issued
        return data

    def note(self) -> dict[str, object]:
        """The inbound note."""
        return self.inbound.as_dict()


@dataclass(frozen=True, slots=True)
class HeldEvidence:
    """An opt-out by mail nobody authenticated, confirmed by the link mailed to the address."""

    inbound: InboundNote
    ip: str

    def record(self) -> dict[str, object]:
        """The inbound note, the confirmation and the client IP."""
        return {**self.note(), "ip": self.ip}

    def note(self) -> dict[str, object]:
        """The inbound note and the confirmation."""
        return {**self.inbound.as_dict(), "confirmed": "link"}


@dataclass(frozen=True, slots=True)
class PageConsent:
    """A consent given on a page: a resubscribe, or a double opt-in's confirmation."""

    ip: str
    requested_at: int | None = None  # a confirmation: when the link was issued
    confirmed_at: datetime | None = None

    def record(self) -> dict[str, object]:
        """Channel and client IP (and when the request was made and confirmed)."""
        proof: dict[str, object] = {"channel": Source.WEB, "ip": self.ip}
        if self.requested_at is not None and self.confirmed_at is not None:
            proof |= {
                "requested_at": _iso(self.requested_at),
                "confirmed_at": self.confirmed_at.isoformat(),
            }
        return proof

    def note(self) -> dict[str, object]:
        """Nothing: a consent's audit event names its records."""
        return {}


@dataclass(frozen=True, slots=True)
class ApiConsent:
    """A consent an application recorded through the REST API, with what it proves."""

    ip: str | None = None
    user_agent: str | None = None
    text: str | None = None  # the consent text shown
    text_sha256: str | None = None

    def record(self) -> dict[str, object]:
        """Channel and every proof given."""
        proof: dict[str, object] = {"channel": Source.API}
        for name in ("ip", "user_agent", "text", "text_sha256"):
            value = getattr(self, name)
            if value is not None:
                proof[name] = value
        return proof

    def note(self) -> dict[str, object]:
        """Nothing: a consent's audit event names its records."""
        return {}


def _json(data: Mapping[str, object]) -> str:
    return json.dumps(data, sort_keys=True)


# --- events ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Recipient:
    """Whom a suppression is about: an identity hash, or a domain (``@domain``)."""

    key: str
    kind: KeyKind
    address: str | None = None  # the normalised plaintext, when it is known and kept

    @classmethod
    def hashed(cls, sha256: str, address: str | None = None) -> Recipient:
        """An address known by its identity hash."""
        return cls(sha256, "sha256", address)

    @classmethod
    def parse(cls, text: str, *, keep: bool) -> Recipient:
        """An address or ``@domain`` as given (the address's plaintext only if ``keep``);
        InvalidAddress otherwise."""
        if text.strip().startswith("@"):
            domain = "@" + normalize_domain(text)
            return cls(identity(domain), "domain", domain)
        address = normalize(text)
        return cls.hashed(address.sha256, address.normalized if keep else None)


@dataclass(frozen=True, slots=True)
class SuppressionEvent:
    """One opt-out (or bounce, complaint, block) of one recipient, as the store gets it."""

    recipient: Recipient
    scope: Scope
    reason: Reason
    source: Source
    evidence: Evidence | None = None


def unsubscribe(recipient: Recipient, scope: Scope, evidence: LinkEvidence) -> SuppressionEvent:
    """A recipient's own unsubscribe by a link, in the scope it (or the page) names."""
    return SuppressionEvent(recipient, scope, Reason.UNSUBSCRIBED, evidence.channel, evidence)


def finding_event(
    kind: Kind,
    recipient: Recipient,
    named: Scope,
    *,
    vouched: bool,
    channel: Source | None,
    inbound: InboundNote,
    message_id: str | None,
    token_issued: int | None,
) -> SuppressionEvent:
    """What a finding suppresses, in which scope, for which reason, from which source: by
    the rules above (``named``: the scope its token or its list names)."""
    reason, source = finding_rule(kind, vouched=vouched, channel=channel)
    evidence = InboundEvidence(source, inbound, message_id, token_issued)
    return SuppressionEvent(recipient, finding_scope(kind, named), reason, source, evidence)


# --- actions --------------------------------------------------------------------------


async def opt_out(store: OptOuts, events: Sequence[SuppressionEvent], *, actor: str) -> BatchResult:
    """Suppress: events of one scope, source and evidence in one transaction with one
    audit event (existing suppressions stay as they are)."""
    groups: dict[tuple[Scope, Source, Evidence | None], list[ImportItem]] = {}
    for e in events:
        r = e.recipient
        item = ImportItem(r.key, r.kind, r.address, e.reason)
        groups.setdefault((e.scope, e.source, e.evidence), []).append(item)
    results = [
        await store.suppress(
            items,
            scope=str(scope),
            source=source,
            actor=actor,
            evidence=_json(evidence.record()) if evidence else None,
            note=evidence.note() if evidence else None,
        )
        for (scope, source, evidence), items in groups.items()
    ]
    if len(results) == 1:
        return results[0]
    return BatchResult(
        sum(r.added for r in results),
        sum(r.present for r in results),
        sum(r.duplicates for r in results),
        max((r.event for r in results), default=0),
    )


@dataclass(frozen=True, slots=True)
class Lifted:
    """What a lift did: how many of the distinct targets had a suppression in the scope."""

    removed: int
    targets: int


async def lift(
    store: OptOuts, recipients: Sequence[Recipient], *, scope: Scope, actor: str
) -> Lifted:
    """An operator's lift of any suppression in a scope (audited per target); an address
    is lifted by its hash and by the MD5 a partner list may hold (``address`` needed)."""
    targets = dict.fromkeys(
        (r.key,) if r.kind == "domain" else (r.key, md5_identity(r.address or ""))
        for r in recipients
    )
    removed = 0
    for keys in targets:
        removed += await store.unsuppress(keys, scope=str(scope), actor=actor) > 0
    return Lifted(removed, len(targets))


async def resubscribe(
    store: OptOuts, sha256: str, scope: Scope, *, consent: Consent | None, actor: str
) -> bool:
    """The recipient takes back a suppression of theirs (``may_resubscribe``): the consent
    first (if the lift then fails, nothing is mailed), then the lift. False when there was
    none; NotYours when it is a bounce, complaint or block."""
    found = in_scope((await store.holder(sha256)).suppressions, scope)
    if found is None:
        return False
    if not may_resubscribe(found):
        raise NotYours("this subscription was stopped for another reason")
    if consent is not None:
        await store.record_consents([consent], actor=actor)
    await store.unsuppress([sha256], scope=str(scope), actor=actor)
    return True


async def lift_report(store: OptOuts, sha256: str, scope: Scope, *, actor: str) -> bool:
    """A lift link's lift: the unverified report in the scope, nothing else."""
    found = in_scope((await store.holder(sha256)).suppressions, scope)
    if found is None or not link_may_lift(found):
        return False
    await store.unsuppress([sha256], scope=str(scope), actor=actor)
    return True


async def confirm(
    store: OptOuts, holder: Holder, consent: Consent, issued: int, *, actor: str
) -> Consent | None:
    """A double opt-in confirmed by its link: the consent, once (the choice made since the
    link was issued, if any, is returned and nothing changes); then the recipient's own
    unsubscribe from that list, if older than the request, is lifted."""
    made = answered(holder, consent.purpose, issued)
    if made is not None:
        return made
    await store.record_consents([consent], actor=actor)
    topic = str(Scope.topic(consent.purpose))
    for record in holder.suppressions:
        if (
            record.scope == topic
            and may_resubscribe(record)
            and record.created.timestamp() < issued
        ):
            await store.unsuppress([record.key], scope=topic, actor=actor)
    return None


async def consent(
    store: OptOuts,
    addresses: Sequence[Address],
    *,
    purpose: str,
    granted: bool,
    source: str,
    policy_version: str | None,
    actor: str,
    keep_addresses: bool,
    evidence: Evidence | None = None,
) -> int:
    """Record a consent (or with ``granted`` False a revocation) for each address, in one
    transaction; how many records."""
    at = now()
    records = [
        Consent(
            sha256=a.sha256,
            purpose=purpose,
            granted=granted,
            source=source,
            created=at,
            policy_version=policy_version,
            address=a.normalized if keep_addresses else None,
            evidence=_json(evidence.record()) if evidence else None,
        )
        for a in addresses
    ]
    return await store.record_consents(records, actor=actor)


def page_consent(sha256: str, purpose: str, evidence: PageConsent, version: str | None) -> Consent:
    """A consent the recipient gives on a page now."""
    return Consent(
        sha256,
        purpose,
        True,
        Source.WEB,
        evidence.confirmed_at or now(),
        policy_version=version,
        evidence=_json(evidence.record()),
    )


@dataclass(frozen=True, slots=True)
class Erased:
    """What an erasure did."""

    sha256: str
    cleared: int  # records whose plaintext or evidence was deleted
    revoked: int  # consents revoked
    files: int  # kept inbound messages deleted

    def as_json(self) -> dict[str, object]:
        """The API's answer."""
        return {
            "sha256": self.sha256,
            "cleared": self.cleared,
            "revoked": self.revoked,
            "kept_messages_deleted": self.files,
        }


async def erase(store: OptOuts, address: Address, *, actor: str, keep_raw: str) -> Erased:
    """Erase the store's records of an address (keeping its hash), then the kept inbound
    messages ([inbound] keep_raw) that hold it."""
    erased = await store.erase(address, actor=actor)
    files = await asyncio.to_thread(erase_kept, Path(keep_raw), address) if keep_raw else 0
    return Erased(address.sha256, erased.cleared, erased.revoked, files)


def kept_messages(folder: Path, address: Address) -> list[Path]:
    """The kept inbound messages ([inbound] keep_raw) that hold the address, by name."""
    needle = address.normalized.encode()
    found = folder.glob("*.eml") if folder.is_dir() else ()
    return sorted(path for path in found if needle in path.read_bytes().lower())


def erase_kept(folder: Path, address: Address) -> int:
    """Delete the kept inbound messages ([inbound] keep_raw) that hold the address."""
    kept = kept_messages(folder, address)
    for path in kept:
        path.unlink()
    return len(kept)
