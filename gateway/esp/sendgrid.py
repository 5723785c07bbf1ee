"""SendGrid's signed Event Webhook -> events.

Per https://www.twilio.com/docs/sendgrid/for-developers/tracking-events/getting-started-event-webhook-security-features:
the ``X-Twilio-Email-Event-Webhook-Signature`` header is a base64 ECDSA (P-256,
SHA-256) signature over the ``X-Twilio-Email-Event-Webhook-Timestamp`` header
followed by the raw body, checked with the public key SendGrid shows
(``[esp] sendgrid_public_key``). The body is a JSON array of events
(.../tracking-events/event): ``bounce`` (``type`` bounce: permanent, ``blocked``:
temporary), ``dropped`` (SendGrid did not send: its ``reason`` says why),
``spamreport``, ``unsubscribe`` and ``group_unsubscribe``; every other event
(processed, deferred, delivered, open, click, ...) is ignored: a deferral is an
attempt SendGrid retries itself, and its final outcome comes as its own event.

SendGrid carries back no header optgate sets, so its recipients count through the
send ledger (only an address optgate has mailed), never through a token.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.errors import Forged, Malformed, Unauthenticated
from gateway.esp.common import (
    Notification,
    bounce,
    digest_of,
    event,
    finding,
    fresh,
    parse,
    table,
    text,
    word,
)
from gateway.inbound.model import Finding, Kind
from suppression.errors import ConfigError, OptgateError
from suppression.scope import Scope

SIGNATURE = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP = "X-Twilio-Email-Event-Webhook-Timestamp"
# why SendGrid dropped a message: the address is on one of its own suppression lists
_DROPPED = {
    "Bounced Address": Kind.HARD_BOUNCE,
    "Invalid": Kind.HARD_BOUNCE,
    "Unsubscribed Address": Kind.UNSUBSCRIBE,
    "Spam Reporting Address": Kind.COMPLAINT,
}


def public_key(value: str) -> ec.EllipticCurvePublicKey:
    """``[esp] sendgrid_public_key``: base64 DER, as SendGrid shows it, or PEM; P-256 only."""
    try:
        if "BEGIN PUBLIC KEY" in value:
            key = serialization.load_pem_public_key(value.encode())
        else:
            der = base64.b64decode("".join(value.split()), validate=True)
            key = serialization.load_der_public_key(der)
    except (ValueError, binascii.Error, UnsupportedAlgorithm):
        raise ConfigError("[esp] sendgrid_public_key: not a base64 or PEM public key") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ConfigError("[esp] sendgrid_public_key: not an ECDSA P-256 public key")
    return key


def group_topics(groups: Mapping[str, str]) -> dict[str, Scope]:
    """``[esp] sendgrid_groups``: unsubscribe group id -> the scope of its topic."""
    try:
        return {str(group): Scope.topic(topic) for group, topic in groups.items()}
    except OptgateError as exc:
        raise ConfigError(f"[esp] sendgrid_groups: {exc}") from None


@dataclass(frozen=True)
class SendGrid:
    """The /hooks/sendgrid endpoint's checks and mapping."""

    key: ec.EllipticCurvePublicKey
    max_age: int
    groups: Mapping[str, Scope] = field(default_factory=dict)
    name: ClassVar[str] = "sendgrid"

    async def read(self, headers: Mapping[str, str], body: bytes, at: datetime) -> Notification:
        """Verify the signature over timestamp + raw body, then read the events."""
        signature, timestamp = headers.get(SIGNATURE), headers.get(TIMESTAMP)
        if not signature or not timestamp:
            raise Unauthenticated(f"{SIGNATURE} and {TIMESTAMP} are required")
        try:
            raw = base64.b64decode(signature, validate=True)
            self.key.verify(raw, timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
        except (binascii.Error, ValueError, InvalidSignature):
            raise Forged("the SendGrid signature does not verify") from None
        if not timestamp.isdigit():
            raise Malformed(f"{TIMESTAMP} is not a Unix time")
        fresh(int(timestamp), at, self.max_age)
        events = parse(body)
        if not isinstance(events, list):
            raise Malformed("the body is not a JSON array of events")
        found, ignored = [], 0
        for item in events:
            data = table(item, "an event")
            one = self._finding(data)
            if one is None:
                ignored += 1
            else:
                found.append(event(self.name, _message(data), [one]))
        # a genuine signature is accepted once while its timestamp is fresh
        key = hashlib.sha256(raw).hexdigest()
        return Notification(tuple(found), ignored, replay=key, window=2 * self.max_age)

    def _finding(self, data: Mapping[str, Any]) -> Finding | None:
        kind_name = text(data, "event", required=False)
        if kind_name == "bounce":
            temporary = text(data, "type", required=False) == "blocked"
            vendor_kind = Kind.SOFT_BOUNCE if temporary else Kind.HARD_BOUNCE
            status = text(data, "status", required=False) or None
            kind, status = bounce(vendor_kind, status, text(data, "reason", required=False))
            label = "blocked" if temporary else "bounce"
            return finding(kind, text(data, "email"), f"sendgrid {label}", status=status)
        if kind_name == "dropped":
            why = text(data, "reason", required=False)
            kind = _DROPPED.get(why, Kind.IGNORED)
            return finding(kind, text(data, "email"), f"sendgrid dropped: {word(why)}")
        if kind_name == "spamreport":
            return finding(Kind.COMPLAINT, text(data, "email"), "sendgrid spamreport")
        if kind_name == "unsubscribe":
            return finding(Kind.UNSUBSCRIBE, text(data, "email"), "sendgrid unsubscribe")
        if kind_name == "group_unsubscribe":
            group = str(data.get("asm_group_id", ""))
            reason = f"sendgrid group_unsubscribe {word(group, 20)}"
            return finding(
                Kind.UNSUBSCRIBE, text(data, "email"), reason, scope=self.groups.get(group)
            )
        return None


def _message(data: Mapping[str, Any]) -> str:
    """SendGrid's id of the mail an event is about (else of the event itself)."""
    for key in ("sg_message_id", "smtp-id", "sg_event_id"):
        value = data.get(key)
        if isinstance(value, str) and value:
            return value
    return digest_of(data)
