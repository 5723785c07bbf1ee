"""Exactly once per recipient: held before the final ".", uncertain when the reply is lost."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path

import pytest

from gateway.config import Config
from gateway.runtime.service import Running, running
from suppression.address import normalize
from suppression.model import Ledger, Send, now
from tests.support.backends import Backend
from tests.support.dialog_client import transaction
from tests.support.faults import FaultyHop, faulty_hop
from tests.support.people import FAN, SENDER, seed
from tests.support.smtp import gateway_config, message
from tests.support.tiers import needs

pytestmark = pytest.mark.pure


async def test_ledger_states_delivered_unsettled_and_removed(backend: Backend) -> None:
    store = backend.store
    fan = normalize(FAN)
    at = now()
    row = Send("m1", fan.sha256, "marketing", "marketing", at, None, "held")
    await store.record_sends([row])
    ledger = Ledger("m1", at - timedelta(hours=1))
    facts = (await store.lookup_many([fan], ["global"], "marketing", ledger))[fan.sha256]
    assert (facts.delivered, facts.uncertain) == (False, True)
    await store.record_sends([Send("m1", fan.sha256, "marketing", "marketing", at)])
    facts = (await store.lookup_many([fan], ["global"], "marketing", ledger))[fan.sha256]
    assert (facts.delivered, facts.uncertain) == (True, False)
    await store.record_sends([Send("m1", fan.sha256, "marketing", "marketing", at, None, "unsent")])
    facts = (await store.lookup_many([fan], ["global"], "marketing", ledger))[fan.sha256]
    assert (facts.delivered, facts.uncertain) == (False, False)


def _held(message: str, n: int) -> Send:
    return Send(message, f"{n:064x}", "marketing", "marketing", now(), None, "held")


async def test_a_held_row_is_committed_before_its_end_goes_out(backend: Backend) -> None:
    """The commit point: when a copy's "." goes out (``then``), its held row is already
    readable by another connection; concurrent copies each get theirs, once."""
    seen: dict[int, list[tuple[object, ...]]] = {}

    def then(n: int) -> Callable[[], None]:
        def end() -> None:
            rows = backend.query(f"SELECT state FROM send WHERE sha256 = '{n:064x}'")
            seen.setdefault(n, []).extend(rows)

        return end

    await asyncio.gather(*(backend.store.hold_sends([_held("m1", n)], then(n)) for n in range(20)))
    assert seen == {n: [("held",)] for n in range(20)}


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_a_held_row_waits_for_another_writer_then_ends(backend: Backend) -> None:
    """Another process holding SQLite's write lock: the commit point leaves the rows to
    the ledger's thread (the loop is not blocked), and the "." still follows the commit."""
    path = backend.url.removeprefix("sqlite:///")
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    states: list[list[tuple[object, ...]]] = []
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    ticking = asyncio.create_task(tick())
    holding = asyncio.create_task(
        backend.store.hold_sends(
            [_held("m1", 1)],
            lambda: states.append(backend.query("SELECT state FROM send")),
        )
    )
    for _ in range(10):  # 0.1 s
        await asyncio.sleep(0.01)
    assert not holding.done()
    assert states == []
    other.execute("COMMIT")
    other.close()
    await asyncio.wait_for(holding, 10)
    ticking.cancel()
    assert states == [[("held",)]]
    assert ticks >= 5  # the loop ran on while the lock was held


@pytest.fixture
@needs("sockets")
async def hop() -> AsyncIterator[FaultyHop]:
    async with faulty_hop() as faulty:
        yield faulty


async def gate_for(tmp_path: Path, hop: FaultyHop, **settings: str) -> Config:
    config = gateway_config(tmp_path, hop.port, 0, **settings)
    await seed(config)
    return config


@pytest.fixture
async def gate(tmp_path: Path, hop: FaultyHop) -> AsyncIterator[Running]:
    async with running(await gate_for(tmp_path, hop)) as running_gate:
        yield running_gate


async def test_a_lost_reply_is_uncertain_and_not_sent_again(gate: Running, hop: FaultyHop) -> None:
    hop.script = ["drop-after"]
    [first] = await transaction(gate.smtp_port, SENDER, [FAN], message())
    [again] = await transaction(gate.smtp_port, SENDER, [FAN], message())
    assert first.startswith("250"), first
    assert "uncertain" in first
    assert again.startswith("250"), again
    assert sum(hop.delivered.values()) == 1
    registry = gate.metrics.registry
    assert registry.get_sample_value("optgate_uncertain_total") == 1
    assert registry.get_sample_value("optgate_uncertain_skipped_total") == 1
    assert registry.get_sample_value("optgate_already_delivered_total") == 0


async def test_a_refused_or_deferred_copy_is_sent_again(gate: Running, hop: FaultyHop) -> None:
    hop.script = ["451", "drop-before"]
    replies = [(await transaction(gate.smtp_port, SENDER, [FAN], message()))[0] for _ in range(3)]
    assert [r[:3] for r in replies] == ["451", "451", "250"]
    assert sum(hop.delivered.values()) == 1


async def test_uncertain_resend_sends_again(tmp_path: Path, hop: FaultyHop) -> None:
    config = await gate_for(tmp_path, hop, relay_uncertain="resend")
    async with running(config) as gate:
        hop.script = ["drop-after"]
        [first] = await transaction(gate.smtp_port, SENDER, [FAN], message())
        [again] = await transaction(gate.smtp_port, SENDER, [FAN], message())
    assert first.startswith("451"), first
    assert again.startswith("250"), again
    assert sum(hop.delivered.values()) == 2  # the policy's known duplicate
