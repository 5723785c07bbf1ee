"""optgate serve verifies the audit log on a schedule and exports the result."""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import closing
from pathlib import Path

from structlog.testing import capture_logs

from gateway.config import Config
from gateway.runtime import auditwatch
from gateway.runtime.service import running
from tests.support.people import GONE, seed


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
