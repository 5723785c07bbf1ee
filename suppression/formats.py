"""Streaming readers and writers for bulk suppression and consent files.

Readers turn a byte stream into ``Row`` values and judge structure only: an
address that is not valid is still yielded, with its line, for the importer
to report. They never hold more than one record (at most one 1 MiB line)
in memory, so a file of any length imports in flat memory.

Layouts read besides plain CSV, JSON lines and digest lists:

* ``sendgrid``: the suppression CSV downloads, ``email,created`` plus
  ``status,reason`` (bounces, blocks), ``reason`` (invalid emails) or ``ip``
  (spam reports); ``created`` in unix seconds or as a date.
* ``mailchimp``: audience exports with an ``Email Address`` column; the
  unsubscribed file adds ``UNSUB_TIME``, ``UNSUB_REASON``..., the cleaned
  file ``CLEAN_TIME``, ``CLEAN_CAMPAIGN_TITLE``... (times in UTC).
* ``ses``: the SES bulk-import CSV (``address,BOUNCE``) and JSON lines
  (``{"emailAddress": ..., "reason": ...}``), and the JSON that
  ``aws sesv2 list-suppressed-destinations`` prints, read incrementally.
"""

from __future__ import annotations

import codecs
import csv
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from itertools import chain
from types import MappingProxyType
from typing import BinaryIO, Literal, NamedTuple, TextIO

from suppression.address import md5_identity
from suppression.errors import OptgateError

Kind = Literal["address", "sha256", "md5"]
DigestKind = Literal["sha256", "md5"]

READ_FORMATS: tuple[str, ...] = (
    "auto",
    "csv",
    "jsonl",
    "plain",
    "sha256",
    "md5",
    "sendgrid",
    "mailchimp",
    "ses",
)
WRITE_FORMATS: tuple[str, ...] = ("csv", "jsonl", "sha256", "md5")

_MAX_LINE = 1 << 20  # bytes; a longer line is not a suppression record
_BLOCK = 1 << 16  # bytes read at a time
_PEEK_LINES = 1000  # lines of a block auto-detection looks at for the first records
_PEEK_BLOCKS = 4  # blocks auto-detection reads at most
_MAX_JSON_VALUE = 1 << 20  # characters one SES summary (or other value) may take

# Column or key names that hold the address, in order of preference.
_ADDRESS_KEYS = (
    "email",
    "email address",
    "email_address",
    "emailaddress",
    "e-mail",
    "e-mail address",
    "address",
    "recipient",
)
_CREATED_KEYS = ("created", "created_at", "timestamp", "date", "lastupdatetime")
_REASONS = {
    "unsubscribed": ("unsubscribe", "unsubscribed", "unsub", "opt out", "optout", "opted out"),
    "complained": ("complaint", "complained", "spam", "spam report", "abuse"),
    "bounced": ("bounce", "bounced", "hard bounce", "hardbounce", "cleaned"),
    "manual": ("manual",),
    "imported": ("imported", "import"),
    "invalid": ("invalid",),
}
_REASON_WORDS = {word: reason for reason, words in _REASONS.items() for word in words}
_DIGEST = {"sha256": re.compile(r"[0-9a-f]{64}"), "md5": re.compile(r"[0-9a-f]{32}")}
_HEADER_WORD = re.compile(r"(?=.*[g-z_ .-])[a-z_][a-z0-9_ .-]*")  # not all hex: sha256, hash
_BINARY = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f]")
_FIELD_END = re.compile(r"[,;\t]")
_UNIX_TIME = re.compile(r"\d+(?:\.\d+)?")
_NOT_SPACE = re.compile(r"\S")
_SES_SUMMARIES = "SuppressedDestinationSummaries"
_NO_EXTRA: Mapping[str, str] = MappingProxyType({})  # shared by rows without columns
# SendGrid's suppression downloads: columns -> what the list means. Auto-detection
# leaves email,created,reason (invalid emails) to the csv reader: too generic.
_SENDGRID_LAYOUTS = {
    frozenset({"email", "created"}): "unsubscribed",  # global and group unsubscribes
    frozenset({"email", "created", "status", "reason"}): "bounced",  # bounces, blocks
    frozenset({"email", "created", "ip"}): "complained",  # spam reports
    frozenset({"email", "created", "reason"}): "invalid",  # invalid emails
}


class FormatError(OptgateError):
    """The file as a whole cannot be read in the format asked for."""

    def __init__(self, source: str, line: int, message: str) -> None:
        super().__init__(f"{source}:{line}: {message}")
        self.source = source
        self.line = line
        self.message = message


@dataclass(frozen=True, slots=True)
class Row:
    """One record of an import file, as written."""

    line: int
    value: str
    kind: Kind
    reason: str | None = None
    created: datetime | None = None
    extra: Mapping[str, str] = field(default_factory=dict)


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


@dataclass(frozen=True, slots=True)
class WriteSummary:
    """How many records a writer wrote, and how many the format could not carry."""

    written: int
    skipped: int


class _Block(NamedTuple):
    """Decoded lines (without their LF) read in one go, numbered from ``line``."""

    line: int
    lines: list[str]
    partial: bool  # the last line goes on in the next block: it is over _MAX_LINE


class _Fit(NamedTuple):
    """The reader a file needs, and the blocks already looked at."""

    reader: str
    blocks: Iterator[_Block]


_Blocks = Iterator[_Block]
_Reader = Callable[[_Blocks, str], Iterator[Row]]
_Records = Iterator[tuple[int, list[str]]]  # CSV records and the line each starts on


def read_rows(stream: BinaryIO, fmt: str, source: str) -> Iterator[Row]:
    """Rows of ``stream`` in format ``fmt``; FormatError while iterating if it does not fit."""
    if fmt not in READ_FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(READ_FORMATS)}")
    return _rows(stream, fmt, source)


def _rows(stream: BinaryIO, fmt: str, source: str) -> Iterator[Row]:
    """The reader for ``fmt``: detected from the content for auto and ses."""
    blocks = _blocks(stream, source)
    if fmt == "auto":
        reader, blocks = _detect(blocks)
        yield from _READERS[reader](blocks, source)
    elif fmt == "ses":
        reader, blocks = _detect(blocks)
        yield from _READERS[reader if reader in ("jsonl", "json") else "ses-csv"](blocks, source)
    elif fmt in _DIGEST:
        yield from _read_digests(blocks, source, "sha256" if fmt == "sha256" else "md5", True)
    else:
        yield from _READERS[fmt](blocks, source)


# Bytes to text ------------------------------------------------------------


def _blocks(stream: BinaryIO, source: str) -> _Blocks:
    """The stream as blocks of whole lines; binary data and bad UTF-8 raise FormatError."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    line, tail = 1, b""
    chunk = stream.read(_BLOCK)
    if chunk.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise FormatError(source, 1, "UTF-16 text; save the file as UTF-8")
    chunk = chunk.removeprefix(codecs.BOM_UTF8)
    while chunk or tail:
        data = tail + chunk
        cut = data.rfind(b"\n") + 1
        if not chunk or (not cut and len(data) >= _MAX_LINE):
            cut = len(data)  # the last line, or a part of a line too long
        data, tail = data[:cut], data[cut:]
        if data:
            text = _decode(decoder, data, line, source)
            lines = text.split("\n")
            if text.endswith("\n"):
                lines.pop()
            yield _Block(line, lines, not text.endswith("\n") and bool(chunk))
            line += text.count("\n")
        chunk = stream.read(_BLOCK) if chunk else b""
    _decode(decoder, b"", line, source, final=True)


def _decode(
    decoder: codecs.IncrementalDecoder, data: bytes, line: int, source: str, final: bool = False
) -> str:
    """Text of data whose first line is ``line``; FormatError names the first line at fault."""
    junk = _BINARY.search(data)
    try:
        text = decoder.decode(data, final=final)
    except UnicodeDecodeError as exc:
        if junk is None or junk.start() > exc.start:
            at = line + data.count(b"\n", 0, max(exc.start, 0))
            raise FormatError(source, at, "not valid UTF-8") from None
        text = ""
    if junk:
        at = line + data.count(b"\n", 0, junk.start())
        raise FormatError(source, at, "binary data, not a text file")
    return text


def _numbered(blocks: _Blocks, source: str) -> Iterator[tuple[int, str]]:
    """Lines with their numbers; a line longer than _MAX_LINE raises FormatError."""
    whole = (enumerate(block.lines, block.line) for block in _whole(blocks, source))
    return chain.from_iterable(whole)


def _whole(blocks: _Blocks, source: str) -> _Blocks:
    """Blocks of whole lines; the first line longer than _MAX_LINE raises FormatError."""
    for block in blocks:
        if block.partial:
            at = block.line + len(block.lines) - 1
            raise FormatError(source, at, f"line longer than {_MAX_LINE >> 10} KiB")
        yield block


def _significant(text: str) -> bool:
    stripped = text.strip()
    return bool(stripped) and not stripped.startswith("#")


# Detection ----------------------------------------------------------------


def _detect(blocks: _Blocks) -> _Fit:
    """Guess the reader from the first two records; the blocks read are given back."""
    head: list[_Block] = []
    records: list[str] = []
    for block in blocks:
        head.append(block)
        records += [text.strip() for text in block.lines[:_PEEK_LINES] if _significant(text)]
        if len(records) >= 2 or len(head) >= _PEEK_BLOCKS:
            break
    return _Fit(_guess(records[:2]), chain(head, blocks))


def _guess(records: list[str]) -> str:
    if not records:
        return "plain"
    first = records[0]
    if first.startswith(("{", "[")):
        return _guess_json(first)
    if isinstance(_json_or_none(first), str):
        return "jsonl"
    fields = _split(first)
    names = [name.strip().lower() for name in fields]
    if _is_mailchimp(names):
        return "mailchimp"
    if _SENDGRID_LAYOUTS.get(frozenset(names), "invalid") != "invalid":
        return "sendgrid"
    if _is_ses_csv(fields):
        return "ses-csv"
    digest = _digest_kind(names[0], records[1] if len(records) > 1 else "")
    if digest:
        return digest
    if any(name in _ADDRESS_KEYS for name in names) or len(fields) > 1:
        return "csv"
    return "plain"


def _guess_json(first: str) -> str:
    """A JSON object per line, or one JSON document (SES output) over many lines."""
    value = _json_or_none(first)
    if isinstance(value, dict):
        return "json" if _SES_SUMMARIES in value else "jsonl"
    return "jsonl" if first.endswith("}") else "json"


def _json_or_none(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _split(text: str) -> list[str]:
    try:
        return next(csv.reader([text], delimiter=_sniff(text)), [text])
    except csv.Error:
        return [text]


def _sniff(text: str) -> str:
    return max((",", ";", "\t"), key=text.count)


def _is_mailchimp(names: list[str]) -> bool:
    marks = ("unsub_", "clean_", "member_rating", "optin_time", "leid", "euid")
    return "email address" in names and any(name.startswith(marks) for name in names)


def _is_ses_csv(fields: list[str]) -> bool:
    """``emailAddress,reason`` or a first record like ``user@example.com,BOUNCE``."""
    names = [name.strip().lower() for name in fields]
    return names == ["emailaddress", "reason"] or (
        len(fields) == 2 and fields[1].strip() in ("BOUNCE", "COMPLAINT")
    )


def _digest_kind(first: str, second: str) -> str | None:
    """sha256 or md5 when the first record, or the one after a header word, is a digest."""
    kind = _digest_of(first)
    if kind is None and _HEADER_WORD.fullmatch(first):
        kind = _digest_of(_first_field(second).lower())
    return kind


def _digest_of(value: str) -> DigestKind | None:
    if _DIGEST["sha256"].fullmatch(value):
        return "sha256"
    return "md5" if _DIGEST["md5"].fullmatch(value) else None


# Line formats ---------------------------------------------------------------


def _read_plain(blocks: _Blocks, source: str) -> Iterator[Row]:
    checked = False
    for line, text in _numbered(blocks, source):
        value = text.strip()
        if value and value[0] != "#":
            if not checked:
                _check_plain(line, value, source)
                checked = True
            yield Row(line, value, "address", extra=_NO_EXTRA)


def _check_plain(line: int, value: str, source: str) -> None:
    if value.startswith("{"):
        raise FormatError(source, line, "looks like JSON lines; use --format jsonl")
    if _FIELD_END.search(value):
        raise FormatError(source, line, "more than one field; use --format csv")


def _read_digests(blocks: _Blocks, source: str, kind: DigestKind, strict: bool) -> Iterator[Row]:
    """One digest per line (first field of a CSV line); a header word first is skipped."""
    pattern = _DIGEST[kind]
    header_allowed = True
    for line, text in _numbered(blocks, source):
        value = _first_field(text).lower()
        if not value or value[0] == "#":
            continue
        if header_allowed:
            header_allowed = False
            if _HEADER_WORD.fullmatch(value):
                continue
        if strict and not pattern.fullmatch(value):
            raise FormatError(source, line, f"not a {kind} digest")
        yield Row(line, value, kind, extra=_NO_EXTRA)


def _first_field(text: str) -> str:
    return _FIELD_END.split(text, maxsplit=1)[0].strip().strip('"').strip()


def _read_jsonl(blocks: _Blocks, source: str) -> Iterator[Row]:
    for line, text in _numbered(blocks, source):
        if not text.strip():
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            if exc.pos >= len(text.rstrip()) or exc.msg.startswith("Unterminated"):
                raise FormatError(source, line, "incomplete JSON (truncated line?)") from None
            message = f"not a JSON line: {exc.msg} (column {exc.colno})"
            raise FormatError(source, line, message) from None
        row = _json_row(line, value, source)
        if row:
            yield row


def _json_row(line: int, value: object, source: str) -> Row | None:
    if isinstance(value, str):
        return Row(line, value.strip(), "address") if value.strip() else None
    if isinstance(value, dict):
        return _make_row(line, {str(k).strip().lower(): v for k, v in value.items()}, source)
    raise FormatError(source, line, "expected a JSON object or string")


# Records to rows ------------------------------------------------------------


def _make_row(line: int, record: Mapping[str, object], source: str) -> Row | None:
    """A row from named fields: the address (or a digest), reason, time, and the rest."""
    key = next((k for k in _ADDRESS_KEYS if k in record), None)
    extra = {k: _text(v) for k, v in record.items() if k and k != key and v is not None}
    reason = _reason_of(record.get("reason"))
    created = _created_of(record)
    address = _text(record[key]).strip() if key and record[key] is not None else ""
    if address:
        return Row(line, address, "address", reason, created, extra)
    for column in ("sha256", "md5"):
        digest = _text(record.get(column) or "").strip().lower()
        if digest:
            kind: DigestKind = "md5" if column == "md5" or len(digest) == 32 else "sha256"
            return Row(line, digest, kind, reason, created, extra)
    if key is None:
        raise FormatError(source, line, f"no address field (one of: {', '.join(_ADDRESS_KEYS)})")
    return None


def _text(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _reason_of(value: object) -> str | None:
    """Our reason for an ESP's word (``BOUNCE``, ``spam``, ``hard_bounce``...), if known."""
    if not isinstance(value, str):
        return None
    word = " ".join(value.lower().replace("_", " ").replace("-", " ").split())
    return _REASON_WORDS.get(word)


def _created_of(record: Mapping[str, object]) -> datetime | None:
    value = next((record[k] for k in _CREATED_KEYS if record.get(k) not in (None, "")), None)
    return None if value is None else _parse_time(value)


def _parse_time(value: object) -> datetime | None:
    """Aware UTC time from unix seconds or ISO 8601 (naive means UTC); None if neither."""
    if isinstance(value, str) and _UNIX_TIME.fullmatch(value.strip()):
        value = float(value)
    try:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return datetime.fromtimestamp(value, UTC)
        if isinstance(value, str):
            parsed = datetime.fromisoformat(value.strip())
            return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except (ValueError, OverflowError, OSError):
        return None
    return None


# CSV ------------------------------------------------------------------------


def _csv_records(blocks: _Blocks, source: str) -> _Records:
    """Non-blank records with the line each starts on; leading ``#`` lines are skipped."""
    lines = _numbered(blocks, source)
    first = next(((line, text) for line, text in lines if _significant(text)), None)
    if first is None:
        return
    ended = False

    def feed() -> Iterator[str]:
        nonlocal ended
        yield first[1] + "\n"
        for _, text in lines:
            yield text + "\n"
        ended = True

    reader = csv.reader(feed(), delimiter=_sniff(first[1]), strict=True)
    while True:
        start = first[0] + reader.line_num
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            if ended:
                raise FormatError(source, start, "unterminated quoted field") from None
            at = first[0] + reader.line_num - 1
            raise FormatError(source, at, f"malformed CSV: {exc}") from None
        fields = [value.strip() for value in fields]
        if any(fields):
            yield start, fields


def _named(records: _Records, names: list[str], source: str) -> Iterator[Row]:
    for line, fields in records:
        row = _make_row(line, dict(zip(names, fields, strict=False)), source)
        if row:
            yield row


def _header(fields: list[str]) -> list[str] | None:
    names = [name.lower() for name in fields]
    return names if any(name in _ADDRESS_KEYS for name in names) else None


def _read_csv(blocks: _Blocks, source: str) -> Iterator[Row]:
    """CSV with a header naming the address column, or addresses in the first column."""
    records = _csv_records(blocks, source)
    first = next(records, None)
    if first is None:
        return
    names = _header(first[1])
    if names:
        yield from _named(records, names, source)
        return
    _check_csv(first[0], first[1][0], source)
    for line, fields in chain([first], records):
        if fields[0]:
            yield Row(line, fields[0], "address")


def _check_csv(line: int, value: str, source: str) -> None:
    if value.startswith("{"):
        raise FormatError(source, line, "looks like JSON lines; use --format jsonl")
    kind = _digest_of(value.lower())
    if kind:
        raise FormatError(source, line, f"looks like {kind} digests; use --format {kind}")


def _esp_header(blocks: _Blocks, source: str, column: str, esp: str) -> tuple[list[str], _Records]:
    """The lower-cased header of an ESP export and its records; FormatError without one."""
    records = _csv_records(blocks, source)
    first = next(records, None)
    if first is None:
        return [], records
    names = [name.lower() for name in first[1]]
    if column not in names:
        raise FormatError(source, first[0], f"not a {esp} export: no {column!r} column")
    return names, records


def _read_sendgrid(blocks: _Blocks, source: str) -> Iterator[Row]:
    """A SendGrid suppression download; which list it is follows from its columns."""
    names, records = _esp_header(blocks, source, "email", "SendGrid")
    reason = _SENDGRID_LAYOUTS.get(frozenset(names))
    for row in _named(records, names, source):
        yield replace(row, reason=reason) if reason else row


def _read_mailchimp(blocks: _Blocks, source: str) -> Iterator[Row]:
    """A Mailchimp audience export: unsubscribed, cleaned (bounced) or subscribed members."""
    names, records = _esp_header(blocks, source, "email address", "Mailchimp")
    if any(name.startswith("clean_") for name in names):
        reason, time_key = "bounced", "clean_time"
    elif any(name.startswith("unsub_") for name in names):
        reason, time_key = "unsubscribed", "unsub_time"
    else:
        reason, time_key = None, "optin_time"
    for row in _named(records, names, source):
        word = _reason_of(row.extra.get("unsub_reason"))
        created = _parse_time(row.extra.get(time_key, "") or None)
        yield replace(row, reason="complained" if word == "complained" else reason, created=created)


def _read_ses_csv(blocks: _Blocks, source: str) -> Iterator[Row]:
    """The SES bulk-import CSV: ``address,BOUNCE|COMPLAINT``, header optional."""
    records = _csv_records(blocks, source)
    for line, fields in records:
        if len(fields) > 2:
            raise FormatError(source, line, "not an SES list: expected address,reason")
        if fields[0].lower() in _ADDRESS_KEYS:
            continue
        reason = _reason_of(fields[1]) if len(fields) == 2 else None
        if fields[0]:
            yield Row(line, fields[0], "address", reason)


# One JSON document (SES list-suppressed-destinations) -----------------------


class _JsonCursor:
    """Reads a JSON document value by value, holding one value at a time."""

    def __init__(self, blocks: _Blocks, source: str) -> None:
        self._blocks = blocks
        self._source = source
        self._buffer = ""
        self._pos = 0
        self.line = 1
        self._ended = False

    def _fill(self) -> bool:
        block = next(self._blocks, None)
        if block is None:
            self._ended = True
            return False
        text = "\n".join(block.lines) + ("" if block.partial else "\n")
        self._buffer = self._buffer[self._pos :] + text
        self._pos = 0
        return True

    def _advance(self, end: int) -> None:
        self.line += self._buffer.count("\n", self._pos, end)
        self._pos = end

    def error(self, message: str) -> FormatError:
        """A FormatError at the current line."""
        return FormatError(self._source, self.line, message)

    def peek(self) -> str:
        """The next character that is not white space, or "" at the end."""
        while True:
            match = _NOT_SPACE.search(self._buffer, self._pos)
            if match:
                self._advance(match.start())
                return self._buffer[self._pos]
            self._advance(len(self._buffer))
            if not self._fill():
                return ""

    def take(self, expected: str) -> str:
        """Consume the next character, one of ``expected``."""
        char = self.peek()
        if not char or char not in expected:
            found = repr(char) if char else "end of file"
            raise self.error(f"expected one of {' '.join(expected)} in JSON, found {found}")
        self._advance(self._pos + 1)
        return char

    def value(self) -> object:
        """Decode the next value, reading more text until it is complete."""
        self.peek()
        while True:
            try:
                value, end = _DECODER.raw_decode(self._buffer, self._pos)
            except json.JSONDecodeError as exc:
                if self._ended or len(self._buffer) - self._pos > _MAX_JSON_VALUE:
                    raise self._invalid(exc) from exc
                self._read_more()
                continue
            if end < len(self._buffer) or self._ended or not self._fill():
                self._advance(end)
                return value

    def _read_more(self) -> None:
        """Read until the pending text doubles or the file ends."""
        target = 2 * (len(self._buffer) - self._pos) + 1
        while len(self._buffer) - self._pos < target:
            if not self._fill():
                return

    def _invalid(self, exc: json.JSONDecodeError) -> FormatError:
        """Truncated at the line the value starts on, else invalid where the error is."""
        if self._ended and not self._buffer[exc.pos :].strip():
            return self.error(f"truncated JSON: {exc.msg}")
        at = self.line + self._buffer.count("\n", self._pos, exc.pos)
        return FormatError(self._source, at, f"invalid JSON: {exc.msg}")


_DECODER = json.JSONDecoder()


def _read_json(blocks: _Blocks, source: str) -> Iterator[Row]:
    """SES summaries (or addresses) from JSON documents: ``{"SuppressedDestinationSummaries":
    [...], "NextToken": ...}`` pages one after the other, or a bare array."""
    cursor = _JsonCursor(blocks, source)
    while char := cursor.peek():
        if char == "[":
            yield from _json_array(cursor, source)
        else:
            yield from _ses_page(cursor, source)


def _ses_page(cursor: _JsonCursor, source: str) -> Iterator[Row]:
    """The rows of one page object; its other keys (NextToken) are skipped."""
    start = cursor.line
    cursor.take("{")
    found = False
    separator = "," if cursor.peek() != "}" else cursor.take("}")
    while separator == ",":
        key = cursor.value()
        cursor.take(":")
        if key == _SES_SUMMARIES:
            found = True
            yield from _json_array(cursor, source)
        else:
            cursor.value()
        separator = cursor.take(",}")
    if not found:
        raise FormatError(source, start, f"no {_SES_SUMMARIES} in this JSON object")


def _json_array(cursor: _JsonCursor, source: str) -> Iterator[Row]:
    cursor.take("[")
    separator = "," if cursor.peek() != "]" else cursor.take("]")
    while separator == ",":
        cursor.peek()
        row = _json_row(cursor.line, cursor.value(), source)
        if row:
            yield row
        separator = cursor.take(",]")


_READERS: dict[str, _Reader] = {
    "csv": _read_csv,
    "jsonl": _read_jsonl,
    "json": _read_json,
    "plain": _read_plain,
    "sha256": lambda blocks, source: _read_digests(blocks, source, "sha256", False),
    "md5": lambda blocks, source: _read_digests(blocks, source, "md5", False),
    "sendgrid": _read_sendgrid,
    "mailchimp": _read_mailchimp,
    "ses-csv": _read_ses_csv,
}


# Writers --------------------------------------------------------------------

_COLUMNS = ("email", "sha256", "scope", "reason", "source", "created")


def write_records(
    records: Iterable[ExportRecord], fmt: str, out: TextIO, *, header: bool = True
) -> WriteSummary:
    """Write records as they come; ``header=False`` continues an earlier csv call."""
    if fmt not in WRITE_FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(WRITE_FORMATS)}")
    if fmt == "csv":
        return _write_csv(records, out, header)
    if fmt == "jsonl":
        return _write_lines(records, out, _json_line)
    return _write_lines(records, out, _sha256_line if fmt == "sha256" else _md5_line)


def _fields(record: ExportRecord) -> tuple[str | None, ...]:
    created = record.created
    if created.tzinfo is None:
        created = created.replace(tzinfo=UTC)
    stamp = created.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return (record.address, record.sha256, record.scope, record.reason, record.source, stamp)


def _write_csv(records: Iterable[ExportRecord], out: TextIO, header: bool) -> WriteSummary:
    writer = csv.writer(out, lineterminator="\n")
    if header:
        writer.writerow(_COLUMNS)
    written = 0
    for record in records:
        writer.writerow(_fields(record))
        written += 1
    return WriteSummary(written, 0)


def _write_lines(
    records: Iterable[ExportRecord], out: TextIO, line_of: Callable[[ExportRecord], str | None]
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
    return json.dumps(dict(zip(_COLUMNS, _fields(record), strict=True)), ensure_ascii=False)


def _sha256_line(record: ExportRecord) -> str | None:
    return record.sha256 if record.key_kind == "sha256" else None


def _md5_line(record: ExportRecord) -> str | None:
    if record.key_kind == "md5":
        return record.sha256
    if record.key_kind == "sha256" and record.address:
        return md5_identity(record.address)
    return None
