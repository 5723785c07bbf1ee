"""optgate serve verifies the audit log on a schedule and exports the result; its store
anchors the chain's head as each audited change commits."""

from __future__ import annotations

import asyncio
import email
import email.policy
import re
import sqlite3
from contextlib import closing
from pathlib import Path

import aiohttp
import pytest
from structlog.testing import capture_logs

from gateway.config import Config
from gateway.runtime import auditwatch, stores
from gateway.runtime.service import Running, running
from tests.support.people import FAN, GONE, SENDER, seed
from tests.support.smtp import Sink, message, send


def gauge(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


async def test_serve_verifies_at_start_and_a_tampered_table_turns_the_gauge_off(
    config: Config, tmp_path: Path
) -> None:
    await seed(config)
    async with running(config, ("web",), audit_watch=True) as gate:
        for _ in range(100):
            text = gate.metrics.exposition().decode()
            if gauge(text, "optgate_audit_verified_timestamp_seconds"):
                break
            await asyncio.sleep(0.05)
        assert gauge(text, "optgate_audit_chain_intact") == 1.0
        assert gauge(text, "optgate_audit_events") == 3.0  # seed: consents, two opt-outs
        anchor = await asyncio.to_thread(Path(config.store.audit_anchor_file).read_text)
        assert anchor.startswith("3:")

        with closing(sqlite3.connect(tmp_path / "optgate.db")) as db, db:
            db.execute("DELETE FROM suppression WHERE address = ?", (GONE,))
        with capture_logs() as logs:
            report = await auditwatch.check(config, gate.metrics)
        assert report is not None
        assert not report.intact
        text = gate.metrics.exposition().decode()
        assert gauge(text, "optgate_audit_chain_intact") == 0.0
        [line] = [e for e in logs if e["event"] == "audit_broken"]
        assert "suppression table differs" in line["problems"][0]
        assert GONE not in str(logs)


def _anchored(config: Config) -> str:
    return Path(config.store.audit_anchor_file).read_text().strip()


async def test_relaying_anchors_nothing_and_a_one_click_post_its_one_event(
    gate: Running, next_hop: Sink, config: Config
) -> None:
    """serve's store anchors as it commits, with no check in between: a relayed message
    appends no audit event (the anchor stays), a one-click opt-out appends one."""
    seeded = await asyncio.to_thread(_anchored, config)
    assert seeded.startswith("3:")  # seed's three transactions, through open_configured
    await send(gate.smtp_port, SENDER, [FAN], message(message_id="<one@sender.example>"))
    [copy] = next_hop.to(FAN)
    header = email.message_from_bytes(copy.data, policy=email.policy.default)
    link = re.search(r"<https://[^/>]+(/u/[^>]+)>", str(header["List-Unsubscribe"]))
    assert link is not None
    assert await asyncio.to_thread(_anchored, config) == seeded
    async with aiohttp.ClientSession() as http:
        url = f"http://127.0.0.1:{gate.web_port}{link.group(1)}"
        response = await http.post(url, data={"List-Unsubscribe": "One-Click"})
        assert response.status == 200
    head = await asyncio.to_thread(_anchored, config)
    assert head.startswith("4:")
    with closing(sqlite3.connect(config.store.url.removeprefix("sqlite:///"))) as db:
        assert db.execute("SELECT max(seq), digest FROM audit").fetchone() == (4, head[2:])


@pytest.mark.pure
def test_a_lower_head_never_replaces_a_higher_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two writers: the lower head, written last, leaves the higher one; and one that
    another writer overtakes between its first look and its rename leaves that one."""
    anchor = tmp_path / "audit.head"
    stores.write_anchor(anchor, (5, "b" * 64))
    stores.write_anchor(anchor, (3, "a" * 64))
    assert anchor.read_text() == f"5:{'b' * 64}\n"

    looks: list[Path] = []
    read = stores.read_anchor

    def overtaken(path: Path) -> tuple[int, str] | None:
        looks.append(path)
        if len(looks) == 2:  # the other writer renames its head in just before this one's
            anchor.write_text(f"9:{'d' * 64}\n")
        return read(path)

    monkeypatch.setattr(stores, "read_anchor", overtaken)
    stores.write_anchor(anchor, (7, "c" * 64))
    assert len(looks) == 2
    assert anchor.read_text() == f"9:{'d' * 64}\n"
    assert list(tmp_path.iterdir()) == [anchor], "no spare file is left behind"
