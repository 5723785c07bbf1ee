"""Rate limits: a token bucket per client in this process (the web endpoint, the partners'
logins), and limits per source shared through the store (opt-outs by mail, mailed links)."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Sequence
from datetime import datetime

from suppression.model import now
from suppression.store import Store

MAX_CLIENTS = 100_000  # buckets kept; the least recently seen go first


class RateLimiter:
    """A token bucket per client: ``per_minute`` a minute, in bursts of up to that many."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._capacity = float(per_minute)
        self._rate = per_minute / 60.0
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, when)

    def wait(self, client: str) -> float:
        """Take a token: 0.0 when there was one, else the seconds until there is."""
        at = self._clock()
        tokens, then = self._buckets.pop(client, (self._capacity, at))
        tokens = min(self._capacity, tokens + (at - then) * self._rate)
        delay = 0.0 if tokens >= 1 else (1 - tokens) / self._rate
        self._buckets[client] = (tokens - 1 if not delay else tokens, at)  # now the newest
        if len(self._buckets) > MAX_CLIENTS:
            del self._buckets[next(iter(self._buckets))]
        return delay


WINDOW = 3600  # seconds: shared limits count per hour


class SharedLimiter:
    """Limits per source shared by every worker and node: counters in the store.

    A source is a kind (``client``, ``domain``, ``address``, ...) and a value; the
    store sees only a keyed digest of the value, never an IP or an address.
    """

    def __init__(self, store: Store, key: bytes, clock: Callable[[], datetime] = now) -> None:
        self._store, self._key, self._clock = store, key, clock

    def bucket(self, kind: str, value: str, limit: int) -> tuple[str, int]:
        """The store's bucket of one source."""
        digest = hmac.new(self._key, f"{kind}\0{value.lower()}".encode(), hashlib.sha256)
        return f"{kind}:{digest.hexdigest()[:32]}", limit

    async def take(self, sources: Sequence[tuple[str, str | None, int]]) -> bool:
        """One event for each (kind, value, limit) whose value is known and limit set;
        False, counting nothing, if any of them is used up this hour."""
        buckets = [
            self.bucket(kind, value, limit) for kind, value, limit in sources if value and limit
        ]
        if not buckets:
            return True
        return await self._store.take_rate(buckets, window=WINDOW, at=self._clock())
