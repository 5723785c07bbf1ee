"""The gatekeeper end to end: smtplib client -> optgate -> recording sink, real sockets."""

from __future__ import annotations

import asyncio
import email
import email.policy
import re
import socket
from pathlib import Path

import pytest
import structlog

from gateway.config import Config
from gateway.keys import load_keys
from gateway.runtime.service import Running, running
from gateway.runtime.stores import open_configured
from gateway.tokens import TokenSigner
from suppression.address import normalize
from suppression.model import Consent, ImportItem, Reason, now
from suppression.scope import Scope
from tests.support.people import BOUNCED, FAN, GONE, SENDER, STRANGER, seed
from tests.support.smtp import Sink, gateway_config, message, send, sink

pytestmark = pytest.mark.pure


def parsed(data: bytes) -> email.message.EmailMessage:
    result = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(result, email.message.EmailMessage)
    return result


async def test_consented_recipient_gets_a_personal_copy_others_are_dropped(
    gate: Running, next_hop: Sink, config: Config
) -> None:
    sent = await send(gate.smtp_port, SENDER, [FAN, GONE, STRANGER, BOUNCED], message())

    assert sent.code == 250
    assert [m.rcpt_tos for m in next_hop.messages] == [[FAN]]
    copy = parsed(next_hop.messages[0].data)
    unsubscribe = copy["List-Unsubscribe"]
    assert copy["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    match = re.fullmatch(
        r"<https://unsub\.example\.com/u/([A-Za-z0-9_-]+)>,\s*"
        r"<mailto:unsubscribe\+([A-Za-z0-9_-]+)@example\.com>",
        unsubscribe,
    )
    assert match is not None, unsubscribe
    claims = TokenSigner(load_keys(Path(config.unsubscribe.key_file))).verify(match.group(1))
    assert claims.recipient == normalize(FAN).sha256
    assert claims.scope == Scope.topic("marketing")
    assert f"https://unsub.example.com/u/{match.group(1)}" in copy.get_content()
    assert copy["List-Id"] == "marketing <marketing.lists.example.com>"
    assert FAN not in unsubscribe


async def consent_to(config: Config, address: str, purpose: str = "marketing") -> None:
    store = await open_configured(config, create=True)
    try:
        record = Consent(normalize(address).sha256, purpose, True, "test", now())
        await store.record_consents([record], actor="test")
    finally:
        await store.close()


async def test_each_recipient_gets_its_own_token(
    gate: Running, next_hop: Sink, config: Config
) -> None:
    await consent_to(config, "two@example.com")
    await send(gate.smtp_port, SENDER, [FAN, "two@example.com"], message())
    links = {parsed(m.data)["List-Unsubscribe"] for m in next_hop.messages}
    assert len(next_hop.messages) == 2
    assert len(links) == 2


async def test_control_headers_are_removed_and_topic_is_honoured(
    gate: Running, next_hop: Sink
) -> None:
    headers = {"X-Optgate-Topic": "deals", "X-Optgate-Class": "marketing"}
    sent = await send(gate.smtp_port, SENDER, [FAN], message(headers=headers))
    assert sent.code == 250
    # FAN consented to "marketing", not "deals": dropped
    assert next_hop.messages == []


async def test_transactional_mail_ignores_opt_outs_but_not_hard_bounces(
    gate: Running, next_hop: Sink
) -> None:
    data = message(headers={"X-Optgate-Class": "transactional"})
    sent = await send(gate.smtp_port, SENDER, [GONE, STRANGER, BOUNCED], data)
    assert sent.code == 250
    assert sorted(r for m in next_hop.messages for r in m.rcpt_tos) == [GONE, STRANGER]
    for received in next_hop.messages:
        assert b"X-Optgate-Class" not in received.data
        assert b"List-Unsubscribe" not in received.data  # exempt: no opt-out links
        assert received.data == message()  # byte for byte, less the control header


async def test_unknown_class_is_refused_with_a_clear_reply(gate: Running, next_hop: Sink) -> None:
    sent = await send(gate.smtp_port, SENDER, [FAN], message(headers={"X-Optgate-Class": "spam"}))
    assert sent.code == 550
    assert "X-Optgate-Class" in sent.reply
    assert next_hop.messages == []


async def test_temporary_next_hop_failure_gives_451_and_retry_never_duplicates(
    gate: Running, next_hop: Sink, config: Config
) -> None:
    await consent_to(config, "two@example.com")
    next_hop.fail_rcpt["two@example.com"] = ["451 4.3.0 try later"]
    data = message(message_id="<retry@sender.example>")

    first = await send(gate.smtp_port, SENDER, [FAN, "two@example.com"], data)
    assert first.code == 451
    assert [m.rcpt_tos for m in next_hop.messages] == [[FAN]]

    second = await send(gate.smtp_port, SENDER, [FAN, "two@example.com"], data)
    assert second.code == 250
    assert len(next_hop.to(FAN)) == 1
    assert len(next_hop.to("two@example.com")) == 1


async def test_permanent_next_hop_refusal_carries_its_reason(gate: Running, next_hop: Sink) -> None:
    next_hop.fail_next.append("554 5.7.1 relay says no")
    sent = await send(gate.smtp_port, SENDER, [FAN], message())
    assert sent.code == 554
    assert "relay says no" in sent.reply


@pytest.mark.sockets
async def test_next_hop_down_gives_451(tmp_path: Path) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        dead_port = unused.getsockname()[1]
    config = gateway_config(tmp_path, dead_port)
    await seed(config)
    async with running(config) as gate:
        sent = await send(gate.smtp_port, SENDER, [FAN], message())
    assert sent.code == 451


async def test_reject_mode_refuses_opted_out_recipients_at_rcpt(
    tmp_path: Path, next_hop: Sink
) -> None:
    config = gateway_config(tmp_path, next_hop.port, policy_action="reject")
    await seed(config)
    async with running(config) as gate:
        sent = await send(gate.smtp_port, SENDER, [FAN, GONE, "not an address"], message())
    assert sent.code == 250
    assert sent.refused[GONE][0] == 550
    assert b"opted out" in sent.refused[GONE][1]
    assert b"unsubscribed" not in sent.refused[GONE][1]
    assert [m.rcpt_tos for m in next_hop.messages] == [[FAN]]


async def reply(reader: asyncio.StreamReader) -> tuple[int, list[bytes]]:
    """One SMTP reply: its code and its lines' text."""
    lines = [await reader.readline()]
    while lines[-1][3:4] == b"-":
        lines.append(await reader.readline())
    return int(lines[0][:3]), [line[4:].strip() for line in lines]


async def test_a_client_may_pipeline_its_envelope_and_gets_every_reply_in_order(
    tmp_path: Path, next_hop: Sink
) -> None:
    config = gateway_config(tmp_path, next_hop.port, policy_action="reject")
    await seed(config)
    data = message()
    assert not data.startswith(b".")
    assert b"\n." not in data
    async with running(config) as gate:
        reader, writer = await asyncio.open_connection("127.0.0.1", gate.smtp_port)
        assert (await reply(reader))[0] == 220
        writer.write(b"EHLO client.example\r\n")
        code, offered = await reply(reader)
        assert code == 250
        assert b"PIPELINING" in offered
        # the whole envelope in one write, as Postfix sends it once PIPELINING is offered
        writer.write(
            f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{FAN}>\r\nRCPT TO:<{GONE}>\r\nDATA\r\n".encode()
        )
        assert [(await reply(reader))[0] for _ in range(4)] == [250, 250, 550, 354]
        writer.write(data + b".\r\nQUIT\r\n")
        assert [(await reply(reader))[0] for _ in range(2)] == [250, 221]
        writer.close()
    assert [m.rcpt_tos for m in next_hop.messages] == [[FAN]]


async def test_clients_outside_allowed_networks_are_refused_at_connect(
    tmp_path: Path, next_hop: Sink
) -> None:
    config = gateway_config(tmp_path, next_hop.port, smtp_allowed_clients="192.0.2.0/24")
    async with running(config) as gate:
        with pytest.raises(Exception, match="554"):
            await send(gate.smtp_port, SENDER, [FAN], message())
    assert next_hop.messages == []


async def test_size_and_recipient_limits(tmp_path: Path, next_hop: Sink) -> None:
    config = gateway_config(
        tmp_path, next_hop.port, smtp_max_message_size="2000", smtp_max_recipients="2"
    )
    await seed(config)
    async with running(config) as gate:
        big = await send(gate.smtp_port, SENDER, [FAN], message(body="x" * 3000))
        many = await send(gate.smtp_port, SENDER, [FAN, GONE, STRANGER], message())
    assert big.code == 552
    assert many.refused[STRANGER][0] == 452


async def test_smtputf8_and_8bit_bodies_pass_intact(
    gate: Running, next_hop: Sink, config: Config
) -> None:
    rcpt = "jörg@exämple.de"
    await consent_to(config, rcpt)
    body = "Grüße aus Köln: 8-bit UTF-8, not encoded.\n"
    data = message(body=body)
    sent = await send(gate.smtp_port, SENDER, [rcpt], data, ["SMTPUTF8", "BODY=8BITMIME"])
    assert sent.code == 250
    received = next_hop.messages[0]
    assert received.rcpt_tos == [rcpt]
    assert "SMTPUTF8" in received.mail_options
    assert "BODY=8BITMIME" in received.mail_options
    assert body.rstrip().encode() in received.data


async def test_logs_name_recipients_only_by_hash(gate: Running, next_hop: Sink) -> None:
    with structlog.testing.capture_logs() as logs:
        await send(gate.smtp_port, SENDER, [FAN, GONE, STRANGER], message())
    decisions = [e for e in logs if e["event"] == "recipient"]
    assert {e["verdict"] for e in decisions} == {"keep", "drop"}
    assert {e["reason"] for e in decisions} == {"consented", "unsubscribed", "no-consent"}
    text = repr(logs)
    for address in (FAN, GONE, STRANGER):
        assert address not in text
        assert address.split("@")[0] not in text


async def test_parallel_sessions_all_get_through(gate: Running, next_hop: Sink) -> None:
    import asyncio

    data = [message(message_id=f"<p{n}@sender.example>") for n in range(20)]
    sent = await asyncio.gather(*(send(gate.smtp_port, SENDER, [FAN], d) for d in data))
    assert [s.code for s in sent] == [250] * 20
    assert len(next_hop.to(FAN)) == 20


async def test_compliance_report_finds_mail_relayed_after_an_opt_out(
    gate: Running,
    next_hop: Sink,
    config: Config,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import asyncio
    from datetime import timedelta

    from gateway.cli.main import main

    monkeypatch.setenv("OPTGATE_STORE_URL", config.store.url)
    monkeypatch.setenv("OPTGATE_STORE_AUDIT_KEY_FILE", config.store.audit_key_file)
    await send(gate.smtp_port, SENDER, [FAN], message())
    assert await asyncio.to_thread(main, ["report", "compliance"]) == 0
    assert "2 opt-out(s), 0 with marketing mail relayed after" in capsys.readouterr().out

    # an opt-out dated an hour before that delivery: the report must flag it
    store = await open_configured(config, create=True)
    fan = normalize(FAN)
    before = ImportItem(fan.sha256, "sha256", None, Reason.UNSUBSCRIBED, now() - timedelta(hours=1))
    await store.suppress([before], scope="topic:marketing", source="import", actor="test")
    await store.close()
    assert await asyncio.to_thread(main, ["report", "compliance"]) == 1
    out = capsys.readouterr().out
    assert f"VIOLATION {fan.sha256[:16]} topic:marketing unsubscribed" in out
    assert "1 message(s) after, the last 1.0 h later" in out
    assert FAN not in out


async def test_sessions_beyond_the_limit_get_421_and_a_freed_slot_is_reused(
    tmp_path: Path, next_hop: Sink
) -> None:
    import asyncio

    config = gateway_config(tmp_path, next_hop.port, smtp_max_sessions="1")
    async with running(config) as gate:
        first_reader, first_writer = await asyncio.open_connection("127.0.0.1", gate.smtp_port)
        assert (await first_reader.readline()).startswith(b"220")
        second_reader, second_writer = await asyncio.open_connection("127.0.0.1", gate.smtp_port)
        assert (await second_reader.readline()).startswith(b"421 4.7.0")
        assert await second_reader.read() == b""  # and closed
        second_writer.close()
        first_writer.write(b"QUIT\r\n")
        await first_writer.drain()
        assert (await first_reader.readline()).startswith(b"221")
        first_writer.close()
        await first_writer.wait_closed()
        await asyncio.sleep(0.05)
        third_reader, third_writer = await asyncio.open_connection("127.0.0.1", gate.smtp_port)
        assert (await third_reader.readline()).startswith(b"220")
        third_writer.close()


@pytest.mark.sockets
async def test_relay_uses_starttls_when_the_next_hop_offers_it(tmp_path: Path) -> None:
    from tests.support.smtp import self_signed

    async with sink(tls=self_signed(tmp_path)) as secure:
        config = gateway_config(tmp_path, secure.port)
        await seed(config)
        async with running(config) as gate:
            sent = await send(gate.smtp_port, SENDER, [FAN], message())
    assert sent.code == 250
    assert [m.tls for m in secure.messages] == [True]


@pytest.mark.sockets
async def test_with_starttls_never_a_hop_that_requires_tls_refuses_and_the_sender_is_told(
    tmp_path: Path,
) -> None:
    from tests.support.smtp import self_signed

    async with sink(tls=self_signed(tmp_path)) as secure:
        config = gateway_config(tmp_path, secure.port, relay_starttls="never")
        await seed(config)
        async with running(config) as gate:
            sent = await send(gate.smtp_port, SENDER, [FAN], message())
    assert sent.code in (451, 554)  # the hop refuses plaintext; the sender is told
    assert secure.messages == []


async def test_metrics_count_messages_and_decisions_without_addresses(
    gate: Running, next_hop: Sink
) -> None:
    await send(gate.smtp_port, SENDER, [FAN, GONE, STRANGER], message())
    text = gate.metrics.exposition().decode()
    assert 'optgate_messages_total{reply="2xx"} 1.0' in text
    assert 'optgate_recipients_total{reason="consented",verdict="keep"} 1.0' in text
    assert 'optgate_recipients_total{reason="unsubscribed",verdict="drop"} 1.0' in text
    assert 'optgate_recipients_total{reason="no-consent",verdict="drop"} 1.0' in text
    assert "optgate_store_lookup_seconds_count 1.0" in text
    assert "@" not in text
