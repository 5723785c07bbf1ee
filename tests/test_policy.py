"""policy.decide: a pure table from (facts, class, purpose, rules) to keep / drop."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from gateway.optouts import HARD_REASONS, UNVERIFIED_SOURCES
from gateway.outbound.policy import MessageClass, Rules, decide, scopes_for, version_key
from suppression.model import (
    Consent,
    Facts,
    KeyKind,
    Reason,
    Source,
    Suppression,
)

pytestmark = pytest.mark.pure

T0 = datetime(2024, 3, 5, 14, 30, tzinfo=UTC)
T1 = datetime(2024, 6, 7, 9, 0, tzinfo=UTC)
KEY = "a" * 64
MARKETING, TRANSACTIONAL, PARTNER = (
    MessageClass.MARKETING,
    MessageClass.TRANSACTIONAL,
    MessageClass.PARTNER,
)
CONSENTING = Rules(require_consent=True, consent_versions={})
OPEN = Rules(require_consent=False, consent_versions={})


def suppression(
    reason: Reason = Reason.UNSUBSCRIBED,
    scope: str = "global",
    kind: KeyKind = "sha256",
    source: str = "one-click",
) -> Suppression:
    return Suppression(KEY, kind, scope, reason, source, T0)


def consent(
    granted: bool = True, version: str | None = None, purpose: str = "news", source: str = "web"
) -> Consent:
    return Consent(KEY, purpose, granted, source, T1, version)


def facts(
    kind: MessageClass,
    topic: str,
    records: Iterable[Suppression] = (),
    given: Consent | None = None,
) -> Facts:
    """What Store.lookup_many answers: only the suppressions in the message's scopes."""
    scopes = scopes_for(kind, topic)
    return Facts(tuple(r for r in records if r.scope in scopes), given)


def purpose_of(kind: MessageClass, topic: str) -> str:
    return "partner-offers" if kind is PARTNER else topic


@dataclass(frozen=True)
class Case:
    name: str
    kind: MessageClass
    records: tuple[Suppression, ...]
    given: Consent | None
    rules: Rules
    keep: bool
    reason: str


def case(
    name: str,
    kind: MessageClass,
    records: Iterable[Suppression],
    given: Consent | None,
    rules: Rules,
    expected: str,
) -> Case:
    keep = expected in ("consented", "not-suppressed", "transactional")
    return Case(name, kind, tuple(records), given, rules, keep, expected)


UNSUB, BOUNCE = suppression(Reason.UNSUBSCRIBED), suppression(Reason.BOUNCED)
CASES = [
    case("consented", MARKETING, [], consent(), CONSENTING, "consented"),
    case("no consent, required", MARKETING, [], None, CONSENTING, "no-consent"),
    case("no consent, not required", MARKETING, [], None, OPEN, "not-suppressed"),
    case("revoked", MARKETING, [], consent(granted=False), CONSENTING, "consent-revoked"),
    case("revoked, not required", MARKETING, [], consent(granted=False), OPEN, "consent-revoked"),
    case("unsubscribed beats consent", MARKETING, [UNSUB], consent(), CONSENTING, "unsubscribed"),
    case("unsubscribed, open", MARKETING, [UNSUB], None, OPEN, "unsubscribed"),
    case(
        "topic suppression",
        MARKETING,
        [suppression(scope="topic:news")],
        consent(),
        OPEN,
        "unsubscribed",
    ),
    case(
        "other topic's suppression",
        MARKETING,
        [suppression(scope="topic:deals")],
        consent(),
        CONSENTING,
        "consented",
    ),
    case(
        "domain suppression",
        MARKETING,
        [suppression(Reason.MANUAL, kind="domain")],
        consent(),
        CONSENTING,
        "manual",
    ),
    case(
        "md5 list entry",
        MARKETING,
        [suppression(Reason.IMPORTED, kind="md5")],
        consent(),
        CONSENTING,
        "imported",
    ),
    case(
        "transactional ignores unsubscribe",
        TRANSACTIONAL,
        [UNSUB],
        None,
        CONSENTING,
        "transactional",
    ),
    case(
        "transactional ignores manual domain block",
        TRANSACTIONAL,
        [suppression(Reason.MANUAL, kind="domain")],
        None,
        CONSENTING,
        "transactional",
    ),
    case(
        "transactional stops at hard bounce", TRANSACTIONAL, [BOUNCE], None, CONSENTING, "bounced"
    ),
    case(
        "transactional stops at complaint",
        TRANSACTIONAL,
        [suppression(Reason.COMPLAINED)],
        None,
        CONSENTING,
        "complained",
    ),
    case(
        "transactional ignores a bounce no token vouches for",
        TRANSACTIONAL,
        [suppression(Reason.BOUNCED, source=Source.UNVERIFIED_BOUNCE)],
        None,
        CONSENTING,
        "transactional",
    ),
    case(
        "transactional ignores a complaint no token vouches for",
        TRANSACTIONAL,
        [suppression(Reason.COMPLAINED, source=Source.UNVERIFIED_COMPLAINT)],
        None,
        CONSENTING,
        "transactional",
    ),
    case(
        "marketing stops at a bounce no token vouches for",
        MARKETING,
        [suppression(Reason.BOUNCED, source=Source.UNVERIFIED_BOUNCE)],
        consent(),
        CONSENTING,
        "bounced",
    ),
    case(
        "transactional ignores a topic's bounce",
        TRANSACTIONAL,
        [suppression(Reason.BOUNCED, scope="topic:news")],
        None,
        CONSENTING,
        "transactional",
    ),
    case(
        "transactional needs no consent",
        TRANSACTIONAL,
        [],
        consent(granted=False),
        CONSENTING,
        "transactional",
    ),
    case(
        "partner consented", PARTNER, [], consent(purpose="partner-offers"), CONSENTING, "consented"
    ),
    case("partner without consent", PARTNER, [], None, CONSENTING, "no-consent"),
    # require_consent speaks of marketing mail: partner offers go to consenters only
    case("partner without consent, open", PARTNER, [], None, OPEN, "no-consent"),
    case(
        "partner unsubscribed",
        PARTNER,
        [UNSUB],
        consent(purpose="partner-offers"),
        OPEN,
        "unsubscribed",
    ),
]


def test_an_erased_person_gets_only_what_a_fresh_consent_allows() -> None:
    erased = Suppression(KEY, "sha256", "global", Reason.ERASED, "erasure", T1)
    before = Consent(KEY, "news", True, "web", T0)
    since = Consent(KEY, "news", True, "web", datetime(2024, 7, 1, tzinfo=UTC))
    for kind in (MARKETING, TRANSACTIONAL):
        assert not decide(Facts((erased,), before), kind, "news", OPEN).keep
    assert not decide(Facts((erased,), None), TRANSACTIONAL, "news", OPEN).keep
    verdict = decide(Facts((erased,), since), MARKETING, "news", CONSENTING)
    assert (verdict.keep, verdict.reason) == (True, "consented")


@pytest.mark.parametrize("c", CASES, ids=[c.name for c in CASES])
def test_decision_table(c: Case) -> None:
    verdict = decide(facts(c.kind, "news", c.records, c.given), c.kind, "news", c.rules)
    assert (verdict.keep, verdict.reason) == (c.keep, c.reason)
    assert verdict.explanation


def oracle(
    kind: MessageClass, records: tuple[Suppression, ...], given: Consent | None, rules: Rules
) -> tuple[bool, str]:
    """The rules of SPEC.md, written out independently of the implementation."""
    scopes = {"global"} if kind is TRANSACTIONAL else {"global", "topic:news"}
    for record in records:
        if record.scope not in scopes:
            continue
        fresh = given is not None and given.granted and given.created > record.created
        if record.reason is Reason.ERASED and fresh:
            continue  # only a consent given since the erasure mails an erased person again
        # a bounce or complaint no token vouches for stops marketing only
        vouched = record.source not in UNVERIFIED_SOURCES
        if kind is not TRANSACTIONAL or (record.reason in HARD_REASONS and vouched):
            return False, record.reason.value
    if kind is TRANSACTIONAL:
        return True, "transactional"
    if given is None:
        needed = rules.require_consent or kind is PARTNER
        return (False, "no-consent") if needed else (True, "not-suppressed")
    if not given.granted:
        return False, "consent-revoked"
    minimum = rules.consent_versions.get(purpose_of(kind, "news"))
    if minimum is not None:
        if given.policy_version is None:
            return False, "consent-outdated"
        if version_key(given.policy_version) < version_key(minimum):
            return False, "consent-outdated"
    return True, "consented"


SCOPES = ("global", "topic:news", "topic:deals")
KINDS: tuple[KeyKind, ...] = ("sha256", "md5", "domain")
SUPPRESSION_CHOICES: list[tuple[Suppression, ...]] = [
    (),
    *((suppression(r, s, k),) for r, s, k in itertools.product(Reason, SCOPES, KINDS)),
    (suppression(Reason.UNSUBSCRIBED), suppression(Reason.BOUNCED, kind="domain")),
    *(
        (suppression(reason, scope, source=source),)
        for reason, scope, source in itertools.product(
            (Reason.BOUNCED, Reason.COMPLAINED), SCOPES, UNVERIFIED_SOURCES
        )
    ),
    (
        suppression(Reason.BOUNCED, source=Source.UNVERIFIED_BOUNCE),
        suppression(Reason.COMPLAINED, source=Source.COMPLAINT),
    ),
]
CONSENT_CHOICES: list[Consent | None] = [
    None,
    consent(granted=False, version="3"),
    consent(version=None),
    consent(version="2"),
    consent(version="3"),
    consent(version="10"),
]
RULE_CHOICES = [
    Rules(require, versions)
    for require in (True, False)
    for versions in ({}, {"news": "3", "partner-offers": "3"})
]


@pytest.mark.parametrize("kind", list(MessageClass))
def test_every_combination_follows_the_rules(kind: MessageClass) -> None:
    checked = 0
    for records, given, rules in itertools.product(
        SUPPRESSION_CHOICES, CONSENT_CHOICES, RULE_CHOICES
    ):
        purpose = purpose_of(kind, "news")
        verdict = decide(facts(kind, "news", records, given), kind, purpose, rules)
        assert (verdict.keep, verdict.reason) == oracle(kind, records, given, rules), (
            records,
            given,
            rules,
        )
        checked += 1
    assert checked == len(SUPPRESSION_CHOICES) * len(CONSENT_CHOICES) * len(RULE_CHOICES)


@pytest.mark.parametrize(
    ("given", "minimum", "keep"),
    [
        ("3", "3", True),
        ("4", "3", True),
        ("2", "3", False),
        ("10", "9", True),  # natural order, not text order
        ("9", "10", False),
        ("2024-11", "2024-05", True),
        ("2024-05", "2024-11", False),
        ("2024-05", "2024-05", True),
        ("2025-01", "2024-12", True),
        ("v10", "v9", True),
        ("1.9", "1.10", False),
        ("1.10", "1.9", True),
        (None, "1", False),
    ],
)
def test_consent_version_minimum(given: str | None, minimum: str, keep: bool) -> None:
    rules = Rules(True, {"news": minimum})
    verdict = decide(facts(MARKETING, "news", (), consent(version=given)), MARKETING, "news", rules)
    assert verdict.keep is keep
    assert verdict.reason == ("consented" if keep else "consent-outdated")
    if not keep:
        assert f"version {minimum} or later is required" in verdict.explanation
        assert f"under policy version {given or 'unknown'}" in verdict.explanation


def test_version_minimum_applies_to_its_purpose_only() -> None:
    rules = Rules(True, {"deals": "5"})
    given = consent(version="1")
    verdict = decide(facts(MARKETING, "news", (), given), MARKETING, "news", rules)
    assert (verdict.keep, verdict.reason) == (True, "consented")


def test_outdated_consent_drops_even_when_consent_is_not_required() -> None:
    # pinned: an outdated consent is never taken as permission (see the report)
    rules = Rules(False, {"news": "3"})
    verdict = decide(facts(MARKETING, "news", (), consent(version="2")), MARKETING, "news", rules)
    assert (verdict.keep, verdict.reason) == (False, "consent-outdated")


def test_version_key_orders_naturally() -> None:
    versions = ["10", "9", "2024-11", "2024-05", "1.10", "1.9", "2", "v2", "v10"]
    assert sorted(["10", "9", "2", "1"], key=version_key) == ["1", "2", "9", "10"]
    assert sorted(["2024-11", "2024-05", "2023-12"], key=version_key) == [
        "2023-12",
        "2024-05",
        "2024-11",
    ]
    assert sorted(["1.10", "1.9", "1.2"], key=version_key) == ["1.2", "1.9", "1.10"]
    assert sorted(["v10", "v2"], key=version_key) == ["v2", "v10"]
    assert all(version_key(v) == version_key(v) for v in versions)


def test_explanations_say_what_support_needs() -> None:
    domain = suppression(Reason.COMPLAINED, kind="domain", source="complaint")
    verdict = decide(facts(MARKETING, "news", [domain]), MARKETING, "news", CONSENTING)
    assert verdict.explanation == (
        "its domain is suppressed (global, complained, via complaint) since 2024-03-05 14:30 UTC"
    )
    address = suppression(Reason.UNSUBSCRIBED, scope="topic:news")
    verdict = decide(facts(MARKETING, "news", [address]), MARKETING, "news", CONSENTING)
    assert verdict.explanation.startswith("the address is suppressed (topic:news, unsubscribed")
    revoked = decide(
        facts(MARKETING, "news", (), consent(granted=False)), MARKETING, "news", CONSENTING
    )
    assert revoked.explanation == "consent for news was revoked on 2024-06-07 via web"
    missing = decide(facts(MARKETING, "news"), MARKETING, "news", CONSENTING)
    assert missing.explanation == "there is no consent for news on record"
    granted = decide(facts(MARKETING, "news", (), consent(version="4")), MARKETING, "news", OPEN)
    assert granted.explanation == (
        "consent for news given on 2024-06-07 via web under policy version 4"
    )


@pytest.mark.parametrize(
    ("kind", "partner", "scopes"),
    [
        (MARKETING, None, ("global", "topic:news")),
        (PARTNER, None, ("global", "topic:news", "topic:partner-offers")),
        (PARTNER, "acme", ("global", "topic:news", "topic:partner-offers", "partner:acme")),
        (TRANSACTIONAL, None, ("global",)),
        (TRANSACTIONAL, "acme", ("global",)),
    ],
)
def test_scopes_for(kind: MessageClass, partner: str | None, scopes: tuple[str, ...]) -> None:
    assert scopes_for(kind, "news", partner) == scopes
