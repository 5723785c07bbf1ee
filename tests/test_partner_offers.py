"""Partner offers end to end: SMTP AUTH + STARTTLS in, fan-out to consenting recipients out."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import smtplib
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from email import message_from_bytes
from email.policy import default
from pathlib import Path

import aiohttp
import pytest

from gateway.config import Config, Partners
from gateway.keys import load_keys
from gateway.partners.fanout import compose
from gateway.runtime.service import Running, running
from gateway.runtime.stores import open_configured
from gateway.tokens import TokenSigner
from suppression.address import normalize
from suppression.errors import ConfigError
from suppression.model import ImportItem, Ledger, Reason, now
from suppression.partners import Offer, OfferState
from suppression.scope import Scope
from tests.support.partners import add_partner, consenting, submit, until_done
from tests.support.smtp import Sink, gateway_config, self_signed

pytestmark = pytest.mark.pure

FANS = ["ann@example.com", "bob@example.com", "cy@example.com"]
GONE = "gone@example.com"  # consented, then unsubscribed from everything
NOT_ACME = "listed@example.com"  # on acme's own md5 suppression list
NO_PARTNERS = "enough@example.com"  # said "no more partner offers"
MARKETING_ONLY = "news-only@example.com"  # consented to marketing, not to partner offers
AUDIENCE = b"offer@partners.example.com"


def offer(subject: str = "A fine offer", extra: str = "") -> bytes:
    return (
        "From: Acme Deals <deals@acme.example>\r\n"
        "To: someone@acme.example\r\n"
        "Reply-To: crm@acme.example\r\n"
        f"Subject: {subject}\r\n"
        "Message-ID: <campaign-7@acme.example>\r\n"
        "X-Acme-Tracking: visitor-4711\r\n"
        "List-Unsubscribe: <https://acme.example/unsub?u={{email}}>\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"{extra}"
        "\r\n"
        "Dear {{email}}, *|EMAIL|* see https://acme.example/p.gif?to={{email}}\r\n"
    ).encode()


def partner_config(tmp_path: Path, next_hop: Sink, **settings: str) -> Config:
    """The partner listener on a free port; ``settings`` override or add to it."""
    defaults = {
        "partners_listen": "127.0.0.1:0",
        "partners_audience_domain": "partners.example.com",
        "partners_sender": "offers@example.com",
        "partners_rate_per_hour": "3",
        "partners_max_message_size": "20000",
        "inbound_domains": "example.com",  # VERP: bounces come back to optgate
    }
    return gateway_config(tmp_path, next_hop.port, 0, **{**defaults, **settings})


@pytest.fixture
def config(tmp_path: Path, next_hop: Sink) -> Config:
    return partner_config(tmp_path, next_hop)


@pytest.fixture
async def gate(config: Config) -> AsyncIterator[Running]:
    async with running(config) as started:
        yield started


async def seed(config: Config) -> str:
    secret = await add_partner(config)
    await consenting(config, [*FANS, GONE, NOT_ACME, NO_PARTNERS])
    await consenting(config, [MARKETING_ONLY], "marketing")
    store = await open_configured(config, create=True)
    try:
        gone, enough = normalize(GONE), normalize(NO_PARTNERS)
        for address, scope in ((gone, "global"), (enough, "topic:partner-offers")):
            item = ImportItem(address.sha256, "sha256", None, Reason.UNSUBSCRIBED)
            await store.suppress([item], scope=scope, source="web", actor="test")
    finally:
        await store.close()
    await import_partner_list(config, [NOT_ACME])
    return secret


async def import_partner_list(config: Config, addresses: list[str]) -> None:
    """acme's own suppression list, as the MD5 file affiliate networks exchange,
    imported the way an operator does it."""
    listing = Path(config.unsubscribe.key_file).with_name("acme.md5")
    listing.write_text("".join(f"{normalize(a).md5}\n" for a in addresses))
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPTGATE_")}
    env["OPTGATE_STORE_URL"] = config.store.url
    env["OPTGATE_STORE_AUDIT_KEY_FILE"] = config.store.audit_key_file
    command = [str(Path(sys.prefix) / "bin" / "optgate"), "suppress", "import", str(listing)]
    await asyncio.to_thread(
        subprocess.run,
        [*command, "--format", "md5", "--scope", "partner:acme"],
        env=env,
        check=True,
        capture_output=True,
    )


async def test_an_offer_reaches_each_consenting_unsuppressed_recipient_once(
    config: Config, gate: Running, next_hop: Sink
) -> None:
    secret = await seed(config)
    sent = await submit(gate.partners_port, "acme", secret, offer())
    assert sent.code == 250
    assert re.fullmatch(r"2\.0\.0 Offer \d+ accepted", sent.reply)
    [status] = await until_done(config)
    assert (status.audience, status.sent, status.suppressed) == (6, 3, 3)
    assert sorted(r for m in next_hop.messages for r in m.rcpt_tos) == sorted(FANS)
    signer = TokenSigner(load_keys(Path(config.unsubscribe.key_file)))
    for received in next_hop.messages:
        # bounces go to optgate (VERP, a short token of the partner scope), never the partner
        verp = re.fullmatch(r"bounce\+([a-z2-7]{40})@example\.com", received.mail_from)
        assert verp is not None
        assert signer.verify_short(verp.group(1)).kind == "partner"
        copy = message_from_bytes(received.data, policy=default)
        assert copy["From"] == "acme via Example Ltd <offers@example.com>"
        assert copy["Subject"] == "A fine offer"
        for gone in ("Reply-To", "X-Acme-Tracking"):
            assert copy[gone] is None
        assert "acme.example" not in str(copy["List-Unsubscribe"])
        assert "acme.example" not in received.data.decode().split("\r\n\r\n")[0]
        token = re.search(r"/u/([A-Za-z0-9_-]+)>", str(copy["List-Unsubscribe"]))
        assert token is not None
        claims = signer.verify(token.group(1))
        assert claims.scope == Scope.partner("acme")
        assert claims.recipient == normalize(received.rcpt_tos[0]).sha256
        body = received.data.decode()
        assert "Dear {{email}}, *|EMAIL|*" in body  # placeholders never filled in
        assert received.rcpt_tos[0] not in body
        assert "An offer from acme, sent by Example Ltd" in body
    # the send ledger has each copy (so `optgate report compliance` sees partner mail too)
    store = await open_configured(config, create=True)
    try:
        people = [normalize(a) for a in [*FANS, GONE]]
        ledger = Ledger(f"offer-{status.id}", now() - timedelta(hours=1))
        facts = await store.lookup_many(people, ["global"], None, ledger)
    finally:
        await store.close()
    assert [facts[p.sha256].delivered for p in people] == [True, True, True, False]


async def test_a_copy_deferred_past_the_retry_time_fails_and_the_offer_finishes(
    tmp_path: Path, next_hop: Sink
) -> None:
    # every deferral is past the retry time
    config = partner_config(tmp_path, next_hop, partners_retry_hours="0")
    next_hop.fail_rcpt[FANS[0]] = ["451 4.2.0 mailbox busy"] * 10
    async with running(config) as gate:
        secret = await seed(config)
        assert (await submit(gate.partners_port, "acme", secret, offer())).code == 250
        [status] = await until_done(config)
    assert (status.sent, status.bounced, status.pending) == (2, 1, 0)
    assert sorted(r for m in next_hop.messages for r in m.rcpt_tos) == sorted(FANS[1:])


async def test_the_audience_topic_narrows_the_audience(
    config: Config, gate: Running, next_hop: Sink
) -> None:
    secret = await seed(config)
    await consenting(config, FANS[:2], "travel")
    by_address = await submit(
        gate.partners_port, "acme", secret, offer(), rcpt="offer+travel@partners.example.com"
    )
    assert by_address.code == 250
    by_header = await submit(
        gate.partners_port, "acme", secret, offer(extra="X-Optgate-Audience: travel\r\n")
    )
    assert by_header.code == 250
    first, second = await until_done(config)
    assert (first.topic, first.sent, second.topic, second.sent) == ("travel", 2, "travel", 2)
    assert sorted(r for m in next_hop.messages for r in m.rcpt_tos) == sorted(FANS[:2] * 2)


async def test_bad_submissions_are_refused_and_store_nothing(
    config: Config, gate: Running, next_hop: Sink
) -> None:
    secret = await seed(config)
    port = gate.partners_port
    plain = await submit(port, "acme", secret, offer(), tls=False)
    assert plain.code == 0  # AUTH is not even offered before STARTTLS
    wrong = await submit(port, "acme", secret + "x", offer())
    assert (wrong.code, wrong.reply) == (535, "5.7.8 Authentication credentials invalid")
    nobody = await submit(port, "nobody", secret, offer())
    assert nobody.code == 535
    elsewhere = await submit(port, "acme", secret, offer(), rcpt="ann@example.com")
    assert elsewhere.code == 550
    assert elsewhere.reply.startswith("5.7.1 Partners send to offer@partners.example.com")
    big = await submit(port, "acme", secret, offer(extra="X-Pad: x\r\n" * 3000))
    assert big.code == 552
    bad_topic = await submit(port, "acme", secret, offer(extra="X-Optgate-Audience: No!\r\n"))
    assert bad_topic.code == 550
    store = await open_configured(config, create=True)
    try:
        assert await store.offer_statuses("acme") == []
        await store.disable_partner("acme", actor="test")
    finally:
        await store.close()
    disabled = await submit(port, "acme", secret, offer())
    assert disabled.code == 535
    assert next_hop.messages == []


async def test_too_many_auth_attempts_from_one_address_get_454(
    tmp_path: Path, next_hop: Sink
) -> None:
    config = partner_config(tmp_path, next_hop, partners_auth_per_minute="3")
    async with running(config) as gate:
        secret = await seed(config)
        # smtplib tries PLAIN, then LOGIN: a refused login is two attempts
        first = await submit(gate.partners_port, "acme", secret + "x", offer())
        assert first.code == 535
        second = await submit(gate.partners_port, "acme", secret + "x", offer())
        assert (second.code, second.reply) == (
            454,
            "4.7.0 Too many authentication attempts, try again later",
        )
        # the right credential waits its turn too: guessing is what is slowed down
        assert (await submit(gate.partners_port, "acme", secret, offer())).code == 454
    assert next_hop.messages == []


async def test_a_partner_over_its_rate_gets_450(config: Config, gate: Running) -> None:
    secret = await seed(config)
    codes = [(await submit(gate.partners_port, "acme", secret, offer())).code for _ in range(4)]
    assert codes == [250, 250, 250, 450]


def unsubscribe_path(received: bytes) -> str:
    copy = message_from_bytes(received, policy=default)
    link = re.search(r"<https://unsub\.example\.com(/u/[^>]+)>", str(copy["List-Unsubscribe"]))
    assert link is not None
    return link.group(1)


async def test_the_two_unsubscribe_choices_stop_the_next_offer(
    config: Config, gate: Running, next_hop: Sink
) -> None:
    secret = await seed(config)
    assert (await submit(gate.partners_port, "acme", secret, offer())).code == 250
    await until_done(config)
    ann, bob = (unsubscribe_path(next_hop.to(a)[0].data) for a in FANS[:2])
    web = f"http://127.0.0.1:{gate.web_port}"
    async with aiohttp.ClientSession() as http:
        async with http.get(web + ann) as page:
            text = await page.text()
        assert "offers Example Ltd sends on behalf of acme" in text
        assert "No more offers from any partner" in text
        # ann: no more offers from any partner (the page's second button)
        async with http.post(
            web + ann.replace("/u/", "/p/"),
            data={"action": "unsubscribe", "topic": "partner-offers"},
        ) as response:
            assert response.status == 200
        # bob: one-click from the List-Unsubscribe header, no more from acme
        async with http.post(web + bob, data={"List-Unsubscribe": "One-Click"}) as response:
            assert response.status == 200
    assert (await submit(gate.partners_port, "acme", secret, offer("Again"))).code == 250
    _, second = await until_done(config)
    assert (second.sent, second.unsubscribed) == (1, 0)
    assert [len(next_hop.to(a)) for a in FANS] == [1, 1, 2]
    first, _ = await until_done(config)
    assert first.unsubscribed == 1  # bob, from acme; ann left all partners, not acme alone


def raw_exchange(port: int, lines: list[bytes]) -> list[bytes]:
    """Plain-text SMTP, one reply line per command (after the greeting and EHLO)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        replies = conn.makefile("rb")
        replies.readline()
        conn.sendall(b"EHLO partner.test\r\n")
        while replies.readline()[3:4] == b"-":
            pass
        answers = []
        for line in lines:
            conn.sendall(line + b"\r\n")
            answers.append(replies.readline().rstrip())
        return answers


async def test_nothing_but_starttls_before_tls(config: Config, gate: Running) -> None:
    secret = await seed(config)
    plain = base64.b64encode(f"\0acme\0{secret}".encode())
    answers = await asyncio.to_thread(
        raw_exchange,
        gate.partners_port,
        [b"AUTH PLAIN " + plain, b"MAIL FROM:<p@acme.example>", b"RCPT TO:<" + AUDIENCE + b">"],
    )
    assert all(a.startswith(b"530") for a in answers), answers


async def test_implicit_tls_and_a_configured_certificate(tmp_path: Path, next_hop: Sink) -> None:
    self_signed(tmp_path)  # writes cert.pem and key.pem (CN sink.test)
    config = gateway_config(
        tmp_path,
        next_hop.port,
        partners_listen="127.0.0.1:0",
        partners_tls="implicit",
        partners_tls_cert=str(tmp_path / "cert.pem"),
        partners_tls_key=str(tmp_path / "key.pem"),
    )
    secret = await seed(config)

    def work(port: int) -> tuple[str, tuple[int, bytes]]:
        context = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
        context.check_hostname = False
        with smtplib.SMTP_SSL("127.0.0.1", port, context=context, timeout=10) as client:
            client.login("acme", secret)
            assert isinstance(client.sock, ssl.SSLSocket)
            peer = client.sock.getpeercert()
            assert peer is not None
            client.mail("p@acme.example")
            client.rcpt(AUDIENCE.decode())
            return str(peer["subject"]), client.data(offer())

    async with running(config) as gate:
        subject, (code, reply) = await asyncio.to_thread(work, gate.partners_port)
        assert "sink.test" in subject
        assert (code, reply.split()[0]) == (250, b"2.0.0")
        await until_done(config)
    assert len(next_hop.messages) == len(FANS)
    # without [inbound] domains there is no VERP: the envelope sender is [partners] sender
    assert {m.mail_from for m in next_hop.messages} == {"offers@example.com"}


async def test_a_missing_certificate_is_a_config_error(tmp_path: Path, next_hop: Sink) -> None:
    config = gateway_config(
        tmp_path,
        next_hop.port,
        partners_listen="127.0.0.1:0",
        partners_tls_cert=str(tmp_path / "nope.pem"),
        partners_tls_key=str(tmp_path / "nope.key"),
    )
    with pytest.raises(ConfigError, match=r"\[partners\] tls_cert / tls_key"):
        async with running(config):
            pass
    half = gateway_config(
        tmp_path, next_hop.port, partners_listen="127.0.0.1:0", partners_tls_cert="x.pem"
    )
    with pytest.raises(ConfigError, match="set both or neither"):
        async with running(half):
            pass


@pytest.mark.parametrize("newline", [b"\r\n", b"\n"])
def test_a_field_line_the_header_block_does_not_take_stays_body_text(newline: bytes) -> None:
    # an obsolete "Name : value" line ends the partner's fields; without an empty line
    # after our fields it would become a field of the copy (a read receipt to the partner)
    content = newline.join(
        [b"Subject: offer", b"Disposition-Notification-To : spy@partner.example", b"", b"Hi"]
    )
    offer = Offer(1, "acme", None, content, OfferState.QUEUED, now())
    raw = compose(offer, Partners(), "Example Ltd")
    head, body = re.split(rb"\r?\n\r?\n", raw, maxsplit=1)
    assert b"Subject: offer" in head
    assert b"Disposition-Notification-To" not in head
    assert body.startswith(b"Disposition-Notification-To : spy@partner.example")
