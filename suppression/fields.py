"""What the readers make of a record: the Row, and the meaning of its named fields.

A reader judges structure only: an address that is not valid is still a Row,
with its line, for the importer to count; a time that is not a time is an
error (FormatError), since a wrong time would be kept as if it were right.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from types import MappingProxyType
from typing import Literal, NamedTuple

from suppression.textio import FormatError

Kind = Literal["address", "sha256", "md5"]
DigestKind = Literal["sha256", "md5"]
NO_EXTRA: Mapping[str, str] = MappingProxyType({})  # shared by rows without other fields

# Column or key names that hold the address, in order of preference.
ADDRESS_KEYS = (
    "email",
    "email address",
    "email_address",
    "emailaddress",
    "e-mail",
    "e-mail address",
    "address",
    "recipient",
)
CREATED_KEYS = ("created", "created_at", "createdat", "timestamp", "date", "lastupdatetime")
STATUS_KEYS = ("status", "member status", "subscription status", "subscriber status")
# The fields a Row has a place of its own for; every other one is ``extra``.
KNOWN_KEYS = frozenset(
    (*ADDRESS_KEYS, *CREATED_KEYS, *STATUS_KEYS, "sha256", "md5", "reason", "scope", "source")
) | {"evidence"}
_REASONS = {
    "unsubscribed": ("unsubscribe", "unsubscribed", "unsub", "opt out", "optout", "opted out"),
    "complained": ("complaint", "complained", "spam", "spam report", "abuse"),
    "bounced": ("bounce", "bounced", "hard bounce", "hardbounce", "cleaned"),
    "manual": ("manual",),
    "imported": ("imported", "import"),
    "invalid": ("invalid",),
    "erased": ("erased",),  # an erased person's tombstone (optgate's own export)
}
_REASON_WORDS = {word: reason for reason, words in _REASONS.items() for word in words}
# CSV cells that start with one of these are written with a ' before them (formats/write.py);
# the readers take that ' off again
NEUTRALISED = frozenset("=+-@\t\r|'")


class Row(NamedTuple):
    """One record of an import file, as written (a NamedTuple, not a dataclass: an import
    makes one per line, and a frozen dataclass costs three times as much to make)."""

    line: int
    value: str
    kind: Kind
    reason: str | None = None
    created: datetime | None = None
    extra: Mapping[str, str] = NO_EXTRA  # the other named fields, when the reader keeps them
    scope: str | None = None
    source: str | None = None
    evidence: str | None = None
    status: str | None = None  # what a status column says ("subscribed", "5.1.1", ...)
    diagnostic: str | None = None  # a bounce's SMTP reply text


ROW_DEFAULTS = (None, None, NO_EXTRA, None, None, None, None, None)  # after line, value, kind
_new = tuple.__new__


def address_row(line: int, value: str) -> Row:
    """A Row of an address alone, made as fast as a tuple (NamedTuple's own constructor
    takes three times as long: this is the row of most files)."""
    return _new(Row, (line, value, "address", *ROW_DEFAULTS))


@dataclass(frozen=True, slots=True)
class Addresses:
    """Records that are an address alone (the rows of most files) as one column: a reader
    that can makes one of these per block of records rather than a Row each, and the
    importer validates and hashes the block in C loops (address.normal_forms). ``values``
    trimmed and restored, none empty nor a domain (``@example.com`` is a Row); ``lines``
    the line of each (a range when each record is one line)."""

    values: list[str]
    lines: Sequence[int]

    def rows(self) -> Iterator[Row]:
        """The records as Rows."""
        return map(address_row, self.lines, self.values)


Record = Row | Addresses  # what a reader's records() gives


def restored(value: str) -> str:
    """A CSV cell as it was before a writer neutralised it (``'=x`` -> ``=x``)."""
    if value[:1] == "'" and value[1:2] in NEUTRALISED:
        return value[1:]
    return value


def reason_of(value: object) -> str | None:
    """Our reason for an ESP's word (``BOUNCE``, ``spam``, ``hard_bounce``...), if known."""
    if not isinstance(value, str):
        return None
    word = " ".join(value.lower().replace("_", " ").replace("-", " ").split())
    return _REASON_WORDS.get(word)


def parse_time(value: object, source: str, line: int) -> datetime | None:
    """Aware UTC time from unix seconds, ISO 8601 (naive means UTC) or RFC 2822; None for
    an empty value; FormatError for anything else."""
    if value is None or value == "":
        return None
    try:
        if isinstance(value, str):
            text = value.strip()
            if not text:
                return None
            if text.replace(".", "", 1).isdigit():
                value = float(text)
            elif text[:1].isdigit():
                parsed = datetime.fromisoformat(text)
                return (
                    parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
                )
            else:  # "Fri, 21 Oct 2011 11:02:55 GMT" (Mailgun)
                parsed = parsedate_to_datetime(text)
                return (
                    parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
                )
        if isinstance(value, int | float) and not isinstance(value, bool):
            return datetime.fromtimestamp(value, UTC)
    except (ValueError, OverflowError, OSError, TypeError, IndexError):
        pass
    shown = value if isinstance(value, str | int | float) else type(value).__name__
    raise FormatError(source, line, f"{shown!r} is not a time (unix seconds or ISO 8601)")


def text_of(value: object) -> str:
    """A field's value as text: JSON for what is not a string."""
    return value if isinstance(value, str) else json.dumps(value)


def loads(text: str, source: str, line: int) -> object:
    """JSON text, with nesting too deep for Python a FormatError like any other."""
    try:
        return json.loads(text)
    except RecursionError:
        raise FormatError(source, line, "JSON nested too deeply") from None


def _first(record: Mapping[str, object], keys: Sequence[str]) -> object:
    return next((record[k] for k in keys if record.get(k) not in (None, "")), None)


def make_row(
    line: int, record: Mapping[str, object], source: str, extra: bool = True
) -> Row | None:
    """A row from named fields (lower-cased names): the address or a digest, reason, time,
    scope, source, evidence, status, and (with ``extra``) the rest; None without an
    address or digest, FormatError when the record names no address field at all."""
    key = next((k for k in ADDRESS_KEYS if k in record), None)
    found = record[key] if key else None
    address = text_of(found).strip() if found is not None else ""
    created = parse_time(_first(record, CREATED_KEYS), source, line)
    others = (
        {k: text_of(v) for k, v in record.items() if k not in KNOWN_KEYS and v not in (None, "")}
        if extra
        else NO_EXTRA
    )
    fields = (
        reason_of(record.get("reason")),
        created,
        others,
        _optional(record.get("scope")),
        _optional(record.get("source")),
        _optional(record.get("evidence")),
        _optional(_first(record, STATUS_KEYS)),
    )
    if address:
        return Row(line, address, "address", *fields)
    for column in ("sha256", "md5"):
        digest = text_of(record.get(column) or "").strip().lower()
        if digest:
            kind: DigestKind = "md5" if column == "md5" or len(digest) == 32 else "sha256"
            return Row(line, digest, kind, *fields)
    if key is None:
        raise FormatError(source, line, f"no address field (one of: {', '.join(ADDRESS_KEYS)})")
    return None


def _optional(value: object) -> str | None:
    text = text_of(value).strip() if value is not None else ""
    return text or None


class Layout:
    """A CSV header read once: whether it is the common layout (an address column and
    columns no row keeps: formats reads those by index), and a record as a Row."""

    def __init__(self, names: Sequence[str], keep_extra: bool) -> None:
        self.names = list(names)
        self.keep_extra = keep_extra
        self.address = next((self.names.index(k) for k in ADDRESS_KEYS if k in self.names), None)
        self.plain = (
            self.address is not None
            and not keep_extra
            and all(n == self.names[self.address] or n not in KNOWN_KEYS for n in self.names)
        )

    def row(self, line: int, fields: list[str], source: str) -> Row | None:
        """The Row of one record (None for one without an address or digest)."""
        pairs = zip(self.names, fields, strict=False)
        record = {name: restored(value.strip()) for name, value in pairs}
        return make_row(line, record, source, self.keep_extra)
