"""Bulk import: reader rows -> validated records, streamed into one all-or-nothing run.

What a row may be, and what follows:

* **invalid**: its address (or digest) is not one: typos, ``not-an-address``,
  a domain that cannot exist; or its scope names a partner the store does not
  know (the summary says which). Real lists hold such dirt; the row is counted
  and skipped, its line named in the summary (the first five), and the import
  goes on. A file whose every row is invalid adds nothing (the CLI exits 1).
* **refused**: the row says something the import must not guess about: a
  scope or purpose that conflicts with ``--scope`` / ``--purpose`` or is not a
  valid name, a consent state other than granted or revoked, evidence that is
  not JSON, a subscriber of a subscriber list (``--allow-subscribed`` takes
  them), a time that is not a time (the readers), a file that breaks off.
  RowError (or FormatError) stops the import and nothing of it is kept.
* **skipped**: a bounce that an ESP recorded for a policy block (5.7.x, block
  list or spam wording): it says the receiver refused the sender's mail, not
  that the address is bad, so it is not recorded as a hard bounce.

A row's own scope, reason, source, time and evidence (optgate's own export
has them all) are kept; ``--scope`` / ``--purpose`` fill rows without one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from itertools import repeat
from typing import Protocol, TypeVar

from suppression.address import (
    identities,
    identity,
    is_digest,
    normal_form,
    normal_forms,
    normalize_domain,
)
from suppression.errors import InvalidAddress, OptgateError
from suppression.fields import ROW_DEFAULTS, Addresses, Record, Row
from suppression.model import (
    BatchResult,
    Consent,
    ConsentItem,
    ImportRows,
    Reason,
    Shape,
    Source,
    check_name,
    now,
)
from suppression.scope import GLOBAL, Scope
from suppression.store import Admin, Importer
from suppression.textio import FormatError

T = TypeVar("T")

BATCH = 10_000  # rows staged at a time: memory per batch, not per file
SHOWN_INVALID = 5
# what a status column says of a subscriber (Mailchimp, listmonk, CRMs): not an opt-out
SUBSCRIBED = frozenset(
    {"subscribed", "active", "enabled", "confirmed", "opted in", "opt in", "optin", "opted-in"}
)
_REASONS = {reason.value: reason for reason in Reason}
_STATES = {"": True, "granted": True, "revoked": False}

PolicyBlock = Callable[[str | None, str], bool]  # (SMTP status, text) -> a policy block?


class Rows(Protocol):
    """What an import reads: rows of a named source in a format (formats.Reading),
    ``format`` naming the detected one once the first row was read."""

    source: str
    format: str

    def __iter__(self) -> Iterator[Row]:
        """The rows."""

    def records(self) -> Iterator[Record]:
        """The rows, those of an address alone in blocks (fields.Addresses) where the
        reader makes blocks."""


class RowError(FormatError):
    """A row the import refuses: nothing of the import is kept."""


class NoSuchPartner(OptgateError):
    """A row's scope names a partner the store does not know: the row is invalid."""

    def __init__(self, scope: str) -> None:
        super().__init__(f"scope {scope}: no such partner")
        self.scope = scope


@dataclass
class Summary:
    """What an import read and did."""

    format: str
    read: int = 0
    added: int = 0
    present: int = 0
    invalid: int = 0
    duplicates: int = 0
    policy: int = 0  # bounces skipped as policy blocks
    invalid_lines: list[int] = field(default_factory=list)
    unknown_partners: int = 0  # of the invalid rows, those whose scope names no partner
    unknown_scopes: list[str] = field(default_factory=list)  # the first few such scopes
    writing: bool = False  # every row is read; the store is being written

    def note_invalid(self, line: int) -> None:
        """Count an invalid row and remember the first few line numbers."""
        self.invalid += 1
        if len(self.invalid_lines) < SHOWN_INVALID:
            self.invalid_lines.append(line)

    def note_unknown(self, line: int, scope: str) -> None:
        """Count an invalid row whose scope names no known partner."""
        self.note_invalid(line)
        self.unknown_partners += 1
        if scope not in self.unknown_scopes and len(self.unknown_scopes) < SHOWN_INVALID:
            self.unknown_scopes.append(scope)

    def count(self, result: BatchResult) -> None:
        """Add a batch's (or a run's) counts."""
        self.added += result.added
        self.present += result.present
        self.duplicates += result.duplicates

    @property
    def all_invalid(self) -> bool:
        """Every row read was invalid (and there was one)."""
        return self.read > 0 and self.invalid == self.read

    def as_dict(self) -> dict[str, object]:
        """The summary for --json."""
        return {
            "format": self.format,
            "read": self.read,
            "added": self.added,
            "present": self.present,
            "invalid": self.invalid,
            "invalid_lines": self.invalid_lines,
            "unknown_partner_rows": self.unknown_partners,
            "unknown_partner_scopes": self.unknown_scopes,
            "duplicates": self.duplicates,
            "policy_blocks_skipped": self.policy,
        }

    def __str__(self) -> str:
        lines = ", ".join(map(str, self.invalid_lines))
        more = ", ..." if self.invalid > len(self.invalid_lines) else ""
        unknown = ""
        if self.unknown_partners:
            scopes = ", ".join(self.unknown_scopes)
            unknown = f"; {self.unknown_partners} name no known partner: {scopes}"
        where = f" (lines {lines}{more}{unknown})" if self.invalid else ""
        policy = f", policy blocks skipped {self.policy}" if self.policy else ""
        return (
            f"format {self.format}: read {self.read}, added {self.added}, "
            f"already present {self.present}, invalid {self.invalid}{where}, "
            f"duplicates {self.duplicates}{policy}"
        )


@dataclass(frozen=True)
class SuppressionOptions:
    """What the command line says about the rows of a suppression import."""

    scope: Scope | None = None  # fills rows without a scope; a row's other scope is refused
    reason: Reason | None = None  # overrides the rows' reasons
    keep_addresses: bool = True
    allow_subscribed: bool = False
    policy_block: PolicyBlock | None = None


@dataclass(frozen=True)
class ConsentOptions:
    """What the command line says about the rows of a consent import."""

    purpose: str | None = None  # fills rows without a purpose; another one is refused
    source: str = Source.IMPORT.value
    version: str | None = None
    keep_addresses: bool = True


def _batches(
    rows: Iterable[Row], convert: Callable[[Row], T | None], summary: Summary
) -> Iterator[list[T]]:
    """Convert rows as they are read (invalid ones are noted) and group them in batches."""
    batch: list[T] = []
    for row in rows:
        summary.read += 1
        try:
            item = convert(row)
        except InvalidAddress:
            summary.note_invalid(row.line)
            continue
        if item is not None:
            batch.append(item)
            if len(batch) == BATCH:
                yield batch
                batch = []
    if batch:
        yield batch


class _Scopes:
    """Scopes of rows, parsed once per distinct value; the store's text of each. A scope
    naming a partner not in ``partners`` (None: not checked) is NoSuchPartner."""

    def __init__(self, given: Scope | None, source: str, partners: Collection[str] | None) -> None:
        self._given, self._source, self._partners = given, source, partners
        self._known: dict[str | None, str] = {None: str(given or GLOBAL)}
        self._unknown: set[str] = set()

    def of(self, row: Row) -> str:
        scope = self._known.get(row.scope)
        if scope is None:
            scope = self._known[row.scope] = self._text(row)
        if scope in self._unknown:
            raise NoSuchPartner(scope)
        return scope

    def _text(self, row: Row) -> str:
        scope = self._check(row)
        text = str(scope)
        partners = self._partners
        if scope.kind == "partner" and partners is not None and scope.name not in partners:
            self._unknown.add(text)
        return text

    def _check(self, row: Row) -> Scope:
        try:
            scope = Scope.parse(row.scope or "")
        except OptgateError as exc:
            raise RowError(self._source, row.line, str(exc)) from None
        if self._given and scope != self._given:
            raise RowError(
                self._source,
                row.line,
                f"the row's scope {scope} is not --scope {self._given} "
                "(leave --scope out to import each row in its own scope)",
            )
        return scope


def _evidence(row: Row, source: str) -> str | None:
    """A row's evidence column, which must be JSON (it is kept verbatim)."""
    if row.evidence is None:
        return None
    try:
        json.loads(row.evidence)
    except (ValueError, RecursionError):
        raise RowError(source, row.line, "the evidence is not JSON") from None
    return row.evidence


Converted = tuple[Shape, str, str | None, datetime | None, str | None]  # + key, address, ...


class SuppressionRows:
    """Reader rows -> batches of validated rows (ImportRows segments) for a run.

    A row of an address alone, in a file whose other columns say nothing (most
    files), goes the short way: normalised, hashed, appended to its segment's
    columns. Any other row is converted field by field (``convert``).
    """

    def __init__(
        self,
        options: SuppressionOptions,
        source: str,
        summary: Summary,
        partners: Collection[str] | None = None,
    ) -> None:
        self._options, self._source, self._summary = options, source, summary
        self._scopes = _Scopes(options.scope, source, partners)
        self.plain = Shape(
            "sha256", str(options.scope or GLOBAL), options.reason or Reason.IMPORTED, "import"
        )

    def convert(self, row: Row) -> Converted | None:
        """One row: (shape, key, address, time, evidence); None for a policy block (counted);
        InvalidAddress, NoSuchPartner, RowError."""
        options, source = self._options, self._source
        if row.status is not None and not options.allow_subscribed:
            _refuse_subscriber(row, source)
        reason = options.reason or (_REASONS[row.reason] if row.reason else Reason.IMPORTED)
        blocked = options.policy_block
        if (
            reason is Reason.BOUNCED
            and blocked is not None
            and (row.status or row.diagnostic)
            and blocked(row.status, row.diagnostic or "")
        ):
            self._summary.policy += 1
            return None
        scope, kept = self._scopes.of(row), row.source or Source.IMPORT.value
        evidence = _evidence(row, source)
        value = row.value
        if row.kind != "address":
            if not is_digest(value, 64 if row.kind == "sha256" else 32):
                raise InvalidAddress(f"not a {row.kind} digest")
            return Shape(row.kind, scope, reason, kept), value, None, row.created, evidence
        if value[:1] == "@":
            domain = "@" + normalize_domain(value)
            shape = Shape("domain", scope, reason, kept)
            return shape, identity(domain), domain, row.created, evidence
        address = normal_form(value)
        key = hashlib.sha256(address.encode()).hexdigest()
        shown = address if options.keep_addresses else None
        return Shape("sha256", scope, reason, kept), key, shown, row.created, evidence

    def batches(self, records: Iterable[Record]) -> Iterator[list[ImportRows]]:
        """The rows in batches of about BATCH valid ones; invalid rows are noted as they come."""
        summary, plain, keep, size = self._summary, self.plain, self._options.keep_addresses, 0
        sha256, batch = hashlib.sha256, []
        segment: ImportRows | None = None
        for row in records:
            if isinstance(row, Addresses):
                normals = self._valid(row)
                if segment is None or segment.shape is not plain:
                    segment = ImportRows(plain)
                    batch.append(segment)
                segment.keys += identities(normals)
                segment.addresses += normals if keep else repeat(None, len(normals))
                size += len(normals)
                if size >= BATCH:
                    yield batch
                    batch, size, segment = [], 0, None
                continue
            summary.read += 1
            try:
                if row[2] == "address" and row[3:] == ROW_DEFAULTS and row[1][:1] != "@":
                    normal = normal_form(row[1])
                    if segment is None or segment.shape is not plain:
                        segment = ImportRows(plain)
                        batch.append(segment)
                    segment.keys.append(sha256(normal.encode()).hexdigest())
                    segment.addresses.append(normal if keep else None)
                else:
                    found = self.convert(row)
                    if found is None:
                        continue
                    shape, key, address, created, evidence = found
                    if segment is None or segment.created is None or segment.shape != shape:
                        times: list[datetime | None] = []
                        proofs: list[str | None] = []
                        segment = ImportRows(shape, created=times, evidence=proofs)
                        batch.append(segment)
                    segment.keys.append(key)
                    segment.addresses.append(address)
                    times.append(created)
                    proofs.append(evidence)
            except InvalidAddress:
                summary.note_invalid(row[0])
                continue
            except NoSuchPartner as exc:
                summary.note_unknown(row[0], exc.scope)
                continue
            size += 1
            if size >= BATCH:
                yield batch
                batch, size, segment = [], 0, None
        if batch:
            yield batch

    def _valid(self, block: Addresses) -> list[str]:
        """The normal forms of a block's valid addresses; the invalid ones are noted."""
        self._summary.read += len(block.values)
        found = normal_forms(block.values)
        if None not in found:
            return found  # type: ignore[return-value]  # no None in it
        valid = []
        for line, value in zip(block.lines, found, strict=True):
            if value is None:
                self._summary.note_invalid(line)
            else:
                valid.append(value)
        return valid


def _refuse_subscriber(row: Row, source: str) -> None:
    status = " ".join((row.status or "").lower().replace("_", " ").split())
    if status in SUBSCRIBED:
        raise RowError(
            source,
            row.line,
            f"status {row.status!r}: this is a list of subscribers, not of opt-outs, and "
            "importing it would suppress them all (--allow-subscribed imports it anyway)",
        )


async def import_suppressions(
    store: Importer,
    reading: Rows,
    *,
    options: SuppressionOptions,
    actor: str,
    note: dict[str, object],
    summary: Summary | None = None,
) -> Summary:
    """Read every row into one run and commit it; any error leaves the store unchanged.

    ``summary`` (when given) is filled as the rows are read, for a progress display. The
    partners are read once: a row in the scope of one the store does not know is invalid.
    """
    summary = summary or Summary(reading.format)
    partners = {partner.name for partner in await store.partners()}
    rows = SuppressionRows(options, reading.source, summary, partners)
    async with store.suppression_import(actor=actor, note=note) as run:
        for batch in rows.batches(reading.records()):
            summary.format = note["format"] = reading.format
            await run.add(batch)
        summary.format = note["format"] = reading.format
        summary.writing = True
        summary.count(await run.commit())
    return summary


def consent_converter(options: ConsentOptions, source: str) -> Callable[[Row], ConsentItem]:
    """Row -> ConsentItem: the row's own purpose, state, source, policy version, time and
    evidence (its other columns join the evidence); InvalidAddress, RowError."""
    purposes: dict[str | None, str] = {}

    def purpose_of(row: Row, given: str | None) -> str:
        if given is None and options.purpose is None:
            raise RowError(source, row.line, "no purpose: give --purpose or a purpose column")
        try:
            purpose = check_name(given or options.purpose or "", "purpose")
        except OptgateError as exc:
            raise RowError(source, row.line, str(exc)) from None
        if options.purpose and purpose != options.purpose:
            raise RowError(
                source,
                row.line,
                f"the row's purpose {purpose} is not --purpose {options.purpose} "
                "(leave --purpose out to import each row for its own purpose)",
            )
        return purpose

    def convert(row: Row) -> ConsentItem:
        if row.reason or row.scope:
            raise RowError(
                source,
                row.line,
                "the row has a suppression reason or scope: this is a suppression list, "
                "not consents (optgate suppress import reads it)",
            )
        extra = dict(row.extra)
        given = extra.pop("purpose", "").strip() or None
        purpose = purposes.get(given) or purposes.setdefault(given, purpose_of(row, given))
        state = extra.pop("state", "").strip().lower()
        if state not in _STATES:
            raise RowError(source, row.line, f"state {state!r} is neither granted nor revoked")
        version = extra.pop("policy_version", "").strip() or options.version
        if row.kind == "md5":
            raise InvalidAddress("a consent needs an address or its sha256, not an md5")
        if row.kind == "sha256":  # an erased person's record: the hash alone
            if not is_digest(row.value, 64):
                raise InvalidAddress("not a sha256 digest")
            key, address = row.value, None
        else:
            address = normal_form(row.value)
            key = hashlib.sha256(address.encode()).hexdigest()
        record = Consent(
            sha256=key,
            purpose=purpose,
            granted=_STATES[state],
            source=row.source or options.source,
            created=row.created or now(),
            policy_version=version,
            address=address if options.keep_addresses else None,
            evidence=_consent_evidence(row, extra, source),
        )
        return ConsentItem(record, timed=row.created is not None)

    return convert


def _consent_evidence(row: Row, extra: dict[str, str], source: str) -> str | None:
    """The evidence column verbatim; columns optgate has no place for join it."""
    given = _evidence(row, source)
    if not extra:
        return given
    if given is None:
        return json.dumps(extra, sort_keys=True)
    found = json.loads(given)
    if not isinstance(found, dict):
        raise RowError(source, row.line, "the evidence is not a JSON object")
    return json.dumps({**extra, **found}, sort_keys=True)


async def import_consents(
    store: Admin,
    reading: Rows,
    *,
    options: ConsentOptions,
    actor: str,
    note: dict[str, object],
    summary: Summary | None = None,
) -> Summary:
    """Record every valid row not on record yet, in one run; errors leave the store as it was."""
    summary = summary or Summary(reading.format)
    convert = consent_converter(options, reading.source)
    async with store.consent_import(actor=actor, note=note) as run:
        for batch in _batches(reading, convert, summary):
            summary.format = note["format"] = reading.format
            summary.count(await run.add(batch))
        summary.format = note["format"] = reading.format
        summary.writing = True
        await run.commit()
    return summary
