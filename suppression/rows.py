"""What the SQL stores share: how keys are stored, the columns they select, rows to records.

MD5 and domain keys are stored with a prefix so that they sort together in a
small corner of the primary key: looking them up touches a few cached pages.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Container, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from itertools import repeat
from typing import Any

from suppression.address import Address
from suppression.model import (
    AuditEvent,
    BatchResult,
    Consent,
    ConsentItem,
    ImportItem,
    ImportRows,
    Reason,
    Send,
    Source,
    Suppression,
)
from suppression.statecheck import MODULUS, Sum
from suppression.statecheck import _time as statecheck_time

_digest = type(hashlib.sha256()).digest
SUPPRESSION_COLUMNS = "key, kind, scope, reason, source, created, address, evidence, event"
CONSENT_COLUMNS = (
    "sha256, purpose, granted, source, created, policy_version, address, evidence, event"
)
# CONSENT_COLUMNS without the plaintext and evidence: what an import compares
CONSENT_STATEMENT = "sha256, purpose, granted, source, created, policy_version, NULL, NULL, event"
EVENT_COLUMNS = "seq, at, actor, action, subject, body, prev, digest"
SEND_COLUMNS = "message, sha256, topic, class, at"
PAGE = 5000  # rows a stream fetches at a time
_PREFIX: dict[str, str] = {"sha256": "", "md5": "#", "domain": "@"}

Time = Callable[[Any], datetime]  # a stored time as the driver returns it -> datetime


def stored(key: str, kind: str) -> str:
    """A key as the suppression table holds it."""
    return _PREFIX[kind] + key


def stored_keys(address: Address) -> tuple[str, str, str]:
    """Every stored key that can suppress an address: its hash, its MD5, its domain."""
    return (address.sha256, "#" + address.md5, "@" + address.domain_key)


def _same(value: Any) -> datetime:
    return value  # type: ignore[no-any-return]


def to_suppression(row: Sequence[Any], time: Time = _same) -> Suppression:
    """A suppression from a row of SUPPRESSION_COLUMNS."""
    key, kind, scope, reason, source, created, address, evidence, event = row
    return Suppression(
        key.lstrip("#@"),
        kind,
        scope,
        Reason(reason),
        source,
        time(created),
        address,
        evidence,
        event,
    )


def to_consent(row: Sequence[Any], time: Time = _same) -> Consent:
    """A consent record from a row of CONSENT_COLUMNS."""
    sha256, purpose, granted, source, created, version, address, evidence, event = row
    return Consent(
        sha256, purpose, bool(granted), source, time(created), version, address, evidence, event
    )


def to_event(row: Sequence[Any], time: Time = _same) -> AuditEvent:
    """An audit event from a row of EVENT_COLUMNS."""
    seq, at, actor, action, subject, body, prev, digest = row
    return AuditEvent(seq, time(at), actor, action, subject, body, prev, digest)


def to_send(row: Sequence[Any], time: Time = _same) -> Send:
    """A send ledger row from a row of SEND_COLUMNS."""
    message, sha256, topic, kind, at = row
    return Send(message, sha256, topic, kind, time(at))


def keys_digest(keys: Iterable[str]) -> str:
    """The digest of a batch's keys, for its audit event."""
    digest = hashlib.sha256()
    for key in keys:
        digest.update(key.encode() + b"\n")
    return digest.hexdigest()


def unique_items(items: Sequence[ImportItem]) -> dict[str, ImportItem]:
    """A batch by stored key, in key order (each index page written once); first row wins."""
    first: dict[str, ImportItem] = {}
    for item in items:
        first.setdefault(stored(item.key, item.kind), item)
    return dict(sorted(first.items()))


def suppression_rows(
    unique: Mapping[str, ImportItem],
    *,
    scope: str,
    source: str,
    evidence: str | None,
    event: int,
    created: Callable[[datetime | None], Any],
) -> list[tuple[Any, ...]]:
    """Rows for the suppression table, in insert order of its columns."""
    return [
        (
            key,
            scope,
            item.kind,
            item.address,
            item.reason.value,
            source,
            evidence,
            created(item.created),
            event,
        )
        for key, item in unique.items()
    ]


def added_records(
    unique: Mapping[str, ImportItem],
    *,
    scope: str,
    source: str,
    event: int,
    at: datetime,
    added: Container[str] | None,
) -> Iterator[Suppression]:
    """The rows a batch added (all of them when ``added`` is None), as records."""
    for key, item in unique.items():
        if added is None or key in added:
            yield Suppression(
                item.key,
                item.kind,
                scope,
                item.reason,
                source,
                item.created or at,
                address=item.address,
                event=event,
            )


def erasure_records(
    sha256: str, consents: Iterable[Consent], *, event: int, at: datetime
) -> tuple[list[Consent], Suppression]:
    """An erasure's revocations (of every purpose whose latest record, of ``consents`` oldest
    first, is a grant) and its tombstone: a global suppression keyed by the hash alone."""
    latest = {c.purpose: c for c in consents}
    revocations = [
        Consent(sha256, purpose, False, Source.ERASURE, at, event=event)
        for purpose, record in sorted(latest.items())
        if record.granted
    ]
    tombstone = Suppression(
        sha256, "sha256", "global", Reason.ERASED, Source.ERASURE, at, event=event
    )
    return revocations, tombstone


def suppress_event(
    unique: Mapping[str, ImportItem],
    note: Mapping[str, object] | None,
    scope: str,
    source: str,
    added: int,
) -> tuple[str | None, dict[str, object]]:
    """The subject and detail of a suppress batch's audit event (no address in either)."""
    subject = next(iter(unique.values())).key if len(unique) == 1 else None
    detail = {
        **(note or {}),
        "scope": scope,
        "source": source,
        "added": added,
        "keys_sha256": keys_digest(unique),
    }
    return subject, detail


def batch_result(given: int, unique: int, added: int, event: int) -> BatchResult:
    """Counts of a batch of ``given`` rows with ``unique`` distinct keys."""
    return BatchResult(added=added, present=unique - added, duplicates=given - unique, event=event)


class ImportSum:
    """The row sum (suppression/statecheck.py) of the suppression rows an import run adds,
    made as the rows are staged, for the event the run expects to write.

    A row's hash is ``statecheck.suppression_hash``'s, its text put together from a
    head and a tail cached per shape (``parts``) around the key, since the run hashes
    every row it stages (the store's verification holds the two equal). It is right
    when the run's event is ``event`` and every staged row was added; otherwise the run
    rebuilds the sum from the rows its event added.
    """

    def __init__(self, event: int, at: datetime) -> None:
        self.event = event
        self.at = at  # the time of rows without one of their own
        self.count = 0
        self._total = 0

    def parts(
        self, kind: str, reason: Reason, scope: str, source: str, created: datetime | None
    ) -> tuple[str, str]:
        """The text of a row's hash before and after its key."""
        when = statecheck_time(created or self.at)
        return f"s\n{kind}\n", f"\n{scope}\n{reason.value}\n{source}\n{when}\n{self.event}"

    def take(self, rows: int, total: int) -> None:
        """Add rows whose hashes (as numbers, ``int.from_bytes`` of their SHA-256) sum to
        ``total``."""
        self.count += rows
        self._total += total

    def add(self, segments: Sequence[ImportRows]) -> None:
        """Take a batch's rows."""
        sha256, number, total = hashlib.sha256, int.from_bytes, 0
        for segment in segments:
            kind, scope, reason, source = segment.shape
            head, tail = self.parts(kind, reason, scope, source, None)
            if segment.created is None:  # in C loops: a row's text, its hash, the number
                keys = map(str.encode, segment.keys)
                texts = zip(repeat(head.encode()), keys, repeat(tail.encode()))
                total += sum(map(number, map(_digest, map(sha256, map(b"".join, texts)))))
                continue
            for key, created in zip(segment.keys, segment.created, strict=True):
                own = self.parts(kind, reason, scope, source, created)[1] if created else tail
                total += number(sha256((head + key + own).encode()).digest(), "big")
        self.take(sum(len(segment.keys) for segment in segments), total)

    def sum(self) -> Sum:
        """The sum so far."""
        return Sum(self.count, self._total % MODULUS)


def consent_event(consents: Sequence[Consent]) -> tuple[str | None, dict[str, object]]:
    """The subject and detail of a consent batch's audit event (no address in either)."""
    subject = consents[0].sha256 if len({c.sha256 for c in consents}) == 1 else None
    detail = {
        "count": len(consents),
        "granted": sum(c.granted for c in consents),
        "revoked": sum(not c.granted for c in consents),
        "purposes": sorted({c.purpose for c in consents}),
        "keys_sha256": keys_digest(c.sha256 for c in consents),
    }
    return subject, detail


Statement = tuple[str, str, bool, str, str | None]


def statement(c: Consent) -> Statement:
    """What a consent record says, its time aside: hash, purpose, grant or revocation,
    source, policy version. Plaintext and evidence are not part of it (erasure clears
    them, and a re-import must not bring them back), nor is the audit event."""
    return (c.sha256, c.purpose, c.granted, c.source, c.policy_version)


def new_consents(
    items: Sequence[ConsentItem], stored: Iterable[Consent], run_since: int | None
) -> tuple[list[Consent], BatchResult]:
    """The records of a batch not on record yet, and the batch's counts (its event left 0).

    A row that gave its time is on record if a record with the same statement
    and time is. A row without one (stamped with the import's time) leans to
    privacy: a grant is on record if the same grant is at any time (an old list
    never grants again what was revoked since); a revocation only if the
    subject's latest record for the purpose is that revocation (a revocation is
    never lost to an older one). A match made by this run (``event >=
    run_since``) or earlier in the batch is a duplicate.
    """
    first: dict[object, int] = {}  # statement, and (statement, time) -> earliest event
    latest: dict[tuple[str, str], tuple[datetime, int, object]] = {}  # subject's latest record
    for record in stored:
        said, event = statement(record), record.event or 0
        first[said] = min(first.get(said, event), event)
        first[said, record.created] = min(first.get((said, record.created), event), event)
        subject = (record.sha256, record.purpose)
        if subject not in latest or (record.created, event) > latest[subject][:2]:
            latest[subject] = (record.created, event, said)
    fresh: list[Consent] = []
    seen: set[object] = set()
    present = duplicates = 0
    for item in items:
        said = statement(item.consent)
        key: object = (said, item.consent.created) if item.timed else said
        known = first.get(key)
        if not item.timed and not item.consent.granted:
            last = latest.get((item.consent.sha256, item.consent.purpose))
            known = last[1] if last is not None and last[2] == said else None
        if key in seen or (run_since is not None and known is not None and known >= run_since):
            duplicates += 1
            continue
        if known is not None:
            present += 1
        else:
            fresh.append(item.consent)
            seen.add(said)
        seen.add(key)
    return fresh, BatchResult(added=len(fresh), present=present, duplicates=duplicates)
