"""Pure decisions: (recipient facts, class, topic, rules) -> Keep or Drop with a reason."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from enum import StrEnum

from gateway.optouts import stops_transactional
from suppression.model import PARTNER_OFFERS, Facts, Reason, Suppression
from suppression.scope import GLOBAL, Scope


class MessageClass(StrEnum):
    """What kind of mail a message is (``X-Optgate-Class``)."""

    MARKETING = "marketing"
    TRANSACTIONAL = "transactional"
    PARTNER = "partner"


IP = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class ClassRules:
    """The class of a message without ``X-Optgate-Class``, from its envelope ([policy]
    transactional_senders, _domains, _networks, marketing_senders), so that applications
    need no new header. The most specific rule wins: the sender address (a
    marketing_senders entry over the rest), then its domain, then the client's network;
    none: marketing."""

    transactional_senders: Collection[str] = frozenset()
    transactional_domains: Collection[str] = frozenset()
    transactional_networks: tuple[Network, ...] = ()
    marketing_senders: Collection[str] = frozenset()

    def classify(self, mail_from: str, client: IP | None) -> tuple[MessageClass, str]:
        """The class and the rule that gave it: sender, domain, network or default."""
        sender = mail_from.strip().lower()
        if sender in self.marketing_senders:
            return MessageClass.MARKETING, "sender"
        if sender in self.transactional_senders:
            return MessageClass.TRANSACTIONAL, "sender"
        if sender and sender.rpartition("@")[2] in self.transactional_domains:
            return MessageClass.TRANSACTIONAL, "domain"
        if client is not None and any(client in net for net in self.transactional_networks):
            return MessageClass.TRANSACTIONAL, "network"
        return MessageClass.MARKETING, "default"


@dataclass(frozen=True, slots=True)
class Rules:
    """The part of the configuration decisions depend on."""

    require_consent: bool
    consent_versions: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Verdict:
    """Keep or drop one recipient, with a machine reason and words for people."""

    keep: bool
    reason: str
    explanation: str


def scopes_for(kind: MessageClass, topic: str, partner: str | None = None) -> tuple[str, ...]:
    """The suppression scopes that apply to a message, as the store's lookup takes them."""
    if kind is MessageClass.TRANSACTIONAL:
        return (str(GLOBAL),)
    scopes = [GLOBAL, Scope.topic(topic)]
    if kind is MessageClass.PARTNER and topic != PARTNER_OFFERS:
        # "no more partner offers" is the topic partner-offers, whatever the offer's topic
        scopes.append(Scope.topic(PARTNER_OFFERS))
    if partner:
        scopes.append(Scope.partner(partner))
    return tuple(str(scope) for scope in scopes)


def version_key(version: str) -> tuple[tuple[int, str], ...]:
    """Order policy versions naturally: 2 < 10, 2024-05 < 2024-11."""
    return tuple(
        (int(part), "") if part.isdigit() else (-1, part)
        for part in re.findall(r"\d+|[^\d]+", version)
    )


def _blocking(facts: Facts, kind: MessageClass) -> Suppression | None:
    for record in facts.suppressions:
        if record.reason is Reason.ERASED and _fresh_consent(facts, record):
            continue
        # transactional mail stops only for a vouched-for bounce, complaint, invalid or erased
        if kind is not MessageClass.TRANSACTIONAL or stops_transactional(record):
            return record
    return None


def _fresh_consent(facts: Facts, erased: Suppression) -> bool:
    """An erased person is mailed again only on what a consent given since allows."""
    consent = facts.consent
    return consent is not None and consent.granted and consent.created > erased.created


def decide(facts: Facts, kind: MessageClass, purpose: str, rules: Rules) -> Verdict:
    """Decide one recipient of one message."""
    blocked = _blocking(facts, kind)
    if blocked is not None:
        since = blocked.created.strftime("%Y-%m-%d %H:%M UTC")
        what = "its domain is" if blocked.kind == "domain" else "the address is"
        return Verdict(
            False,
            blocked.reason.value,
            f"{what} suppressed ({blocked.scope}, {blocked.reason.value}, via {blocked.source}) "
            f"since {since}",
        )
    if kind is MessageClass.TRANSACTIONAL:
        return Verdict(True, "transactional", "transactional mail is exempt from opt-outs")
    consent = facts.consent
    if consent is not None and not consent.granted:
        return Verdict(
            False,
            "consent-revoked",
            f"consent for {purpose} was revoked on {consent.created:%Y-%m-%d} via {consent.source}",
        )
    if consent is None:
        # require_consent is about marketing mail; partner offers only ever go to consenters
        if rules.require_consent or kind is MessageClass.PARTNER:
            return Verdict(False, "no-consent", f"there is no consent for {purpose} on record")
        return Verdict(True, "not-suppressed", "not suppressed, and consent is not required")
    minimum = rules.consent_versions.get(purpose)
    given = consent.policy_version
    if minimum and (given is None or version_key(given) < version_key(minimum)):
        return Verdict(
            False,
            "consent-outdated",
            f"consent for {purpose} was given under policy version {given or 'unknown'}, "
            f"but version {minimum} or later is required",
        )
    return Verdict(
        True,
        "consented",
        f"consent for {purpose} given on {consent.created:%Y-%m-%d} via {consent.source}"
        + (f" under policy version {given}" if given else ""),
    )
