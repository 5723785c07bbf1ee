"""A next hop that misbehaves on purpose: it refuses the recipient, drops the connection
before or after taking a copy, stalls, or answers 421/451/452/554 after the final ".",
each with a given probability."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aiosmtpd.smtp import SMTP, Envelope, Session

FAULTS = ("refuse", "421", "451", "452", "554", "drop-before", "drop-after", "stall")


@dataclass
class FaultyHop:
    """Records each copy it takes (per recipient); ``rate`` is each fault's probability;
    ``script`` (faults for the next copies, in order) comes first."""

    rate: float = 0.0
    seed: int = 1
    stall_seconds: float = 0.5
    port: int = 0
    delivered: Counter[str] = field(default_factory=Counter)  # Message-ID + rcpt: copies taken
    faults: Counter[str] = field(default_factory=Counter)
    script: list[str] = field(default_factory=list)
    _random: random.Random = field(init=False)
    _rolled: dict[int, str | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)

    def _fault(self) -> str | None:
        if self.script:
            return self.script.pop(0) or None
        roll = self._random.random()
        for index, name in enumerate(FAULTS):
            if roll < self.rate * (index + 1):
                return name
        return None

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        """Roll the dice for this transaction; drop-before ends it before any content."""
        fault = self._fault()
        if fault:
            self.faults[fault] += 1
        if fault == "drop-before":
            _abort(server)
            return "421 4.3.0 gone"
        if fault == "refuse":
            return "550 5.1.1 no such user"
        self._rolled[id(session)] = fault
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Take the copy, or fail as the dice said."""
        fault = self._rolled.pop(id(session), None)
        data = envelope.original_content or b""
        key = _message_id(data) + " " + ",".join(envelope.rcpt_tos)
        if fault == "554":
            return "554 5.7.1 refused"
        if fault in {"421", "451", "452"}:
            return f"{fault} 4.3.0 try again"
        if fault == "stall":
            await asyncio.sleep(self.stall_seconds)
        self.delivered[key] += 1
        if fault == "drop-after":
            _abort(server)  # the copy is taken, the reply never comes
        return "250 2.0.0 queued"


def _abort(server: SMTP) -> None:
    transport = server.transport
    if isinstance(transport, asyncio.Transport):
        transport.abort()


def _message_id(data: bytes) -> str:
    for line in data.split(b"\r\n"):
        if not line:
            break
        if line.lower().startswith(b"message-id:"):
            return line[11:].strip().decode()
    return "?"


@contextlib.asynccontextmanager
async def faulty_hop(rate: float = 0.0, seed: int = 1) -> AsyncIterator[FaultyHop]:
    """A FaultyHop listening on a free loopback port, in this event loop."""
    hop = FaultyHop(rate=rate, seed=seed)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(hop, enable_SMTPUTF8=True, hostname="faulty.test"), "127.0.0.1", 0
    )
    hop.port = server.sockets[0].getsockname()[1]
    try:
        yield hop
    finally:
        server.close()
        await server.wait_closed()
