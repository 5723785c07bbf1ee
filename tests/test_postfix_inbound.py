"""Inbound mail through a real Postfix, configured as deploy/postfix/ documents:

    remote MTA / person -> Postfix smtpd (no filter) -> transport map -> LMTP -> optgate

The marketing copy itself goes the content-filter way first, so its VERP
envelope sender is what Postfix really delivered.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.runtime.service import running
from gateway.runtime.stores import open_configured
from suppression.address import normalize
from suppression.model import Reason
from tests.support.dns import dns_server
from tests.support.people import FAN, SENDER, STRANGER, seed
from tests.support.postfix import (
    SNIPPET_DIR,
    PostfixPorts,
    free_ports,
    postfix_available,
    private_postfix,
)
from tests.support.reports import dsn
from tests.support.senders import request, signed, zone
from tests.support.smtp import gateway_config, message, send, sink

pytestmark = [
    pytest.mark.postfix,
    pytest.mark.root,
    pytest.mark.sockets,
]

DOMAIN = "in.example.com"  # the inbound domain the snippets are written for
SNIPPET_LMTP = "127.0.0.1:10027"
SNIPPET_MAP = "hash:/etc/postfix/optgate_transport"


@pytest.fixture(autouse=True)
def _postfix_installed() -> None:
    assert postfix_available(), "Postfix is not installed: see .ci/run"


def transport_map(path: Path, lmtp_port: int) -> Path:
    """deploy/postfix/optgate_transport with the test's LMTP port."""
    text = (SNIPPET_DIR / "optgate_transport").read_text()
    assert text.count(f"lmtp:inet:{SNIPPET_LMTP}") == 3
    path.write_text(text.replace(SNIPPET_LMTP, f"127.0.0.1:{lmtp_port}"))
    return path


def inbound_main_cf(transport: Path) -> dict[str, str]:
    """The parameters of deploy/postfix/inbound.main.cf.snippet (maps as texthash: no postmap)."""
    parameters = {}
    for line in (SNIPPET_DIR / "inbound.main.cf.snippet").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            parameters[name.strip()] = value.strip().replace(SNIPPET_MAP, f"texthash:{transport}")
    assert set(parameters) == {
        "recipient_delimiter",
        "relay_domains",
        "relay_recipient_maps",
        "transport_maps",
    }
    return parameters


async def test_a_bounce_and_an_unsubscribe_through_postfix_end_in_the_suppression_list(
    tmp_path: Path,
) -> None:
    async with dns_server(zone()) as dns:  # the unsubscribing writer's DKIM key
        await _bounce_and_unsubscribe(tmp_path, dns.port)


async def _bounce_and_unsubscribe(tmp_path: Path, dns_port: int) -> None:
    ports = PostfixPorts.pick()
    mx_port, lmtp_port = free_ports(2)
    config = gateway_config(
        tmp_path,
        ports.reinject,
        ports.filter_port,
        inbound_domains=DOMAIN,
        inbound_listen=f"127.0.0.1:{lmtp_port}",
        inbound_lmtp="true",
        inbound_dns_servers=f"127.0.0.1:{dns_port}",
    )
    await seed(config)
    extra_main = inbound_main_cf(transport_map(tmp_path / "optgate_transport", lmtp_port))
    # Postfix's ordinary smtpd (port 25 of an MX): no content filter
    mx = f"127.0.0.1:{mx_port} inet n - n - - smtpd\n"
    async with sink(ports.relayhost) as final, running(config):
        with private_postfix(
            ports, tmp_path / "postfix", extra_main=extra_main, extra_master=mx
        ) as postfix:
            assert (await send(ports.smtpd, SENDER, [FAN], message())).code == 250
            await asyncio.wait_for(final.wait_for(1), 30)
            [copy] = final.messages
            assert copy.mail_from.startswith("bounce+")
            assert copy.mail_from.endswith(f"@{DOMAIN}")

            bounce = dsn(
                copy.data,
                to=copy.mail_from,
                recipient=FAN,
                status="5.1.1",
                diagnostic="550 5.1.1 <fan@example.com>: Recipient address rejected",
            )
            assert (await send(mx_port, "", [copy.mail_from], bounce)).code == 250
            unsubscribe = f"unsubscribe@{DOMAIN}"
            # signed by the writer's domain (DKIM, DMARC-aligned): it counts at once
            mail = signed(request(STRANGER, unsubscribe))
            assert (await send(mx_port, STRANGER, [unsubscribe], mail)).code == 250
            stray = await send(mx_port, STRANGER, [f"postmaster@{DOMAIN}"], mail)
            await asyncio.to_thread(postfix.wait_queue_empty, 30)
            log = postfix.maillog()
    assert stray.code == 550  # only the mapped addresses are accepted: no backscatter
    assert f"relay=127.0.0.1[127.0.0.1]:{lmtp_port}" in log
    assert len(final.messages) == 1  # nothing inbound was relayed or bounced onward
    store = await open_configured(config, create=True)
    try:
        fan = await store.holder(normalize(FAN).sha256)
        stranger = await store.holder(normalize(STRANGER).sha256)
    finally:
        await store.close()
    assert {s.scope: s.reason for s in fan.suppressions} == {"global": Reason.BOUNCED}
    assert {s.scope: s.reason for s in stranger.suppressions} == {"global": Reason.UNSUBSCRIBED}
