"""VERP and the short mailto token on relayed copies, through real sockets."""

from __future__ import annotations

import email
import email.policy
import re
from pathlib import Path

from gateway.config import Config
from gateway.keys import load_keys
from gateway.runtime.service import running
from gateway.tokens import TokenSigner
from suppression.address import normalize
from suppression.scope import Scope
from tests.support.people import FAN, SENDER, seed
from tests.support.smtp import Received, Sink, gateway_config, message, send

BOUNCE = re.compile(r"bounce\+([a-z2-7]{40})@in\.example\.com")


def verp_config(tmp_path: Path, next_hop: Sink, **settings: str) -> Config:
    return gateway_config(tmp_path, next_hop.port, 0, inbound_domains="in.example.com", **settings)


async def relayed(
    config: Config, next_hop: Sink, mail_from: str = SENDER, **headers: str
) -> Received:
    await seed(config)
    async with running(config, ("smtp",)) as gate:
        sent = await send(gate.smtp_port, mail_from, [FAN], message(headers=headers))
    assert sent.code == 250
    [copy] = next_hop.to(FAN)
    return copy


def signer(config: Config) -> TokenSigner:
    return TokenSigner(load_keys(Path(config.unsubscribe.key_file)))


async def test_marketing_copy_gets_a_verp_sender_carrying_its_mailto_token(
    tmp_path: Path, next_hop: Sink
) -> None:
    config = verp_config(tmp_path, next_hop)
    copy = await relayed(config, next_hop)
    match = BOUNCE.fullmatch(copy.mail_from)
    assert match is not None, copy.mail_from
    token = match.group(1)
    assert len(f"bounce+{token}") <= 64
    parsed = email.message_from_bytes(copy.data, policy=email.policy.default)
    assert f"<mailto:unsubscribe+{token}@example.com>" in str(parsed["List-Unsubscribe"])
    claims = signer(config).verify_short(token)
    assert claims.prefix == normalize(FAN).sha256[:16]
    assert claims.scope_for("marketing") == Scope.topic("marketing")


async def test_transactional_mail_keeps_its_sender_unless_configured(
    tmp_path: Path, next_hop: Sink
) -> None:
    config = verp_config(tmp_path, next_hop)
    copy = await relayed(config, next_hop, **{"X-Optgate-Class": "transactional"})
    assert copy.mail_from == SENDER


async def test_transactional_mail_gets_verp_when_configured(tmp_path: Path, next_hop: Sink) -> None:
    config = verp_config(tmp_path, next_hop, inbound_verp_transactional="true")
    copy = await relayed(config, next_hop, **{"X-Optgate-Class": "transactional"})
    assert BOUNCE.fullmatch(copy.mail_from)


async def test_a_null_sender_stays_null(tmp_path: Path, next_hop: Sink) -> None:
    config = verp_config(tmp_path, next_hop)
    copy = await relayed(config, next_hop, mail_from="")
    assert copy.mail_from == "<>"  # as the next hop saw MAIL FROM:<>


async def test_without_inbound_domains_the_sender_is_kept_and_the_mailto_is_short(
    tmp_path: Path, next_hop: Sink
) -> None:
    config = gateway_config(tmp_path, next_hop.port)
    copy = await relayed(config, next_hop)
    assert copy.mail_from == SENDER
    parsed = email.message_from_bytes(copy.data, policy=email.policy.default)
    mailto = re.search(r"<mailto:([^>]+)>", str(parsed["List-Unsubscribe"]))
    assert mailto is not None
    local = mailto.group(1).partition("@")[0]
    assert re.fullmatch(r"unsubscribe\+[a-z2-7]{40}", local)
    assert len(local) <= 64
