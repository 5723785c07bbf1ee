"""The suppression and consent state the audit chain vouches for, against the live tables.

Every event that adds rows records their count and an additive multiset hash
(each row's SHA-256 as a number, summed modulo 2^256); an event that deletes
suppression rows records theirs, grouped by the event that added them. Walking
the chain therefore rebuilds the hash of the state the tables must hold;
streaming the tables gives the hash of the state they do hold. A deleted,
added or altered row (key, scope, kind, reason, source, time, event) makes the
two differ; a second pass names the events whose rows differ.

Plaintext and evidence are not hashed: erasure clears them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from suppression.audit import ChainWalk, head_text
from suppression.model import AuditEvent, Consent, Suppression

MODULUS = 1 << 256
TABLES = ("suppression", "consent")


def _time(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def _number(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest(), "big")


def suppression_hash(s: Suppression) -> int:
    """One suppression row as a number (its plaintext and evidence left out)."""
    return _number(
        f"s\n{s.kind}\n{s.key}\n{s.scope}\n{s.reason.value}\n{s.source}\n{_time(s.created)}\n"
        f"{s.event}"
    )


def consent_hash(c: Consent) -> int:
    """One consent row as a number (its plaintext and evidence left out)."""
    return _number(
        f"c\n{c.sha256}\n{c.purpose}\n{int(c.granted)}\n{c.source}\n{_time(c.created)}\n"
        f"{c.policy_version or ''}\n{c.event}"
    )


@dataclass(slots=True)
class Sum:
    """A multiset of rows: how many, and the sum of their hashes."""

    count: int = 0
    total: int = 0

    def add(self, number: int, times: int = 1) -> None:
        """Put a row in (``times`` -1 takes it out)."""
        self.count += times
        self.total = (self.total + times * number) % MODULUS

    def merge(self, other: Sum, sign: int = 1) -> None:
        """Add (or, with sign -1, subtract) another multiset."""
        self.count += sign * other.count
        self.total = (self.total + sign * other.total) % MODULUS

    def as_json(self) -> list[object]:
        """[count, hex] as events record it."""
        return [self.count, f"{self.total:064x}"]

    @classmethod
    def of(cls, numbers: Iterable[int]) -> Sum:
        """The multiset of some row hashes."""
        result = cls()
        for number in numbers:
            result.add(number)
        return result

    @classmethod
    def parse(cls, value: object) -> Sum:
        """From [count, hex]; ValueError if it is something else."""
        if not isinstance(value, list) or len(value) != 2:
            raise ValueError(f"not a row sum: {value!r}")
        count, total = value
        if not isinstance(count, int) or not isinstance(total, str):
            raise ValueError(f"not a row sum: {value!r}")
        return cls(count, int(total, 16))


def rows_detail(
    suppressions: Iterable[Suppression] = (), consents: Iterable[Consent] = ()
) -> dict[str, object]:
    """What an event that adds rows records about them."""
    detail: dict[str, object] = {}
    added = Sum.of(map(suppression_hash, suppressions))
    if added.count:
        detail["suppression"] = added.as_json()
    appended = Sum.of(map(consent_hash, consents))
    if appended.count:
        detail["consent"] = appended.as_json()
    return {"rows": detail} if detail else {}


def legacy_detail(
    through: int, old_head: str, suppressions: Sum, consents: Sum
) -> dict[str, object]:
    """What the event that rekeys a chain records: the rows of the events before it."""
    return {
        "legacy": {
            "through": through,
            "previous_head": f"{through}:{old_head}",
            "suppression": suppressions.as_json(),
            "consent": consents.as_json(),
        }
    }


def removed_detail(removed: Iterable[Suppression]) -> dict[str, object]:
    """What an event that deletes suppression rows records: their sums per adding event."""
    groups: dict[int, Sum] = {}
    for s in removed:
        groups.setdefault(s.event or 0, Sum()).add(suppression_hash(s))
    if not groups:
        return {}
    return {"removed": [[event, *groups[event].as_json()] for event in sorted(groups)]}


@dataclass(frozen=True, slots=True)
class Mismatch:
    """A table whose rows are not the ones the chain vouches for."""

    table: str
    expected: int  # rows
    found: int
    events: tuple[int, ...] = ()  # the events whose rows differ, when located

    def __str__(self) -> str:
        where = ""
        if self.events:
            shown = ", ".join(map(str, self.events[:10]))
            where = f"; the rows of event(s) {shown}{', ...' if len(self.events) > 10 else ''}"
        return (
            f"the {self.table} table differs from the state the audit log rebuilds "
            f"({self.expected} row(s) expected, {self.found} found{where})"
        )


@dataclass(slots=True)
class Expected:
    """The state the chain vouches for, built one event at a time."""

    sums: dict[str, Sum] = field(default_factory=lambda: {t: Sum() for t in TABLES})
    # adding event -> the suppression rows later events removed (to locate differences)
    removed: dict[int, Sum] = field(default_factory=dict)
    # rows of events from before the chain recorded row sums, vouched for as a whole
    # by the event that rekeyed the chain
    legacy_through: int = 0
    legacy: dict[str, Sum] = field(default_factory=lambda: {t: Sum() for t in TABLES})

    def event(self, seq: int, detail: Mapping[str, object]) -> None:
        """Take in one verified event's detail; ValueError if its row sums are malformed."""
        rows = detail.get("rows", {})
        if isinstance(rows, Mapping):
            for table in TABLES:
                if table in rows:
                    self.sums[table].merge(Sum.parse(rows[table]))
        legacy = detail.get("legacy")
        if isinstance(legacy, Mapping):
            through = legacy.get("through")
            if not isinstance(through, int):
                raise ValueError(f"event {seq}: not a legacy-rows entry: {legacy!r}")
            self.legacy_through = through
            for table in TABLES:
                self.legacy[table] = Sum.parse(legacy.get(table, [0, "0"]))
                self.sums[table].merge(self.legacy[table])
        removed = detail.get("removed", [])
        for entry in removed if isinstance(removed, list) else ():
            if not isinstance(entry, list) or len(entry) != 3 or not isinstance(entry[0], int):
                raise ValueError(f"event {seq}: not a removed-rows entry: {entry!r}")
            gone = Sum.parse(entry[1:])
            self.sums["suppression"].merge(gone, -1)
            self.removed.setdefault(entry[0], Sum()).merge(gone)

    def bucket(self, seq: int) -> int:
        """The event a row's sum is checked against (0: the rows of the legacy era)."""
        return 0 if seq <= self.legacy_through else seq


class ChainReader(Protocol):
    """What verification reads from a store: events in order, rows in any or event order."""

    def iter_events(self) -> AsyncGenerator[AuditEvent, None]:
        """Every audit event, in sequence order."""

    def iter_suppressions(self, scope: str | None) -> AsyncIterator[Suppression]:
        """Suppression rows (of one scope, or all)."""

    def iter_consents(self, purpose: str | None) -> AsyncIterator[Consent]:
        """Consent rows (of one purpose, or all)."""


@dataclass(frozen=True, slots=True)
class ChainReport:
    """The result of walking the audit chain and rebuilding the state it vouches for."""

    events: int
    head: str
    broken_at: int | None = None
    problem: str | None = None
    mismatches: tuple[Mismatch, ...] = ()
    rows: tuple[tuple[str, int], ...] = ()  # (table, rows) of the state the chain vouches for

    @property
    def head_text(self) -> str:
        """``SEQ:DIGEST``: what to anchor, and what ``--expect`` takes."""
        return head_text((self.events, self.head))

    @property
    def intact(self) -> bool:
        """The chain holds and the tables are the state it vouches for."""
        return self.broken_at is None and not self.mismatches


def _hashes(table: str, reader: ChainReader) -> AsyncIterator[tuple[int, int]]:
    async def pairs() -> AsyncIterator[tuple[int, int]]:
        if table == "suppression":
            async for s in reader.iter_suppressions(None):
                yield s.event or 0, suppression_hash(s)
        else:
            async for c in reader.iter_consents(None):
                yield c.event or 0, consent_hash(c)

    return pairs()


async def verify(
    reader: ChainReader, key: bytes, expect: Sequence[tuple[int, str]] = ()
) -> ChainReport:
    """Walk the chain, rebuild the state it vouches for, compare it with the tables.

    ``expect``: heads (seq, digest) recorded earlier, outside the store; the chain
    must still hold each event with its digest, so that cutting the newest events
    off (and the rows they added) cannot pass unseen.
    """
    walk = ChainWalk(key)
    expected = Expected()
    anchors = dict(expect)
    async with contextlib.aclosing(reader.iter_events()) as events:
        report = await _walk(events, walk, expected, anchors)
    if report is not None:
        return report
    if anchors and walk.count < max(anchors):
        problem = (
            f"the log ends at event {walk.count}, before the head {max(anchors)} anchored "
            "before: its newest events were removed"
        )
        return ChainReport(walk.count, walk.head, walk.count + 1, problem)
    mismatches = []
    for table in TABLES:
        found = Sum()
        async for _, number in _hashes(table, reader):
            found.add(number)
        want = expected.sums[table]
        if want != found:
            located = await _locate(table, reader, expected)
            mismatches.append(Mismatch(table, want.count, found.count, located))
    rows = tuple((table, expected.sums[table].count) for table in TABLES)
    return ChainReport(walk.count, walk.head, mismatches=tuple(mismatches), rows=rows)


async def _walk(
    events: AsyncIterator[AuditEvent],
    walk: ChainWalk,
    expected: Expected,
    anchors: Mapping[int, str],
) -> ChainReport | None:
    """Check every event and take in its rows; the report of the first bad one, or None."""
    async for event in events:
        body = walk.step(event)
        if body is None:
            return ChainReport(walk.count, walk.head, walk.broken_at, walk.problem)
        anchored = anchors.get(event.seq)
        if anchored is not None and event.digest != anchored:
            problem = f"it is not the event {event.seq}:{anchored[:16]}… anchored before"
            return ChainReport(walk.count, walk.head, event.seq, problem)
        detail = body.get("detail")
        try:
            expected.event(event.seq, detail if isinstance(detail, Mapping) else {})
        except ValueError as exc:
            return ChainReport(walk.count, walk.head, event.seq, str(exc))
    return None


async def _locate(table: str, reader: ChainReader, expected: Expected) -> tuple[int, ...]:
    """The events whose rows in ``table`` differ (0: rows of the legacy era).

    Only run when the totals differ; it holds a sum per event that added rows.
    """
    want: dict[int, Sum] = {}
    async for event in reader.iter_events():  # verified already: bodies are JSON objects
        rows = json.loads(event.body).get("detail", {}).get("rows", {})
        if table in rows:
            want[event.seq] = Sum.parse(rows[table])
    if expected.legacy_through:
        want[0] = Sum()
        want[0].merge(expected.legacy[table])
    if table == "suppression":
        for seq, gone in expected.removed.items():
            want.setdefault(expected.bucket(seq), Sum()).merge(gone, -1)
    found: dict[int, Sum] = {}
    async for seq, number in _hashes(table, reader):
        found.setdefault(expected.bucket(seq), Sum()).add(number)
    return tuple(
        seq
        for seq in sorted(set(want) | set(found))
        if want.get(seq, Sum()) != found.get(seq, Sum())
    )
