"""RFC 3464 delivery status notifications: the per-recipient fields of a
message/delivery-status part.

The fields are read from the part's text, so a base64-encoded part, a missing blank
line between the per-message and the first per-recipient group, or several blank
lines between groups all give the same groups: a group ends at a blank line or where
the next group's Final-Recipient (or Original-Recipient) starts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.message import Message

from gateway.inbound import parsing

MAX_RECIPIENTS = 100
_FIELD = re.compile(r"([A-Za-z][A-Za-z0-9-]*)[ \t]*:[ \t]*(.*)")
_RECIPIENT_FIELDS = ("original-recipient", "final-recipient")
_TYPES = ("message/delivery-status", "message/global-delivery-status")
_FINAL = re.compile(rb"^Final-Recipient:", re.IGNORECASE | re.MULTILINE)
_RETURNED = re.compile(
    r"^Content-Type:[ \t]*(?:message/rfc822|text/rfc822-headers)", re.IGNORECASE | re.MULTILINE
)


@dataclass(frozen=True)
class Report:
    """One per-recipient group of a DSN."""

    recipient: str | None  # Original-Recipient if it holds an address, else Final-Recipient
    action: str  # lower case: failed, delayed, delivered, relayed, expanded (or "")
    status: str  # the Status field as written ("" when absent)
    diagnostic: str  # Diagnostic-Code, unfolded ("" when absent)


def reports(message: Message, raw: bytes) -> list[Report]:
    """The per-recipient groups of every message/delivery-status part of the message; when
    it has none (a broken boundary hides them), the groups written in its raw text before
    any returned message."""
    found: list[Report] = []
    for part in parsing.parts(message):
        if parsing.content_type(part) in _TYPES:
            found.extend(_groups(parsing.raw_text(part)))
    if not found and _FINAL.search(raw[: parsing.MAX_BYTES]):
        text = raw[: parsing.MAX_BYTES].decode("utf-8", "replace")
        found = _groups(_RETURNED.split(text, maxsplit=1)[0])
    return found[:MAX_RECIPIENTS]


def _groups(text: str) -> list[Report]:
    groups: list[dict[str, str]] = []
    current: dict[str, str] = {}
    last = ""
    for line in text.splitlines():
        if not line.strip():
            if any(name in current for name in _RECIPIENT_FIELDS):
                groups.append(current)
            current, last = {}, ""
            continue
        if line[0] in " \t":
            if last:
                current[last] += " " + line.strip()
            continue
        field = _FIELD.match(line)
        if field is None:
            last = ""
            continue
        name, value = field.group(1).lower(), field.group(2).strip()
        if name in _RECIPIENT_FIELDS and _starts_group(name, current):
            groups.append(current)
            current = {}
        if name in current:
            last = ""
            continue
        current[name] = value
        last = name
    if any(name in current for name in _RECIPIENT_FIELDS):
        groups.append(current)
    return [_report(group) for group in groups]


def _starts_group(name: str, current: dict[str, str]) -> bool:
    """A recipient field seen twice, or after the last recipient's Action or Status."""
    if not any(field in current for field in _RECIPIENT_FIELDS):
        return False
    return name in current or "action" in current or "status" in current


def _report(group: dict[str, str]) -> Report:
    original = parsing.address_in(_value(group.get("original-recipient", "")))
    final = parsing.address_in(_value(group.get("final-recipient", "")))
    return Report(
        recipient=original or final,
        action=group.get("action", "").split(" ")[0].split("(")[0].lower(),
        status=group.get("status", "").split(" ")[0],
        diagnostic=" ".join(group.get("diagnostic-code", "").split()),
    )


def _value(field: str) -> str:
    """The address of an "address-type; address" field (the type is optional in practice)."""
    kind, separator, rest = field.partition(";")
    return rest if separator and "@" not in kind else field
