"""A token bucket per client, for the web endpoint and the partners' logins."""

from __future__ import annotations

import time
from collections.abc import Callable

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
