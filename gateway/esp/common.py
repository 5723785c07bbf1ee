"""What every vendor's webhook shares: why a notification is refused, what it becomes.

Each vendor module turns one HTTP request into a ``Notification``: its events as
``Classification``s (one per event, its findings per recipient), the way an
inbound message is classified, so that gateway/inbound/apply.py applies them the
same way (tokens or the send ledger, thresholds, audit). A request that cannot be
authenticated, parsed or accepted raises a ``Refused`` (gateway/errors.py, with its
HTTP status) and changes nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Protocol

from gateway.errors import Malformed, Stale
from gateway.inbound.diagnosis import judge, status_of
from gateway.inbound.model import Classification, Finding, Kind
from suppression.scope import Scope

MAX_ID = 200  # characters of a vendor's message id kept in evidence and logs


@dataclass(frozen=True)
class Notification:
    """One request's events, and the key that makes it count once."""

    events: tuple[Classification, ...]  # only events about a recipient (bounces, ...)
    ignored: int = 0  # events of other types (deliveries, opens, ...): nothing to do
    replay: str | None = None  # accepted once while its signature is fresh
    window: int = 0  # seconds the replay key is kept
    note: str = ""  # what was done besides, for the log line ("subscription confirmed")


def event(vendor: str, message: str, findings: Sequence[Finding]) -> Classification:
    """The events of one original message as a Classification.

    ``message`` is the vendor's id of the mail the event is about: the digest (the
    "reporting message" soft bounces are counted by) is the hash of it, so that an
    event sent twice, or a second event about the same mail, counts once.
    """
    printable = "".join(c for c in message if " " < c <= "~")  # as a Message-ID is
    message_id = f"{vendor}:{printable[:MAX_ID]}"
    digest = hashlib.sha256(message_id.encode()).hexdigest()
    return Classification(message_id, digest, tuple(findings))


def digest_of(data: object) -> str:
    """An id for an event that carries none: the hash of its canonical JSON."""
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def finding(
    kind: Kind,
    recipient: str | None,
    reason: str,
    *,
    status: str | None = None,
    tokens: tuple[str, ...] = (),
    scope: Scope | None = None,
) -> Finding:
    """One recipient's finding; the tokens are those the vendor carried back, if any."""
    return Finding(kind, recipient, tokens, status, reason, scope=scope)


def bounce(kind: Kind, status: str | None, text: str) -> tuple[Kind, str | None]:
    """The vendor's hard or soft verdict, and the status it rests on.

    The vendor decides hard or soft; but a status or diagnostic that the inbound rules
    (gateway/inbound/diagnosis.py) read as a refusal of *our* mail (policy, spam, the
    sender, the message) says nothing about the address: IGNORED, as for a DSN.
    """
    action = "failed" if kind is Kind.HARD_BOUNCE else "delayed"
    verdict = judge(action, status_of(status or "", text), text)
    if verdict.kind is Kind.IGNORED and verdict.why in ("policy", "sender", "message"):
        return Kind.IGNORED, verdict.status
    return kind, verdict.status


def fresh(timestamp: float, at: datetime, window: int) -> None:
    """A signed timestamp within ``window`` seconds of now, either side (clocks drift)."""
    if abs(at.timestamp() - timestamp) > window:
        raise Stale(f"the signature's timestamp is more than {window} s from now")


def same(given: bytes, expected: bytes) -> bool:
    """Constant-time comparison of two secrets' digests."""
    return hmac.compare_digest(hashlib.sha256(given).digest(), hashlib.sha256(expected).digest())


def parse(body: bytes | str) -> Any:
    """The body (or an embedded document) as JSON."""
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise Malformed("the body is not JSON") from None


def table(value: object, what: str) -> Mapping[str, Any]:
    """A JSON object, or Malformed naming it."""
    if not isinstance(value, dict):
        raise Malformed(f"{what} is not a JSON object")
    return value


def text(data: Mapping[str, Any], key: str, *, required: bool = True) -> str:
    """A string field ("" when absent and not required)."""
    value = data.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise Malformed(f"{key} is missing or not a string")
    return value


def rows(data: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    """A list of JSON objects (empty when absent)."""
    value = data.get(key, [])
    if not isinstance(value, list):
        raise Malformed(f"{key} is not a list")
    return [table(item, f"an entry of {key}") for item in value]


class Vendor(Protocol):
    """One ESP's webhook: authenticate a request and read its events."""

    name: ClassVar[str]  # of its route, /hooks/NAME, and in logs and metrics

    async def read(self, headers: Mapping[str, str], body: bytes, at: datetime) -> Notification:
        """The notification, or Refused."""


_WORD = re.compile(r"[^A-Za-z0-9 ._/-]")


def word(value: str, limit: int = 40) -> str:
    """A vendor's keyword as logs and audit notes may hold it: short, and never an address."""
    return _WORD.sub("", value)[:limit]
