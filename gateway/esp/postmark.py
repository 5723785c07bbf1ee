"""Postmark webhooks -> events.

Postmark signs nothing: each webhook is given HTTP basic auth credentials
(``[esp] postmark_credentials``, one USER:PASSWORD per webhook), so it is only as
safe as TLS in front of optgate (``[unsubscribe] base_url`` https). Per
https://postmarkapp.com/developer/webhooks/bounce-webhook (and the spam complaint and
subscription change webhooks): ``RecordType`` Bounce with ``TypeCode`` / ``Type``
(HardBounce 1, Transient 2, Unsubscribe 16, DnsError 256, SoftBounce 4096,
BadEmailAddress 100000, SpamComplaint 100001; the others, such as AutoResponder,
SpamNotification, Blocked or DMARCPolicy, say nothing about the address), SpamComplaint,
and SubscriptionChange (``SuppressSending`` true with ``SuppressionReason``
HardBounce, SpamComplaint, or ManualSuppression by the recipient: an unsubscribe;
a reactivation lifts nothing). Every other record (Delivery, Open, Click) is ignored.
Postmark carries back no header optgate sets: its recipients count through the send
ledger. Without a signature there is no replay key: a repeat applies the same events,
which changes nothing.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

from gateway.errors import Forged, Unauthenticated
from gateway.esp.common import (
    Notification,
    bounce,
    digest_of,
    event,
    finding,
    parse,
    same,
    table,
    text,
    word,
)
from gateway.inbound.model import Finding, Kind
from suppression.errors import ConfigError

# Bounce TypeCode -> (Type, kind): postmarkapp.com/developer/api/bounce-api#bounce-types
_TYPES: dict[int, tuple[str, Kind]] = {
    1: ("HardBounce", Kind.HARD_BOUNCE),
    2: ("Transient", Kind.SOFT_BOUNCE),
    16: ("Unsubscribe", Kind.UNSUBSCRIBE),
    32: ("Subscribe", Kind.IGNORED),
    64: ("AutoResponder", Kind.IGNORED),
    128: ("AddressChange", Kind.IGNORED),
    256: ("DnsError", Kind.SOFT_BOUNCE),
    512: ("SpamNotification", Kind.IGNORED),
    1024: ("OpenRelayTest", Kind.IGNORED),
    2048: ("Unknown", Kind.IGNORED),
    4096: ("SoftBounce", Kind.SOFT_BOUNCE),
    8192: ("VirusNotification", Kind.IGNORED),
    16384: ("ChallengeVerification", Kind.IGNORED),
    100000: ("BadEmailAddress", Kind.HARD_BOUNCE),
    100001: ("SpamComplaint", Kind.COMPLAINT),
    100002: ("ManuallyDeactivated", Kind.IGNORED),
    100003: ("Unconfirmed", Kind.IGNORED),
    100006: ("Blocked", Kind.IGNORED),
    100007: ("SMTPApiError", Kind.IGNORED),
    100008: ("InboundError", Kind.IGNORED),
    100009: ("DMARCPolicy", Kind.IGNORED),
    100010: ("TemplateRenderingFailed", Kind.IGNORED),
}
_BY_NAME = {name: (name, kind) for name, kind in _TYPES.values()}
_SUPPRESSION = {"HardBounce": Kind.HARD_BOUNCE, "SpamComplaint": Kind.COMPLAINT}


def credentials(values: Sequence[str]) -> tuple[bytes, ...]:
    """``[esp] postmark_credentials``: each USER:PASSWORD as the basic auth header's value."""
    for value in values:
        user, colon, password = value.partition(":")
        if not colon or not user or not password:
            raise ConfigError("[esp] postmark_credentials: each entry is USER:PASSWORD")
    return tuple(b"Basic " + base64.b64encode(value.encode()) for value in values)


@dataclass(frozen=True)
class Postmark:
    """The /hooks/postmark endpoint's checks and mapping."""

    accepted: Sequence[bytes]  # "Basic base64(user:password)" of each webhook
    name: ClassVar[str] = "postmark"

    async def read(self, headers: Mapping[str, str], body: bytes, at: datetime) -> Notification:
        """Check the basic auth credentials, then read the record."""
        scheme, _, given = headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "basic" or not given.strip():
            raise Unauthenticated("basic auth credentials are required")
        if not any(same(_canonical(given), expected) for expected in self.accepted):
            raise Forged("the basic auth credentials are not accepted")
        record = table(parse(body), "the body")
        one = _finding(record)
        if one is None:
            return Notification((), ignored=1)
        message = record.get("MessageID") or record.get("ID") or digest_of(record)
        return Notification((event(self.name, str(message), [one]),))


def _canonical(given: str) -> bytes:
    """The credentials as the configuration writes them (base64 decoded and re-encoded)."""
    try:
        decoded = base64.b64decode(given.strip(), validate=True)
    except (binascii.Error, ValueError):
        return b""
    return b"Basic " + base64.b64encode(decoded)


def _finding(record: Mapping[str, Any]) -> Finding | None:
    kind_name = text(record, "RecordType", required=False)
    if kind_name in ("Bounce", "SpamComplaint"):
        return _bounce(record)
    if kind_name == "SubscriptionChange":
        recipient = text(record, "Recipient")
        why, origin = text(record, "SuppressionReason", required=False), record.get("Origin")
        if record.get("SuppressSending") is not True:
            return finding(Kind.IGNORED, recipient, "postmark reactivated")
        kind = _SUPPRESSION.get(why, Kind.IGNORED)
        if why == "ManualSuppression" and origin == "Recipient":
            kind = Kind.UNSUBSCRIBE
        return finding(kind, recipient, f"postmark suppression {word(why)}")
    return None


def _bounce(record: Mapping[str, Any]) -> Finding:
    code = record.get("TypeCode")
    name, kind = (
        _TYPES.get(code, ("Unknown", Kind.IGNORED))
        if isinstance(code, int)
        else _BY_NAME.get(text(record, "Type", required=False), ("Unknown", Kind.IGNORED))
    )
    status = None
    if kind in (Kind.HARD_BOUNCE, Kind.SOFT_BOUNCE):
        kind, status = bounce(kind, None, text(record, "Details", required=False))
    return finding(kind, text(record, "Email"), f"postmark {name}", status=status)
