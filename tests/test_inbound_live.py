"""Inbound mail through `optgate serve`, over real sockets: unsubscribe@, VERP bounces,
feedback-loop complaints, soft bounces, forged tokens, mixed transactions, LMTP."""

from __future__ import annotations

import asyncio
import email
import email.policy
import hashlib
import json
import re
import smtplib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from gateway.config import Config
from gateway.runtime.service import Running, running
from gateway.runtime.stores import open_configured
from suppression.address import normalize
from suppression.model import Reason
from tests.support.people import FAN, SENDER, seed
from tests.support.reports import arf, dsn, person
from tests.support.smtp import Sink, gateway_config, message, send

DOMAIN = "in.example.com"
UNSUBSCRIBE = f"unsubscribe@{DOMAIN}"
FBL = f"fbl@{DOMAIN}"
FORWARD = "fan.forwarded@elsewhere.example"  # where FAN's mail really ends up


@dataclass
class Live:
    gate: Running
    config: Config
    next_hop: Sink

    async def relay(self, rcpt: str = FAN) -> bytes:
        """Send a marketing message to a recipient; the copy the next hop received."""
        before = len(self.next_hop.to(rcpt))
        number = len(self.next_hop.messages)
        sent = await send(
            self.gate.smtp_port, SENDER, [rcpt], message(message_id=f"<m{number}@sender.example>")
        )
        assert sent.code == 250
        [*_, copy] = self.next_hop.to(rcpt)
        assert len(self.next_hop.to(rcpt)) == before + 1
        return copy.data

    def verp(self, rcpt: str = FAN) -> str:
        return self.next_hop.to(rcpt)[-1].mail_from

    async def inbound(self, mail_from: str, rcpt: str, data: bytes, port: int = 0) -> int:
        sent = await send(port or self.gate.smtp_port, mail_from, [rcpt], data)
        return sent.code

    async def suppressions(self, address: str) -> dict[str, Reason]:
        store = await open_configured(self.config, create=True)
        try:
            holder = await store.holder(normalize(address).sha256)
        finally:
            await store.close()
        return {s.scope: s.reason for s in holder.suppressions}


def config_for(tmp_path: Path, next_hop: Sink, **settings: str) -> Config:
    return gateway_config(
        tmp_path,
        next_hop.port,
        0,
        inbound_domains=DOMAIN,
        inbound_soft_bounce_limit="3",
        inbound_authserv_ids=f"mx.{DOMAIN}",
        **settings,
    )


def authentic(raw: bytes) -> bytes:
    """A person's mail as the own MTA hands it over: its DMARC verdict on top (RFC 8601);
    tests/test_optout_auth.py covers DKIM, SPF and forgeries."""
    return (
        f"Authentication-Results: mx.{DOMAIN}; dmarc=pass header.from=example.com\r\n".encode()
        + raw
    )


def links(next_hop: Sink, config: Config) -> list[str]:
    """The recipients of the confirmation links optgate mailed."""
    sender = config.unsubscribe.confirm_from
    return [m.rcpt_tos[0] for m in next_hop.messages if m.mail_from == sender]


@pytest.fixture
async def live(tmp_path: Path, next_hop: Sink) -> AsyncIterator[Live]:
    config = config_for(tmp_path, next_hop)
    await seed(config)
    async with running(config, ("smtp",)) as gate:
        yield Live(gate, config, next_hop)


def mailto_token(copy: bytes) -> str:
    parsed = email.message_from_bytes(copy, policy=email.policy.default)
    found = re.search(r"mailto:unsubscribe\+([a-z2-7]{40})@", str(parsed["List-Unsubscribe"]))
    assert found is not None
    return found.group(1)


async def test_authenticated_mail_to_unsubscribe_suppresses_its_author(live: Live) -> None:
    raw = authentic(person(sender=FAN, to=UNSUBSCRIBE))
    assert await live.inbound(FAN, UNSUBSCRIBE, raw) == 250
    assert await live.suppressions(FAN) == {"global": Reason.UNSUBSCRIBED}
    assert live.next_hop.messages == []  # never relayed


async def test_unauthenticated_mail_to_unsubscribe_is_held_for_a_link(live: Live) -> None:
    assert await live.inbound(FAN, UNSUBSCRIBE, person(sender=FAN, to=UNSUBSCRIBE)) == 250
    assert await live.suppressions(FAN) == {}
    assert links(live.next_hop, live.config) == [FAN]  # and nothing else went out
    assert len(live.next_hop.messages) == 1


async def test_mail_to_unsubscribe_plus_token_suppresses_the_tokens_recipient_in_its_scope(
    live: Live,
) -> None:
    token = mailto_token(await live.relay())
    # written from another account: the token, not the sender, says who opts out
    rcpt = f"unsubscribe+{token}@{DOMAIN}"
    assert await live.inbound(FORWARD, rcpt, person(sender=FORWARD, to=rcpt)) == 250
    assert await live.suppressions(FAN) == {"topic:marketing": Reason.UNSUBSCRIBED}
    assert await live.suppressions(FORWARD) == {}
    assert len(live.next_hop.messages) == 1  # the marketing copy only


async def test_an_mta_that_upper_cases_the_local_part_changes_nothing(live: Live) -> None:
    token = mailto_token(await live.relay())
    rcpt = f"UNSUBSCRIBE+{token.upper()}@{DOMAIN.upper()}"
    assert await live.inbound(FORWARD, rcpt, person(sender=FORWARD, to=rcpt)) == 250
    assert await live.suppressions(FAN) == {"topic:marketing": Reason.UNSUBSCRIBED}


async def test_a_dsn_to_the_verp_address_suppresses_the_right_recipient(live: Live) -> None:
    copy = await live.relay()
    verp = live.verp()
    assert verp.startswith(f"bounce+{mailto_token(copy)}@")
    # the bounce names where the mail was forwarded to; VERP knows it was FAN's copy
    bounce = dsn(
        copy, to=verp, recipient=FORWARD, status="5.1.1", diagnostic="550 5.1.1 No such user"
    )
    assert await live.inbound("", verp, bounce) == 250
    assert await live.suppressions(FAN) == {"global": Reason.BOUNCED}
    assert await live.suppressions(FORWARD) == {}
    metrics = live.gate.metrics.exposition().decode()
    assert 'optgate_inbound_total{outcome="hard_bounces"} 1.0' in metrics
    assert 'optgate_inbound_total{outcome="suppressed"} 1.0' in metrics
    after = message(message_id="<after@sender.example>")
    assert (await send(live.gate.smtp_port, SENDER, [FAN], after)).code == 250
    assert len(live.next_hop.to(FAN)) == 1  # the next one was dropped


async def test_a_policy_bounce_suppresses_nobody(live: Live) -> None:
    copy = await live.relay()
    verp = live.verp()
    bounce = dsn(
        copy,
        to=verp,
        recipient=FAN,
        status="5.7.1",
        diagnostic="550 5.7.1 Message rejected as spam by content filter",
    )
    assert await live.inbound("", verp, bounce) == 250
    assert await live.suppressions(FAN) == {}


async def test_an_arf_complaint_suppresses_the_recipient_its_original_names(live: Live) -> None:
    copy = await live.relay()
    assert await live.inbound("fbl@isp.example", FBL, arf(copy, to=FBL)) == 250
    assert await live.suppressions(FAN) == {"global": Reason.COMPLAINED}


async def test_a_not_spam_report_suppresses_nobody(live: Live) -> None:
    copy = await live.relay()
    report = arf(copy, to=FBL, feedback_type="not-spam")
    assert await live.inbound("fbl@isp.example", FBL, report) == 250
    assert await live.suppressions(FAN) == {}


async def test_soft_bounces_suppress_only_after_the_limit(live: Live) -> None:
    for attempt in range(3):
        copy = await live.relay()
        assert await live.suppressions(FAN) == {}, attempt
        bounce = dsn(
            copy,
            to=live.verp(),
            recipient=FAN,
            status="4.2.2",
            diagnostic="452 4.2.2 Mailbox full",
        )
        assert await live.inbound("", live.verp(), bounce) == 250
        assert await live.inbound("", live.verp(), bounce) == 250  # a retry counts once
    assert await live.suppressions(FAN) == {"global": Reason.BOUNCED}


async def test_a_forged_token_suppresses_nothing_and_is_logged(live: Live) -> None:
    token = mailto_token(await live.relay())
    forged = token[:-1] + ("a" if token[-1] != "a" else "b")
    rcpt = f"unsubscribe+{forged}@{DOMAIN}"
    with capture_logs() as logs:
        assert await live.inbound(FORWARD, rcpt, person(sender=FORWARD, to=rcpt)) == 250
    assert await live.suppressions(FAN) == {}
    assert await live.suppressions(FORWARD) == {}
    assert [e["problem"] for e in logs if e["event"] == "inbound_bad_token"] == [
        "bad token signature"
    ]


async def test_no_recipient_address_in_any_log_line(live: Live) -> None:
    with capture_logs() as logs:
        copy = await live.relay()
        token = mailto_token(copy)
        rcpt = f"unsubscribe+{token}@{DOMAIN}"
        await live.inbound(FORWARD, rcpt, person(sender=FORWARD, to=rcpt))
        verp = live.verp()
        await live.inbound(FAN, UNSUBSCRIBE, person(sender=FAN, to=UNSUBSCRIBE))  # held
        bounce = dsn(copy, to=verp, recipient=FAN, status="5.1.1", diagnostic="550 gone")
        await live.inbound("", verp, bounce)
        await live.inbound("fbl@isp.example", FBL, arf(copy, to=FBL))
    text = json.dumps(logs, default=str)
    assert text.count('"inbound_message"') == 4
    for address in (FAN, FORWARD, token):
        assert address not in text
    assert normalize(FAN).sha256[:16] in text


async def test_inbound_and_outbound_recipients_go_in_separate_transactions(live: Live) -> None:
    sent = await send(
        live.gate.smtp_port, FAN, [UNSUBSCRIBE, FAN], authentic(person(sender=FAN, to=UNSUBSCRIBE))
    )
    assert sent.code == 250
    assert sent.refused[FAN][0] == 452  # the client sends it again, in its own transaction
    assert live.next_hop.messages == []
    assert await live.suppressions(FAN) == {"global": Reason.UNSUBSCRIBED}


async def test_a_message_over_the_inbound_size_limit_is_refused(
    tmp_path: Path, next_hop: Sink
) -> None:
    config = config_for(tmp_path, next_hop, inbound_max_message_size="2000")
    async with running(config, ("smtp",)) as gate:
        big = person(sender=FAN, to=UNSUBSCRIBE, body=("x" * 70 + "\n") * 50)
        sent = await send(gate.smtp_port, FAN, [UNSUBSCRIBE], big)
    assert sent.code == 552
    assert await Live(gate, config, next_hop).suppressions(FAN) == {}


async def test_garbage_is_accepted_ignored_and_never_answered_by_mail(live: Live) -> None:
    binary = b"\r\n".join([bytes(range(14, 256))] * 40)
    for data in (b"\x00\xff garbage", b"Subject: x\r\n\r\n" + binary, binary):
        assert await live.inbound("", f"bounce+{'a' * 40}@{DOMAIN}", data) == 250
    assert live.next_hop.messages == []


async def test_own_lmtp_listener_answers_per_recipient_and_refuses_other_mail(
    tmp_path: Path, next_hop: Sink
) -> None:
    config = config_for(tmp_path, next_hop, inbound_listen="127.0.0.1:0", inbound_lmtp="true")
    data = authentic(person(sender=FAN, to=UNSUBSCRIBE))

    def lmtp(port: int) -> tuple[list[int], list[int]]:
        with smtplib.LMTP("127.0.0.1", port) as client:
            client.ehlo()  # LHLO
            client.mail(FAN)
            codes = [client.rcpt(r)[0] for r in (UNSUBSCRIBE, "other@example.com", FBL)]
            replies = [client.data(data)[0]]
            replies += [client.getreply()[0] for _ in range(codes.count(250) - 1)]
        return codes, replies

    async with running(config, ("smtp",)) as gate:
        assert gate.inbound_port
        codes, replies = await asyncio.to_thread(lmtp, gate.inbound_port)
    assert codes == [250, 550, 250]  # no relaying here
    assert replies == [250, 250]  # one per accepted recipient (RFC 2033)
    assert await Live(gate, config, next_hop).suppressions(FAN) == {"global": Reason.UNSUBSCRIBED}
    assert next_hop.messages == []


async def test_raw_messages_are_kept_only_when_configured(tmp_path: Path, next_hop: Sink) -> None:
    kept = tmp_path / "kept"
    kept.mkdir()
    config = config_for(tmp_path, next_hop, inbound_keep_raw=str(kept))
    data = person(sender=FAN, to=UNSUBSCRIBE)
    async with running(config, ("smtp",)) as gate:
        for _ in range(2):
            assert (await send(gate.smtp_port, FAN, [UNSUBSCRIBE], data)).code == 250
    [path] = kept.iterdir()
    assert path.name == f"{hashlib.sha256(data).hexdigest()}.eml"
    assert path.read_bytes() == data
    assert path.stat().st_mode & 0o777 == 0o600


async def test_reject_mode_never_refuses_an_inbound_address(tmp_path: Path, next_hop: Sink) -> None:
    config = config_for(tmp_path, next_hop, policy_action="reject")
    async with running(config, ("smtp",)) as gate:
        data = authentic(person(sender=FAN, to=UNSUBSCRIBE))
        sent = await send(gate.smtp_port, FAN, [UNSUBSCRIBE], data)
        refused = await send(gate.smtp_port, SENDER, ["nobody@example.com"], message())
    assert sent.code == 250
    assert refused.refused["nobody@example.com"][0] == 550  # outbound: no consent
    assert await Live(gate, config, next_hop).suppressions(FAN) == {"global": Reason.UNSUBSCRIBED}


async def test_authenticated_opt_outs_beyond_the_domains_hourly_limit_wait(
    tmp_path: Path, next_hop: Sink
) -> None:
    config = config_for(tmp_path, next_hop, inbound_optout_rate_authenticated="1")
    await seed(config)
    other = "other.person@example.com"
    async with running(config, ("smtp",)) as gate:
        first = await send(
            gate.smtp_port, FAN, [UNSUBSCRIBE], authentic(person(sender=FAN, to=UNSUBSCRIBE))
        )
        second = await send(
            gate.smtp_port, other, [UNSUBSCRIBE], authentic(person(sender=other, to=UNSUBSCRIBE))
        )
    assert (first.code, second.code) == (250, 451)  # example.com's one for this hour is used
    live = Live(gate, config, next_hop)
    assert await live.suppressions(FAN) == {"global": Reason.UNSUBSCRIBED}
    assert await live.suppressions(other) == {}
