"""The exactly-once runs (issue 14): many messages through optgate to a FaultyHop while
the client retries every 4xx, with the next hop failing at random (``fault_run``) or
`optgate serve` SIGKILLed under load (``kill_run``); the figures count each copy."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from gateway.config import Config, load
from gateway.runtime.service import running
from gateway.runtime.stores import open_configured
from suppression.address import normalize
from suppression.model import Consent, now
from tests.support.dialog_client import transaction
from tests.support.faults import FaultyHop, faulty_hop
from tests.support.serving import optgate_serve
from tests.support.smtp import gateway_env, message

SENDER = "news@sender.example"
AUDIENCE = [f"reader{n}@example.com" for n in range(60)]
CONCURRENCY = 20
GIVE_UP = 120.0  # seconds a client keeps retrying one message (as a queue's lifetime)
Send = Callable[[str, list[str], bytes], Awaitable[list[str]]]


@dataclass
class Figures:
    """What became of every copy (message x recipient)."""

    messages: int = 0
    copies: int = 0
    delivered: int = 0  # told 2xx and arrived once
    refused: int = 0  # told 5xx, never arrived
    uncertain: int = 0  # told the reply was lost (arrived: uncertain_arrived of them)
    uncertain_arrived: int = 0
    lost: int = 0  # told 2xx (uncertain too: "not sent again"), never arrived
    given_up: int = 0  # still deferred when the client gave up (GIVE_UP), never arrived
    duplicated: int = 0  # arrived more than once
    refused_but_delivered: int = 0  # told 5xx, arrived anyway
    retries: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    kills: int = 0

    def lines(self) -> list[str]:
        """The figures, one per line."""
        faults = ", ".join(f"{k} {v}" for k, v in sorted(self.faults.items())) or "none"
        return [
            f"messages {self.messages}, copies {self.copies}, client retries {self.retries}",
            f"next-hop faults: {faults}; kills {self.kills}",
            f"delivered {self.delivered}, refused {self.refused}, uncertain {self.uncertain} "
            f"(arrived {self.uncertain_arrived})",
            f"lost {self.lost}, given up {self.given_up}, duplicated {self.duplicated}, "
            f"refused but delivered {self.refused_but_delivered}",
        ]


async def consented(config: Config) -> None:
    """Everyone in AUDIENCE consents to marketing."""
    store = await open_configured(config, create=True)
    try:
        records = [Consent(normalize(a).sha256, "marketing", True, "test", now()) for a in AUDIENCE]
        await store.record_consents(records, actor="test")
    finally:
        await store.close()


def plan(messages: int, seed: int) -> list[tuple[str, list[str], bytes]]:
    """(Message-ID, recipients, content) of each message: 1 to 3 recipients."""
    dice = random.Random(seed)
    return [
        (
            f"<x{n}@sender.example>",
            dice.sample(AUDIENCE, dice.randint(1, 3)),
            message(message_id=f"<x{n}@sender.example>", body=f"Issue {n}.\n"),
        )
        for n in range(messages)
    ]


async def drive(send: Send, messages: int, hop: FaultyHop, seed: int) -> Figures:
    """Send every message, retrying 4xx (and broken connections) for the recipients left."""
    figures = Figures(messages=messages)
    told: dict[tuple[str, str], str] = {}
    limit = asyncio.Semaphore(CONCURRENCY)

    async def one(message_id: str, rcpts: list[str], data: bytes) -> None:
        pending = list(rcpts)
        async with limit:
            loop = asyncio.get_running_loop()
            until = loop.time() + GIVE_UP
            pause = 0.0
            while loop.time() < until:
                if pause:
                    figures.retries += 1
                    await asyncio.sleep(pause)
                pause = min(pause * 2, 0.5) or 0.05
                try:
                    replies = await send(SENDER, pending, data)
                except (OSError, ConnectionError, AssertionError, EOFError):
                    continue
                for rcpt, reply in zip(pending, replies, strict=True):
                    if reply[0] == "2":
                        told[message_id, rcpt] = "uncertain" if "reply was lost" in reply else "ok"
                    elif reply[0] == "5":
                        told[message_id, rcpt] = "refused"
                pending = [r for r in pending if (message_id, r) not in told]
                if not pending:
                    return

    work = plan(messages, seed)
    await asyncio.gather(*(one(*item) for item in work))
    for message_id, rcpts, _ in work:
        for rcpt in rcpts:
            figures.copies += 1
            arrived = hop.delivered[f"{message_id} {rcpt}"]
            said = told.get((message_id, rcpt), "given up")
            if arrived > 1:
                figures.duplicated += 1
            if said == "uncertain":
                figures.uncertain += 1
                figures.uncertain_arrived += arrived >= 1
                figures.lost += arrived == 0  # held, but its "." never went out
            elif said == "refused":
                figures.refused += arrived == 0
                figures.refused_but_delivered += arrived >= 1
            elif said == "given up" and arrived == 0:
                figures.given_up += 1
            elif arrived == 0:
                figures.lost += 1
            elif arrived == 1:
                figures.delivered += 1
    figures.faults = hop.faults
    return figures


async def fault_run(messages: int, rate: float, folder: Path, seed: int = 1) -> Figures:
    """``messages`` through an in-process optgate (LMTP) to a next hop failing at ``rate``
    per fault kind."""
    async with faulty_hop(rate, seed) as hop:
        config = load(None, gateway_env(folder, hop.port, 0, smtp_lmtp="true"))
        await consented(config)
        async with running(config) as gate:

            async def send(mail_from: str, rcpts: list[str], data: bytes) -> list[str]:
                return await transaction(gate.smtp_port, mail_from, rcpts, data, lmtp=True)

            return await drive(send, messages, hop, seed)


def free_port() -> int:
    """A loopback port free now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def kill_run(
    messages: int, kills: int, folder: Path, every: float = 0.4, seed: int = 1
) -> Figures:
    """``messages`` through `optgate serve` (LMTP), SIGKILLed ``kills`` times while the
    clients keep sending (to a next hop that never fails): the k-th kill once k/(kills+1)
    of the messages' transactions were answered, and at least ``every`` seconds after
    the start before it, so every kill lands under load however fast the machine is."""
    async with faulty_hop(0.0, seed) as hop:
        port = free_port()
        env = gateway_env(folder, hop.port, port, smtp_lmtp="true")
        await consented(load(None, env))
        done = asyncio.Event()
        answered = asyncio.Condition()
        transactions = 0
        killed = 0

        def due() -> bool:  # the next kill's share of the transactions answered (or the end)
            return done.is_set() or transactions >= messages * (killed + 1) // (kills + 1)

        async def killer() -> None:
            nonlocal killed
            while not done.is_set():
                async with optgate_serve(env, "--workers", "1", ready=1):
                    if killed >= kills:
                        await done.wait()
                        return
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(done.wait(), every)
                    async with answered:
                        await answered.wait_for(due)
                    killed += not done.is_set()  # leaving the block SIGKILLs the tree

        async def send(mail_from: str, rcpts: list[str], data: bytes) -> list[str]:
            nonlocal transactions
            replies = await transaction(port, mail_from, rcpts, data, lmtp=True)
            async with answered:
                transactions += 1
                answered.notify_all()
            return replies

        serving = asyncio.create_task(killer())
        try:
            figures = await drive(send, messages, hop, seed)
        finally:
            done.set()
            async with answered:
                answered.notify_all()
            await serving
        figures.kills = killed
        return figures
