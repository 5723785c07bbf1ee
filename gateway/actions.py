"""The administrative operations that only read (or audit a read), one function each.

The command line (gateway/cli/admin.py) and the REST API (gateway/api/) call the
same functions: they parse their own input, call one of these, and show the
result their own way (lines or JSON, exit codes or HTTP statuses). A result is
a frozen dataclass; ``as_json`` where both show the same JSON. What changes a
suppression or a consent (opt out, lift, consent, revoke, erase) is in
gateway/optouts.py, the one path every channel takes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from gateway.optouts import kept_messages
from gateway.outbound.message import purpose_of
from gateway.outbound.policy import MessageClass, Rules, Verdict, decide, scopes_for
from gateway.runtime.stores import read_anchor, write_anchor
from suppression.address import Address, normalize
from suppression.errors import OptgateError
from suppression.model import (
    Suppression,
    check_name,
    now,
)
from suppression.partners import OfferStatus, Partner, UnknownPartner
from suppression.rates import COMPLAINT_LIMIT, Counts
from suppression.statecheck import ChainReport
from suppression.store import Checks, Listings, PartnerReports, Reports, SubjectAccess


def utc(at: datetime) -> str:
    """A time as reports show it: UTC to the second."""
    return f"{at:%Y-%m-%dT%H:%M:%SZ}"


def hours(delay: timedelta) -> float:
    """A delay in hours, to a tenth."""
    return round(delay.total_seconds() / 3600, 1)


# --- suppressions ---------------------------------------------------------------------


def suppression_json(record: Suppression) -> dict[str, object]:
    """One suppression as check shows it (no plaintext, no evidence)."""
    return {
        "kind": record.kind,
        "scope": record.scope,
        "reason": record.reason.value,
        "source": record.source,
        "created": utc(record.created),
    }


@dataclass(frozen=True, slots=True)
class Checked:
    """One address: as given, its suppressions (any scope, by hash, MD5 or domain), and
    the verdict marketing mail on a topic would get."""

    given: str
    address: Address
    suppressions: tuple[Suppression, ...]
    topic: str
    verdict: Verdict

    def state_json(self) -> dict[str, object]:
        """What ``suppress check --json`` prints per address."""
        return {
            "address": self.given,
            "sha256": self.address.sha256,
            "suppressed": bool(self.suppressions),
            "suppressions": [suppression_json(r) for r in self.suppressions],
        }

    def as_json(self) -> dict[str, object]:
        """The state with the verdict (the API's check)."""
        return {
            **self.state_json(),
            "topic": self.topic,
            "sent": self.verdict.keep,
            "reason": self.verdict.reason,
            "explanation": self.verdict.explanation,
        }


async def check(store: Checks, texts: Sequence[str], *, topic: str, rules: Rules) -> list[Checked]:
    """Every address's suppressions and its marketing verdict on ``topic`` (one lookup)."""
    addresses = [normalize(text) for text in texts]
    kind = MessageClass.MARKETING
    purpose = purpose_of(kind, topic)
    facts = await store.lookup_many(addresses, scopes_for(kind, topic), purpose)
    checked = []
    for given, address in zip(texts, addresses, strict=True):
        found = (await store.subject(address)).suppressions
        verdict = decide(facts[address.sha256], kind, purpose, rules)
        checked.append(Checked(given, address, found, topic, verdict))
    return checked


# --- data subjects --------------------------------------------------------------------


def _jsonable(record: Any) -> dict[str, Any]:
    data = asdict(record)
    return {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in data.items()}


async def subject_access(
    store: SubjectAccess, address: Address, *, actor: str, keep_raw: str
) -> dict[str, Any]:
    """Every record about an address, as JSON: what the store holds and the kept inbound
    messages ([inbound] keep_raw) that hold it, all that ``subject erase`` clears or
    deletes; the access is audited."""
    record = await store.subject(address)
    kept = await asyncio.to_thread(kept_messages, Path(keep_raw), address) if keep_raw else []
    await store.audit(actor=actor, action="subject-access", subject=address.sha256)
    return {
        "address": address.normalized,
        "sha256": address.sha256,
        "suppressions": [_jsonable(s) for s in record.suppressions],
        "consents": [_jsonable(c) for c in record.consents],
        "sends": [
            {
                "message": send.message,
                "topic": send.topic,
                "class": send.kind,
                "at": send.at.isoformat(),
            }
            for send in record.sends
        ],
        "events": [
            {"seq": e.seq, "at": e.at.isoformat(), **json.loads(e.body)} for e in record.events
        ],
        "held_requests": [_jsonable(h) for h in record.held],
        "soft_bounces": [_jsonable(b) for b in record.soft_bounces],
        "webhook_events": [_jsonable(d) for d in record.deliveries],
        "offer_copies": [_jsonable(c) for c in record.offer_copies],
        "kept_messages": [str(path) for path in kept],
    }


@dataclass(frozen=True, slots=True)
class Explained:
    """Would marketing mail on a topic be sent to an address, and why."""

    given: str
    address: Address
    topic: str
    verdict: Verdict

    def as_json(self) -> dict[str, object]:
        """What ``explain --json`` prints."""
        return {
            "address": self.given,
            "sha256": self.address.sha256,
            "class": MessageClass.MARKETING.value,
            "topic": self.topic,
            "sent": self.verdict.keep,
            "reason": self.verdict.reason,
            "explanation": self.verdict.explanation,
        }


async def explain(store: Checks, text: str, *, topic: str, rules: Rules) -> Explained:
    """The verdict for a marketing message on a topic, and its reason in words."""
    [checked] = await check(store, [text], topic=topic, rules=rules)
    return Explained(text, checked.address, topic, checked.verdict)


# --- reports --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Compliance:
    """Every opt-out that marketing mail followed, and how late the last came."""

    opt_outs: int
    longest: timedelta
    violations: tuple[dict[str, Any], ...]

    def as_json(self) -> dict[str, object]:
        """What ``report compliance --json`` prints."""
        return {
            "opt_outs": self.opt_outs,
            "longest_delay_hours": hours(self.longest),
            "violations": list(self.violations),
        }


async def compliance(store: Reports) -> Compliance:
    """Was marketing mail relayed to anyone after they opted out? (one streamed pass)"""
    total = 0
    worst = timedelta(0)
    violations: list[dict[str, Any]] = []
    async for check in store.compliance():
        total += 1
        if check.sends_after == 0 or check.last_send_after is None:
            continue
        delay = check.last_send_after - check.at
        worst = max(worst, delay)
        violations.append(
            {
                "sha256": check.sha256,
                "scope": check.scope,
                "reason": check.reason.value,
                "source": check.source,
                "opted_out": utc(check.at),
                "messages_after": check.sends_after,
                "last_message": utc(check.last_send_after),
                "delay_hours": hours(delay),
            }
        )
    return Compliance(total, worst, tuple(violations))


@dataclass(frozen=True, slots=True)
class Verified:
    """A verification of the audit log, the head it was anchored at, and whether the new
    head could be recorded (None: it could, or the chain was not intact)."""

    report: ChainReport
    anchored: tuple[int, str] | None
    anchor: Path
    unrecorded: str | None = None

    def as_json(self) -> dict[str, object]:
        """What ``store verify --json`` prints."""
        report, anchored = self.report, self.anchored
        return {
            "intact": report.intact,
            "events": report.events,
            "head": report.head_text,
            "broken_at": report.broken_at,
            "problem": report.problem,
            "rows": dict(report.rows),
            "mismatches": [
                {"table": m.table, "expected": m.expected, "found": m.found, "events": m.events}
                for m in report.mismatches
            ],
            "anchor": {"file": str(self.anchor), "head": f"{anchored[0]}:{anchored[1]}"}
            if anchored
            else None,
        }


async def verify(store: Reports, anchor: Path, expect: Sequence[tuple[int, str]]) -> Verified:
    """Verify the chain against ``expect`` and the anchored head; record the new head."""
    anchored = read_anchor(anchor)
    report = await store.verify_chain([*expect, *([anchored] if anchored else [])])
    unrecorded = None
    if report.intact:
        try:
            await asyncio.to_thread(write_anchor, anchor, (report.events, report.head))
        except OSError as exc:
            unrecorded = str(exc.strerror)
    return Verified(report, anchored, anchor, unrecorded)


_UNITS = {"m": 60, "h": 3600, "d": 86400}


def since(text: str, *, at: datetime | None = None) -> datetime:
    """A period's start: a duration back from now (``7d``, ``12h``, ``30m``) or an ISO 8601
    time with its offset; OptgateError otherwise."""
    text = text.strip()
    number, unit = text[:-1], text[-1:].lower()
    if number.isdigit() and unit in _UNITS:
        return (at or now()) - timedelta(seconds=int(number) * _UNITS[unit])
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise OptgateError(
            f"{text!r} is neither a duration (7d, 12h, 30m) nor a time with its offset "
            "(2025-05-01T00:00:00Z)"
        )
    return parsed


@dataclass(frozen=True, slots=True)
class Rates:
    """Per topic (its campaigns' sum) and per campaign: sent, opted out, rates, flags."""

    since: datetime
    rows: tuple[Counts, ...]

    def topics(self) -> list[tuple[Counts, list[Counts]]]:
        """Each topic's total with its campaigns (mail without a campaign is one of them)."""
        grouped: dict[str, list[Counts]] = {}
        for row in self.rows:
            grouped.setdefault(row.topic, []).append(row)
        totals = []
        for topic, rows in grouped.items():
            total = Counts(topic, None, 0)
            for row in rows:
                total = total.plus(row)
            totals.append((total, rows))
        return totals

    def as_json(self) -> dict[str, object]:
        """What ``report rates --json`` prints and the API answers."""
        return {
            "since": self.since.isoformat(),
            "complaint_limit": COMPLAINT_LIMIT,
            "topics": [
                {**total.as_json(), "campaigns": [row.as_json() for row in rows]}
                for total, rows in self.topics()
            ],
        }


async def rates(store: Listings, start: datetime) -> Rates:
    """Sent, unsubscribed, bounced and complained per topic and campaign since ``start``
    (opt-outs count for the last marketing copy their recipient got before them)."""
    return Rates(start, tuple(await store.rates(start)))


# --- partners -------------------------------------------------------------------------


async def known_partner(store: PartnerReports, name: str) -> Partner:
    """The partner of that name; UnknownPartner when there is none."""
    partner = await store.partner(check_name(name, "partner"))
    if partner is None:
        raise UnknownPartner(f"no partner named {name!r}: see optgate partner list")
    return partner


def shown(count: int, k: int) -> int | str:
    """A count a partner may see: below k as "<k", else rounded down to a multiple of k.

    Rounding keeps a small count from being worked out as the difference of
    two larger ones (audience minus sent, say).
    """
    if k <= 1:
        return count
    return f"<{k}" if count < k else count - count % k


def partner_view(status: OfferStatus, k: int) -> dict[str, object]:
    """One offer as its partner may see it: aggregate counts only."""
    return {
        "offer": status.id,
        "submitted": status.created.isoformat(),
        "topic": status.topic,
        "state": status.state.value,
        "audience": shown(status.audience, k),
        "sent": shown(status.sent, k),
        "suppressed": shown(status.suppressed, k),
        "bounced": shown(status.bounced, k),
        "unsubscribed": shown(status.unsubscribed, k),
    }


async def partner_report(store: PartnerReports, name: str, k: int) -> dict[str, Any]:
    """A partner's offers with counts of at least k only (what the partner may be shown)."""
    partner = await known_partner(store, name)
    views = [partner_view(s, k) for s in await store.offer_statuses(partner.name)]
    return {"partner": partner.name, "threshold": k, "offers": views}
