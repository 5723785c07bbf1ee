"""``optgate partner …``: partners, offers, reports with counts only, opt-outs as hashes."""

from __future__ import annotations

import asyncio
import hashlib
import json
from datetime import timedelta
from pathlib import Path

import pytest

from gateway.actions import shown
from suppression.address import normalize
from suppression.model import PARTNER_OFFERS, Consent, ImportItem, Reason, now
from suppression.opening import open_store
from suppression.partners import CopyState, check_credential
from tests import test_cli
from tests.support.keys import AUDIT_KEY
from tests.test_cli import Run, sql

pytestmark = pytest.mark.pure

# the fixtures of the CLI tests: a fresh store in OPTGATE_STORE_URL, optgate run in-process
db, optgate = test_cli.db, test_cli.optgate

FANS = [f"reader{i}@example.com" for i in range(25)]


def seed_offer(path: Path, *, sent: int, suppressed: int, optouts: list[str]) -> int:
    """An offer of partner acme to FANS: ``sent`` copies sent, ``suppressed`` suppressed."""

    async def work() -> int:
        store = await open_store(f"sqlite:///{path}", audit_key=AUDIT_KEY)
        try:
            await store.record_consents(
                [
                    Consent(normalize(a).sha256, PARTNER_OFFERS, True, "t", now(), address=a)
                    for a in FANS
                ],
                actor="t",
            )
            offer = await store.add_offer("acme", None, b"Subject: x\r\n\r\nx\r\n", actor="t")
            await store.plan_offers()
            claims = await store.claim_copies("n", len(FANS), timedelta(minutes=1))
            hashes = [c.sha256 for c in claims]
            await store.settle_copies("n", offer, hashes[:sent], CopyState.SENT)
            await store.settle_copies(
                "n", offer, hashes[sent : sent + suppressed], CopyState.SUPPRESSED
            )
            for address in optouts:
                item = ImportItem(normalize(address).sha256, "sha256", None, Reason.UNSUBSCRIBED)
                await store.suppress([item], scope="partner:acme", source="web", actor="web")
            return offer
        finally:
            await store.close()

    return asyncio.run(work())


def test_add_prints_the_credential_once_and_stores_only_its_hash(optgate: Run, db: Path) -> None:
    added = optgate("partner", "add", "acme", "--rate", "3")
    assert added.code == 0
    secret = added.lines[-1].split()[-1]
    assert len(secret) >= 24
    [(stored,)] = sql(db, "SELECT credential FROM partner WHERE name = 'acme'")
    assert secret not in stored
    assert check_credential(secret, stored)
    listed = optgate("partner", "list")
    assert listed.lines == [listed.lines[0]]
    assert listed.lines[0].startswith("acme\tactive")
    assert "rate 3/h" in listed.out
    assert secret not in listed.out


def test_bad_partner_commands_change_nothing(optgate: Run, db: Path) -> None:
    assert optgate("partner", "add", "acme").code == 0
    again = optgate("partner", "add", "acme")
    assert (again.code, again.err) == (2, "optgate: partner 'acme' exists already\n")
    bad = optgate("partner", "add", "Not Valid")
    assert bad.code == 2
    assert bad.err.startswith("optgate: partner 'Not Valid' is not valid")
    unknown = optgate("partner", "disable", "nobody")
    assert (unknown.code, unknown.err) == (2, "optgate: no partner named 'nobody'\n")
    assert optgate("partner", "report", "nobody").code == 2
    assert optgate("partner", "cancel", "42").err == "optgate: no offer 42\n"
    assert sql(db, "SELECT name, disabled FROM partner") == [("acme", 0)]


def test_disable(optgate: Run, db: Path) -> None:
    optgate("partner", "add", "acme")
    assert optgate("partner", "disable", "acme").out == "partner acme disabled\n"
    assert optgate("partner", "disable", "acme").out == "partner acme was disabled already\n"
    assert optgate("partner", "list").lines[0].startswith("acme\tdisabled")


def test_shown_counts_hide_small_numbers_and_differences() -> None:
    assert [shown(n, 10) for n in (0, 1, 9, 10, 19, 2000, 1995)] == [
        "<10",
        "<10",
        "<10",
        10,
        10,
        2000,
        1990,
    ]
    assert shown(3, 1) == 3


def test_report_shows_counts_at_least_k_only(optgate: Run, db: Path) -> None:
    optgate("partner", "add", "acme")
    offer = seed_offer(db, sent=21, suppressed=4, optouts=FANS[:2])
    text = optgate("partner", "report", "acme")
    assert text.code == 0
    assert f"offer {offer}" in text.out
    assert "audience 20\tsent 20\tsuppressed <10\tbounced <10\tunsubscribed <10" in text.out
    data = json.loads(optgate("partner", "report", "acme", "--json").out)
    [view] = data["offers"]
    assert (view["audience"], view["sent"], view["suppressed"]) == (20, 20, "<10")
    assert data["threshold"] == 10
    # the operator's view is exact
    assert "audience 25\tsent 21\tsuppressed 4" in optgate("partner", "offers", "acme").out


def test_export_optouts_gives_hashes_of_this_partners_optouts_only(optgate: Run, db: Path) -> None:
    optgate("partner", "add", "acme")
    seed_offer(db, sent=25, suppressed=0, optouts=FANS[:3])
    md5 = optgate("partner", "export-optouts", "acme", "--format", "md5")
    assert sorted(md5.lines) == sorted(hashlib.md5(a.encode()).hexdigest() for a in FANS[:3])  # noqa: S324
    sha = optgate("partner", "export-optouts", "acme", "--format", "sha256")
    assert sorted(sha.lines) == sorted(normalize(a).sha256 for a in FANS[:3])
    assert not any(a in md5.out + sha.out for a in FANS)
    assert optgate("partner", "export-optouts", "acme", "--format", "csv").code == 2


def test_offers_pause_resume_cancel(optgate: Run, db: Path) -> None:
    optgate("partner", "add", "acme")
    offer = seed_offer(db, sent=0, suppressed=0, optouts=[])
    assert optgate("partner", "pause", str(offer)).out == f"offer {offer} paused\n"
    assert optgate("partner", "resume", str(offer)).out == f"offer {offer} running\n"
    assert optgate("partner", "cancel", str(offer)).out == f"offer {offer} cancelled\n"
    refused = optgate("partner", "resume", str(offer))
    assert (refused.code, refused.err) == (
        2,
        f"optgate: offer {offer} is cancelled: it cannot be resumed\n",
    )
    assert f"{offer}\tacme\tcancelled" in optgate("partner", "offers").out
