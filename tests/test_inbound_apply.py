"""gateway.inbound.apply on a real store: tokens, suppressions, soft bounces, audit, repeats."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from gateway.config import Config, load
from gateway.inbound.apply import Applied, apply
from gateway.inbound.model import Classification, Finding, Kind
from gateway.keys import load_keys
from gateway.runtime.stores import open_configured
from gateway.tokens import Claims, TokenSigner
from suppression.address import normalize
from suppression.model import Reason, Send, now
from suppression.scope import GLOBAL, Scope
from suppression.store import Store
from tests.support.backends import BACKENDS, postgres_database
from tests.support.tokens import claimed

pytestmark = pytest.mark.pure

JANE = "jane@example.com"  # the recipient a token names
REPORTED = "someone-else@example.net"  # what a report writes, when it is not Jane
RAW = b"From: MAILER-DAEMON\r\n\r\nbounce\r\n"


@dataclass
class Rig:
    store: Store
    config: Config
    signer: TokenSigner

    async def apply(
        self, message: Classification, *, dry_run: bool = False, at: datetime | None = None
    ) -> Applied:
        return await apply(
            message,
            store=self.store,
            config=self.config,
            dry_run=dry_run,
            signer=self.signer,
            at=at,
        )

    def token(self, address: str, scope: str = "topic:news", short: bool = True) -> str:
        claims = Claims(normalize(address).sha256, claimed(scope), int(now().timestamp()))
        return self.signer.issue_short(claims) if short else self.signer.issue(claims)

    async def mailed(self, address: str, topic: str = "news") -> None:
        sha256 = normalize(address).sha256
        await self.store.record_sends([Send(f"m-{topic}", sha256, topic, "marketing", now())])

    async def scopes(self, address: str) -> dict[str, Reason]:
        holder = await self.store.holder(normalize(address).sha256)
        return {s.scope: s.reason for s in holder.suppressions}

    async def events(self) -> int:
        return (await self.store.verify_chain()).events


@asynccontextmanager
async def store_url(kind: str, tmp_path: Path) -> AsyncIterator[str]:
    if kind == "postgres":
        async with postgres_database() as url:
            yield url
    else:
        yield f"sqlite:///{tmp_path / 'optgate.db'}"


@pytest.fixture(params=BACKENDS)
async def rig(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Rig]:
    async with store_url(request.param, tmp_path) as url:
        config = load(
            None,
            {
                "OPTGATE_STORE_URL": url,
                "OPTGATE_UNSUBSCRIBE_KEY_FILE": str(tmp_path / "optgate.key"),
                "OPTGATE_STORE_AUDIT_KEY_FILE": str(tmp_path / "optgate-audit.key"),
                "OPTGATE_INBOUND_DOMAINS": "example.com",
                "OPTGATE_INBOUND_SOFT_BOUNCE_LIMIT": "3",
            },
        )
        store = await open_configured(config, create=True)
        signer = TokenSigner(load_keys(Path(config.unsubscribe.key_file), create=True))
        try:
            yield Rig(store, config, signer)
        finally:
            await store.close()


def message(
    *findings: Finding, raw: bytes = RAW, message_id: str = "<dsn@mx.example>"
) -> Classification:
    return Classification(message_id, hashlib.sha256(raw).hexdigest(), findings)


def finding(
    kind: Kind, recipient: str | None = REPORTED, *tokens: str, status: str | None = None
) -> Finding:
    return Finding(kind, recipient, tokens, status, f"test {kind.value}")


async def test_hard_bounce_suppresses_globally_with_evidence_and_a_repeat_changes_nothing(
    rig: Rig,
) -> None:
    await rig.mailed(REPORTED)
    bounce = message(finding(Kind.HARD_BOUNCE, REPORTED, status="5.1.1"))
    assert await rig.apply(bounce) == Applied(hard_bounces=1, suppressed=1)
    assert await rig.scopes(REPORTED) == {"global": Reason.BOUNCED}
    events = await rig.events()
    assert await rig.apply(bounce) == Applied(hard_bounces=1)
    assert await rig.events() == events
    record = await rig.store.subject(normalize(REPORTED))
    [row] = record.suppressions
    assert row.source == "unverified-bounce"  # no token vouches for it: marketing only
    assert row.address == normalize(REPORTED).normalized  # [store] keep_addresses
    evidence = json.loads(row.evidence or "{}")
    assert evidence["message_id"] == "<dsn@mx.example>"
    assert evidence["digest"] == hashlib.sha256(RAW).hexdigest()
    assert evidence["status"] == "5.1.1"
    [event] = [e for e in record.events if e.seq == row.event]
    assert hashlib.sha256(RAW).hexdigest() in event.body
    assert "<dsn@mx.example>" not in event.body, "the audit log is never erased"
    assert hashlib.sha256(b"<dsn@mx.example>").hexdigest() in event.body


async def test_a_genuine_token_wins_over_the_reported_address(rig: Rig) -> None:
    await rig.mailed(JANE)
    complaint = message(finding(Kind.COMPLAINT, REPORTED, rig.token(JANE)))
    assert await rig.apply(complaint) == Applied(complaints=1, suppressed=1)
    assert await rig.scopes(JANE) == {"global": Reason.COMPLAINED}
    assert await rig.scopes(REPORTED) == {}
    [row] = (await rig.store.holder(normalize(JANE).sha256)).suppressions
    assert row.address is None  # a token names a hash only
    assert "token_issued" in json.loads(row.evidence or "{}")


async def test_unsubscribe_with_a_short_token_takes_its_topic_scope(rig: Rig) -> None:
    await rig.mailed(JANE, "news")
    await rig.mailed(JANE, "deals")
    mail = message(finding(Kind.UNSUBSCRIBE, REPORTED, rig.token(JANE, "topic:news").upper()))
    assert await rig.apply(mail) == Applied(unsubscribes=1, suppressed=1)
    assert await rig.scopes(JANE) == {"topic:news": Reason.UNSUBSCRIBED}


async def test_unsubscribe_with_a_long_token_from_a_link_already_sent(rig: Rig) -> None:
    mail = message(finding(Kind.UNSUBSCRIBE, REPORTED, rig.token(JANE, "global", short=False)))
    assert await rig.apply(mail) == Applied(unsubscribes=1, suppressed=1)
    assert await rig.scopes(JANE) == {"global": Reason.UNSUBSCRIBED}


async def test_an_unsubscribe_without_a_token_and_no_way_to_check_it_changes_nothing(
    rig: Rig,
) -> None:
    # who wrote it is checked (and a link mailed) only given the message and OptOuts:
    # tests/test_optout_auth.py; without them nothing is suppressed on its word
    events = await rig.events()
    assert await rig.apply(message(finding(Kind.UNSUBSCRIBE, "Jane@Example.com"))) == Applied(
        unsubscribes=1
    )
    assert await rig.scopes(JANE) == {}
    assert await rig.events() == events


async def test_a_genuine_token_bounce_is_vouched_for(rig: Rig) -> None:
    await rig.mailed(JANE)
    await rig.apply(message(finding(Kind.HARD_BOUNCE, REPORTED, rig.token(JANE), status="5.1.1")))
    [row] = (await rig.store.holder(normalize(JANE).sha256)).suppressions
    assert (row.reason, row.source) == (Reason.BOUNCED, "bounce")


@pytest.mark.parametrize("kind", [Kind.UNSUBSCRIBE, Kind.HARD_BOUNCE, Kind.COMPLAINT])
async def test_a_forged_token_suppresses_nothing(rig: Rig, kind: Kind) -> None:
    await rig.mailed(JANE)
    genuine = rig.token(JANE)
    forged = genuine[:-1] + ("a" if genuine[-1] != "a" else "b")
    other = TokenSigner([b"another-system-key-0123"]).issue(Claims("0" * 64, GLOBAL, 1))
    events = await rig.events()
    with capture_logs() as logs:
        result = await rig.apply(message(finding(kind, REPORTED, forged, other)))
    assert result == Applied(forged=1)
    assert await rig.scopes(JANE) == {}
    assert await rig.scopes(REPORTED) == {}
    assert await rig.events() == events
    assert [e["problem"] for e in logs if e["event"] == "inbound_bad_token"] == [
        "bad token signature",
        "token signed with an unknown or retired key",
    ]


async def test_a_confirmation_token_is_no_opt_out(rig: Rig) -> None:
    confirm = rig.token(JANE, "confirm:news", short=False)
    assert await rig.apply(message(finding(Kind.UNSUBSCRIBE, REPORTED, confirm))) == Applied(
        forged=1
    )
    assert await rig.scopes(JANE) == {}


async def test_a_genuine_token_the_ledger_cannot_name_names_nobody(rig: Rig) -> None:
    # Jane was never mailed: the ledger has no hash with the token's prefix; the
    # address the report writes does not stand in for her
    await rig.mailed(REPORTED)
    bounce = message(finding(Kind.HARD_BOUNCE, REPORTED, rig.token(JANE)))
    assert await rig.apply(bounce) == Applied(ignored=1)
    assert await rig.scopes(REPORTED) == {}
    assert await rig.scopes(JANE) == {}


@pytest.mark.parametrize("kind", [Kind.HARD_BOUNCE, Kind.SOFT_BOUNCE, Kind.COMPLAINT])
async def test_a_report_without_a_token_about_an_address_never_mailed_changes_nothing(
    rig: Rig, kind: Kind
) -> None:
    # anyone can write a DSN or an ARF report naming anyone: only mailed addresses count
    events = await rig.events()
    assert await rig.apply(message(finding(kind, REPORTED, status="5.1.1"))) == Applied(ignored=1)
    assert await rig.scopes(REPORTED) == {}
    assert await rig.events() == events
    await rig.mailed(REPORTED)
    assert await rig.apply(message(finding(kind, REPORTED, status="5.1.1"))) != Applied(ignored=1)


async def test_an_ambiguous_prefix_is_honoured_for_nobody(rig: Rig) -> None:
    prefix = normalize(JANE).sha256[:16]
    twins = [prefix + "0" * 48, prefix + "1" * 48]
    await rig.store.record_sends([Send("m1", t, "news", "marketing", now()) for t in twins])
    token = rig.signer.issue_short(Claims(twins[0], Scope.topic("news"), 1_700_000_000))
    with capture_logs() as logs:
        result = await rig.apply(message(finding(Kind.COMPLAINT, None, token)))
    assert result == Applied(ignored=1)
    assert [e["candidates"] for e in logs if e["event"] == "inbound_token_unresolved"] == [2]
    for twin in twins:
        assert (await rig.store.holder(twin)).suppressions == ()


async def test_a_token_of_another_topic_is_not_matched_to_a_copy(rig: Rig) -> None:
    await rig.mailed(JANE, "deals")
    bounce = message(finding(Kind.COMPLAINT, None, rig.token(JANE, "topic:news")))
    assert await rig.apply(bounce) == Applied(ignored=1)


async def test_soft_bounces_suppress_only_after_the_limit_within_the_window(rig: Rig) -> None:
    def soft(number: int) -> Classification:
        return message(finding(Kind.SOFT_BOUNCE, REPORTED, status="4.2.2"), raw=b"dsn %d" % number)

    await rig.mailed(REPORTED)
    start = now()
    assert await rig.apply(soft(1), at=start - timedelta(days=30)) == Applied(soft_bounces=1)
    assert await rig.apply(soft(2), at=start) == Applied(soft_bounces=1)
    assert await rig.apply(soft(2), at=start) == Applied(soft_bounces=1)  # the same message
    assert await rig.apply(soft(3), at=start) == Applied(soft_bounces=1)  # 2 in the window
    # a report dated long before (a backlog, a skewed or forged Date) counts only its own past
    old = start - timedelta(days=400)
    assert await rig.apply(soft(5), at=old) == Applied(soft_bounces=1)
    assert await rig.apply(soft(6), at=old) == Applied(soft_bounces=1)
    assert await rig.scopes(REPORTED) == {}
    assert await rig.apply(soft(4), dry_run=True, at=start) == Applied(soft_bounces=1, suppressed=1)
    assert await rig.scopes(REPORTED) == {}
    assert await rig.apply(soft(4), at=start) == Applied(soft_bounces=1, suppressed=1)
    assert await rig.scopes(REPORTED) == {"global": Reason.BOUNCED}


async def test_dry_run_counts_and_changes_nothing(rig: Rig) -> None:
    for mailed in (JANE, "gone@example.org", "full@example.org", "angry@example.org"):
        await rig.mailed(mailed)
    mail = message(
        finding(Kind.UNSUBSCRIBE, REPORTED, rig.token(JANE)),
        finding(Kind.HARD_BOUNCE, "gone@example.org"),
        finding(Kind.SOFT_BOUNCE, "full@example.org"),
        finding(Kind.IGNORED, None),
    )
    events = await rig.events()
    expected = Applied(unsubscribes=1, hard_bounces=1, soft_bounces=1, ignored=1, suppressed=2)
    assert await rig.apply(mail, dry_run=True) == expected
    assert await rig.events() == events
    assert await rig.scopes(JANE) == {}
    assert await rig.apply(mail) == expected
    assert await rig.apply(mail, dry_run=True) == Applied(
        unsubscribes=1, hard_bounces=1, soft_bounces=1, ignored=1
    )


async def test_findings_without_a_usable_recipient_are_ignored(rig: Rig) -> None:
    mail = message(finding(Kind.HARD_BOUNCE, None), finding(Kind.HARD_BOUNCE, "not an address"))
    assert await rig.apply(mail) == Applied(ignored=2)


async def test_no_address_in_any_log_line(rig: Rig) -> None:
    for mailed in (JANE, "gone@example.org", "full@example.org", "angry@example.org"):
        await rig.mailed(mailed)
    mail = message(
        finding(Kind.UNSUBSCRIBE, REPORTED, rig.token(JANE)),
        finding(Kind.HARD_BOUNCE, "gone@example.org", "forged"),
        finding(Kind.SOFT_BOUNCE, "full@example.org"),
        finding(Kind.COMPLAINT, "angry@example.org"),
    )
    with capture_logs() as logs:
        await rig.apply(mail)
    text = json.dumps(logs)
    assert "inbound_finding" in text
    for address in (JANE, REPORTED, "gone@example.org", "full@example.org", "angry@"):
        assert address not in text
    assert normalize("angry@example.org").sha256[:16] in text


def test_applied_adds_up() -> None:
    assert Applied(unsubscribes=1, suppressed=1) + Applied(forged=2, suppressed=1) == Applied(
        unsubscribes=1, forged=2, suppressed=2
    )
