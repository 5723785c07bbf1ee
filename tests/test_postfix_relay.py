"""optgate as Postfix's after-queue content filter, end to end with a real Postfix.

    smtplib -> Postfix smtpd -> queue -> optgate -> Postfix reinjection -> queue -> sink

The Postfix configuration is the one deploy/postfix/ documents.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import re
import smtplib
from pathlib import Path

import pytest

from gateway.config import load
from gateway.runtime.service import running
from gateway.smtp.server import REWRITE_MARGIN
from tests.support.people import BOUNCED, FAN, GONE, SENDER, STRANGER, seed
from tests.support.postfix import PostfixPorts, free_ports, postfix_available, private_postfix
from tests.support.smtp import gateway_config, gateway_env, message, send, sink

pytestmark = [
    pytest.mark.postfix,
    pytest.mark.root,
    pytest.mark.sockets,
]


@pytest.fixture(autouse=True)
def _postfix_installed() -> None:
    assert postfix_available(), "Postfix is not installed: see .ci/run"


async def test_postfix_content_filter_delivers_only_consented_copies(tmp_path: Path) -> None:
    ports = PostfixPorts.pick()
    config = gateway_config(tmp_path, ports.reinject, ports.filter_port)
    await seed(config)
    async with sink(ports.relayhost) as final, running(config):
        with private_postfix(ports, tmp_path / "postfix") as postfix:
            sent = await send(ports.smtpd, SENDER, [FAN, GONE, STRANGER, BOUNCED], message())
            assert sent.code == 250  # Postfix queued it
            await asyncio.wait_for(final.wait_for(1), 30)
            await asyncio.to_thread(postfix.wait_queue_empty, 30)
            log = postfix.maillog()
    assert [m.rcpt_tos for m in final.messages] == [[FAN]]
    copy = email.message_from_bytes(final.messages[0].data, policy=email.policy.default)
    assert copy["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert "/u/" in str(copy["List-Unsubscribe"])
    assert "smtp-optgate" in log  # it went through the filter transport
    assert "reinject" in log


async def test_postfix_keeps_mail_queued_while_optgate_is_down(tmp_path: Path) -> None:
    ports = PostfixPorts.pick()
    config = gateway_config(tmp_path, ports.reinject, ports.filter_port)
    await seed(config)
    async with sink(ports.relayhost) as final:
        with private_postfix(ports, tmp_path / "postfix") as postfix:
            sent = await send(ports.smtpd, SENDER, [FAN], message())
            assert sent.code == 250
            await asyncio.sleep(1.5)
            assert final.messages == []
            assert not postfix.queue_empty()  # deferred, not lost
            async with running(config):
                postfix.flush()
                await asyncio.wait_for(final.wait_for(1), 30)
                await asyncio.to_thread(postfix.wait_queue_empty, 30)
    assert [m.rcpt_tos for m in final.messages] == [[FAN]]


async def test_postfix_hands_mail_to_optgate_over_lmtp_as_the_guide_says(tmp_path: Path) -> None:
    """deploy/postfix/README.md's LMTP section: an lmtp-optgate transport and a listener
    whose content_filter names it; each recipient gets its own status in Postfix's log."""
    ports = PostfixPorts.pick()
    [lmtp_listener] = free_ports(1)
    config = gateway_config(tmp_path, ports.reinject, ports.filter_port, smtp_lmtp="true")
    await seed(config)
    extra_master = (
        "lmtp-optgate   unix  -       -       n       -       10      lmtp\n"
        "  -o syslog_name=postfix/lmtp-optgate\n"
        "  -o lmtp_send_xforward_command=yes\n"
        "  -o disable_mime_output_conversion=yes\n"
        "  -o lmtp_generic_maps=\n"
        "  -o lmtp_tls_security_level=none\n"
        f"127.0.0.1:{lmtp_listener} inet n - n - - smtpd\n"
        f"  -o content_filter=lmtp-optgate:inet:127.0.0.1:{ports.filter_port}\n"
        "  -o receive_override_options=no_address_mappings\n"
    )
    async with sink(ports.relayhost) as final, running(config):
        with private_postfix(ports, tmp_path / "postfix", extra_master=extra_master) as postfix:
            sent = await send(lmtp_listener, SENDER, [FAN, STRANGER], message())
            assert sent.code == 250
            await asyncio.wait_for(final.wait_for(1), 30)
            await asyncio.to_thread(postfix.wait_queue_empty, 30)
            log = postfix.maillog()
    assert [m.rcpt_tos for m in final.messages] == [[FAN]]
    lmtp_lines = [line for line in log.splitlines() if "postfix/lmtp-optgate" in line]
    assert sum("status=sent" in line for line in lmtp_lines) == 2, lmtp_lines  # one per recipient
    # Postfix's lmtp client sent XFORWARD, optgate passed it on: the queue id of the original
    reinjected = [
        line for line in log.splitlines() if "reinject/smtpd" in line and "client=" in line
    ]
    assert reinjected
    assert all("orig_queue_id=" in line for line in reinjected), reinjected


GUIDE_CONFIG = Path(__file__).resolve().parents[1] / "deploy" / "postfix" / "optgate.toml"
RESET = "noreply@shop.example"  # the guide's transactional_senders


def submit_from(address: str, port: int, mail_from: str, rcpts: list[str], data: bytes) -> None:
    """Submit one message from a given loopback source address (the original client)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10, source_address=(address, 0)) as client:
        client.sendmail(mail_from, rcpts, data)


async def test_the_guides_configuration_as_it_is_delivers_a_password_reset_without_a_header(
    tmp_path: Path,
) -> None:
    """deploy/postfix/optgate.toml verbatim (only ports and store replaced) behind the guide's
    Postfix: a password reset from noreply@ without X-Optgate-Class reaches a person without
    consent; marketing reaches only the consented; the reinjection port logs the original
    client (XFORWARD); optgate offers the reinjection port's SIZE, less room for the footer."""
    ports = PostfixPorts.pick()
    config = load(str(GUIDE_CONFIG), gateway_env(tmp_path, ports.reinject, ports.filter_port))
    assert config.policy.transactional_senders == (RESET,)
    await seed(config)
    reset = message(subject="Reset your password", message_id="<reset@shop.example>")
    async with sink(ports.relayhost) as final, running(config):
        with private_postfix(ports, tmp_path / "postfix") as postfix:
            await asyncio.to_thread(submit_from, "127.0.0.2", ports.smtpd, RESET, [STRANGER], reset)
            sent = await send(ports.smtpd, SENDER, [FAN, STRANGER], message())
            assert sent.code == 250
            await asyncio.wait_for(final.wait_for(2), 30)
            await asyncio.to_thread(postfix.wait_queue_empty, 30)

            def size_talk() -> tuple[str, tuple[int, bytes]]:
                with smtplib.SMTP("127.0.0.1", ports.filter_port, timeout=10) as client:
                    client.ehlo("postfix.test")
                    return client.esmtp_features["size"], client.mail(RESET, ["SIZE=10200000"])

            offered, too_big = await asyncio.to_thread(size_talk)
            log = postfix.maillog()
    assert sorted(m.rcpt_tos[0] for m in final.messages) == [FAN, STRANGER]
    [delivered_reset] = [m for m in final.messages if m.rcpt_tos == [STRANGER]]
    assert b"Reset your password" in delivered_reset.data
    assert b"/u/" not in delivered_reset.data  # transactional: no unsubscribe footer
    reinjected = [
        line for line in log.splitlines() if "reinject/smtpd" in line and "client=" in line
    ]
    # the reset's line names its original client and queue id, not optgate's connection
    [first_id] = re.findall(r"submission/smtpd\[\d+\]: (\w+): client=unknown\[127\.0\.0\.2\]", log)
    assert any(
        f"orig_queue_id={first_id}, orig_client=unknown[127.0.0.2]" in line for line in reinjected
    ), reinjected
    assert "Bad XFORWARD" not in log
    assert offered == str(10_240_000 - REWRITE_MARGIN)
    assert too_big[0] == 552
    assert too_big[1].startswith(b"5.3.4")
