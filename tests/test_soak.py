"""A minute of mixed and hostile traffic through `optgate serve --workers 2`: no reply
out of place, no traceback, memory and file descriptors flat once warm
(scripts/soak.py runs the same for 30 minutes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.soak import soak

pytestmark = pytest.mark.sockets

SECONDS = 60
RSS_GROWTH_KIB = 8 * 1024  # both workers, the last third against the second
FD_GROWTH = 4


async def test_a_minute_of_traffic_leaves_memory_and_descriptors_flat(tmp_path: Path) -> None:
    report = await soak(SECONDS, tmp_path, sample_every=1.0)
    print("\n".join(report.lines()))
    assert report.unexpected == []
    assert report.tracebacks == 0
    assert sum(report.replies.values()) > 100, "the load ran"
    assert report.fd_growth() <= FD_GROWTH
    assert report.rss_growth_kib() <= RSS_GROWTH_KIB
