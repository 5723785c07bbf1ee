"""`optgate subject erase` after a realistic history through a running `optgate serve`:
no byte of the address is left in any file of the store, and nobody mails the person."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import re
import sqlite3
from collections.abc import AsyncIterator
from contextlib import redirect_stdout
from pathlib import Path

import aiohttp
import pytest

from gateway.cli import main as cli
from gateway.config import Config
from gateway.runtime.service import Running, running
from suppression.address import normalize
from tests.support.people import SENDER, seed
from tests.support.reports import dsn, person
from tests.support.smtp import Sink, gateway_config, gateway_env, message, send
from tests.test_unsubscribe_e2e import links, local

DOMAIN = "in.example.com"
PERSON = "Erin.Example@Example.org"  # as people type it; stored lower-cased


@pytest.fixture
def settings(tmp_path: Path, next_hop: Sink) -> dict[str, str]:
    (tmp_path / "raw").mkdir()
    return {
        "inbound_domains": DOMAIN,
        "inbound_keep_raw": str(tmp_path / "raw"),
        "unsubscribe_mailto": f"unsubscribe@{DOMAIN}",
    }


@pytest.fixture
def config(tmp_path: Path, next_hop: Sink, settings: dict[str, str]) -> Config:
    return gateway_config(tmp_path, next_hop.port, 0, **settings)


@pytest.fixture
def environment(
    tmp_path: Path, next_hop: Sink, settings: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same configuration for the `optgate` commands, as a user would export it."""
    for name, value in gateway_env(tmp_path, next_hop.port, 0, **settings).items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
async def gate(config: Config, environment: None) -> AsyncIterator[Running]:
    await seed(config)
    async with running(config) as running_gate:
        yield running_gate


async def optgate(*argv: str) -> str:
    """Run an `optgate` command in-process (on a thread: it runs its own event loop)."""
    out = io.StringIO()

    def run() -> int:
        with redirect_stdout(out):
            return cli.main(list(argv))

    code = await asyncio.to_thread(run)
    assert code in (0, 1), (argv, code, out.getvalue())
    return out.getvalue()


def outbox_addresses() -> int:
    """Webhook deliveries waiting with an address (the store of this test's gateway)."""
    path = os.environ["OPTGATE_STORE_URL"].removeprefix("sqlite:///")
    with contextlib.closing(sqlite3.connect(path)) as db:
        row = db.execute("SELECT count(*) FROM outbox WHERE address IS NOT NULL").fetchone()
    return int(row[0])


def store_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def holding(root: Path, address: str) -> list[str]:
    """The files under ``root`` whose bytes hold the address, in any case."""
    needle = address.lower().encode()
    return [str(p) for p in store_files(root) if needle in p.read_bytes().lower()]


async def test_erasure_after_a_realistic_history_leaves_no_byte_of_the_address(
    gate: Running, next_hop: Sink, tmp_path: Path
) -> None:
    a = normalize(PERSON)
    # an endpoint that wants addresses and is down: its events wait in the outbox with them
    await optgate(
        "webhooks", "add", "http://127.0.0.1:9/down", "--events", "all", "--include-address"
    )
    # an import, a consent with evidence, and the person's own opt-out of one list
    (tmp_path / "list.csv").write_text(f"email\n{PERSON}\n")
    await optgate("suppress", "import", "list.csv", "--scope", "topic:deals")
    (tmp_path / "consent.csv").write_text(
        f"email,ip,user_agent,form\n{PERSON},192.0.2.55,Mozilla/5.0,signup {PERSON}\n"
    )
    await optgate("consent", "import", "consent.csv", "--purpose", "marketing")
    for name in ("list.csv", "consent.csv"):
        (tmp_path / name).unlink()  # the user's own input files are theirs to delete

    # sends, a one-click opt-out, a bounce and a mail to unsubscribe@
    sent = await send(gate.smtp_port, SENDER, [PERSON], message(message_id="<a@sender.example>"))
    assert sent.code == 250
    [copy] = next_hop.to(PERSON)
    one_click, _ = links(copy.data)
    async with aiohttp.ClientSession() as http:
        response = await http.post(local(one_click, gate), data={"List-Unsubscribe": "One-Click"})
        assert response.status == 200
    bounce = dsn(
        copy.data,
        to=copy.mail_from,
        recipient=PERSON,
        status="5.1.1",
        diagnostic=f"550 5.1.1 <{PERSON}>: Recipient address rejected",
    )
    assert (await send(gate.smtp_port, "", [copy.mail_from], bounce)).code == 250
    written = person(sender=PERSON, to=f"unsubscribe@{DOMAIN}")
    assert (await send(gate.smtp_port, PERSON, [f"unsubscribe@{DOMAIN}"], written)).code == 250
    assert holding(tmp_path, PERSON), "the history did leave the address in the store"
    assert outbox_addresses() >= 3  # import, consent, one-click, bounce, unsubscribe@

    shown = json.loads(await optgate("subject", "show", PERSON))
    assert [s["topic"] for s in shown["sends"]] == ["marketing"]
    erased = await optgate("subject", "erase", PERSON)
    assert "deleted 2 kept inbound message(s)" in erased

    # while optgate serve still runs, and once it has stopped
    assert outbox_addresses() == 0
    assert holding(tmp_path, PERSON) == []
    assert not any(
        a.normalized in json.dumps(e)
        for e in json.loads(await optgate("subject", "show", PERSON))["events"]
    )
    explained = await optgate("explain", PERSON)
    assert "would NOT be sent" in explained
    again = await send(gate.smtp_port, SENDER, [PERSON], message(message_id="<b@sender.example>"))
    assert again.code == 250
    assert len(next_hop.to(PERSON)) == 1, "nothing more was relayed"
    verified = await optgate("store", "verify")
    assert verified.startswith("audit log intact")
    assert "state matches" in verified
    assert os.environ["OPTGATE_STORE_URL"].endswith("optgate.db")
    assert re.search(r"head \d+:[0-9a-f]{64}", verified)


async def test_a_second_store_never_holds_the_address_either(gate: Running, tmp_path: Path) -> None:
    """Erasure names the same store the server uses: the files grepped are all there are."""
    await optgate("suppress", "add", PERSON)
    await optgate("subject", "erase", PERSON)
    assert holding(tmp_path, PERSON) == []
    assert {p.name for p in store_files(tmp_path) if p.name.startswith("optgate")} >= {
        "optgate.db",
        "optgate-audit.key",
        "optgate.key",
    }
