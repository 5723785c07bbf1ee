"""Classes by envelope ([policy] transactional_senders, _domains, _networks,
marketing_senders): mail without X-Optgate-Class from a password-reset sender is
delivered to people without consent; the header still wins; the client network is the
original client's (XFORWARD ADDR) when a content filter's Postfix names it."""

from __future__ import annotations

import asyncio
import ipaddress
import smtplib
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from gateway.outbound.policy import ClassRules, MessageClass
from gateway.runtime.service import running
from tests.support.people import FAN, GONE, STRANGER, seed
from tests.support.smtp import gateway_config, message, send, sink

pytestmark = pytest.mark.pure

RULES = ClassRules(
    transactional_senders=frozenset({"noreply@shop.example"}),
    transactional_domains=frozenset({"billing.example"}),
    transactional_networks=(ipaddress.ip_network("10.0.0.0/8"),),
    marketing_senders=frozenset({"news@billing.example"}),
)
T, M = MessageClass.TRANSACTIONAL, MessageClass.MARKETING


@pytest.mark.parametrize(
    ("mail_from", "client", "kind", "by"),
    [
        ("noreply@shop.example", None, T, "sender"),
        ("NoReply@Shop.Example", None, T, "sender"),  # envelope senders compare lower-cased
        ("news@shop.example", None, M, "default"),
        ("receipts@billing.example", None, T, "domain"),
        ("receipts@sub.billing.example", None, M, "default"),  # exact domains only
        ("news@billing.example", None, M, "sender"),  # the exception inside the domain
        ("news@billing.example", "10.1.2.3", M, "sender"),  # ... and the network
        ("app@anywhere.example", "10.1.2.3", T, "network"),
        ("app@anywhere.example", "192.0.2.1", M, "default"),
        ("", "192.0.2.1", M, "default"),  # the null sender
    ],
)
def test_the_most_specific_rule_classifies(
    mail_from: str, client: str | None, kind: MessageClass, by: str
) -> None:
    ip = ipaddress.ip_address(client) if client else None
    assert RULES.classify(mail_from, ip) == (kind, by)


@pytest.mark.sockets
async def test_a_password_reset_without_the_header_reaches_a_person_without_consent(
    tmp_path: Path,
) -> None:
    async with sink() as hop:
        config = gateway_config(
            tmp_path,
            hop.port,
            policy_transactional_senders="noreply@shop.example",
            policy_marketing_senders="news@shop.example",
        )
        await seed(config)
        async with running(config) as gate:
            with capture_logs() as logs:
                reset = await send(gate.smtp_port, "noreply@shop.example", [STRANGER], message())
            news = await send(
                gate.smtp_port, "news@shop.example", [STRANGER, FAN], message(message_id="<n@s>")
            )
            forced = await send(
                gate.smtp_port,
                "noreply@shop.example",
                [STRANGER],
                message(message_id="<f@s>", headers={"X-Optgate-Class": "marketing"}),
            )
    assert reset.code == news.code == forced.code == 250
    assert [m.rcpt_tos for m in hop.messages] == [[STRANGER], [FAN]]
    assert b"/u/" not in hop.messages[0].data  # transactional: no unsubscribe footer
    [line] = [e for e in logs if e["event"] == "recipient"]
    assert (line["verdict"], line["reason"], line["kind"], line["class_by"]) == (
        "keep",
        "transactional",
        "transactional",
        "sender",
    )


@pytest.mark.sockets
async def test_the_client_network_is_the_original_clients(tmp_path: Path) -> None:
    async with sink() as hop:
        config = gateway_config(tmp_path, hop.port, policy_transactional_networks="10.0.0.0/8")
        await seed(config)
        async with running(config) as gate:

            def talk() -> None:
                with smtplib.SMTP("127.0.0.1", gate.smtp_port, timeout=10) as client:
                    client.ehlo("postfix.test")
                    client.sendmail("app@shop.example", [STRANGER], message())  # from 127.0.0.1
                    client.docmd("XFORWARD", "ADDR=10.20.30.40")
                    client.sendmail("app@shop.example", [STRANGER], message(message_id="<2@s>"))

            await asyncio.to_thread(talk)
    [copy] = hop.messages
    assert b"Message-ID: <2@s>" in copy.data


@pytest.mark.sockets
async def test_reject_mode_does_not_refuse_a_transactional_sender_at_rcpt(tmp_path: Path) -> None:
    async with sink() as hop:
        config = gateway_config(
            tmp_path,
            hop.port,
            policy_action="reject",
            policy_transactional_domains="shop.example",
        )
        await seed(config)
        async with running(config) as gate:
            reset = await send(gate.smtp_port, "noreply@shop.example", [STRANGER], message())
            news = await send(gate.smtp_port, "news@sender.example", [STRANGER, GONE], message())
    assert reset.code == 250
    assert news.code == 550  # every recipient refused at RCPT, as before
    assert [m.rcpt_tos for m in hop.messages] == [[STRANGER]]
