"""The records the store keeps: suppressions, consents, audit events."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Literal, NamedTuple

from suppression.errors import OptgateError

KeyKind = Literal["sha256", "md5", "domain"]


class Reason(StrEnum):
    """Why an address is suppressed."""

    UNSUBSCRIBED = "unsubscribed"
    COMPLAINED = "complained"
    BOUNCED = "bounced"
    MANUAL = "manual"
    IMPORTED = "imported"
    INVALID = "invalid"
    ERASED = "erased"  # the person had everything erased: only a fresh consent mails again


class Source(StrEnum):
    """The channel a record came through."""

    ONE_CLICK = "one-click"
    WEB = "web"
    MAILBOX = "mailbox"
    BOUNCE = "bounce"
    COMPLAINT = "complaint"
    IMPORT = "import"
    CLI = "cli"
    API = "api"
    ERASURE = "erasure"
    ESP = "esp"  # an ESP's webhook (gateway/esp): its bounces, complaints and unsubscribes
    # a bounce or complaint no genuine token vouches for: anyone can write one naming anyone
    UNVERIFIED_BOUNCE = "unverified-bounce"
    UNVERIFIED_COMPLAINT = "unverified-complaint"


PARTNER_OFFERS = "partner-offers"
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


def check_name(name: str, what: str) -> str:
    """Validate a topic, partner or purpose name."""
    if _NAME.fullmatch(name) is None:
        raise OptgateError(
            f"{what} {name!r} is not valid: "
            "use 1-64 of a-z 0-9 . _ - starting with a letter or digit"
        )
    return name


def now() -> datetime:
    """The current time, aware UTC."""
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Suppression:
    """One suppression: a key (address hash, MD5 or domain) in a scope."""

    key: str
    kind: KeyKind
    scope: str
    reason: Reason
    source: str
    created: datetime
    address: str | None = None
    evidence: str | None = None
    event: int | None = None


@dataclass(frozen=True, slots=True)
class Consent:
    """One consent record; a revocation is a record with granted=False."""

    sha256: str
    purpose: str
    granted: bool
    source: str
    created: datetime
    policy_version: str | None = None
    address: str | None = None
    evidence: str | None = None
    event: int | None = None


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One link of the hash-chained audit log."""

    seq: int
    at: datetime
    actor: str
    action: str
    subject: str | None
    body: str
    prev: str
    digest: str


@dataclass(frozen=True, slots=True)
class Facts:
    """What the store knows about one recipient for one decision."""

    suppressions: tuple[Suppression, ...]
    consent: Consent | None
    delivered: bool = False  # the ledger holds this message for this recipient
    uncertain: bool = False  # ... as held or uncertain: it may have gone out


@dataclass(frozen=True, slots=True)
class ImportItem:
    """One validated row of a bulk suppression import."""

    key: str
    kind: KeyKind
    address: str | None
    reason: Reason
    created: datetime | None = None


class Shape(NamedTuple):
    """What the rows of an import segment share: kind of key, scope, reason, source."""

    kind: KeyKind
    scope: str
    reason: Reason
    source: str


@dataclass(slots=True)
class ImportRows:
    """Validated rows of a suppression import run, consecutive in the file and of one shape,
    a column per field: a run takes millions of rows, and one object per row cost more
    than the rest of a row's way into the store. ``created`` and ``evidence`` are None when
    no row of the segment has a time or evidence of its own."""

    shape: Shape
    keys: list[str] = field(default_factory=list)
    addresses: list[str | None] = field(default_factory=list)
    created: list[datetime | None] | None = None  # None in it: the time of the import
    evidence: list[str | None] | None = None


@dataclass(frozen=True, slots=True)
class ConsentItem:
    """One validated row of a consent import; ``timed`` if the row gave the record's time."""

    consent: Consent
    timed: bool


@dataclass(frozen=True, slots=True)
class BatchResult:
    """What one import batch changed."""

    added: int
    present: int
    duplicates: int
    event: int = 0  # the audit event (sequence number) the new rows point to


@dataclass(frozen=True, slots=True)
class Send:
    """One copy the next hop accepted: the send ledger's row."""

    message: str
    sha256: str
    topic: str
    kind: str
    at: datetime
    campaign: str | None = None  # X-Optgate-Campaign, the Feedback-ID's campaign
    state: str | None = None  # "held", "uncertain"; None: delivered (suppression/sql/ledger.py)


@dataclass(frozen=True, slots=True)
class OptOutCheck:
    """One opt-out and the marketing mail relayed to that recipient after it."""

    sha256: str
    scope: str
    reason: Reason
    source: str
    at: datetime
    sends_after: int
    last_send_after: datetime | None


@dataclass(frozen=True, slots=True)
class Ledger:
    """Which message a lookup also checks the send ledger for, and how far back."""

    message: str
    since: datetime


@dataclass(frozen=True, slots=True)
class HeldRequest:
    """A change that waits until its subject follows the link mailed to the address.

    ``secret`` is the SHA-256 of the link's secret (the store never holds the link);
    ``action`` is ``unsubscribe`` (an opt-out by mail nobody authenticated) or ``lift``
    (a suppression an unverified bounce or complaint caused).
    """

    secret: str
    sha256: str
    action: str
    scope: str
    created: datetime
    detail: str  # JSON: channel, inbound message id and digest ... (no address)
    mailed: datetime | None = None
    done: datetime | None = None
