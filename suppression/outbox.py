"""Webhooks out: the events a change makes, the endpoints that want them, their deliveries.

Events are derived from the audit event a change appends and the rows it vouches for
(suppression/sql/integration.py, in the same transaction), so every channel that
changes a suppression or a consent makes them: one-click, pages, mail, bounces,
complaints, imports, the API, the CLI. Payloads name people by hash; the address
travels in a column of its own, only while a delivery is pending, and only to an
endpoint that includes addresses.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from suppression.errors import OptgateError
from suppression.model import Consent, Suppression

SUPPRESSION_ADDED = "suppression.added"
SUPPRESSION_REMOVED = "suppression.removed"
CONSENT_GIVEN = "consent.given"
CONSENT_CONFIRMED = "consent.confirmed"  # a double opt-in confirmed on /c/TOKEN
CONSENT_REVOKED = "consent.revoked"
SUBJECT_ERASED = "subject.erased"
EVENT_TYPES = (
    SUPPRESSION_ADDED,
    SUPPRESSION_REMOVED,
    CONSENT_GIVEN,
    CONSENT_CONFIRMED,
    CONSENT_REVOKED,
    SUBJECT_ERASED,
)
SECRET_PREFIX = "whsec_"  # noqa: S105 - the prefix secrets carry, not a secret


class PendingState:
    """A delivery's states."""

    PENDING = "pending"  # due (or leased by a node until ``due``)
    DELIVERED = "delivered"
    DEAD = "dead"  # retried until [webhooks] give_up_after, then left for an operator


@dataclass(frozen=True, slots=True)
class Event:
    """One event of a change: its type, the subject's key, the payload's data (no address)."""

    type: str
    key: str
    data: dict[str, object]
    address: str | None


@dataclass(frozen=True, slots=True)
class Webhook:
    """An endpoint: where, which events, and its signing secrets (the previous one stays
    valid until ``previous_until`` after a rotation)."""

    name: str
    url: str
    events: tuple[str, ...]
    include_address: bool | None  # None: as [webhooks] include_address says
    secret: str
    created: datetime
    previous_secret: str | None = None
    previous_until: datetime | None = None

    def secrets_at(self, at: datetime) -> tuple[str, ...]:
        """The secrets a delivery is signed with now: both during a rotation."""
        if self.previous_secret and self.previous_until and at < self.previous_until:
            return (self.secret, self.previous_secret)
        return (self.secret,)


@dataclass(frozen=True, slots=True)
class Delivery:
    """One event on its way to one endpoint."""

    id: int
    webhook: str
    uid: str  # the webhook-id header: the same on every attempt
    type: str
    data: str  # JSON
    address: str | None
    created: datetime
    state: str
    attempts: int
    due: datetime
    status: str | None = None  # what the last attempt got
    done: datetime | None = None

    def payload(self, include_address: bool) -> bytes:
        """The request body (Standard Webhooks: type, timestamp, data)."""
        data = json.loads(self.data)
        if include_address and self.address:
            data["address"] = self.address
        body = {"type": self.type, "timestamp": self.created.isoformat(), "data": data}
        return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()


def new_secret() -> str:
    """A signing secret as Standard Webhooks writes them: whsec_ and base64 of 32 bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def check_events(given: Sequence[str]) -> tuple[str, ...]:
    """Event types from the command line (comma-separated or repeated; ``all``)."""
    wanted = {part.strip() for text in given for part in text.split(",") if part.strip()}
    if "all" in wanted:
        return EVENT_TYPES
    unknown = sorted(wanted - set(EVENT_TYPES))
    if unknown or not wanted:
        raise OptgateError(
            f"event {', '.join(unknown) or '(none)'} is not known: use all or "
            f"{', '.join(EVENT_TYPES)}"
        )
    return tuple(t for t in EVENT_TYPES if t in wanted)


def _confirmed(c: Consent) -> bool:
    """A grant recorded by the confirmation page (its evidence has the confirmation time)."""
    if not c.granted or not c.evidence:
        return False
    try:
        evidence = json.loads(c.evidence)
    except ValueError:
        return False
    return isinstance(evidence, dict) and "confirmed_at" in evidence


def _suppression(kind: str, s: Suppression, actor: str) -> Event:
    data: dict[str, object] = {
        "key": s.key,
        "kind": s.kind,
        "scope": s.scope,
        "reason": s.reason.value,
        "source": s.source,
        "actor": actor,
    }
    return Event(kind, s.key, data, s.address)


def _consent(c: Consent, actor: str) -> Event:
    kind = CONSENT_REVOKED if not c.granted else CONSENT_GIVEN
    if _confirmed(c):
        kind = CONSENT_CONFIRMED
    data: dict[str, object] = {
        "sha256": c.sha256,
        "purpose": c.purpose,
        "source": c.source,
        "policy_version": c.policy_version,
        "actor": actor,
    }
    return Event(kind, c.sha256, data, c.address)


def events_of(
    action: str,
    subject: str | None,
    actor: str,
    changed: Sequence[Suppression | Consent],
) -> list[Event]:
    """The events of one audited change: its action and the rows it added or removed."""
    if action == "suppress":
        return [
            _suppression(SUPPRESSION_ADDED, s, actor) for s in changed if isinstance(s, Suppression)
        ]
    if action == "unsuppress":
        return [
            _suppression(SUPPRESSION_REMOVED, s, actor)
            for s in changed
            if isinstance(s, Suppression)
        ]
    if action == "consent":
        return [_consent(c, actor) for c in changed if isinstance(c, Consent)]
    if action == "erase" and subject is not None:
        return [Event(SUBJECT_ERASED, subject, {"sha256": subject, "actor": actor}, None)]
    return []
