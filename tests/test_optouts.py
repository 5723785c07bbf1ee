"""gateway.optouts: the rules as socket-free tables, then the actions on both stores."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from gateway import optouts
from gateway.errors import NotYours
from gateway.inbound.model import Kind
from gateway.optouts import (
    ApiConsent,
    HeldEvidence,
    InboundEvidence,
    InboundNote,
    LinkEvidence,
    PageConsent,
    Recipient,
    SuppressionEvent,
)
from suppression.address import identity, md5_identity, normalize
from suppression.errors import InvalidAddress
from suppression.model import Consent, ImportItem, Reason, Source, Suppression
from suppression.scope import GLOBAL, Scope
from suppression.store import Holder
from tests.support.backends import Backend

pytestmark = pytest.mark.pure

NEWS = Scope.topic("news")
ACME = Scope.partner("acme")
T0 = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
JANE = normalize("jane@example.com")


def record(reason: Reason, source: str, scope: Scope = GLOBAL, at: datetime = T0) -> Suppression:
    return Suppression(JANE.sha256, "sha256", str(scope), reason, source, at)


# --- what a finding does ----------------------------------------------------------------

# (kind, named scope, vouched by a genuine token, channel) -> (scope, reason, source)
FINDINGS = [
    (Kind.UNSUBSCRIBE, NEWS, True, None, NEWS, Reason.UNSUBSCRIBED, Source.MAILBOX),
    (Kind.UNSUBSCRIBE, ACME, True, None, ACME, Reason.UNSUBSCRIBED, Source.MAILBOX),
    (Kind.UNSUBSCRIBE, GLOBAL, False, None, GLOBAL, Reason.UNSUBSCRIBED, Source.MAILBOX),
    (Kind.UNSUBSCRIBE, NEWS, False, Source.ESP, NEWS, Reason.UNSUBSCRIBED, Source.ESP),
    (Kind.HARD_BOUNCE, NEWS, True, None, GLOBAL, Reason.BOUNCED, Source.BOUNCE),
    (Kind.HARD_BOUNCE, GLOBAL, False, None, GLOBAL, Reason.BOUNCED, Source.UNVERIFIED_BOUNCE),
    (Kind.HARD_BOUNCE, GLOBAL, False, Source.ESP, GLOBAL, Reason.BOUNCED, Source.ESP),
    (Kind.SOFT_BOUNCE, NEWS, True, None, GLOBAL, Reason.BOUNCED, Source.BOUNCE),
    (Kind.SOFT_BOUNCE, GLOBAL, False, None, GLOBAL, Reason.BOUNCED, Source.UNVERIFIED_BOUNCE),
    (Kind.COMPLAINT, NEWS, True, None, GLOBAL, Reason.COMPLAINED, Source.COMPLAINT),
    (Kind.COMPLAINT, GLOBAL, False, None, GLOBAL, Reason.COMPLAINED, Source.UNVERIFIED_COMPLAINT),
    (Kind.COMPLAINT, GLOBAL, False, Source.ESP, GLOBAL, Reason.COMPLAINED, Source.ESP),
]


@pytest.mark.parametrize(
    ("kind", "named", "vouched", "channel", "scope", "reason", "source"), FINDINGS
)
def test_a_finding_suppresses_by_the_rules(
    kind: Kind,
    named: Scope,
    vouched: bool,
    channel: Source | None,
    scope: Scope,
    reason: Reason,
    source: Source,
) -> None:
    note = InboundNote("m" * 64, "d" * 64, "dsn 5.1.1", "5.1.1", "token")
    event = optouts.finding_event(
        kind,
        Recipient.hashed(JANE.sha256),
        named,
        vouched=vouched,
        channel=channel,
        inbound=note,
        message_id="<x@example.com>",
        token_issued=None,
    )
    assert (event.scope, event.reason, event.source) == (scope, reason, source)
    assert isinstance(event.evidence, InboundEvidence)
    assert event.evidence.record()["channel"] == source.value  # the row says where it came from


def test_every_kind_that_changes_something_has_a_rule() -> None:
    assert set(optouts.FINDINGS) == set(Kind) - {Kind.IGNORED}


# --- which suppressions do what -----------------------------------------------------------

# (reason, source) -> stops transactional mail, the recipient may resubscribe, a lift link lifts
STANDING = [
    (Reason.UNSUBSCRIBED, Source.ONE_CLICK, False, True, False),
    (Reason.UNSUBSCRIBED, Source.MAILBOX, False, True, False),
    (Reason.UNSUBSCRIBED, Source.CLI, False, True, False),
    (Reason.MANUAL, Source.CLI, False, False, False),
    (Reason.IMPORTED, Source.IMPORT, False, False, False),
    (Reason.BOUNCED, Source.BOUNCE, True, False, False),
    (Reason.BOUNCED, Source.ESP, True, False, False),
    (Reason.BOUNCED, Source.UNVERIFIED_BOUNCE, False, True, True),
    (Reason.COMPLAINED, Source.COMPLAINT, True, False, False),
    (Reason.COMPLAINED, Source.UNVERIFIED_COMPLAINT, False, True, True),
    (Reason.INVALID, Source.IMPORT, True, False, False),
    (Reason.ERASED, Source.ERASURE, True, False, False),
    (Reason.BOUNCED, "demo", True, False, False),  # a source of an older store, vouched for
]


@pytest.mark.parametrize(("reason", "source", "stops", "resubscribe", "link"), STANDING)
def test_what_each_suppression_allows(
    reason: Reason, source: str, stops: bool, resubscribe: bool, link: bool
) -> None:
    found = record(reason, source)
    assert optouts.stops_transactional(found) is stops
    assert optouts.may_resubscribe(found) is resubscribe
    assert optouts.link_may_lift(found) is link


def test_in_scope_finds_the_record_of_a_scope() -> None:
    records = [record(Reason.MANUAL, Source.CLI, NEWS), record(Reason.BOUNCED, Source.BOUNCE)]
    assert optouts.in_scope(records, GLOBAL) is records[1]
    assert optouts.in_scope(records, NEWS) is records[0]
    assert optouts.in_scope(records, ACME) is None


def consent(purpose: str, granted: bool, at: datetime) -> Consent:
    return Consent(JANE.sha256, purpose, granted, "web", at)


@pytest.mark.parametrize(
    ("consents", "issued", "expected"),
    [
        ([], T0.timestamp(), None),
        ([consent("news", True, T0)], T0.timestamp() + 1, None),  # older than the link
        ([consent("news", True, T0)], T0.timestamp(), 0),  # made since: the link is used
        ([consent("news", False, T0)], T0.timestamp() - 60, 0),  # revoked since
        ([consent("deals", True, T0)], T0.timestamp() - 60, None),  # another purpose
    ],
)
def test_a_confirmation_link_is_answered_by_a_choice_made_since(
    consents: list[Consent], issued: float, expected: int | None
) -> None:
    holder = Holder.of([], consents)
    found = optouts.answered(holder, "news", int(issued))
    assert found is (None if expected is None else holder.consents[expected])


# --- evidence ---------------------------------------------------------------------------

NOTE = InboundNote("m" * 64, "d" * 64, "arf abuse", None, "address")
EVIDENCE = [
    LinkEvidence(Source.ONE_CLICK, "192.0.2.7", 1_700_000_000),
    InboundEvidence(Source.MAILBOX, NOTE, "<jane@example.com>", 1_700_000_000),
    HeldEvidence(NOTE, "192.0.2.7"),
    PageConsent("192.0.2.7", 1_700_000_000, T0),
    ApiConsent("192.0.2.7", "curl/8", "Yes, mail me", None),
]


@pytest.mark.parametrize("evidence", EVIDENCE, ids=lambda e: type(e).__name__)
def test_the_audit_note_keeps_no_ip_and_no_address(evidence: optouts.Evidence) -> None:
    kept = json.dumps(evidence.record())
    noted = json.dumps(evidence.note())
    assert "192.0.2.7" in kept or "jane@" in kept  # the row has it (erased with the subject)
    assert "192.0.2.7" not in noted
    assert "@" not in noted


def test_evidence_as_the_rows_keep_it() -> None:
    link = LinkEvidence(Source.WEB, "192.0.2.7", 1_700_000_000)
    assert link.record() == {
        "channel": "web",
        "ip": "192.0.2.7",
        "token_issued": "2023-11-14T22:13:20+00:00",
    }
    assert link.note() == {"channel": "web", "token_issued": "2023-11-14T22:13:20+00:00"}
    assert InboundEvidence(Source.BOUNCE, NOTE, "<m@x>", None).record() == {
        "channel": "bounce",
        **NOTE.as_dict(),
        "message_id": "<m@x>",
    }
    assert HeldEvidence(NOTE, "192.0.2.7").record() == {
        **NOTE.as_dict(),
        "confirmed": "link",
        "ip": "192.0.2.7",
    }
    assert InboundNote.parse(json.dumps(NOTE.as_dict())) == NOTE
    assert PageConsent("192.0.2.7").record() == {"channel": "web", "ip": "192.0.2.7"}
    assert ApiConsent(text_sha256="ab").record() == {"channel": "api", "text_sha256": "ab"}


# --- recipients ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "keep", "expected"),
    [
        ("Jane@Example.com", True, Recipient(JANE.sha256, "sha256", "jane@example.com")),
        ("Jane@Example.com", False, Recipient(JANE.sha256, "sha256", None)),
        ("@Example.COM", False, Recipient(identity("@example.com"), "domain", "@example.com")),
    ],
)
def test_recipients_of_text(text: str, keep: bool, expected: Recipient) -> None:
    assert Recipient.parse(text, keep=keep) == expected


@pytest.mark.parametrize("text", ["", "jane", "@", "jane@@example.com", "@not a domain"])
def test_bad_recipients_are_refused(text: str) -> None:
    with pytest.raises(InvalidAddress):
        Recipient.parse(text, keep=True)


# --- the actions on both stores -------------------------------------------------------------


def event(text: str, scope: Scope, source: Source = Source.CLI) -> SuppressionEvent:
    return SuppressionEvent(Recipient.parse(text, keep=True), scope, Reason.MANUAL, source)


async def test_opt_out_writes_one_transaction_per_scope_source_and_evidence(
    backend: Backend,
) -> None:
    store = backend.store
    link = LinkEvidence(Source.WEB, "192.0.2.7", 1_700_000_000)
    events = [
        event("a@example.com", GLOBAL),
        event("b@example.com", GLOBAL),
        event("@example.org", GLOBAL),
        event("a@example.com", NEWS),
        optouts.unsubscribe(Recipient.hashed(JANE.sha256), NEWS, link),
    ]
    result = await optouts.opt_out(store, events, actor="t")
    assert (result.added, result.present, result.duplicates) == (5, 0, 0)
    actions = [e.action for e in [e async for e in store.iter_events()]]
    assert actions.count("suppress") == 3  # global by cli, news by cli, news by web
    rows = {(s.key, s.scope, s.source): s async for s in store.iter_suppressions(None)}
    web = rows[JANE.sha256, "topic:news", "web"]
    assert web.reason is Reason.UNSUBSCRIBED
    assert json.loads(web.evidence or "") == link.record()
    assert rows[identity("@example.org"), "global", "cli"].kind == "domain"
    again = await optouts.opt_out(store, events[:2], actor="t")
    assert (again.added, again.present) == (0, 2)


async def test_lift_takes_the_hash_and_the_md5_of_a_partner_list(backend: Backend) -> None:
    store = backend.store
    await store.suppress(
        [ImportItem(md5_identity("jane@example.com"), "md5", None, Reason.IMPORTED)],
        scope="partner:acme",
        source="import",
        actor="t",
    )
    await optouts.opt_out(store, [event("jane@example.com", ACME)], actor="t")
    lifted = await optouts.lift(
        store,
        [
            Recipient.parse("jane@example.com", keep=True),
            Recipient.parse("x@example.com", keep=True),
        ],
        scope=ACME,
        actor="t",
    )
    assert (lifted.removed, lifted.targets) == (1, 2)
    assert [s async for s in store.iter_suppressions("partner:acme")] == []


async def test_a_resubscribe_lifts_only_what_is_the_recipients(backend: Backend) -> None:
    store = backend.store
    link = LinkEvidence(Source.ONE_CLICK, "192.0.2.7", 1_700_000_000)
    me = Recipient.hashed(JANE.sha256)
    await optouts.opt_out(store, [optouts.unsubscribe(me, NEWS, link)], actor="t")
    await optouts.opt_out(
        store, [SuppressionEvent(me, GLOBAL, Reason.BOUNCED, Source.BOUNCE)], actor="t"
    )
    page = optouts.page_consent(JANE.sha256, "news", PageConsent("192.0.2.7"), "3")
    assert await optouts.resubscribe(store, JANE.sha256, NEWS, consent=page, actor="t")
    with pytest.raises(NotYours, match="another reason"):
        await optouts.resubscribe(store, JANE.sha256, GLOBAL, consent=None, actor="t")
    assert not await optouts.resubscribe(store, JANE.sha256, ACME, consent=None, actor="t")
    holder = await store.holder(JANE.sha256)
    assert [(s.scope, s.reason) for s in holder.suppressions] == [("global", Reason.BOUNCED)]
    assert [(c.purpose, c.granted, c.policy_version) for c in holder.consents] == [
        ("news", True, "3")
    ]


async def test_a_lift_link_lifts_an_unverified_report_only(backend: Backend) -> None:
    store = backend.store
    me = Recipient.hashed(JANE.sha256)
    unverified = SuppressionEvent(me, GLOBAL, Reason.BOUNCED, Source.UNVERIFIED_BOUNCE)
    await optouts.opt_out(store, [unverified], actor="t")
    await optouts.opt_out(store, [event("jane@example.com", NEWS)], actor="t")
    assert not await optouts.lift_report(store, JANE.sha256, NEWS, actor="t")  # a block
    assert await optouts.lift_report(store, JANE.sha256, GLOBAL, actor="t")
    assert not await optouts.lift_report(store, JANE.sha256, GLOBAL, actor="t")  # gone now
    holder = await store.holder(JANE.sha256)
    assert [s.scope for s in holder.suppressions] == ["topic:news"]


async def test_a_confirmation_counts_once_and_lifts_an_older_unsubscribe(
    backend: Backend,
) -> None:
    store = backend.store
    link = LinkEvidence(Source.ONE_CLICK, "192.0.2.7", 1_700_000_000)
    me = Recipient.hashed(JANE.sha256)
    await optouts.opt_out(store, [optouts.unsubscribe(me, NEWS, link)], actor="t")
    issued = int(datetime.now(UTC).timestamp()) + 1  # the request came after the unsubscribe
    evidence = PageConsent("192.0.2.7", issued, datetime.fromtimestamp(issued + 5, UTC))
    given = optouts.page_consent(JANE.sha256, "news", evidence, None)
    holder = await store.holder(JANE.sha256)
    assert await optouts.confirm(store, holder, given, issued, actor="t") is None
    holder = await store.holder(JANE.sha256)
    assert holder.suppressions == ()
    assert json.loads(holder.consents[0].evidence or "")["requested_at"]
    again = await optouts.confirm(store, holder, given, issued, actor="t")
    assert again == holder.consents[0]  # used once: nothing more is recorded
    assert len((await store.subject(JANE)).consents) == 1
