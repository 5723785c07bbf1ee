"""`optgate serve --workers N` as a real process tree: workers share the ports, serve
mail end to end, are replaced when they die, drain on SIGTERM, and the supervisor
gives up with a clear message when they cannot start."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, closing
from pathlib import Path

import aiohttp
import pytest
import structlog
from aiosmtpd.smtp import SMTP, Envelope, Session

from gateway.config import load
from gateway.keys import load_keys
from gateway.runtime.workers import bind, cpu_plan
from gateway.tokens import Claims, TokenSigner
from suppression.address import normalize
from suppression.scope import GLOBAL
from tests.support.people import FAN, SENDER, seed
from tests.support.serving import alive, optgate_serve
from tests.support.smtp import Sink, gateway_env, message, send, sink

pytestmark = pytest.mark.pure

MESSAGES = 40  # each on its own connection: the kernel spreads them over the workers


def env_for(tmp_path: Path, next_hop: Sink, **settings: str) -> dict[str, str]:
    return gateway_env(tmp_path, next_hop.port, 0, **settings)


async def seeded(tmp_path: Path, next_hop: Sink, **settings: str) -> dict[str, str]:
    env = env_for(tmp_path, next_hop, **settings)
    await seed(load(None, env))
    return env


async def send_many(port: int, count: int, tag: str) -> list[int]:
    """`count` messages to FAN, one connection each, a few at a time; their reply codes."""
    limit = asyncio.Semaphore(8)

    async def one(n: int) -> int:
        async with limit:
            data = message(message_id=f"<{tag}{n}@sender.example>")
            return (await send(port, SENDER, [FAN], data)).code

    return list(await asyncio.gather(*(one(n) for n in range(count))))


async def test_two_workers_serve_mail_and_both_answer(tmp_path: Path, next_hop: Sink) -> None:
    env = await seeded(tmp_path, next_hop)
    async with optgate_serve(env, "--workers", "2", ready=2) as served:
        _, port = served.address("smtp")
        assert len(served.worker_pids()) == 2
        assert await send_many(port, MESSAGES, "m") == [250] * MESSAGES
        assert len(next_hop.to(FAN)) == MESSAGES
        lines = await served.wait_for("message", MESSAGES, reply=250)
        assert {line["worker"] for line in lines} == {0, 1}
        _, api = served.address("api")  # the admin listener
        seen = set()
        async with aiohttp.ClientSession() as http:
            for _ in range(20):  # new connections: both workers answer, each with the sum
                async with http.get(
                    f"http://127.0.0.1:{api}/metrics", headers={"Connection": "close"}
                ) as response:
                    text = await response.text()
                total = re.search(r'^optgate_messages_total\{reply="2xx"\} (\S+)$', text, re.M)
                assert total is not None
                seen.add(float(total.group(1)))
        assert seen == {float(MESSAGES)}
        served.process.send_signal(signal.SIGTERM)
        assert await served.exit_code() == 0


async def test_a_killed_worker_is_replaced(tmp_path: Path, next_hop: Sink) -> None:
    env = await seeded(tmp_path, next_hop)
    async with optgate_serve(env, "--workers", "2", ready=2) as served:
        victim = served.events("worker_ready", worker=1)[0]["pid"]
        os.kill(victim, signal.SIGKILL)
        died = await served.wait_for("worker_died", pid=victim)
        assert died[0]["status"] == -signal.SIGKILL
        [_, again] = await served.wait_for("worker_ready", 2, worker=1)
        assert again["pid"] != victim
        assert not alive(victim)  # reaped, not a zombie
        assert served.worker_pids() == {served.events("worker_ready", worker=0)[0]["pid"]} | {
            again["pid"]
        }
        _, port = served.address("smtp")
        assert await send_many(port, 10, "after") == [250] * 10
        lines = await served.wait_for("message", 10, reply=250)
        assert 1 in {line["worker"] for line in lines}


async def test_workers_stop_when_the_supervisor_is_killed(tmp_path: Path, next_hop: Sink) -> None:
    env = await seeded(tmp_path, next_hop)
    async with optgate_serve(env, "--workers", "2", ready=2) as served:
        workers = served.worker_pids()
        _, port = served.address("smtp")
        served.process.kill()  # SIGKILL: the supervisor cannot tell anyone
        for _ in range(300):  # up to 30 s: they drain, then exit
            if not any(alive(pid) for pid in workers):
                break
            await asyncio.sleep(0.1)
        assert not any(alive(pid) for pid in workers)
        with pytest.raises(ConnectionRefusedError), closing(socket.socket()) as probe:
            probe.connect(("127.0.0.1", port))  # nobody holds the port any more


@asynccontextmanager
async def held_next_hop() -> AsyncIterator[tuple[Sink, asyncio.Event, asyncio.Event]]:
    """A next hop that takes DATA and answers only when released: (sink, arrived, release)."""
    arrived, release = asyncio.Event(), asyncio.Event()

    class Held(Sink):
        async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
            arrived.set()
            await release.wait()
            return await super().handle_DATA(server, session, envelope)

    async with sink() as recorder:
        recorder.__class__ = Held
        yield recorder, arrived, release


@pytest.mark.sockets
async def test_sigterm_drains_the_message_in_flight_then_stops_every_worker(
    tmp_path: Path,
) -> None:
    async with held_next_hop() as (next_hop, arrived, release):
        env = await seeded(tmp_path, next_hop)
        async with optgate_serve(env, "--workers", "2", ready=2) as served:
            pids = served.worker_pids()
            _, port = served.address("smtp")
            in_flight = asyncio.create_task(send(port, SENDER, [FAN], message()))
            async with asyncio.timeout(20):
                await arrived.wait()
            served.process.send_signal(signal.SIGTERM)
            await served.wait_for("stopping")
            await asyncio.sleep(0.5)
            assert served.process.returncode is None  # still draining
            with pytest.raises(ConnectionRefusedError):  # but no longer listening
                await asyncio.open_connection("127.0.0.1", port)
            release.set()
            assert (await in_flight).code == 250
            assert await served.exit_code() == 0
            assert len(served.events("worker_stopped", status=0)) == 2
            assert not any(alive(pid) for pid in pids)
    assert len(next_hop.to(FAN)) == 1


async def test_a_worker_that_cannot_start_stops_the_supervisor(
    tmp_path: Path, next_hop: Sink
) -> None:
    missing = tmp_path / "missing.pem"
    env = env_for(tmp_path, next_hop, dkim_keys=f"sender.example:s1:rsa:{missing}")
    async with optgate_serve(env, "--workers", "2") as served:
        assert await served.exit_code() == 2
        errors = served.stderr.decode()
        assert "optgate: worker 0: [dkim] keys: " in errors
        assert f"cannot read {missing}: No such file or directory" in errors
        assert "optgate: the first worker failed to start (exit status 2); see above" in errors
        assert len(served.events("worker_started")) == 1


async def test_workers_that_keep_failing_at_start_stop_the_supervisor(
    tmp_path: Path, next_hop: Sink
) -> None:
    env = await seeded(tmp_path, next_hop)
    async with optgate_serve(env, "--workers", "2", ready=2) as served:
        store = tmp_path / "optgate.db"
        broken = tmp_path / "broken.db"
        broken.write_bytes(b"this is not a database\n" * 1000)
        broken.replace(store)  # a worker started from now on cannot open the store
        os.kill(served.events("worker_ready", worker=0)[0]["pid"], signal.SIGKILL)
        assert await served.exit_code() == 2
        errors = served.stderr.decode()
        assert "optgate: 5 workers in a row failed to start (last exit status 2)" in errors
        assert len(served.events("worker_died", ready=False)) == 5
        assert not any(alive(pid) for pid in served.worker_pids())


async def test_a_port_in_use_is_a_clear_error_before_any_worker(
    tmp_path: Path, next_hop: Sink
) -> None:
    with closing(socket.socket()) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = env_for(tmp_path, next_hop, smtp_listen=f"127.0.0.1:{port}")
        async with optgate_serve(env, "--workers", "2") as served:
            assert await served.exit_code() == 2
    assert f"optgate: [smtp] listen 127.0.0.1:{port}: Address already in use" in (
        served.stderr.decode()
    )
    assert not served.events("worker_started")


async def test_concurrent_opt_outs_through_both_workers_all_land_in_one_chain(
    tmp_path: Path, next_hop: Sink
) -> None:
    """SQLite with several writer processes: they wait for the lock, none fails."""
    env = await seeded(tmp_path, next_hop)
    async with optgate_serve(env, "--workers", "2", ready=2) as served:
        _, port = served.address("smtp")
        _, web = served.address("web")
        people = [f"person{n}@example.com" for n in range(30)]

        async def one_click(address: str) -> int:
            token = token_for(env, address)
            async with (
                aiohttp.ClientSession() as http,
                http.post(
                    f"http://127.0.0.1:{web}/u/{token}",
                    data={"List-Unsubscribe": "One-Click"},
                    headers={"Connection": "close"},
                ) as response,
            ):
                return response.status

        statuses, codes = await asyncio.gather(
            asyncio.gather(*(one_click(a) for a in people)), send_many(port, 20, "busy")
        )
        assert list(statuses) == [200] * len(people)
        assert codes == [250] * 20
        lines = served.events("web_unsubscribe")
        assert {line["worker"] for line in lines} == {0, 1}
    with closing(sqlite3.connect(tmp_path / "optgate.db")) as db:
        keys = {row[0] for row in db.execute("SELECT key FROM suppression")}
        seqs = [row[0] for row in db.execute("SELECT seq FROM audit ORDER BY seq")]
    assert {normalize(a).sha256 for a in people} <= keys
    assert seqs == list(range(1, len(seqs) + 1))


def token_for(env: dict[str, str], address: str) -> str:
    """An unsubscribe token as the running gateway would issue it (same key file)."""
    signer = TokenSigner(load_keys(Path(load(None, env).unsubscribe.key_file)))
    return signer.issue(Claims(normalize(address).sha256, GLOBAL, int(time.time())))


def threads_cpus(pid: int) -> dict[int, set[int]]:
    """The CPUs each thread of process `pid` may run on, by thread id."""
    return {
        int(t.name): os.sched_getaffinity(int(t.name)) for t in Path(f"/proc/{pid}/task").iterdir()
    }


async def test_one_worker_per_cpu_binds_each_worker_and_its_threads_to_its_own_cpu(
    tmp_path: Path, next_hop: Sink
) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    env = await seeded(tmp_path, next_hop)
    async with optgate_serve(env, "--workers", str(len(cpus)), ready=len(cpus)) as served:
        assert served.events("workers_starting")[0]["cpus"] == cpus
        _, port = served.address("smtp")
        assert await send_many(port, MESSAGES, "b") == [250] * MESSAGES  # the ledger thread runs
        bound = await served.wait_for("worker_bound", len(cpus))
        assert sorted((line["worker"], line["cpu"]) for line in bound) == list(enumerate(cpus))
        for line in served.events("worker_ready"):
            pid, cpu = line["pid"], cpus[line["worker"]]
            threads = threads_cpus(pid)
            assert len(threads) > 1
            assert set(map(frozenset, threads.values())) == {frozenset({cpu})}
        assert served.events("worker_not_bound") == []


@pytest.mark.parametrize("how", ["more workers than cpus", "--cpu-affinity none"])
async def test_workers_stay_unbound_unless_there_is_one_per_cpu(
    tmp_path: Path, next_hop: Sink, how: str
) -> None:
    cpus = os.sched_getaffinity(0)
    args = ["--workers", str(len(cpus) + 1)]
    if how == "--cpu-affinity none":
        args = ["--workers", str(len(cpus)), "--cpu-affinity", "none"]
    count = int(args[1])
    env = await seeded(tmp_path, next_hop)
    async with optgate_serve(env, *args, ready=count) as served:
        assert served.events("workers_starting")[0]["cpus"] is None
        assert served.events("worker_bound") == []
        for pid in served.worker_pids():
            assert set(map(frozenset, threads_cpus(pid).values())) == {frozenset(cpus)}


def test_cpu_plan_binds_only_one_worker_per_cpu() -> None:
    cpus = sorted(os.sched_getaffinity(0))
    assert cpu_plan(len(cpus), "auto") == cpus
    assert cpu_plan(len(cpus), "none") is None
    assert cpu_plan(len(cpus) + 1, "auto") is None
    if len(cpus) > 1:
        assert cpu_plan(len(cpus) - 1, "auto") is None


def test_a_cpu_that_cannot_be_had_is_logged_and_the_worker_runs_on() -> None:
    before = os.sched_getaffinity(0)
    missing = max(before) + 64  # a CPU this machine does not have
    with structlog.testing.capture_logs() as logged:
        bind(missing)
    assert os.sched_getaffinity(0) == before
    assert [(line["event"], line["cpu"]) for line in logged] == [("worker_not_bound", missing)]
