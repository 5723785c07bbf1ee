"""The store's per-source rate counters and held requests, on both backends."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from suppression.model import HeldRequest
from suppression.opening import open_store
from tests.support.backends import Backend
from tests.support.keys import AUDIT_KEY

pytestmark = pytest.mark.pure

# ``backend`` (tests/support/backends.py, via conftest): each test on SQLite and PostgreSQL
T0 = datetime(2026, 3, 1, 10, 0, 5, tzinfo=UTC)
HOUR = 3600


async def test_a_bucket_counts_up_to_its_limit_in_its_window(backend: Backend) -> None:
    store = backend.store
    buckets = [("ip:a", 3), ("domain:d", 10)]
    taken = [await store.take_rate(buckets, window=HOUR, at=T0) for _ in range(5)]
    assert taken == [True, True, True, False, False]
    # the next window starts from zero
    assert await store.take_rate(buckets, window=HOUR, at=T0 + timedelta(hours=1))


async def test_a_full_bucket_counts_nothing_in_the_others(backend: Backend) -> None:
    store = backend.store
    assert await store.take_rate([("ip:a", 1)], window=HOUR, at=T0)
    for _ in range(3):  # refused: domain:d must not be charged for these
        assert not await store.take_rate([("ip:a", 1), ("domain:d", 2)], window=HOUR, at=T0)
    assert await store.take_rate([("ip:b", 5), ("domain:d", 2)], window=HOUR, at=T0)
    assert await store.take_rate([("ip:c", 5), ("domain:d", 2)], window=HOUR, at=T0)
    assert not await store.take_rate([("ip:e", 5), ("domain:d", 2)], window=HOUR, at=T0)


async def test_two_stores_on_one_database_share_the_counts(backend: Backend) -> None:
    """Worker processes (and nodes) each have their own store: the limit is theirs together."""
    other = await open_store(backend.url, audit_key=AUDIT_KEY)
    try:
        stores = [backend.store, other] * 20
        results = await asyncio.gather(
            *(s.take_rate([("from:x", 7)], window=HOUR, at=T0) for s in stores)
        )
    finally:
        await other.close()
    assert sum(results) == 7


async def test_a_held_request_is_kept_once_and_finished_once(backend: Backend) -> None:
    store = backend.store
    request = HeldRequest("s" * 64, "a" * 64, "unsubscribe", "global", T0, '{"channel":"mailbox"}')
    events = (await store.verify_chain()).events
    stored = await store.hold_request(request, actor="inbound")
    assert stored == request
    again = HeldRequest("s" * 64, "a" * 64, "unsubscribe", "global", T0 + timedelta(hours=1), "{}")
    assert await store.hold_request(again, actor="inbound") == request  # the first one stays
    assert (await store.verify_chain()).events == events + 1
    assert await store.held_request("t" * 64) is None

    await store.mark_mailed(request.secret, at=T0 + timedelta(minutes=1))
    found = await store.held_request(request.secret)
    assert found is not None
    assert (found.mailed, found.done) == (T0 + timedelta(minutes=1), None)

    assert await store.finish_request(request.secret, at=T0, actor="web", detail={"via": "link"})
    assert not await store.finish_request(request.secret, at=T0, actor="web", detail={})
    assert not await store.finish_request("t" * 64, at=T0, actor="web", detail={})
    finished = await store.held_request(request.secret)
    assert finished is not None
    assert finished.done == T0
    report = await store.verify_chain()
    assert (report.events, report.broken_at) == (events + 2, None)
