"""Refusals at connect under the real `optgate serve` (uvloop, worker processes): a client
over the session limit reads 421, one outside the allowed networks 554, on every listener
that refuses at connect, and none of them an EOF or a traceback in the log."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

from tests.support.serving import Served, optgate_serve
from tests.support.smtp import Sink, gateway_env

IDLE = 500
MAX_SESSIONS = 200
WORKERS = 2


@contextlib.asynccontextmanager
async def idle_connections(port: int, count: int) -> AsyncIterator[Counter[bytes]]:
    """Open ``count`` connections that say nothing; what each read first ('EOF': nothing)."""
    firsts: Counter[bytes] = Counter()
    writers: list[asyncio.StreamWriter] = []
    opening = asyncio.Semaphore(50)  # below the listen backlog

    async def one() -> None:
        async with opening:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writers.append(writer)
            line = await reader.readline()
        firsts[line[:3] if line.endswith(b"\r\n") else b"EOF"] += 1

    try:
        async with asyncio.timeout(60):
            await asyncio.gather(*(one() for _ in range(count)))
        yield firsts
    finally:
        for writer in writers:
            writer.close()


def assert_no_traceback(served: Served) -> None:
    errors = served.stderr.decode(errors="replace")
    assert "Traceback" not in errors, errors[:2000]
    assert "AssertionError" not in errors
    assert not [line for line in served.lines if "exception" in line or line["level"] == "error"]


async def first_line(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        async with asyncio.timeout(10):
            return await reader.readline()
    finally:
        writer.close()


async def test_idle_connections_beyond_max_sessions_read_421_across_workers(
    tmp_path: Path, next_hop: Sink
) -> None:
    env = gateway_env(tmp_path, next_hop.port, smtp_max_sessions=str(MAX_SESSIONS))
    async with optgate_serve(env, "--workers", str(WORKERS), ready=WORKERS) as served:
        _, port = served.address("smtp")
        async with idle_connections(port, IDLE) as firsts:
            assert firsts[b"EOF"] == 0
            assert set(firsts) == {b"220", b"421"}
            # the limit holds for the node, not per worker (two admitting at one instant
            # may each miss the other's last session)
            assert MAX_SESSIONS <= firsts[b"220"] <= MAX_SESSIONS + WORKERS - 1
            assert firsts[b"421"] == IDLE - firsts[b"220"]
            assert len(served.events("connection_refused", reply="421")) == firsts[b"421"]
        await asyncio.sleep(0.5)  # the sessions end, their slots are free again
        assert (await first_line(port)).startswith(b"220 ")
        assert_no_traceback(served)


async def test_every_listener_refusing_at_connect_answers_under_serve(
    tmp_path: Path, next_hop: Sink
) -> None:
    env = gateway_env(
        tmp_path,
        next_hop.port,
        smtp_max_sessions="3",
        inbound_domains="in.example.com",
        inbound_listen="127.0.0.1:0",
        partners_listen="127.0.0.1:0",
        partners_audience_domain="partners.example.com",
    )
    async with optgate_serve(env, "--workers", str(WORKERS), ready=WORKERS) as served:
        for part in ("smtp", "inbound", "partners"):
            _, port = served.address(part)
            async with idle_connections(port, 12) as firsts:
                assert set(firsts) == {b"220", b"421"}, part  # no EOF
                assert 3 <= firsts[b"220"] <= 3 + WORKERS - 1, part
        assert_no_traceback(served)


async def test_clients_outside_the_allowed_networks_read_554_under_serve(
    tmp_path: Path, next_hop: Sink
) -> None:
    env = gateway_env(
        tmp_path,
        next_hop.port,
        smtp_allowed_clients="192.0.2.0/24",
        inbound_domains="in.example.com",
        inbound_listen="127.0.0.1:0",
        inbound_allowed_clients="198.51.100.0/24",
    )
    async with optgate_serve(env, "--workers", str(WORKERS), ready=WORKERS) as served:
        for part in ("smtp", "inbound"):
            _, port = served.address(part)
            async with idle_connections(port, 20) as firsts:
                assert firsts == Counter({b"554": 20}), part
        assert len(served.events("connection_refused", reply="554")) == 40
        assert_no_traceback(served)
