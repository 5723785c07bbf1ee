"""Forged opt-outs change nothing (issue 14), with real mail: through `running` (SMTP and
web), a DNS server on loopback publishing DKIM keys, SPF and DMARC records, the recording
sink as next hop (it catches the confirmation mails) and real HTTP for the links."""

from __future__ import annotations

import asyncio
import email
import email.policy
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from gateway.config import Config
from gateway.runtime.service import Running, running
from gateway.runtime.stores import open_configured
from suppression.address import normalize
from suppression.model import Consent, Reason, now
from tests.support.dns import DnsServer, dns_server
from tests.support.people import FAN, SENDER, seed
from tests.support.reports import arf, dsn
from tests.support.senders import (
    ATTACKER,
    AUTHOR_DOMAIN,
    INBOUND_DOMAIN,
    UNSUBSCRIBE,
    key,
    request,
    signed,
    zone,
)
from tests.support.smtp import Received, Sink, gateway_config, message, send, sink
from tests.support.tiers import needs

pytestmark = pytest.mark.sockets

DOMAIN = INBOUND_DOMAIN
LINK = re.compile(r"https://unsub\.example\.com(/r/[A-Za-z0-9_-]{43})")


async def scopes(config: Config, address: str) -> dict[str, tuple[Reason, str]]:
    """The address's suppressions: scope -> (reason, source)."""
    store = await open_configured(config)
    try:
        holder = await store.holder(normalize(address).sha256)
    finally:
        await store.close()
    return {s.scope: (s.reason, s.source) for s in holder.suppressions}


UNSUBSCRIBED = {"global": (Reason.UNSUBSCRIBED, "mailbox")}
# what a customer's mail system returns: the original's headers, no optgate token in them
RETURNED = f"From: news@sender.example\r\nTo: {FAN}\r\nSubject: Hello\r\n\r\n".encode()


@dataclass
class Gate:
    running: Running
    config: Config
    hop: Sink
    dns: DnsServer
    http: aiohttp.ClientSession

    async def send(self, raw: bytes, mail_from: str = FAN, rcpt: str = UNSUBSCRIBE) -> int:
        return (await send(self.running.smtp_port, mail_from, [rcpt], raw)).code

    async def scopes(self, address: str) -> dict[str, tuple[Reason, str]]:
        return await scopes(self.config, address)

    def links(self, address: str) -> list[Received]:
        return [
            m for m in self.hop.to(address) if m.mail_from == self.config.unsubscribe.confirm_from
        ]

    def path(self, mail: Received) -> str:
        parsed = email.message_from_bytes(mail.data, policy=email.policy.default)
        body = parsed.get_body()
        assert body is not None
        found = LINK.search(body.get_content())
        assert found is not None
        return found.group(1)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.running.web_port}{path}"

    async def get(self, path: str) -> tuple[int, str]:
        async with self.http.get(self.url(path)) as response:
            return response.status, await response.text()

    async def post(self, path: str, data: dict[str, str] | None = None) -> tuple[int, str]:
        async with self.http.post(self.url(path), data=data or {}) as response:
            return response.status, await response.text()


@pytest.fixture
@needs("sockets")
async def hop() -> AsyncIterator[Sink]:
    async with sink() as recorder:
        yield recorder


async def start(tmp_path: Path, hop: Sink, dns: DnsServer, **settings: str) -> Config:
    config = gateway_config(
        tmp_path,
        hop.port,
        0,
        inbound_domains=DOMAIN,
        inbound_dns_servers=f"127.0.0.1:{dns.port}",
        **settings,
    )
    await seed(config)
    return config


@pytest.fixture
async def gate(tmp_path: Path, hop: Sink) -> AsyncIterator[Gate]:
    async with dns_server(zone()) as dns:
        config = await start(tmp_path, hop, dns)
        async with running(config) as gateway, aiohttp.ClientSession() as http:
            yield Gate(gateway, config, hop, dns, http)


async def confirms_by_link(gate: Gate, address: str) -> None:
    """One link mailed to the address; its GET changes nothing, its POST suppresses."""
    [mail] = gate.links(address)
    assert mail.rcpt_tos == [address]
    path = gate.path(mail)
    status, page = await gate.get(path)
    assert status == 200
    assert "Unsubscribe me" in page
    assert await gate.scopes(address) == {}  # a link scanner's GET is harmless
    status, page = await gate.post(path)
    assert (status, "You are unsubscribed" in page) == (200, True)
    assert await gate.scopes(address) == UNSUBSCRIBED
    status, page = await gate.post(path)  # once only: a second click changes nothing
    assert (status, "You are unsubscribed" in page) == (200, True)
    status, page = await gate.get(path)
    assert "Unsubscribe me" not in page
    forged = path[:-4] + ("aaaa" if not path.endswith("aaaa") else "bbbb")
    assert (await gate.post(forged))[0] == 400  # a guessed link: "Nothing was changed"


async def test_a_dkim_signed_request_counts_at_once(gate: Gate) -> None:
    assert await gate.send(signed(request())) == 250
    assert await gate.scopes(FAN) == UNSUBSCRIBED
    assert gate.hop.messages == []  # nothing mailed, nothing relayed


@pytest.mark.parametrize(
    "forged",
    [
        # a forged From on a message the author's domain signed: the signature breaks
        lambda: signed(request("someone@example.com")).replace(
            b"From: A Person <someone@example.com>", f"From: A Person <{FAN}>".encode()
        ),
        # a broken signature: the body changed after signing
        lambda: signed(request()).replace(b"\r\nstop\r\n", b"\r\nstop it\r\n"),
        # a genuine signature whose d= is not aligned with the From domain
        lambda: signed(request(), ATTACKER),
        # nothing signed at all, the envelope sender the victim's too
        lambda: request(),
        # signed by the author's domain, but for another recipient: a replay
        lambda: signed(request(to="friend@example.net")),
    ],
    ids=["forged-from", "broken-signature", "unaligned-d", "unsigned", "replayed"],
)
async def test_an_unauthenticated_request_is_held_until_its_link_is_pressed(
    gate: Gate, forged: object
) -> None:
    raw = forged()  # type: ignore[operator]
    assert await gate.send(raw) == 250
    assert await gate.scopes(FAN) == {}
    await confirms_by_link(gate, FAN)


async def test_the_same_held_request_again_mails_no_second_link(gate: Gate) -> None:
    raw = request()
    assert await gate.send(raw) == 250
    assert await gate.send(raw) == 250  # a retry of the same message
    assert len(gate.links(FAN)) == 1


async def test_an_apple_one_click_mail_to_fbl_is_held_too(gate: Gate) -> None:
    raw = request(to=f"fbl@{DOMAIN}", headers=("X-Apple-Unsubscribe: true",))
    assert await gate.send(raw, rcpt=f"fbl@{DOMAIN}") == 250
    assert await gate.scopes(FAN) == {}
    await confirms_by_link(gate, FAN)


async def test_a_request_for_an_address_optgate_never_knew_mails_nothing(gate: Gate) -> None:
    assert await gate.send(request("nobody@example.com"), "nobody@example.com") == 250
    assert gate.hop.messages == []
    assert await gate.scopes("nobody@example.com") == {}


async def test_aligned_spf_counts_when_optgate_sees_the_sending_mta(
    tmp_path: Path, hop: Sink
) -> None:
    records = zone() | {(AUTHOR_DOMAIN, "TXT"): ['"v=spf1 ip4:127.0.0.1 -all"']}
    async with dns_server(records) as dns:
        # no trusted relays: the peer (127.0.0.1) is the sending MTA itself
        config = await start(tmp_path, hop, dns, inbound_trusted_relays="")
        async with running(config, ("smtp",)) as gateway:
            port = gateway.smtp_port
            assert (await send(port, f"mailer@{ATTACKER}", [UNSUBSCRIBE], request())).code == 250
            held = [m for m in hop.messages if m.rcpt_tos == [FAN]]
            assert len(held) == 1  # MAIL FROM not aligned with From: SPF does not count
            other = request(body="stop, really")
            assert (await send(port, "me@example.com", [UNSUBSCRIBE], other)).code == 250
    assert await scopes(config, FAN) == UNSUBSCRIBED
    assert len(hop.messages) == 1


async def test_spf_behind_a_trusted_relay_takes_the_client_its_received_field_names(
    tmp_path: Path, hop: Sink
) -> None:
    async with dns_server(zone()) as dns:
        config = await start(tmp_path, hop, dns)  # 127.0.0.1 is a trusted relay (Postfix)
        received = (
            "Received: from mail.example.com (mail.example.com [192.0.2.25]) "
            f"by mx.{DOMAIN} (Postfix) with ESMTPS id 4Xy; Sun, 29 Nov 2026 02:00:01 +0000",
        )
        forged = ("Received: from mail.example.com (mail.example.com [192.0.2.25]) by nowhere",)
        async with running(config, ("smtp",)) as gateway:
            port = gateway.smtp_port
            # written by the sender below the relay's own field: not believed
            below = ("Received: from relay.attacker.example ([203.0.113.9]) by mx", *forged)
            assert (await send(port, FAN, [UNSUBSCRIBE], request(headers=below))).code == 250
            assert len(hop.messages) == 1
            assert (await send(port, FAN, [UNSUBSCRIBE], request(headers=received))).code == 250
    assert await scopes(config, FAN) == UNSUBSCRIBED


@pytest.mark.parametrize(
    ("fields", "counts"),
    [
        ((f"Authentication-Results: mx.{DOMAIN}; dmarc=pass header.from=example.com",), True),
        ((f"Authentication-Results: mx.{DOMAIN}; dkim=pass header.d=mail.example.com",), True),
        ((f"Authentication-Results: mx.{DOMAIN}; dkim=pass header.d=example.net",), False),
        (
            ("Authentication-Results: mx.elsewhere.example; dmarc=pass header.from=example.com",),
            False,
        ),
        (  # the trusted field on top says fail; the pass below it came with the message
            (
                f"Authentication-Results: mx.{DOMAIN}; dmarc=fail header.from=example.com",
                f"Authentication-Results: mx.{DOMAIN}; dmarc=pass header.from=example.com",
            ),
            False,
        ),
    ],
    ids=["dmarc-pass", "dkim-aligned", "dkim-unaligned", "other-authserv-id", "added-before"],
)
async def test_the_own_mtas_authentication_results_are_believed_alone(
    tmp_path: Path, hop: Sink, fields: tuple[str, ...], counts: bool
) -> None:
    async with dns_server(zone()) as dns:
        config = await start(tmp_path, hop, dns, inbound_authserv_ids=f"mx.{DOMAIN}")
        async with running(config, ("smtp",)) as gateway:
            code = (await send(gateway.smtp_port, FAN, [UNSUBSCRIBE], request(headers=fields))).code
    assert code == 250
    suppressed = await scopes(config, FAN) == UNSUBSCRIBED
    assert (suppressed, len(hop.messages)) == (counts, 0 if counts else 1)


async def test_a_flood_of_forged_requests_suppresses_nobody_and_mails_within_the_limit(
    gate: Gate,
) -> None:
    customers = [f"customer{i}@example.com" for i in range(200)]
    store = await open_configured(gate.config)
    try:
        consents = [
            Consent(normalize(c).sha256, "marketing", True, "test", now()) for c in customers
        ]
        await store.record_consents(consents, actor="test")
    finally:
        await store.close()

    # all from one client, as the own MTA (Postfix on loopback) recorded it
    relayed = (f"Received: from evil.example (evil.example [203.0.113.7]) by mx.{DOMAIN}",)

    async def forge(customer: str) -> int:
        return await gate.send(request(customer, headers=relayed), customer)

    codes = []
    # a few SMTP sessions at a time: clients and gateway share the default thread pool
    for start_at in range(0, 200, 3):
        batch = customers[start_at : start_at + 3]
        codes += await asyncio.gather(*(forge(c) for c in batch))
    limit = gate.config.inbound.optout_rate_client  # 20 an hour: the tightest one here
    assert codes.count(250) == limit
    assert codes.count(451) == 200 - limit  # the sender may try again next hour
    assert len(gate.hop.messages) == limit  # confirmation links, nothing else
    for customer in customers:
        assert await gate.scopes(customer) == {}


async def test_a_forged_dsn_stops_marketing_only_and_the_customer_lifts_it(gate: Gate) -> None:
    port = gate.running.smtp_port
    marketing = message(message_id="<m1@sender.example>")
    assert (await send(port, SENDER, [FAN], marketing)).code == 250  # optgate mailed FAN
    # a DSN anyone could write: to plain bounce@ (no VERP token), naming FAN
    forged = dsn(RETURNED, to=f"bounce@{DOMAIN}", recipient=FAN, status="5.1.1", diagnostic="550")
    assert await gate.send(forged, "", f"bounce@{DOMAIN}") == 250
    assert await gate.scopes(FAN) == {"global": (Reason.BOUNCED, "unverified-bounce")}

    reset = message(
        subject="Your password reset",
        headers={"X-Optgate-Class": "transactional"},
        message_id="<reset@sender.example>",
    )
    assert (await send(port, SENDER, [FAN], reset)).code == 250
    assert len(gate.hop.to(FAN)) == 2  # the password reset went out
    again = message(message_id="<m2@sender.example>")
    assert (await send(port, SENDER, [FAN], again)).code == 250
    assert len(gate.hop.to(FAN)) == 2  # marketing did not

    # anyone may ask for a lift link; it goes to FAN's own mailbox only
    status, page = await gate.post("/lift", {"address": FAN})
    assert (status, "Check your inbox" in page) == (200, True)
    status, same = await gate.post("/lift", {"address": "stranger@example.com"})
    assert (status, same) == (200, page)  # the asker learns nothing
    [link] = gate.links(FAN)
    path = gate.path(link)
    assert "Send me your e-mail again" in (await gate.get(path))[1]
    assert await gate.scopes(FAN) != {}
    assert (await gate.post(path))[0] == 200
    assert await gate.scopes(FAN) == {}
    assert (await send(port, SENDER, [FAN], message(message_id="<m3@sender.example>"))).code == 250
    assert len([m for m in gate.hop.to(FAN) if m.mail_from != link.mail_from]) == 3


async def test_a_forged_complaint_is_lifted_on_the_preference_page(gate: Gate) -> None:
    port = gate.running.smtp_port
    assert (await send(port, SENDER, [FAN], message())).code == 250
    [copy] = gate.hop.to(FAN)
    report = arf(RETURNED, to=f"fbl@{DOMAIN}")  # names FAN by the original's To, no token
    assert await gate.send(report, "fbl@isp.example", f"fbl@{DOMAIN}") == 250
    assert await gate.scopes(FAN) == {"global": (Reason.COMPLAINED, "unverified-complaint")}
    # the preference link of FAN's own copy
    parsed = email.message_from_bytes(copy.data, policy=email.policy.default)
    token = re.search(r"/u/([A-Za-z0-9_-]+)", str(parsed["List-Unsubscribe"]))
    assert token is not None
    prefs = f"/p/{token.group(1)}"
    status, page = await gate.get(prefs)
    assert "Resubscribe to everything" in page
    status, _ = await gate.post(prefs, {"action": "resubscribe-all"})
    assert status == 200
    assert await gate.scopes(FAN) == {}


@pytest.mark.parametrize(("dmarc", "counts"), [("p=reject", True), ("p=reject; adkim=s", False)])
async def test_a_subdomains_signature_counts_unless_dmarc_asks_for_strict_alignment(
    tmp_path: Path, hop: Sink, dmarc: str, counts: bool
) -> None:
    signer = f"mail.{AUTHOR_DOMAIN}"
    records = zone() | {
        (f"s1._domainkey.{signer}", "TXT"): [key(signer)[1]],
        (f"_dmarc.{AUTHOR_DOMAIN}", "TXT"): [f'"v=DMARC1; {dmarc}"'],
    }
    async with dns_server(records) as dns:
        config = await start(tmp_path, hop, dns)
        async with running(config, ("smtp",)) as gateway:
            raw = signed(request(), signer)
            assert (await send(gateway.smtp_port, FAN, [UNSUBSCRIBE], raw)).code == 250
    assert (await scopes(config, FAN) == UNSUBSCRIBED) is counts
    assert len(hop.messages) == (0 if counts else 1)
