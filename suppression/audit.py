"""The keyed hash chain that makes the audit log tamper-evident.

Each event's body is canonical JSON of every column but the chain's own
(sequence number, time, actor, action, subject, detail); its digest is an
HMAC-SHA256, under a key kept outside the database, over the previous digest
and the body. Changing, removing or reordering any event breaks every digest
after it, and without the key nobody can compute a chain that verifies.
The columns beside the body must say what the body says.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from suppression.model import AuditEvent

GENESIS = "0" * 64

Head = tuple[int, str]  # a chain's head: its newest event's sequence number and digest
OnHead = Callable[[Head], None]  # told the head of each committed transaction that appended


def event_body(
    seq: int,
    at: datetime,
    actor: str,
    action: str,
    subject: str | None,
    detail: Mapping[str, object],
) -> str:
    """Canonical JSON of one event; it never holds a plaintext address."""
    return json.dumps(
        {
            "seq": seq,
            "at": at.isoformat(),
            "actor": actor,
            "action": action,
            "subject": subject,
            "detail": detail,
        },
        sort_keys=True,
        separators=(",", ":"),
    )


def link(key: bytes, prev: str, body: str) -> str:
    """The digest of an event given the one before it."""
    return hmac.new(key, f"{prev}\n{body}".encode(), hashlib.sha256).hexdigest()


def plain_link(prev: str, body: str) -> str:
    """The unkeyed digest of schema versions before the keyed chain (for rekeying)."""
    return hashlib.sha256(f"{prev}\n{body}".encode()).hexdigest()


def head_text(head: Head) -> str:
    """``SEQ:DIGEST``: what an anchor file holds, and what ``store verify --expect`` takes."""
    return f"{head[0]}:{head[1]}"


def parse_head(text: str) -> Head:
    """``SEQ:DIGEST`` as ``store verify`` prints it; ValueError if it is not one."""
    seq, sep, digest = text.strip().partition(":")
    if not sep or not seq.isdigit() or len(digest) != 64:
        raise ValueError(f"{text!r} is not a chain head: expected SEQ:DIGEST as verify prints it")
    return int(seq), digest.lower()


def _column_differing(event: AuditEvent, body: Mapping[str, Any]) -> str | None:
    """The first column whose value is not the body's, or None."""
    columns = {
        "seq": event.seq,
        "at": event.at.isoformat(),
        "actor": event.actor,
        "action": event.action,
        "subject": event.subject,
    }
    return next((name for name, value in columns.items() if body.get(name) != value), None)


class ChainWalk:
    """Checks events one at a time, in sequence order."""

    def __init__(self, key: bytes | None) -> None:
        self._key = key  # None: the unkeyed chain of old schema versions
        self.head = GENESIS
        self.count = 0
        self.broken_at: int | None = None
        self.problem: str | None = None

    def step(self, event: AuditEvent) -> dict[str, Any] | None:
        """Check the next event: its parsed body, or None (and broken_at set) if it is bad."""
        problem = self._problem(event)
        if problem is not None:
            self.broken_at, self.problem = event.seq, problem
            return None
        self.count, self.head = event.seq, event.digest
        body: dict[str, Any] = json.loads(event.body)
        return body

    def _problem(self, event: AuditEvent) -> str | None:
        if event.seq != self.count + 1:
            return f"expected event {self.count + 1}, found {event.seq}"
        if event.prev != self.head:
            return "its link to the previous event does not match"
        digest = (
            plain_link(self.head, event.body)
            if self._key is None
            else link(self._key, self.head, event.body)
        )
        if not hmac.compare_digest(digest, event.digest):
            return "its content does not match its digest (or the audit key is not this store's)"
        try:
            body = json.loads(event.body)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return "its body is not a JSON object"
        column = _column_differing(event, body)
        return None if column is None else f"its {column} column differs from what was chained"


class Rekeying:
    """Chains the events of the unkeyed era anew with the key, checking the old chain."""

    def __init__(self, key: bytes) -> None:
        self._key = key
        self.old = ChainWalk(None)
        self.head = GENESIS

    def step(self, event: AuditEvent) -> tuple[str, str]:
        """The event's new (prev, digest); ValueError if the old chain is broken here."""
        if self.old.step(event) is None:
            raise ValueError(
                f"the audit log is broken at event {self.old.broken_at}: {self.old.problem}"
            )
        prev, self.head = self.head, link(self._key, self.head, event.body)
        return prev, self.head
