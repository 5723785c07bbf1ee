"""Bulk import: validated rows from a reader, written in all-or-nothing batches."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from suppression.address import Address, identity, is_digest, normalize, normalize_domain
from suppression.errors import InvalidAddress
from suppression.formats import Row
from suppression.model import BatchResult, Consent, ConsentItem, ImportItem, Reason, now
from suppression.store import Store

T = TypeVar("T")

BATCH = 100_000
SHOWN_INVALID = 5


@dataclass
class Summary:
    """What an import read and did."""

    read: int = 0
    added: int = 0
    present: int = 0
    invalid: int = 0
    duplicates: int = 0
    invalid_lines: list[int] = field(default_factory=list)

    def note_invalid(self, line: int) -> None:
        """Count an invalid row and remember the first few line numbers."""
        self.invalid += 1
        if len(self.invalid_lines) < SHOWN_INVALID:
            self.invalid_lines.append(line)

    def count(self, result: BatchResult) -> None:
        """Add a batch's counts."""
        self.added += result.added
        self.present += result.present
        self.duplicates += result.duplicates

    def __str__(self) -> str:
        lines = ", ".join(map(str, self.invalid_lines))
        more = ", ..." if self.invalid > len(self.invalid_lines) else ""
        where = f" (lines {lines}{more})" if self.invalid else ""
        return (
            f"read {self.read}, added {self.added}, already present {self.present}, "
            f"invalid {self.invalid}{where}, duplicates {self.duplicates}"
        )


def to_item(row: Row, reason: Reason | None, keep_addresses: bool) -> ImportItem:
    """Turn one reader row into a suppression item; InvalidAddress if it is not valid."""
    chosen = reason or (Reason(row.reason) if row.reason else Reason.IMPORTED)
    if row.kind == "sha256" or row.kind == "md5":
        length = 64 if row.kind == "sha256" else 32
        if not is_digest(row.value, length):
            raise InvalidAddress(f"not a {row.kind} digest")
        return ImportItem(row.value, row.kind, None, chosen, row.created)
    if row.value.startswith("@"):
        domain = "@" + normalize_domain(row.value)
        return ImportItem(identity(domain), "domain", domain, chosen, row.created)
    address = normalize(row.value)
    plain = address.normalized if keep_addresses else None
    return ImportItem(address.sha256, "sha256", plain, chosen, row.created)


def _batches(
    rows: Iterable[Row], convert: Callable[[Row], T], summary: Summary
) -> Iterator[list[T]]:
    """Convert rows as they are read (invalid ones are noted) and group them in batches."""
    batch: list[T] = []
    for row in rows:
        summary.read += 1
        try:
            batch.append(convert(row))
        except InvalidAddress:
            summary.note_invalid(row.line)
        if len(batch) == BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


async def import_suppressions(
    store: Store,
    rows: Iterable[Row],
    *,
    scope: str,
    reason: Reason | None,
    actor: str,
    note: Mapping[str, object],
    keep_addresses: bool = True,
    progress: Callable[[Summary], None] | None = None,
) -> Summary:
    """Validate and write rows batch by batch; a reader error stops after the last good batch."""
    summary = Summary()
    run_since: int | None = None
    for items in _batches(rows, lambda row: to_item(row, reason, keep_addresses), summary):
        result = await store.suppress(
            items, scope=scope, source="import", actor=actor, note=note, run_since=run_since
        )
        summary.count(result)
        run_since = result.event if run_since is None else run_since
        if progress:
            progress(summary)
    return summary


def to_consent(
    row: Row, address: Address, purpose: str, source: str, version: str | None, keep: bool
) -> Consent:
    """A consent record from an import row: its own time, version and evidence when given.

    A ``state`` of ``revoked`` (what ``optgate consent export`` writes for a
    revocation) is imported as a revocation, never as a consent.
    """
    extra = dict(row.extra)
    return Consent(
        sha256=address.sha256,
        purpose=purpose,
        granted=extra.pop("state", "").strip().lower() != "revoked",
        source=extra.pop("source", "") or source,
        created=row.created or now(),
        policy_version=extra.pop("policy_version", "") or version,
        address=address.normalized if keep else None,
        evidence=json.dumps(extra, sort_keys=True) if extra else None,
    )


async def import_consents(
    store: Store,
    rows: Iterable[Row],
    *,
    purpose: str,
    source: str,
    version: str | None,
    actor: str,
    keep_addresses: bool = True,
) -> Summary:
    """Record a consent for every valid address row not on record yet, batch by batch."""
    summary = Summary()
    run_since: int | None = None

    def convert(row: Row) -> ConsentItem:
        if row.kind != "address":
            raise InvalidAddress("consent needs an address, not a digest")
        record = to_consent(row, normalize(row.value), purpose, source, version, keep_addresses)
        return ConsentItem(record, timed=row.created is not None)

    for items in _batches(rows, convert, summary):
        result = await store.add_consents(items, actor=actor, run_since=run_since)
        summary.count(result)
        run_since = result.event if run_since is None else run_since
    return summary
