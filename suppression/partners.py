"""Partners, their offers and the fan-out of each offer: the records, and the credentials.

An offer's fan-out is one row per (offer, recipient hash) in ``offer_copy``.
A row moves ``todo -> claimed -> sent | suppressed | failed`` (a temporary
failure puts it back to ``todo`` with a later ``until``). ``claimed`` carries an
owner and a lease (``until``): a node that dies loses its claims when the lease
ends and another node takes them over. ``sent`` is committed before the final
"." of the copy's SMTP transaction goes to the next hop (see gateway/partners/fanout.py),
so a row is never delivered twice.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from suppression.errors import OptgateError

# scrypt parameters: 16 MiB and ~40 ms per check; stored with each hash so they can change
SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 14, 8, 1
SALT_BYTES = 16


class UnknownPartner(OptgateError):
    """A partner name the store does not know."""


class OfferState(StrEnum):
    """Where an offer's fan-out stands."""

    QUEUED = "queued"  # accepted, audience not yet taken
    RUNNING = "running"  # audience taken, copies going out
    PAUSED = "paused"
    CANCELLED = "cancelled"
    DONE = "done"


class CopyState(StrEnum):
    """One recipient of one offer."""

    TODO = "todo"
    CLAIMED = "claimed"
    SENT = "sent"
    SUPPRESSED = "suppressed"
    FAILED = "failed"


# what an administrator may do to an offer, from which states
TRANSITIONS: dict[str, tuple[tuple[OfferState, ...], OfferState]] = {
    "pause": ((OfferState.QUEUED, OfferState.RUNNING), OfferState.PAUSED),
    "resume": ((OfferState.PAUSED,), OfferState.RUNNING),
    "cancel": ((OfferState.QUEUED, OfferState.RUNNING, OfferState.PAUSED), OfferState.CANCELLED),
}


@dataclass(frozen=True, slots=True)
class Partner:
    """A sender of offers; its credential only as a salted scrypt hash."""

    name: str
    credential: str
    disabled: bool
    created: datetime
    rate_per_hour: int | None = None  # None: [partners] rate_per_hour
    max_size: int | None = None  # None: [partners] max_message_size


@dataclass(frozen=True, slots=True)
class Offer:
    """An accepted offer: the partner's message as received, and its audience topic."""

    id: int
    partner: str
    topic: str | None
    content: bytes
    state: OfferState
    created: datetime


@dataclass(frozen=True, slots=True)
class OfferStatus:
    """An offer with the counts of its fan-out (exact: thresholds are applied on output)."""

    id: int
    partner: str
    topic: str | None
    state: OfferState
    created: datetime
    audience: int
    sent: int
    suppressed: int
    bounced: int
    pending: int
    unsubscribed: int  # recipients of a copy who later opted out of this partner


@dataclass(frozen=True, slots=True)
class Claim:
    """One copy a worker holds the lease of; address None when no plaintext is kept."""

    offer: int
    sha256: str
    address: str | None


def new_credential() -> str:
    """A fresh random credential to hand to a partner once."""
    return secrets.token_urlsafe(24)


def hash_credential(secret: str, salt: bytes | None = None) -> str:
    """``scrypt$N$r$p$SALT$HASH`` (hex), for storage."""
    salt = salt or secrets.token_bytes(SALT_BYTES)
    digest = hashlib.scrypt(
        secret.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32
    )
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${salt.hex()}${digest.hex()}"


def check_credential(secret: str, stored: str) -> bool:
    """Whether ``secret`` matches a stored hash (constant-time comparison)."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        computed = hashlib.scrypt(
            secret.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p), dklen=32
        )
    except (ValueError, MemoryError):
        return False
    return hmac.compare_digest(computed.hex(), digest)
