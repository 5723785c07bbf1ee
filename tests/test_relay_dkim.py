"""Relayed copies are DKIM-signed after the rewrite, covering the unsubscribe headers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import dkim
import pytest

from gateway.keygen import generate, private_pem, record_value, write_private
from gateway.runtime.service import Running, running
from tests.support.people import FAN, SENDER, seed
from tests.support.smtp import Sink, gateway_config, message, send

DOMAIN, SELECTOR = "sender.example", "s1"


@pytest.fixture
async def signed_gate(
    tmp_path: Path, next_hop: Sink
) -> AsyncIterator[tuple[Running, dict[str, str]]]:
    rsa, ed = generate("rsa"), generate("ed25519")
    write_private(tmp_path / "rsa.pem", private_pem(rsa))
    write_private(tmp_path / "ed.pem", private_pem(ed))
    keys = (
        f"{DOMAIN}:{SELECTOR}:rsa:{tmp_path / 'rsa.pem'},{DOMAIN}:e1:ed25519:{tmp_path / 'ed.pem'}"
    )
    config = gateway_config(tmp_path, next_hop.port, dkim_keys=keys)
    await seed(config)
    records = {
        f"{SELECTOR}._domainkey.{DOMAIN}.": record_value(rsa),
        f"e1._domainkey.{DOMAIN}.": record_value(ed),
    }
    async with running(config) as gate:
        yield gate, records


async def test_each_copy_is_dual_signed_over_its_list_unsubscribe(
    signed_gate: tuple[Running, dict[str, str]], next_hop: Sink
) -> None:
    gate, records = signed_gate

    def dns(name: bytes, timeout: int = 5) -> bytes:
        return records.get(name.decode(), "").encode()

    sent = await send(gate.smtp_port, SENDER, [FAN], message())
    assert sent.code == 250
    data = next_hop.to(FAN)[0].data
    assert data.count(b"DKIM-Signature:") == 2
    verifier = dkim.DKIM(data)
    assert verifier.verify(idx=0, dnsfunc=dns)
    assert verifier.verify(idx=1, dnsfunc=dns)
    signed = verifier.signed_headers  # of the last verified signature
    names = {name.lower() for name, _ in signed}
    assert {b"list-unsubscribe", b"list-unsubscribe-post", b"from"} <= names
    tampered = data.replace(
        b"List-Unsubscribe-Post: List-Unsubscribe=One-Click",
        b"List-Unsubscribe-Post: List-Unsubscribe=Two-Click",
    )
    assert not dkim.DKIM(tampered).verify(idx=0, dnsfunc=dns)
