"""Hostile clients from many loopback source addresses (127.0.0.2 ...): nobody outside the
configured networks relays, nothing reaches an address optgate does not serve, and a
password guesser spread over many addresses learns nothing and costs little."""

from __future__ import annotations

import asyncio
import smtplib
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from gateway.config import Config
from gateway.runtime.service import Running, running
from tests.support.clients import on_client_thread
from tests.support.partners import AUDIENCE, add_partner, submit
from tests.support.people import FAN, seed
from tests.support.smtp import Sink, gateway_config, message

SOURCES = [f"127.0.0.{n}" for n in range(2, 42)]  # 40 attackers; 127.0.0.1 is the app


@pytest.fixture
def config(tmp_path: Path, next_hop: Sink) -> Config:
    return gateway_config(
        tmp_path,
        next_hop.port,
        0,
        smtp_allowed_clients='["127.0.0.1/32"]',
        inbound_domains="in.example.com",
        inbound_listen="127.0.0.1:0",
        inbound_allowed_clients='["0.0.0.0/0"]',  # the Internet-facing inbound listener
        partners_listen="127.0.0.1:0",
        partners_audience_domain="partners.example.com",
        partners_sender="offers@example.com",
        partners_auth_per_minute="5",
    )


@pytest.fixture
async def gate(config: Config) -> AsyncIterator[Running]:
    await seed(config)
    async with running(config) as started:
        yield started


def _raw(text: bytes | str) -> bytes:
    return text if isinstance(text, bytes) else text.encode()


def _from(source: str, port: int) -> smtplib.SMTP:
    return smtplib.SMTP("127.0.0.1", port, timeout=10, source_address=(source, 0))


async def _relay_attempt(source: str, port: int, rcpt: str) -> tuple[int, bytes]:
    """Connect from ``source`` and try to get one message to ``rcpt``: the first refusal."""

    def work() -> tuple[int, bytes]:
        try:
            client = _from(source, port)
        except smtplib.SMTPConnectError as exc:
            return exc.smtp_code, _raw(exc.smtp_error)
        with client:
            client.ehlo("attacker.test")
            steps: list[Callable[[], tuple[int, bytes]]] = [
                lambda: client.mail("spam@attacker.test"),
                lambda: client.rcpt(rcpt),
                lambda: client.data(message(subject="spam")),
            ]
            for step in steps:
                try:
                    code, text = step()
                except smtplib.SMTPResponseException as exc:
                    return exc.smtp_code, _raw(exc.smtp_error)
                if code >= 400:
                    return code, text
            return 250, b""

    return await on_client_thread(work)


async def test_nobody_outside_the_client_networks_relays(gate: Running, next_hop: Sink) -> None:
    attempts = await asyncio.gather(
        *(_relay_attempt(source, gate.smtp_port, "victim@elsewhere.example") for source in SOURCES)
    )
    assert {code for code, _ in attempts} == {554}, attempts
    assert next_hop.messages == []
    # the application itself still relays
    allowed = await _relay_attempt("127.0.0.1", gate.smtp_port, FAN)
    assert allowed[0] == 250
    assert len(next_hop.to(FAN)) == 1


async def test_the_open_inbound_listener_relays_nothing(gate: Running, next_hop: Sink) -> None:
    """Anyone may write to unsubscribe@ and bounce+...@; nobody gets mail anywhere else."""
    targets = ["victim@elsewhere.example", f"{FAN}", "postmaster@elsewhere.example"]
    attempts = await asyncio.gather(
        *(
            _relay_attempt(source, gate.inbound_port, rcpt)
            for source in SOURCES[:10]
            for rcpt in targets
        )
    )
    assert all(500 <= code < 600 for code, _ in attempts), attempts
    assert next_hop.messages == []


async def test_password_guessing_from_many_addresses_gets_nowhere(
    gate: Running, config: Config
) -> None:
    secret = await add_partner(config)
    first = await submit(gate.partners_port, "acme", secret, message(), rcpt=AUDIENCE)
    assert first.code == 250  # the partner's own address, now known to have logged in

    def guess(source: str, tries: int) -> list[int]:
        codes = []
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        with _from(source, gate.partners_port) as client:
            client.ehlo("guesser.test")
            client.starttls(context=context)
            client.ehlo("guesser.test")
            for n in range(tries):
                try:
                    client.login("acme", f"guess-{source}-{n}")
                    codes.append(235)
                except smtplib.SMTPAuthenticationError as exc:
                    codes.append(exc.smtp_code)
        return codes

    with capture_logs() as logs:
        results = await asyncio.gather(*(on_client_thread(guess, source, 3) for source in SOURCES))
    codes = [code for per_source in results for code in per_source]
    assert 235 not in codes
    checked = [e for e in logs if e["event"] == "partner_auth"]
    # each address alone stays under its own limit (3 < 5); the account's limit caps what
    # the whole spread costs: a few scrypt checks, not one per guess
    assert len(checked) <= 2 * config.partners.auth_per_minute, len(checked)
    assert codes.count(454) >= len(codes) - 2 * config.partners.auth_per_minute
    assert not [e for e in logs if e.get("ok")]

    # the partner itself is not locked out by the guessing on its name
    assert (await submit(gate.partners_port, "acme", secret, message())).code == 250
