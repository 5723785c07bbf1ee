"""Relay.send_committed: the commit point sits after the content and before the final "."."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from gateway.smtp.relay import Relay
from tests.support.smtp import Sink, message


def relay(sink: Sink) -> Relay:
    return Relay(
        "127.0.0.1",
        sink.port,
        size=2,
        timeout=5,
        starttls="never",
        local_hostname="t.test",
        idle_seconds=2,
        busy_seconds=1,
    )


async def test_the_copy_is_delivered_only_after_its_commit(next_hop: Sink) -> None:
    pool, seen = relay(next_hop), []

    async def commit(finish: Callable[[], None]) -> bool:
        await asyncio.sleep(0.05)  # the next hop has the whole content by now, but no "."
        seen.append(len(next_hop.messages))
        finish()
        return True

    outcome = await pool.send_committed("o@example.com", "r@example.com", message(), commit)
    await pool.close()
    assert outcome is not None
    assert outcome.delivered
    assert seen == [0]
    assert len(next_hop.messages) == 1


async def test_a_refused_commit_abandons_the_transaction(next_hop: Sink) -> None:
    pool = relay(next_hop)

    async def commit(finish: Callable[[], None]) -> bool:
        return False

    assert await pool.send_committed("o@example.com", "r@example.com", message(), commit) is None
    again = await pool.send_committed(
        "o@example.com", "s@example.com", message(), lambda finish: _done(finish)
    )
    await pool.close()
    assert again is not None
    assert again.delivered
    assert [m.rcpt_tos for m in next_hop.messages] == [["s@example.com"]]


async def _done(finish: Callable[[], None]) -> bool:
    finish()
    return True


async def test_refusals_come_back_as_outcomes(next_hop: Sink) -> None:
    pool = relay(next_hop)
    next_hop.fail_next.append("451 4.3.0 try later")
    deferred = await pool.send_committed("o@example.com", "r@example.com", message(), _done)
    next_hop.fail_rcpt["x@example.com"] = ["550 5.1.1 no such user"]
    refused = await pool.send_committed("o@example.com", "x@example.com", message(), _done)
    await pool.close()
    assert deferred is not None
    assert (deferred.code, deferred.temporary, deferred.uncertain) == (451, True, False)
    assert refused is not None
    assert (refused.code, refused.delivered, refused.temporary) == (550, False, False)
    assert next_hop.messages == []


async def test_a_commit_that_fails_after_the_end_of_data_still_reports_the_delivery(
    next_hop: Sink,
) -> None:
    # PostgreSQL: the "." goes out with the COMMIT, whose answer may then be an error;
    # the next hop has the copy, so the caller must learn it was delivered (never resend)
    pool = relay(next_hop)

    async def commit(finish: Callable[[], None]) -> bool:
        finish()
        return False

    outcome = await pool.send_committed("o@example.com", "r@example.com", message(), commit)
    await pool.close()
    assert outcome is not None
    assert outcome.delivered
    assert len(next_hop.messages) == 1
