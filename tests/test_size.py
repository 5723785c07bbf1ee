"""Size agreement with the next hop, over real sockets: optgate offers the smaller of its
own limit and the next hop's SIZE (less room for the rewrite), refuses larger mail at
MAIL FROM and after DATA with 552 5.3.4, says SIZE= to the next hop, and refuses a copy
that outgrew the next hop's SIZE before sending it."""

from __future__ import annotations

import asyncio
import smtplib
from pathlib import Path

import pytest

from gateway.runtime.service import running
from gateway.smtp.relay import Relay
from gateway.smtp.server import REWRITE_MARGIN, advertised_size
from tests.support.people import FAN, SENDER, seed
from tests.support.smtp import gateway_config, message, send, sink

pytestmark = pytest.mark.pure

HOP_SIZE = 200_000
AGREED = HOP_SIZE - REWRITE_MARGIN


@pytest.mark.parametrize(
    ("own", "hop", "agreed"),
    [
        (26_214_400, None, 26_214_400),  # the next hop says no limit (or is not reached yet)
        (26_214_400, 10_240_000, 10_240_000 - REWRITE_MARGIN),  # Postfix's default
        (1_000_000, 10_240_000, 1_000_000),  # the own limit is the smaller
        (0, 10_240_000, 10_240_000 - REWRITE_MARGIN),  # no own limit
        (26_214_400, 1_000, 1),  # a next hop too small for any footer: everything refused
    ],
)
def test_the_smaller_limit_is_offered(own: int, hop: int | None, agreed: int) -> None:
    assert advertised_size(own, hop) == agreed


def session(port: int) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", port, timeout=10)
    client.ehlo("client.test")
    return client


@pytest.mark.sockets
async def test_optgate_offers_the_next_hops_size_and_refuses_more_at_mail_from(
    tmp_path: Path,
) -> None:
    async with sink(size=HOP_SIZE) as hop:
        config = gateway_config(tmp_path, hop.port)
        await seed(config)
        async with running(config) as gate:

            def talk() -> tuple[str, tuple[int, bytes], tuple[int, bytes]]:
                with session(gate.smtp_port) as client:
                    offered = client.esmtp_features["size"]
                    over = client.mail(SENDER, [f"SIZE={AGREED + 1}"])
                    client.rset()
                    under = client.mail(SENDER, [f"SIZE={AGREED}"])
                    return offered, over, under

            offered, over, under = await asyncio.to_thread(talk)
            big = message(body=("y" * 76 + "\n") * (AGREED // 77 + 10))
            refused = await send(gate.smtp_port, SENDER, [FAN], big)
            sent = await send(gate.smtp_port, SENDER, [FAN], message())
    assert offered == str(AGREED)
    assert over[0] == 552
    assert over[1].startswith(b"5.3.4")
    assert under[0] == 250
    assert (refused.code, refused.reply[:5]) == (552, "5.3.4")  # no SIZE=: after DATA
    assert sent.code == 250
    [copy] = hop.messages  # only the small one went out, saying its size
    assert [o for o in copy.mail_options if o.startswith("SIZE=")] == [f"SIZE={len(copy.data)}"]


@pytest.mark.sockets
async def test_a_copy_over_the_next_hops_size_is_refused_before_anything_is_sent() -> None:
    async with sink(size=1000) as hop:
        relay = Relay(
            "127.0.0.1",
            hop.port,
            size=2,
            timeout=5,
            starttls="never",
            local_hostname="optgate.test",
            idle_seconds=2,
            busy_seconds=1,
        )
        try:
            small = await relay.send(
                "a@sender.example", "b@rcpt.example", b"Subject: s\r\n\r\nhi\r\n"
            )
            big = await relay.send("a@sender.example", "b@rcpt.example", b"x" * 2000 + b"\r\n")
            assert await relay.size_limit() == 1000
        finally:
            await relay.close()
    assert small.delivered
    assert (big.code, big.message[:5]) == (552, "5.3.4")
    assert len(hop.messages) == 1


@pytest.mark.sockets
async def test_the_limit_follows_the_next_hop_on_later_ehlos(tmp_path: Path) -> None:
    """A next hop that is down at start: the own limit; once it answers, its SIZE."""
    async with sink(size=HOP_SIZE) as hop:
        port = hop.port
    config = gateway_config(tmp_path, port)
    async with running(config) as gate:

        def offered() -> str:
            with session(gate.smtp_port) as client:
                return str(client.esmtp_features["size"])

        before = await asyncio.to_thread(offered)
        async with sink(port, size=HOP_SIZE):
            after = await asyncio.to_thread(offered)
    assert before == str(config.smtp.max_message_size)
    assert after == str(AGREED)
