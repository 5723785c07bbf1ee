"""The pool against a next hop with a fixed number of sessions, over real sockets.

The hop here behaves as Postfix's reinjection smtpd does: it serves ``sessions``
connections at once (``maxproc``); beyond that a connection waits unanswered in
the listen queue until a session ends, or, told so, is answered 421 at once (as
``smtpd_client_connection_count_limit`` does). The pool must close idle
connections, treat "no room" as a wait, and never hold more than its size.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from structlog.testing import capture_logs

from gateway.config import Relay as RelaySettings
from gateway.config import load
from gateway.runtime.workers import shared_pool
from gateway.smtp.client import Connection
from gateway.smtp.relay import Outcome, Relay

pytestmark = pytest.mark.sockets

MESSAGE = b"Subject: hello\r\n\r\nbody\r\n"
RCPT = "someone@rcpt.example"


@dataclass
class Hop:
    """A next hop serving ``sessions`` connections at once (see the module docstring)."""

    sessions: int
    refuse_beyond: bool = False  # 421 at the greeting instead of waiting
    busy_mail: int = 0  # answer 421 to this many MAIL commands first
    port: int = 0
    open: int = 0  # connections open now (served or waiting)
    most_open: int = 0
    delivered: list[str] = field(default_factory=list)
    quits: int = 0
    served: int = 0  # sessions greeted
    _slots: asyncio.Semaphore = field(init=False)

    def __post_init__(self) -> None:
        self._slots = asyncio.Semaphore(self.sessions)

    async def connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        try:
            if self.refuse_beyond and self._slots.locked():
                writer.write(b"421 4.7.0 hop.test too many connections\r\n")
                return
            async with self._slots:
                self.served += 1
                await self._session(reader, writer)
        finally:
            self.open -= 1
            writer.close()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 hop.test ESMTP\r\n")
        rcpt = ""
        while line := await reader.readline():
            verb = line[:4].upper()
            if verb == b"EHLO":
                writer.write(b"250-hop.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
            elif verb == b"MAIL":
                if self.busy_mail:
                    self.busy_mail -= 1
                    writer.write(b"421 4.3.2 hop.test shutting down\r\n")
                    return
                writer.write(b"250 2.1.0 ok\r\n")
            elif verb == b"RCPT":
                rcpt = line.decode().split("<", 1)[1].split(">", 1)[0]
                writer.write(b"250 2.1.5 ok\r\n")
            elif verb == b"DATA":
                writer.write(b"354 go ahead\r\n")
                while await reader.readline() not in (b".\r\n", b""):
                    pass
                self.delivered.append(rcpt)
                writer.write(b"250 2.0.0 queued\r\n")
            elif verb == b"QUIT":
                self.quits += 1
                writer.write(b"221 2.0.0 bye\r\n")
                return
            else:
                writer.write(b"502 5.5.2 what\r\n")


@contextlib.asynccontextmanager
async def hop(sessions: int, **settings: bool | int) -> AsyncIterator[Hop]:
    served = Hop(sessions, **settings)  # type: ignore[arg-type]
    server = await asyncio.start_server(served.connection, "127.0.0.1", 0, backlog=100)
    served.port = server.sockets[0].getsockname()[1]
    try:
        yield served
    finally:
        server.close()


def pool(port: int, size: int, *, idle: float = 2, busy: float = 5, timeout: float = 10) -> Relay:
    return Relay(
        "127.0.0.1",
        port,
        size=size,
        timeout=timeout,
        starttls="never",
        local_hostname="optgate.test",
        idle_seconds=idle,
        busy_seconds=busy,
    )


async def send_many(relay: Relay, count: int) -> list[Outcome]:
    rcpts = [f"r{n}@rcpt.example" for n in range(count)]
    return list(await asyncio.gather(*(relay.send("s@sender.example", r, MESSAGE) for r in rcpts)))


async def until(condition: object, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_an_idle_pooled_connection_is_closed_with_quit_after_idle_seconds() -> None:
    async with hop(4) as next_hop:
        relay = pool(next_hop.port, 4, idle=0.3)
        assert (await relay.send("s@sender.example", RCPT, MESSAGE)).code == 250
        assert next_hop.open == 1  # pooled for the next copy
        started = time.monotonic()
        await until(lambda: next_hop.open == 0, 3)
        assert time.monotonic() - started >= 0.2
        assert next_hop.quits == 1
        # a later copy opens a new connection and is delivered
        assert (await relay.send("s@sender.example", RCPT, MESSAGE)).code == 250
        await relay.close()
    assert next_hop.delivered == [RCPT, RCPT]


async def test_a_copy_reuses_a_connection_before_it_goes_idle() -> None:
    async with hop(4) as next_hop:
        relay = pool(next_hop.port, 4, idle=1)
        for _ in range(5):
            assert (await relay.send("s@sender.example", RCPT, MESSAGE)).code == 250
        await relay.close()
    assert next_hop.served == 1


async def test_workers_sharing_a_hop_never_stall_on_each_others_idle_connections() -> None:
    """Two workers, each with its share of six sessions: the first leaves its connections
    idle, the second still gets its copies through well before the reply timeout."""
    settings = RelaySettings(next_hop_sessions=6)
    async with hop(6) as next_hop:
        first = pool(next_hop.port, settings.per_worker(2) * 2, idle=0.5)  # too big a share
        second = pool(next_hop.port, settings.per_worker(2), idle=0.5)
        assert [o.code for o in await send_many(first, 6)] == [250] * 6
        assert next_hop.open == 6  # every session held by the first worker's idle connections
        started = time.monotonic()
        outcomes = await send_many(second, 3)
        waited = time.monotonic() - started
        await first.close()
        await second.close()
    assert [o.code for o in outcomes] == [250] * 3
    assert waited < 3  # the idle ones were closed; the reply timeout is 10 s
    assert next_hop.most_open <= 6 + 3  # the three waited in the listen queue


async def test_a_hop_that_answers_421_beyond_its_sessions_gets_every_copy() -> None:
    async with hop(3, refuse_beyond=True) as next_hop:
        relay = pool(next_hop.port, 8)
        outcomes = await send_many(relay, 30)
        await relay.close()
    assert [o.code for o in outcomes] == [250] * 30
    assert sorted(next_hop.delivered) == sorted(f"r{n}@rcpt.example" for n in range(30))


async def test_a_421_to_mail_on_a_pooled_connection_sends_the_copy_on_another() -> None:
    async with hop(4) as next_hop:
        relay = pool(next_hop.port, 4)
        assert (await relay.send("s@sender.example", RCPT, MESSAGE)).code == 250
        next_hop.busy_mail = 1
        assert (await relay.send("s@sender.example", RCPT, MESSAGE)).code == 250
        await relay.close()
    assert next_hop.delivered == [RCPT, RCPT]
    assert next_hop.served == 2


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_a_refused_connection_waits_until_the_hop_listens() -> None:
    port = _free_port()
    relay = pool(port, 2, busy=10)
    sending = asyncio.create_task(relay.send("s@sender.example", RCPT, MESSAGE))
    await asyncio.sleep(0.5)
    assert not sending.done()  # refused, and waiting: not a 451
    served = Hop(2, port=port)
    server = await asyncio.start_server(served.connection, "127.0.0.1", port)
    try:
        outcome = await asyncio.wait_for(sending, 5)
        await relay.close()
    finally:
        server.close()
    assert outcome.code == 250
    assert served.delivered == [RCPT]


async def test_a_hop_still_busy_after_busy_seconds_gives_451_4_4_5_and_a_log_line() -> None:
    async with hop(1, refuse_beyond=True) as next_hop:
        holder = await Connection.open(
            "127.0.0.1", next_hop.port, seconds=5, local_hostname="other.test", starttls="never"
        )  # another client holds the only session
        relay = pool(next_hop.port, 2, busy=0.6)
        started = time.monotonic()
        with capture_logs() as logs:
            outcome = await relay.send("s@sender.example", RCPT, MESSAGE)
        waited = time.monotonic() - started
        await holder.quit()
        await relay.close()
    assert outcome == Outcome(451, "4.4.5 next hop busy, try again later")
    assert 0.6 <= waited < 3
    busy = [entry for entry in logs if entry["event"] == "next_hop_busy"]
    assert len(busy) == 1
    assert "rcpt.example" not in repr(logs)
    assert next_hop.delivered == []


@pytest.mark.parametrize("workers", [1, 2, 3, 7, 20, 32])
def test_the_workers_pools_together_never_exceed_the_next_hops_sessions(workers: int) -> None:
    settings = RelaySettings()
    assert settings.pool_size == 0
    assert 1 <= workers * settings.per_worker(workers) <= max(settings.next_hop_sessions, workers)
    if workers <= settings.next_hop_sessions:
        assert workers * settings.per_worker(workers) <= settings.next_hop_sessions
    assert RelaySettings(pool_size=5).per_worker(workers) == 5  # an explicit size wins


async def test_the_pool_never_holds_more_connections_than_its_size() -> None:
    async with hop(50) as next_hop:
        relay = pool(next_hop.port, 5, idle=0.05)
        for _ in range(3):
            assert [o.code for o in await send_many(relay, 40)] == [250] * 40
            await asyncio.sleep(0.1)  # idle ones close; the next burst opens new ones
        await relay.close()
    assert next_hop.most_open <= 5
    assert len(next_hop.delivered) == 120


def test_serve_gives_each_worker_its_share_and_warns_when_set_sizes_add_up_to_more() -> None:
    config = load(None, {})
    with capture_logs() as logs:
        shared = shared_pool(config, 3)
    assert shared.relay.pool_size == 6  # 20 // 3: 18 sessions, never more than 20
    assert logs == []
    set_size = load(None, {"OPTGATE_RELAY_POOL_SIZE": "10"})
    with capture_logs() as logs:
        shared = shared_pool(set_size, 3)
    assert shared.relay.pool_size == 10  # an explicit size wins, with a warning
    assert [entry["event"] for entry in logs] == ["pool_exceeds_next_hop"]


async def test_each_idle_connection_closes_after_its_own_idle_seconds() -> None:
    """One timer serves the pool: a connection given back later is closed later, when it
    has been idle for idle_seconds too, not with the older one."""
    async with hop(4) as next_hop:
        relay = pool(next_hop.port, 4, idle=0.6)
        assert [o.code for o in await send_many(relay, 2)] == [250, 250]
        assert next_hop.open == 2
        await asyncio.sleep(0.3)
        assert (await relay.send("s@sender.example", RCPT, MESSAGE)).code == 250  # one again
        reused = time.monotonic()
        await until(lambda: next_hop.open == 1, 3)  # the other one, idle since the start
        assert time.monotonic() - reused < 0.5
        await until(lambda: next_hop.open == 0, 3)
        assert time.monotonic() - reused >= 0.5
        assert next_hop.quits == 2
        await relay.close()
    assert next_hop.served == 2
