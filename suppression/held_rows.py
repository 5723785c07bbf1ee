"""What both SQL stores share for held requests and the per-source rate counters."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from suppression.model import HeldRequest

HELD_COLUMNS = "secret, sha256, action, scope, created, detail, mailed, done"


def _same(value: Any) -> datetime:
    return value  # type: ignore[no-any-return]


def to_held(row: Sequence[Any], time: Callable[[Any], datetime] = _same) -> HeldRequest:
    """A held request from a row of HELD_COLUMNS."""
    secret, sha256, action, scope, created, detail, mailed, done = row
    return HeldRequest(
        secret,
        sha256,
        action,
        scope,
        time(created),
        detail,
        time(mailed) if mailed is not None else None,
        time(done) if done is not None else None,
    )


def rate_slot(at: datetime, window: int) -> int:
    """The start (unix seconds) of the fixed window ``at`` falls in."""
    seconds = int(at.timestamp())
    return seconds - seconds % window


def within_limits(buckets: Sequence[tuple[str, int]], counts: dict[str, int]) -> bool:
    """Whether every bucket may count one more event in this window."""
    return all(counts.get(key, 0) < limit for key, limit in buckets)
