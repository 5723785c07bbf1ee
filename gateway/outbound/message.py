"""Pure: what the outbound steps know of a message: its envelope, its class and identity
(from the X-Optgate-* headers), and each recipient's decision."""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from gateway.errors import BadControlHeader
from gateway.outbound import mime
from gateway.outbound.policy import IP, ClassRules, MessageClass, Verdict
from gateway.smtp.xforward import Forwarded
from suppression.address import Address
from suppression.errors import OptgateError
from suppression.model import check_name
from suppression.scope import Scope


@dataclass(frozen=True, slots=True)
class Envelope:
    """What the SMTP session received."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    content: bytes
    mail_options: tuple[str, ...] = ()
    client: Forwarded | None = None  # the original client (XFORWARD, else the session's)


@dataclass(frozen=True, slots=True)
class Classified:
    """A message's class, topic and identity, from its control headers, else its
    envelope (or its offer)."""

    kind: MessageClass
    topic: str
    message_id: str
    ledger_key: str
    campaign: str | None = None  # X-Optgate-Campaign: the Feedback-ID's first field
    partner: str | None = None  # a partner offer's partner: its partner:NAME scope applies
    audience: str | None = None  # a partner offer's audience topic: its consent applies too
    class_by: str = "header"  # what gave the class: header, sender, domain, network, default, offer

    @property
    def feedback_id(self) -> str:
        """Feedback-ID without its sender id: [campaign:]topic:class (Gmail's FBL fields)."""
        fields = (self.campaign, self.topic, self.kind.value)
        return ":".join(f for f in fields if f)

    @property
    def token_scope(self) -> Scope:
        """What a recipient's unsubscribe token opts out of: the partner, else the topic."""
        return Scope.partner(self.partner) if self.partner else Scope.topic(self.topic)


def header_values(content: bytes, names: Collection[str]) -> dict[str, str]:
    """The first value of each named header field (lower-case names), unfolded."""
    block = mime.split_headers(content, 0, len(content))
    values: dict[str, str] = {}
    for field in block.fields:
        if field.name in names and field.name not in values:
            raw = content[field.start : field.end].partition(b":")[2]
            values[field.name] = b" ".join(raw.split()).decode("utf-8", "replace")
    return values


def classify_headers(
    content: bytes,
    mail_from: str,
    default_topic: str,
    sender_topics: Mapping[str, str],
    classes: ClassRules | None = None,
    client: IP | None = None,
) -> Classified:
    """Class and topic from X-Optgate-* headers, else the envelope rules (``classes`` by
    sender, domain, client network; ``sender_topics``), else the defaults."""
    headers = header_values(
        content, ("x-optgate-class", "x-optgate-topic", "x-optgate-campaign", "message-id")
    )
    raw_class = headers.get("x-optgate-class", "").lower()
    by = "header"
    if not raw_class:
        by_envelope, by = (classes or ClassRules()).classify(mail_from, client)
        raw_class = by_envelope.value
    try:
        kind = MessageClass(raw_class)
    except ValueError:
        raise BadControlHeader(
            f"X-Optgate-Class {raw_class!r} is not one of "
            f"{', '.join(c.value for c in MessageClass)}",
            "X-Optgate-Class",
            raw_class,
        ) from None
    topic = headers.get("x-optgate-topic", "").lower() or sender_topic(
        mail_from, sender_topics, default_topic
    )
    try:
        check_name(topic, "X-Optgate-Topic")
    except OptgateError as exc:
        raise BadControlHeader(str(exc), "X-Optgate-Topic", topic) from None
    campaign = headers.get("x-optgate-campaign", "").lower() or None
    if campaign is not None:
        try:
            check_name(campaign, "X-Optgate-Campaign")
        except OptgateError as exc:
            raise BadControlHeader(str(exc), "X-Optgate-Campaign", campaign) from None
    message_id = headers.get("message-id", "")
    key = ledger_key(message_id, content)
    return Classified(kind, topic, message_id, key, campaign, class_by=by)


def ledger_key(message_id: str, content: bytes) -> str:
    """The send ledger's name for a message: its Message-ID and a digest of its content,
    so a retry of the same bytes is recognised and a new message reusing an old
    Message-ID is not (it is mailed again)."""
    digest = hashlib.sha256(content).hexdigest()
    return hashlib.sha256(f"{message_id}\0{digest}".encode()).hexdigest()[:32]


def sender_topic(mail_from: str, rules: Mapping[str, str], default: str) -> str:
    """The topic configured for an envelope sender (address first, then @domain)."""
    sender = mail_from.strip().lower()
    return rules.get(sender) or rules.get("@" + sender.rpartition("@")[2]) or default


@dataclass(frozen=True, slots=True)
class Decision:
    """One envelope recipient: as given, parsed, and decided."""

    raw: str
    address: Address | None
    verdict: Verdict
    delivered: bool = False  # a retry: the next hop already accepted this copy
    uncertain: bool = False  # a retry: this copy went out before, its reply was lost

    @property
    def sha256(self) -> str:
        """The recipient's identity ('' when the address is invalid)."""
        return self.address.sha256 if self.address else ""


INVALID = Verdict(False, "invalid", "the address is not valid")


def purpose_of(kind: MessageClass, topic: str) -> str:
    """The consent a message needs: its topic, or partner-offers for partner mail."""
    return "partner-offers" if kind is MessageClass.PARTNER else topic
