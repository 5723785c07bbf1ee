"""The exactly-once bar in CI (shorter runs of scripts/faults.py and scripts/kills.py):
0 lost, 0 duplicated, no copy delivered after the client was told it was refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.exactly_once import fault_run, kill_run

pytestmark = pytest.mark.sockets


async def test_faulty_next_hop_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    figures = await fault_run(300, 0.03, tmp_path)
    print("\n".join(figures.lines()))
    assert sum(figures.faults.values()) > 20  # the faults did happen
    assert figures.faults["drop-after"] > 0
    assert figures.lost == 0
    assert figures.given_up == 0
    assert figures.duplicated == 0
    assert figures.refused_but_delivered == 0
    assert figures.delivered + figures.refused + figures.uncertain == figures.copies


async def test_sigkills_under_load_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    figures = await kill_run(300, 4, tmp_path, every=0.1)
    print("\n".join(figures.lines()))
    assert figures.kills == 4
    assert figures.lost == 0
    assert figures.given_up == 0
    assert figures.duplicated == 0
    assert figures.delivered + figures.uncertain == figures.copies
