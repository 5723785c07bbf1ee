"""8bit parts made 7bit before signing when the next hop lacks 8BITMIME (RFC 6152).

Unit tests of gateway.outbound.downgrade on hand-written messages and the corpus, then the
relay against a sink without 8BITMIME, then the whole way through a real Postfix
that converts 8-bit mail itself (its next hop lacks 8BITMIME too), verified with
OpenDKIM's opendkim-testmsg.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import re
from email.message import Message
from pathlib import Path

import dkim
import pytest

from gateway.config import Config
from gateway.keygen import generate, private_pem, record_value, write_private
from gateway.outbound.downgrade import to_seven_bit
from gateway.runtime.service import running
from tests.support import corpus
from tests.support.people import FAN, SENDER, seed
from tests.support.postfix import PostfixPorts, postfix_available, private_postfix
from tests.support.smtp import gateway_config, send, sink
from tests.test_rewrite import children
from tests.test_signing import run_opendkim

pytestmark = pytest.mark.pure

DOMAIN, SELECTOR = "sender.example", "s1"
LINE = re.compile(rb"\r\n|\r|\n")
UMLAUTS = "Grüße aus Köln: Straße, Öl, Ähre, 5 € — naïve café\n"
PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kg\r\n"
    "AAAABJRU5ErkJggg==\r\n"
)


def parse(data: bytes) -> Message:
    return email.message_from_bytes(data, policy=email.policy.compat32)


def body(data: bytes) -> bytes:
    return re.split(rb"\r?\n\r?\n", data, maxsplit=1)[1]


def leaves(message: Message) -> list[Message]:
    """The leaves of a message, message/rfc822 parts opened, signed parts not."""
    if message.get_content_type() in ("multipart/signed", "multipart/encrypted"):
        return []
    if message.is_multipart():
        return [leaf for part in children(message) for leaf in leaves(part)]
    return [message]


def decoded(part: Message) -> bytes:
    payload = part.get_payload(decode=True)
    assert isinstance(payload, bytes)
    text = part.get_content_maintype() == "text"
    return payload.replace(b"\r\n", b"\n") if text else payload


def check_seven_bit(original: bytes, out: bytes) -> None:
    """Every leaf decodes as before; the body outside signed parts is 7bit data."""
    before, after = parse(original), parse(out)
    assert [p.get_content_type() for p in before.walk()] == [
        p.get_content_type() for p in after.walk()
    ]
    for old, new in zip(leaves(before), leaves(after), strict=True):
        assert decoded(old) == decoded(new)
        if new.get_content_type() != "message/rfc822":
            raw = new.get_payload(decode=False)
            assert isinstance(raw, str)
            data = raw.encode("latin-1", "surrogateescape") if raw.isascii() else b"\x80"
            assert data.isascii()
            assert max(map(len, LINE.split(data))) <= 998


def test_a_7bit_message_comes_back_as_the_same_object() -> None:
    message = b"Subject: s\r\nContent-Type: text/plain\r\n\r\nplain ASCII\r\n"
    assert to_seven_bit(message) is message


def test_an_8bit_text_part_becomes_quoted_printable() -> None:
    original = (
        "Subject: s\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Transfer-Encoding: 8bit\r\n\r\n{UMLAUTS}"
    ).encode()
    out = to_seven_bit(original)
    assert b"Content-Transfer-Encoding: quoted-printable\r\n" in out
    assert b"8bit" not in out
    assert out.isascii()
    assert b"Gr=C3=BC=C3=9Fe" in out
    check_seven_bit(original, out)


MIXED = (
    "Subject: mixed\r\nMIME-Version: 1.0\r\n"
    'Content-Type: multipart/mixed; boundary="b"\r\nContent-Transfer-Encoding: 8bit\r\n\r\n'
    "--b\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"  # no field: 7bit, but 8-bit data
    f"<html><body>{UMLAUTS}</body></html>\r\n"
    f"--b\r\nContent-Type: image/png\r\nContent-Transfer-Encoding: base64\r\n\r\n{PNG}"
    "--b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary\r\n\r\n"
).encode() + (
    b"\x00\x01\xff\xfe binary \r\n\x80"
    b"\r\n--b\r\nContent-Type: message/rfc822\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    b"Subject: inner\r\nContent-Type: text/plain; charset=iso-8859-1\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n\r\nGr\xfc\xdfe\r\n"
    b"--b\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: 7bit\r\n\r\n"
    + b"long " * 300
    + b"\r\n--b--\r\n"
)


def test_every_kind_of_leaf_in_a_multipart() -> None:
    out = to_seven_bit(MIXED)
    check_seven_bit(MIXED, out)
    top, *_ = out.split(b"\r\n\r\n", 1)
    assert b"Content-Transfer-Encoding: 7bit" in top  # the multipart's own field
    html, _, binary, forwarded, long = children(parse(out))
    assert html["Content-Transfer-Encoding"] == "quoted-printable"  # a field was added
    assert binary["Content-Transfer-Encoding"] == "base64"
    assert forwarded["Content-Transfer-Encoding"] == "7bit"
    (inner,) = children(forwarded)
    assert inner["Content-Transfer-Encoding"] == "quoted-printable"
    assert long["Content-Transfer-Encoding"] == "quoted-printable"  # a 1,500-octet line
    assert PNG.encode() in out  # untouched, byte for byte
    assert body(out).isascii()


def test_multipart_signed_is_left_alone() -> None:
    signed = (
        b'Content-Type: multipart/signed; boundary="s"; protocol="application/pgp-signature"\r\n'
        b"\r\n--s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit"
        b"\r\n\r\nGr\xc3\xbc\xc3\x9fe\r\n--s\r\nContent-Type: application/pgp-signature\r\n\r\n"
        b"sig\r\n--s--\r\n"
    )
    assert to_seven_bit(signed) == signed


@pytest.mark.parametrize("path", corpus.sweep(corpus.messages()[::3]))
def test_corpus_messages_decode_as_before(path: Path) -> None:
    original = path.read_bytes()
    check_seven_bit(original, to_seven_bit(original))


# --- through the relay -------------------------------------------------------------------


def eight_bit_message() -> bytes:
    return (
        "From: News <news@sender.example>\r\nTo: fan@example.com\r\nSubject: Grüße\r\n"
        "Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <8bit@sender.example>\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Transfer-Encoding: 8bit\r\n\r\n{UMLAUTS}"
    ).encode()


def signed_config(tmp_path: Path, next_port: int, listen_port: int = 0) -> tuple[Config, str]:
    key = generate("rsa")
    write_private(tmp_path / "rsa.pem", private_pem(key))
    entry = f"{DOMAIN}:{SELECTOR}:rsa:{tmp_path / 'rsa.pem'}"
    return gateway_config(tmp_path, next_port, listen_port, dkim_keys=entry), record_value(key)


@pytest.mark.parametrize("eight_bit", [True, False], ids=["8bitmime", "no-8bitmime"])
@pytest.mark.sockets
async def test_the_relay_sends_7bit_only_to_a_next_hop_without_8bitmime(
    tmp_path: Path, eight_bit: bool
) -> None:
    async with sink(eight_bit=eight_bit) as hop:
        config, record = signed_config(tmp_path, hop.port)
        await seed(config)
        async with running(config) as gate:
            sent = await send(gate.smtp_port, SENDER, [FAN], eight_bit_message(), ["BODY=8BITMIME"])
    assert sent.code == 250
    (copy,) = hop.messages
    assert body(copy.data).isascii() is not eight_bit
    assert ("BODY=8BITMIME" in copy.mail_options) is eight_bit
    text = email.message_from_bytes(copy.data, policy=email.policy.default).get_body()
    assert text is not None
    assert UMLAUTS.strip() in text.get_content()

    def dns(name: bytes, timeout: int = 5) -> bytes:
        return record.encode() if name == f"{SELECTOR}._domainkey.{DOMAIN}.".encode() else b""

    assert dkim.verify(copy.data, dnsfunc=dns)


@pytest.mark.sockets
@pytest.mark.postfix
@pytest.mark.root
async def test_dkim_survives_a_postfix_that_converts_8bit_for_its_next_hop(
    tmp_path: Path,
) -> None:
    assert postfix_available(), "Postfix is not installed: see .ci/run"
    ports = PostfixPorts.pick()
    config, record = signed_config(tmp_path, ports.reinject, ports.filter_port)
    await seed(config)
    # neither Postfix's reinjection port (optgate's next hop) nor the final hop offers
    # 8BITMIME (nor SMTPUTF8, which implies it for Postfix): Postfix converts 8-bit mail
    # to quoted-printable on its way out (disable_mime_output_conversion = no, its
    # default), under optgate's signature
    lacking = {
        "smtpd_discard_ehlo_keywords": "8bitmime",
        "smtp_discard_ehlo_keywords": "8bitmime, smtputf8",
    }
    async with sink(ports.relayhost, eight_bit=False) as final, running(config):
        with private_postfix(ports, tmp_path / "postfix", extra_main=lacking) as postfix:
            sent = await send(ports.smtpd, SENDER, [FAN], eight_bit_message())
            assert sent.code == 250
            await asyncio.wait_for(final.wait_for(1), 30)
            await asyncio.to_thread(postfix.wait_queue_empty, 30)
    (copy,) = final.messages
    assert b"DKIM-Signature:" in copy.data
    assert body(copy.data).isascii()
    results = run_opendkim(
        tmp_path / "opendkim", {"copy": copy.data}, {f"{SELECTOR}._domainkey.{DOMAIN}": record}
    )
    assert results == {"copy": ""}, results
