"""Nothing a partner can see holds a recipient: not an address, a local part, or a hash."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.config import Config
from gateway.runtime.service import Running, running
from gateway.runtime.stores import open_configured
from suppression.address import normalize
from suppression.model import ImportItem, Reason
from tests.support.partners import add_partner, consenting, submit, until_done
from tests.support.smtp import Sink, gateway_config, message

AUDIENCE = [f"zqx{i}leak.person{i}@mailbox{i}.leaktest.example" for i in range(40)]
SUPPRESSED, PARTNER_LISTED, OPTED_OUT = AUDIENCE[0], AUDIENCE[1], AUDIENCE[2]
OPTGATE = Path(sys.prefix) / "bin" / "optgate"


def traces(address: str) -> list[str]:
    """Every form in which a recipient could leak."""
    a = normalize(address)
    local = address.split("@")[0]
    return [
        address,
        local,
        address.split("@")[1],
        a.sha256,
        a.sha256[:16],
        a.md5,
        hashlib.sha1(address.encode()).hexdigest(),  # noqa: S324 - a form to look for, not to use
    ]


@pytest.fixture
def config(tmp_path: Path, next_hop: Sink) -> Config:
    return gateway_config(tmp_path, next_hop.port, partners_listen="127.0.0.1:0")


@pytest.fixture
async def gate(config: Config) -> AsyncIterator[Running]:
    async with running(config) as started:
        yield started


async def partner_command(config: Config, *argv: str) -> str:
    """``optgate partner …`` as the operator runs it for the partner; stdout and stderr."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPTGATE_")}
    env["OPTGATE_STORE_URL"] = config.store.url
    env["OPTGATE_STORE_AUDIT_KEY_FILE"] = config.store.audit_key_file
    done = await asyncio.to_thread(
        subprocess.run,
        [str(OPTGATE), "partner", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout + done.stderr


async def test_no_recipient_trace_in_anything_the_partner_gets(
    config: Config, gate: Running, next_hop: Sink
) -> None:
    secret = await add_partner(config)
    await consenting(config, AUDIENCE)
    store = await open_configured(config, create=True)
    try:
        gone = normalize(SUPPRESSED)
        await store.suppress(
            [ImportItem(gone.sha256, "sha256", SUPPRESSED, Reason.UNSUBSCRIBED)],
            scope="global",
            source="web",
            actor="t",
        )
        listed = ImportItem(normalize(PARTNER_LISTED).md5, "md5", None, Reason.IMPORTED)
        await store.suppress([listed], scope="partner:acme", source="import", actor="t")
    finally:
        await store.close()

    port = gate.partners_port
    seen: list[bytes] = []
    for content, rcpt in (
        (message(subject="Deal"), "offer@partners.example.com"),
        (message(subject="Deal"), AUDIENCE[5]),  # naming a recipient: refused
        (
            message(subject="Deal", headers={"X-Optgate-Audience": "x y"}),
            "offer@partners.example.com",
        ),
    ):
        sent = await submit(port, "acme", secret, content, rcpt=rcpt)
        seen.append(sent.received)
    await until_done(config)
    assert len(next_hop.messages) == len(AUDIENCE) - 2

    # one recipient opts out of acme's offers: only that one's hash may go back to acme
    store = await open_configured(config, create=True)
    try:
        out = normalize(OPTED_OUT)
        await store.suppress(
            [ImportItem(out.sha256, "sha256", None, Reason.UNSUBSCRIBED)],
            scope="partner:acme",
            source="one-click",
            actor="web",
        )
    finally:
        await store.close()
    reports = [
        await partner_command(config, "report", "acme"),
        await partner_command(config, "report", "acme", "--json"),
    ]
    exports = [
        await partner_command(config, "export-optouts", "acme", "--format", fmt)
        for fmt in ("md5", "sha256")
    ]
    assert exports == [f"{normalize(OPTED_OUT).md5}\n", f"{normalize(OPTED_OUT).sha256}\n"]

    everything = b"".join(seen).decode("utf-8", "replace") + "".join(reports)
    assert "250 2.0.0 Offer 1 accepted" in everything  # the capture holds the replies
    assert "550 5.7.1" in everything
    for address in AUDIENCE:
        for trace in traces(address):
            assert trace.lower() not in everything.lower(), (address, trace)
            if address != OPTED_OUT:
                assert trace not in "".join(exports), (address, trace)
