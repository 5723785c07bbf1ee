"""Rate limits shared by every worker and node: counters in the store.

Each limit counts events per source in fixed windows (a minute for web requests,
partners' AUTH attempts and API keys; an hour for opt-outs by mail and mailed links):
with ``optgate serve --workers N`` on several nodes a client gets the limit once, not
N times. A source is a kind (``client``, ``domain``, ``key``, ...) and a value; the
store sees only a keyed digest of the value, never an IP or an address.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Sequence
from datetime import datetime

from suppression.model import now
from suppression.store import RateLimits

WINDOW = 3600  # seconds: the opt-out limits count per hour
MINUTE = 60  # the request and login limits count per minute


class SharedLimiter:
    """Limits per source in windows of ``window`` seconds, counted in the store."""

    def __init__(
        self,
        store: RateLimits,
        key: bytes,
        clock: Callable[[], datetime] = now,
        *,
        window: int = WINDOW,
    ) -> None:
        self._store, self._key, self._clock, self.window = store, key, clock, window

    def bucket(self, kind: str, value: str, limit: int) -> tuple[str, int]:
        """The store's bucket of one source."""
        digest = hmac.new(self._key, f"{kind}\0{value.lower()}".encode(), hashlib.sha256)
        return f"{kind}:{digest.hexdigest()[:32]}", limit

    async def take(self, sources: Sequence[tuple[str, str | None, int]]) -> bool:
        """One event for each (kind, value, limit) whose value is known and limit set;
        False, counting nothing, if any of them is used up in this window."""
        buckets = [
            self.bucket(kind, value, limit) for kind, value, limit in sources if value and limit
        ]
        if not buckets:
            return True
        return await self._store.take_rate(buckets, window=self.window, at=self._clock())

    def retry_after(self) -> int:
        """Whole seconds until the current window ends (a Retry-After)."""
        seconds = self._clock().timestamp()
        return max(1, int(self.window - seconds % self.window + 0.999))
