"""XFORWARD (Postfix's XFORWARD_README): optgate's main listener takes the original
client from a content filter's Postfix (501 for garbage, 503 inside a transaction,
reset with each transaction) and passes it on to a next hop that offers it."""

from __future__ import annotations

import asyncio
import smtplib
from pathlib import Path

import pytest

from gateway.service import running
from gateway.xforward import BadXforward, Forwarded, parse_xforward
from tests.support.people import FAN, SENDER, seed
from tests.support.smtp import gateway_config, message, sink


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
