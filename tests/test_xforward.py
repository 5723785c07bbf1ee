"""XFORWARD (Postfix's XFORWARD_README): optgate's main listener takes the original
client from a content filter's Postfix (501 for garbage, 503 inside a transaction,
reset with each transaction) and passes it on to a next hop that offers it."""

from __future__ import annotations

import asyncio
import smtplib
from pathlib import Path

import pytest

from gateway.runtime.service import running
from gateway.smtp.client import Connection
from gateway.smtp.xforward import BadXforward, Forwarded, parse_xforward
from tests.support.people import FAN, SENDER, seed
from tests.support.smtp import gateway_config, message, sink

pytestmark = pytest.mark.pure


def test_attributes_are_decoded_from_xtext_and_checked() -> None:
    given = parse_xforward(
        "name=mail.client.example ADDR=IPV6:2001:db8::1 PORT=4711 PROTO=ESMTP "
        "HELO=[UNAVAILABLE] IDENT=4Fq+2BxY SOURCE=REMOTE"
    )
    assert given == {
        "NAME": "mail.client.example",
        "ADDR": "IPV6:2001:db8::1",
        "PORT": "4711",
        "PROTO": "ESMTP",
        "HELO": "[UNAVAILABLE]",
        "IDENT": "4Fq+xY",
        "SOURCE": "REMOTE",
    }


@pytest.mark.parametrize(
    "arg",
    [
        "",
        "NAME",
        "USER=alice",
        "ADDR=10.0.0.300",
        "ADDR=[10.0.0.1]",
        "PORT=65536",
        "PORT=http",
        "NAME=bad_host!",
        "HELO=a+0Ab",  # a control character, encoded
        "HELO=a+20b",  # a space, encoded
        "NAME=a+4",  # not xtext
        "SOURCE=SOMEWHERE",
        "IDENT=a<b",
        "NAME=" + "a" * 256,
    ],
)
def test_garbage_is_refused(arg: str) -> None:
    with pytest.raises(BadXforward):
        parse_xforward(arg)


def test_the_first_command_sets_the_rest_unavailable_and_later_ones_update() -> None:
    first = Forwarded.start(parse_xforward("ADDR=10.1.2.3 NAME=client.example"))
    later = first.update(parse_xforward("HELO=helo.example"))
    assert dict(later.attributes) == {
        "NAME": "client.example",
        "ADDR": "10.1.2.3",
        "PORT": "[UNAVAILABLE]",
        "PROTO": "[UNAVAILABLE]",
        "HELO": "helo.example",
        "IDENT": "[UNAVAILABLE]",
        "SOURCE": "[UNAVAILABLE]",
    }
    assert str(later.client_ip) == "10.1.2.3"


def test_commands_carry_only_what_the_next_hop_offers_within_512_octets() -> None:
    long_name = ".".join(["a" * 60] * 4)
    forwarded = Forwarded.start({"NAME": long_name, "HELO": long_name, "ADDR": "10.0.0.1"})
    commands = forwarded.commands(frozenset({"NAME", "ADDR", "HELO"}))
    assert all(len(c) <= 510 for c in commands)
    assert len(commands) == 2
    words = b" ".join(c.removeprefix(b"XFORWARD ") for c in commands).split()
    assert sorted(w.split(b"=")[0] for w in words) == [b"ADDR", b"HELO", b"NAME"]
    assert Forwarded.start({"IDENT": "a+b"}).commands(frozenset({"IDENT"})) == [
        b"XFORWARD IDENT=a+2Bb"
    ]


@pytest.mark.sockets
async def test_optgate_takes_xforward_and_passes_it_on_once_per_transaction(
    tmp_path: Path,
) -> None:
    async with sink(xforward=True) as hop:
        config = gateway_config(tmp_path, hop.port)
        await seed(config)
        async with running(config) as gate:

            def talk() -> dict[str, object]:
                seen: dict[str, object] = {}
                with smtplib.SMTP("127.0.0.1", gate.smtp_port, timeout=10) as client:
                    client.ehlo("postfix.test")
                    seen["offered"] = client.esmtp_features.get("xforward")
                    seen["garbage"] = client.docmd("XFORWARD", "ADDR=999.1.1.1")
                    seen["ok"] = client.docmd("XFORWARD", "NAME=app.example ADDR=10.9.8.7")
                    seen["ok2"] = client.docmd("XFORWARD", "PORT=2525 IDENT=ABC123 PROTO=ESMTP")
                    client.mail(SENDER)
                    seen["inside"] = client.docmd("XFORWARD", "NAME=late.example")
                    client.rcpt(FAN)
                    client.data(message())
                    # the next transaction has none of it: the session's own client
                    client.sendmail(SENDER, [FAN], message(message_id="<m2@sender.example>"))
                return seen

            seen = await asyncio.to_thread(talk)
    assert seen["offered"] == "NAME ADDR PORT PROTO HELO IDENT SOURCE"
    assert seen["garbage"] == (501, b"5.5.4 Bad XFORWARD command: bad ADDR syntax")
    assert seen["ok"][0] == seen["ok2"][0] == 250  # type: ignore[index]
    assert seen["inside"][0] == 503  # type: ignore[index]
    first, second = hop.messages
    assert first.xforward == [
        "NAME=app.example ADDR=10.9.8.7 PORT=2525 PROTO=ESMTP HELO=[UNAVAILABLE] "
        "IDENT=ABC123 SOURCE=[UNAVAILABLE]"
    ]
    [own] = second.xforward
    assert own.startswith("NAME=[UNAVAILABLE] ADDR=127.0.0.1 PORT=")
    assert "HELO=postfix.test" in own


@pytest.mark.sockets
async def test_a_next_hop_without_xforward_gets_none(tmp_path: Path) -> None:
    async with sink() as hop:
        config = gateway_config(tmp_path, hop.port)
        await seed(config)
        async with running(config) as gate:

            def talk() -> None:
                with smtplib.SMTP("127.0.0.1", gate.smtp_port, timeout=10) as client:
                    client.ehlo("postfix.test")
                    assert client.docmd("XFORWARD", "ADDR=10.9.8.7")[0] == 250
                    client.sendmail(SENDER, [FAN], message())

            await asyncio.to_thread(talk)
    assert [m.xforward for m in hop.messages] == [[]]


@pytest.mark.parametrize("pipelining", [True, False])
@pytest.mark.sockets
async def test_a_refused_xforward_does_not_stop_the_copy(pipelining: bool) -> None:
    """As Postfix's client: the next hop's log lacks the client, the copy still goes."""
    seen: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 hop.test\r\n")
        await reader.readline()
        extra = b"250-PIPELINING\r\n" if pipelining else b""
        writer.write(b"250-hop.test\r\n" + extra + b"250 XFORWARD NAME ADDR\r\n")
        replies = [b"550 5.7.0 Error: insufficient authorization", b"250 ok", b"250 ok", b"354 go"]
        for reply in replies:
            seen.append(await reader.readline())
            if not pipelining or reply.startswith(b"354"):
                writer.write(b"\r\n".join(replies if pipelining else [reply]) + b"\r\n")
        while await reader.readline() not in (b".\r\n", b""):
            pass
        writer.write(b"250 queued\r\n")
        await reader.readline()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        connection = await Connection.open(
            "127.0.0.1", port, seconds=5, local_hostname="optgate.test", starttls="never"
        )
        forwarded = Forwarded.start({"ADDR": "10.0.0.1", "HELO": "app.test"})
        await connection.start("a@sender.example", "b@rcpt.example", xforward=forwarded)
        connection.write_content(b"Subject: hi\r\n\r\nhello\r\n", end=True)
        reply = await connection.end_reply()
        connection.close()
    finally:
        server.close()
        await server.wait_closed()
    assert reply.code == 250
    assert seen[0] == b"XFORWARD NAME=[UNAVAILABLE] ADDR=10.0.0.1\r\n"  # only what is offered
    assert seen[1].startswith(b"MAIL FROM:<a@sender.example>")
