"""Amazon SES notifications (through SNS, gateway/esp/sns.py) -> events.

The content, per https://docs.aws.amazon.com/ses/latest/dg/notification-contents.html
(``notificationType``, or ``eventType`` for event publishing): a Bounce lists
``bouncedRecipients`` under a ``bounceType`` and ``bounceSubType``; a Complaint lists
``complainedRecipients`` and may carry the ARF ``complaintFeedbackType``. Other types
(Delivery, Send, Open, ...) are ignored.

Tokens: SES echoes the envelope sender (``mail.source``: optgate's VERP address
``bounce+TOKEN@``) and, with "include original headers" on, the headers of the copy
(``mail.headers``: its List-Unsubscribe with ``/u/TOKEN`` and ``unsubscribe+TOKEN@``).
Either names the recipient by token; without them the send ledger decides.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from email.message import Message
from typing import Any, ClassVar

from gateway.esp.common import (
    Notification,
    bounce,
    event,
    finding,
    parse,
    rows,
    table,
    text,
    word,
)
from gateway.esp.sns import MAX_AGE, SnsClient
from gateway.esp.sns import Message as SnsMessage
from gateway.inbound import addressing
from gateway.inbound.diagnosis import judge
from gateway.inbound.feedback import feedback_kind
from gateway.inbound.model import Finding, Kind

VENDOR = "ses"
MAX_HEADERS = 200  # of mail.headers read for tokens
# Transient subtypes: a full mailbox or a general failure is the address's (soft); a
# message too large or refused for its content is about this message only
_TRANSIENT = {
    "MessageTooLarge": Kind.IGNORED,
    "ContentRejected": Kind.IGNORED,
    "AttachmentRejected": Kind.IGNORED,
}


@dataclass(frozen=True)
class Ses:
    """The /hooks/ses endpoint: SNS messages of the allowed topics carrying SES's reports."""

    topics: frozenset[str]
    client: SnsClient
    locals_: tuple[str, ...]  # [inbound] bounce and unsubscribe local parts, for tokens
    name: ClassVar[str] = VENDOR

    async def read(self, headers: Mapping[str, str], body: bytes, at: datetime) -> Notification:
        """Verify the SNS message; confirm a subscription, or read SES's notification."""
        message = await self.client.verify(table(parse(body), "the body"), self.topics)
        if message.type == "SubscriptionConfirmation":
            await self.client.confirm(message.subscribe_url)
            return Notification((), note="subscription confirmed")
        if message.type == "UnsubscribeConfirmation":
            return Notification((), note="unsubscribed: SNS sends nothing more")
        return notification(message, self.locals_)


def notification(sns: SnsMessage, locals_: tuple[str, ...]) -> Notification:
    """The events of one SES notification; the SNS MessageId is its replay key."""
    content = table(parse(sns.message), "the SNS Message")
    kind = text(content, "notificationType", required=False) or text(content, "eventType")
    mail = table(content.get("mail", {}), "mail")
    message = text(mail, "messageId", required=False) or sns.message_id
    tokens = _tokens(mail, locals_)
    if kind == "Bounce":
        findings = _bounces(table(content.get("bounce"), "bounce"), tokens)
    elif kind == "Complaint":
        findings = _complaints(table(content.get("complaint"), "complaint"), tokens)
    else:
        return Notification((), ignored=1)
    return Notification(
        (event(VENDOR, message, findings),), replay=sns.message_id, window=2 * MAX_AGE
    )


def _bounces(data: Mapping[str, Any], tokens: tuple[str, ...]) -> list[Finding]:
    kind_name, subtype = text(data, "bounceType"), text(data, "bounceSubType", required=False)
    reason = f"ses bounce {word(kind_name)}/{word(subtype)}"
    found = []
    for recipient in rows(data, "bouncedRecipients"):
        status = text(recipient, "status", required=False) or None
        diagnostic = text(recipient, "diagnosticCode", required=False)
        if kind_name == "Permanent":
            kind, status = bounce(Kind.HARD_BOUNCE, status, diagnostic)
        elif kind_name == "Transient":
            kind, status = bounce(_TRANSIENT.get(subtype, Kind.SOFT_BOUNCE), status, diagnostic)
        else:  # Undetermined: SES could not tell; the DSN fields, if any, decide
            verdict = judge(text(recipient, "action", required=False), status, diagnostic)
            kind, status = verdict.kind, verdict.status
        address = text(recipient, "emailAddress")
        found.append(finding(kind, address, reason, status=status, tokens=tokens))
    return found


def _complaints(data: Mapping[str, Any], tokens: tuple[str, ...]) -> list[Finding]:
    # no feedback type (SES passes on complaints without an ARF report) counts as abuse
    feedback = text(data, "complaintFeedbackType", required=False) or "abuse"
    kind = feedback_kind(feedback)
    reason = f"ses complaint {word(feedback)}"
    return [
        finding(kind, text(recipient, "emailAddress"), reason, tokens=tokens)
        for recipient in rows(data, "complainedRecipients")
    ]


def _tokens(mail: Mapping[str, Any], locals_: tuple[str, ...]) -> tuple[str, ...]:
    """Candidate tokens in the envelope sender and the copy's headers SES carried back."""
    found = addressing.tokens([text(mail, "source", required=False)], locals_)
    original = Message()
    for header in rows(mail, "headers")[:MAX_HEADERS]:
        name, value = header.get("name"), header.get("value")
        if isinstance(name, str) and isinstance(value, str):
            original[name] = value
    found.extend(addressing.original_tokens(original, locals_))
    return addressing.unique(found)
