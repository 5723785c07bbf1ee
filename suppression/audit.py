"""The hash chain that makes the audit log tamper-evident.

Each event's body is canonical JSON that includes its sequence number; its
digest is SHA-256 over the previous digest and the body. Changing, removing
or reordering any event breaks every digest after it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import datetime

from suppression.model import AuditEvent

GENESIS = "0" * 64


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


def link(prev: str, body: str) -> str:
    """The digest of an event given the one before it."""
    return hashlib.sha256(f"{prev}\n{body}".encode()).hexdigest()


class ChainWalk:
    """Checks events one at a time, in sequence order."""

    def __init__(self) -> None:
        self.head = GENESIS
        self.count = 0
        self.broken_at: int | None = None
        self.problem: str | None = None

    def step(self, event: AuditEvent) -> bool:
        """Check the next event; False (and broken_at set) at the first bad one."""
        expected = self.count + 1
        if event.seq != expected:
            return self._break(event.seq, f"expected event {expected}, found {event.seq}")
        if event.prev != self.head:
            return self._break(event.seq, "its link to the previous event does not match")
        if (
            json.loads(event.body).get("seq") != event.seq
            or link(self.head, event.body) != event.digest
        ):
            return self._break(event.seq, "its content does not match its digest")
        self.count, self.head = expected, event.digest
        return True

    def _break(self, seq: int, problem: str) -> bool:
        self.broken_at, self.problem = seq, problem
        return False
