"""Export writers: suppressions (csv, jsonl, sha256, md5) and consent records (csv, jsonl).

Every CSV cell that a spreadsheet would take for a formula (one starting with
``= + - @``, tab or carriage return, per OWASP's CSV Injection guidance,
owasp.org/www-community/attacks/CSV_Injection, and ``|`` for DDE) is written
with a ``'`` before it, which spreadsheets show as text; so is a cell that
starts with ``'`` itself, so that the import readers can take exactly one
``'`` off again (suppression/fields.py ``restored``): ``=x`` is written
``'=x`` and ``'x`` is written ``''x``, and both import back as they were.
JSON lines are not neutralised: no spreadsheet opens them as cells.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, TextIO, TypeVar

from suppression.address import md5_identity
from suppression.fields import NEUTRALISED
from suppression.formats import CONSENT_FORMATS, WRITE_FORMATS
from suppression.model import Consent

T = TypeVar("T")
SUPPRESSION_COLUMNS = ("email", "sha256", "scope", "reason", "source", "created", "evidence")
CONSENT_COLUMNS = (
    "email",
    "sha256",
    "purpose",
    "state",
    "source",
    "policy_version",
    "created",
    "evidence",
)


@dataclass(frozen=True, slots=True)
class ExportRecord:
    """One suppression to export; ``sha256`` holds the md5 hex for md5-only records."""

    sha256: str
    address: str | None
    scope: str
    reason: str
    source: str
    created: datetime
    key_kind: Literal["sha256", "md5", "domain"] = "sha256"
    evidence: str | None = None


@dataclass(frozen=True, slots=True)
class WriteSummary:
    """How many records a writer wrote, and how many the format could not carry."""

    written: int
    skipped: int


def neutralised(value: str) -> str:
    """A CSV cell no spreadsheet runs as a formula (and that reads back as ``value``)."""
    return "'" + value if value[:1] in NEUTRALISED else value


def stamp(when: datetime) -> str:
    """A time as exported: UTC, ISO 8601 with a Z, microseconds when there are any."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def write_records(
    records: Iterable[ExportRecord], fmt: str, out: TextIO, *, header: bool = True
) -> WriteSummary:
    """Write records as they come; ``header=False`` continues an earlier csv call."""
    if fmt not in WRITE_FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(WRITE_FORMATS)}")
    if fmt == "csv":
        return _write_csv(map(_fields, records), SUPPRESSION_COLUMNS, out, header)
    if fmt == "jsonl":
        return _write_lines(records, out, _json_line)
    return _write_lines(records, out, _sha256_line if fmt == "sha256" else _md5_line)


def write_consents(
    records: Iterable[Consent], fmt: str, out: TextIO, *, header: bool = True
) -> WriteSummary:
    """Write consent records as they come (csv or jsonl); ``header`` as for write_records."""
    if fmt not in CONSENT_FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(CONSENT_FORMATS)}")
    if fmt == "csv":
        return _write_csv(map(_consent_fields, records), CONSENT_COLUMNS, out, header)
    return _write_lines(records, out, _consent_line)


def _fields(record: ExportRecord) -> tuple[str | None, ...]:
    return (
        record.address,
        record.sha256,
        record.scope,
        record.reason,
        record.source,
        stamp(record.created),
        record.evidence,
    )


def _consent_fields(c: Consent) -> tuple[str | None, ...]:
    return (
        c.address,
        c.sha256,
        c.purpose,
        "granted" if c.granted else "revoked",
        c.source,
        c.policy_version,
        stamp(c.created),
        c.evidence,
    )


def _write_csv(
    rows: Iterable[Sequence[str | None]], columns: Sequence[str], out: TextIO, header: bool
) -> WriteSummary:
    # CRLF, as RFC 4180 has it: the csv module then quotes a cell holding a CR
    writer = csv.writer(out, lineterminator="\r\n")
    if header:
        writer.writerow(columns)
    written = 0
    for row in rows:
        writer.writerow([neutralised(value) if value else "" for value in row])
        written += 1
    return WriteSummary(written, 0)


def _write_lines(
    records: Iterable[T], out: TextIO, line_of: Callable[[T], str | None]
) -> WriteSummary:
    written = skipped = 0
    for record in records:
        line = line_of(record)
        if line is None:
            skipped += 1
        else:
            out.write(line + "\n")
            written += 1
    return WriteSummary(written, skipped)


def _json_line(record: ExportRecord) -> str:
    return json.dumps(
        dict(zip(SUPPRESSION_COLUMNS, _fields(record), strict=True)), ensure_ascii=False
    )


def consent_object(record: Consent) -> dict[str, str | None]:
    """A consent record as its JSON line (and the REST API) shows it."""
    return dict(zip(CONSENT_COLUMNS, _consent_fields(record), strict=True))


def _consent_line(record: Consent) -> str:
    return json.dumps(consent_object(record), ensure_ascii=False)


def _sha256_line(record: ExportRecord) -> str | None:
    return record.sha256 if record.key_kind == "sha256" else None


def _md5_line(record: ExportRecord) -> str | None:
    if record.key_kind == "md5":
        return record.sha256
    if record.key_kind == "sha256" and record.address:
        return md5_identity(record.address)
    return None
