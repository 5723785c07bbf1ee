"""Complaint reports: RFC 5965 ARF (``multipart/report; report-type=feedback-report``), its
draft-era form, and Hotmail's JMRP (a returned message carrying X-HmXmrOriginalRecipient)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.message import Message

from gateway.inbound import parsing
from gateway.inbound.model import Kind

_REDACTED = re.compile(r"redacted|^[x*#.]+@|^hashed@", re.IGNORECASE)
_FIELD = re.compile(r"([A-Za-z][A-Za-z0-9-]*)[ \t]*:[ \t]*(.*)")
# what each Feedback-Type asks for; any other type (auth-failure, not-spam, dkim, ...)
# says nothing about the recipient
_KINDS = {
    "abuse": Kind.COMPLAINT,
    "fraud": Kind.COMPLAINT,
    "virus": Kind.COMPLAINT,
    "opt-out": Kind.UNSUBSCRIBE,
    "unsubscribe": Kind.UNSUBSCRIBE,
}


@dataclass(frozen=True)
class Feedback:
    """One complaint report."""

    kind: Kind
    feedback_type: str
    recipients: tuple[str, ...]  # the complaining recipients the report names (often none)


def feedback(message: Message, original: Message | None) -> list[Feedback]:
    """The complaint reports the message holds (several in some feedback loops' digests)."""
    found: list[Feedback] = []
    for part in parsing.parts(message):
        if parsing.content_type(part) == "message/feedback-report":
            fields = _fields(parsing.raw_text(part))
            named = fields.get("original-rcpt-to", []) + fields.get("removal-recipient", [])
            kind_name = (fields.get("feedback-type") or ["abuse"])[0].lower()
            found.append(_feedback(kind_name, named, original))
    if not found and original is not None:
        jmrp = parsing.headers(original, "X-HmXmrOriginalRecipient")
        if jmrp:
            found.append(_feedback("abuse", jmrp, original))
    return found


def feedback_kind(feedback_type: str) -> Kind:
    """What a Feedback-Type asks for (an ESP's complaint report carries one too)."""
    return _KINDS.get(feedback_type.lower(), Kind.IGNORED)


def _feedback(kind_name: str, named: list[str], original: Message | None) -> Feedback:
    if original is not None and not named:  # the returned original's one addressee
        addressed = parsing.addresses(parsing.headers(original, "To"))
        named = addressed if len(addressed) == 1 else []
    recipients = [a for a in parsing.addresses(named) if not _REDACTED.search(a)]
    return Feedback(feedback_kind(kind_name), kind_name, tuple(recipients[:100]))


def _fields(text: str) -> dict[str, list[str]]:
    fields: dict[str, list[str]] = {}
    for line in text.splitlines():
        match = _FIELD.match(line)
        if match:
            fields.setdefault(match.group(1).lower(), []).append(match.group(2).strip())
    return fields
