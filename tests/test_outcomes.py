"""Per-recipient outcomes: LMTP replies, 250 and a DSN on SMTP, the ledger's skip."""

from __future__ import annotations

import email
import email.policy
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.config import Config
from gateway.runtime.service import Running, running
from gateway.runtime.stores import open_configured
from suppression.address import normalize
from suppression.model import Consent, now
from tests.support.dialog_client import transaction
from tests.support.people import FAN, SENDER, STRANGER, seed
from tests.support.smtp import Sink, gateway_config, message

OTHER = "other@example.com"
REFUSED = "refused@example.com"


async def consent(config: Config, *addresses: str) -> None:
    store = await open_configured(config, create=True)
    try:
        records = [
            Consent(normalize(a).sha256, "marketing", True, "test", now()) for a in addresses
        ]
        await store.record_consents(records, actor="test")
    finally:
        await store.close()


@pytest.fixture
def lmtp_config(tmp_path: Path, next_hop: Sink) -> Config:
    return gateway_config(tmp_path, next_hop.port, smtp_lmtp="true")


@pytest.fixture
async def lmtp_gate(lmtp_config: Config) -> AsyncIterator[Running]:
    await seed(lmtp_config)
    await consent(lmtp_config, OTHER, REFUSED)
    async with running(lmtp_config) as running_gate:
        yield running_gate


async def test_lmtp_answers_each_recipient_after_data(lmtp_gate: Running, next_hop: Sink) -> None:
    next_hop.fail_rcpt[REFUSED] = ["550 5.1.1 no such user"]
    next_hop.fail_rcpt[OTHER] = ["451 4.3.0 try later"]
    replies = await transaction(
        lmtp_gate.smtp_port, SENDER, [FAN, REFUSED, OTHER, STRANGER], message(), lmtp=True
    )
    assert [r[:3] for r in replies] == ["250", "554", "451", "250"]
    assert "no such user" in replies[1]
    assert "not relayed by policy" in replies[3]
    assert [m.rcpt_tos for m in next_hop.messages] == [[FAN]]
    # the client retries the deferred one only: it goes out, the delivered one is not resent
    again = await transaction(lmtp_gate.smtp_port, SENDER, [FAN, OTHER], message(), lmtp=True)
    assert [r[:3] for r in again] == ["250", "250"]
    assert "already delivered" in again[0]
    assert [m.rcpt_tos for m in next_hop.messages] == [[FAN], [OTHER]]


@pytest.fixture
async def smtp_gate(config: Config) -> AsyncIterator[Running]:
    await seed(config)
    await consent(config, OTHER, REFUSED)
    async with running(config) as running_gate:
        yield running_gate


async def test_smtp_partial_refusal_is_250_and_a_dsn_to_the_sender(
    smtp_gate: Running, next_hop: Sink
) -> None:
    next_hop.fail_rcpt[REFUSED] = ["554 5.7.1 refused by policy"]
    [reply] = await transaction(smtp_gate.smtp_port, SENDER, [FAN, REFUSED, OTHER], message())
    assert reply.startswith("250"), reply
    assert "1 refused" in reply
    copies = [m for m in next_hop.messages if m.rcpt_tos != [SENDER]]
    assert sorted(r for m in copies for r in m.rcpt_tos) == [FAN, OTHER]
    [dsn] = next_hop.to(SENDER)
    assert dsn.mail_from in {"", "<>"}  # the null sender
    report = email.message_from_bytes(dsn.data, policy=email.policy.default)
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    parts = list(report.iter_parts())
    status = parts[1]
    assert status.get_content_type() == "message/delivery-status"
    blocks = status.get_payload()
    assert isinstance(blocks, list)
    fields = [dict(block.items()) for block in blocks if isinstance(block, email.message.Message)]
    recipients = [f for f in fields if "Final-Recipient" in f]
    assert [f["Final-Recipient"] for f in recipients] == [f"rfc822; {REFUSED}"]
    assert recipients[0]["Action"] == "failed"
    assert recipients[0]["Status"] == "5.7.1"
    assert "554" in recipients[0]["Diagnostic-Code"]
    assert FAN not in dsn.data.decode()


async def test_no_dsn_for_a_null_sender_and_all_refused_is_554(
    smtp_gate: Running, next_hop: Sink
) -> None:
    next_hop.fail_rcpt[REFUSED] = ["554 5.7.1 no", "554 5.7.1 no"]
    [reply] = await transaction(smtp_gate.smtp_port, "", [FAN, REFUSED], message())
    assert reply.startswith("250")
    assert [m.rcpt_tos for m in next_hop.messages] == [[FAN]]  # no DSN
    [alone] = await transaction(
        smtp_gate.smtp_port, SENDER, [REFUSED], message(message_id="<m2@sender.example>")
    )
    assert alone.startswith("554")
    assert len(next_hop.messages) == 1


async def test_a_resend_of_the_same_bytes_is_skipped_and_said_so(
    smtp_gate: Running, next_hop: Sink
) -> None:
    first = await transaction(smtp_gate.smtp_port, SENDER, [FAN], message())
    again = await transaction(smtp_gate.smtp_port, SENDER, [FAN], message())
    assert first[0].startswith("250")
    assert again[0].startswith("250")
    assert len(next_hop.messages) == 1
    assert "1 already delivered" in again[0]
    metrics = smtp_gate.metrics.registry.get_sample_value("optgate_already_delivered_total")
    assert metrics == 1


async def test_a_new_message_reusing_a_message_id_is_delivered(
    smtp_gate: Running, next_hop: Sink
) -> None:
    for n in range(3):
        await transaction(smtp_gate.smtp_port, SENDER, [FAN], message(body=f"Issue {n}.\n"))
    assert len(next_hop.messages) == 3
