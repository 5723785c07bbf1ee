"""Mailgun webhooks -> events.

Per https://documentation.mailgun.com/docs/mailgun/user-manual/webhooks/securing-webhooks:
the JSON body's ``signature`` holds ``timestamp``, ``token`` and ``signature``, the hex
HMAC-SHA256 of timestamp + token under the webhook signing key (``parent-signature``
under the parent account's key, for a subaccount's domain). Mailgun signs every
attempt afresh (it retries for 8 hours), so a timestamp more than ``[esp] max_age``
from now is stale and each token is accepted once (kept in the store, so every worker
and node refuses a replay).

``event-data``: ``failed`` with ``severity`` permanent (``reason`` bounce, or
suppress-bounce / suppress-complaint / suppress-unsubscribe when Mailgun did not send
because the address is on its own list; ``old``: it gave up retrying) or temporary (an
attempt Mailgun retries itself: ignored, its final outcome comes as its own event),
``complained`` and ``unsubscribed``; every other event is ignored. Mailgun carries
back no header optgate sets: its recipients count through the send ledger.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

from gateway.errors import Forged, Malformed, Unauthenticated
from gateway.esp.common import (
    Notification,
    bounce,
    event,
    finding,
    fresh,
    parse,
    table,
    text,
    word,
)
from gateway.inbound.model import Finding, Kind

_SUPPRESSED = {  # failed, permanent: Mailgun's own lists
    "suppress-bounce": Kind.HARD_BOUNCE,
    "suppress-complaint": Kind.COMPLAINT,
    "suppress-unsubscribe": Kind.UNSUBSCRIBE,
}
_REFUSED = ("espblock", "blacklisted", "greylisted")  # the receiver refused our mail
MAX_TOKEN = 512


@dataclass(frozen=True)
class Mailgun:
    """The /hooks/mailgun endpoint's checks and mapping."""

    keys: Sequence[bytes]
    max_age: int
    name: ClassVar[str] = "mailgun"

    async def read(self, headers: Mapping[str, str], body: bytes, at: datetime) -> Notification:
        """Verify the HMAC of timestamp + token, its age, then read the event."""
        data = table(parse(body), "the body")
        signed = data.get("signature")
        if not isinstance(signed, dict):
            raise Unauthenticated("the body has no signature")
        timestamp, token = str(signed.get("timestamp", "")), signed.get("token")
        if not isinstance(token, str) or not 0 < len(token) <= MAX_TOKEN:
            raise Unauthenticated("the signature has no token")
        given = [signed.get(name) for name in ("signature", "parent-signature")]
        message = (timestamp + token).encode()
        expected = [hmac.new(key, message, hashlib.sha256).hexdigest() for key in self.keys]
        if not any(
            isinstance(value, str) and hmac.compare_digest(value.encode(), digest.encode())
            for value in given
            for digest in expected
        ):
            raise Forged("the Mailgun signature does not verify")
        if not timestamp.isdigit():
            raise Malformed("the signature's timestamp is not a Unix time")
        fresh(int(timestamp), at, self.max_age)
        event_data = table(data.get("event-data"), "event-data")
        one = _finding(event_data)
        if one is None:
            return Notification((), ignored=1)
        found = event(self.name, _message(event_data), [one])
        return Notification((found,), replay=token, window=2 * self.max_age)


def _finding(data: Mapping[str, Any]) -> Finding | None:
    kind_name = text(data, "event", required=False)
    if kind_name == "complained":
        return finding(Kind.COMPLAINT, text(data, "recipient"), "mailgun complained")
    if kind_name == "unsubscribed":
        return finding(Kind.UNSUBSCRIBE, text(data, "recipient"), "mailgun unsubscribed")
    if kind_name != "failed" or text(data, "severity", required=False) != "permanent":
        return None
    why = text(data, "reason", required=False)
    reason = f"mailgun failed {word(why)}"
    if why in _SUPPRESSED:
        return finding(_SUPPRESSED[why], text(data, "recipient"), reason)
    if why in _REFUSED:
        return finding(Kind.IGNORED, text(data, "recipient"), reason)
    delivery = data.get("delivery-status")
    status: str | None = None
    diagnostic = ""
    if isinstance(delivery, dict):
        status = text(delivery, "enhanced-code", required=False) or None
        parts = (delivery.get(key) for key in ("code", "message", "description"))
        diagnostic = " ".join(str(part) for part in parts if isinstance(part, str | int))
    vendor_kind = Kind.SOFT_BOUNCE if why == "old" else Kind.HARD_BOUNCE
    kind, status = bounce(vendor_kind, status, diagnostic)
    return finding(kind, text(data, "recipient"), reason, status=status)


def _message(data: Mapping[str, Any]) -> str:
    """The Message-ID of the mail the event is about (else the event's id)."""
    message = data.get("message")
    if isinstance(message, dict) and isinstance(message.get("headers"), dict):
        value = message["headers"].get("message-id")
        if isinstance(value, str) and value:
            return value
    return text(data, "id")
