"""Streaming readers for bulk suppression and consent files, and the detection of layouts.

``Reading`` turns a byte stream into ``Row`` values in flat memory (one block
and one record at a time) and names the format it read, detected from the
first records for ``auto`` (and for ``ses``, ``mailgun`` and ``postmark``,
which each have several layouts). Besides plain lists, CSV (optgate's own
export among them), JSON lines and digest lists it reads the ESPs' exports
(suppression/vendors.py).
"""

from __future__ import annotations

import csv
import json
import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from itertools import chain, islice
from operator import itemgetter
from typing import BinaryIO, NamedTuple

from suppression import vendors
from suppression.fields import (
    ADDRESS_KEYS,
    Addresses,
    DigestKind,
    Layout,
    Record,
    Row,
    address_row,
    loads,
    reason_of,
    restored,
)
from suppression.jsondoc import element, element_row, read_documents
from suppression.textio import (
    Block,
    Blocks,
    CsvRecords,
    FormatError,
    blocks,
    first_field,
    lines_of,
    numbered,
    significant,
    split_fields,
    whole,
)

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
    "mailgun",
    "postmark",
)

_PEEK_LINES = 1000  # lines of a block auto-detection looks at for the first records
_PEEK_BLOCKS = 4  # blocks auto-detection reads at most
_RECORDS_A_BLOCK = 10_000  # CSV records of an address alone taken at a time
_FIRST_CHAR = itemgetter(0)
# a cell beginning with one of these goes a record at a time: ' (neutralised by a writer),
# @ (a domain), # (a comment in a plain list)
_RUN_STARTS = frozenset("'@#")
_DIGEST = {"sha256": re.compile(r"[0-9a-f]{64}"), "md5": re.compile(r"[0-9a-f]{32}")}
_HEADER_WORD = re.compile(r"(?=.*[g-z_ .-])[a-z_][a-z0-9_ .-]*")  # not all hex: sha256, hash
_FIELD_END = re.compile(r"[,;\t]")
_UNIX_TIME = re.compile(r"\d{9,10}(?:\.\d+)?")
_RFC2822 = re.compile(r"(?:mon|tue|wed|thu|fri|sat|sun), \d")
# the array key of each vendor's JSON answer, and the format it names
_DOCUMENT_KEYS = {
    vendors.SES_SUMMARIES: "ses",
    "items": "mailgun",
    "Suppressions": "postmark",
}
_DOCUMENT = re.compile(r'"(' + "|".join(_DOCUMENT_KEYS) + r')"\s*:\s*\[')

Reader = Callable[[Blocks, str], Iterator[Row]]


class _Fit(NamedTuple):
    """The reader a file needs (a key of _READERS), and the blocks already looked at."""

    reader: str
    blocks: Blocks


class Reading:
    """The rows of a stream in a format; ``format`` names the one detected once the first
    row was asked for. ``keep_extra``: give rows their other named fields (consent
    evidence); without, a CSV of the usual layout is read by index, which is faster, and
    ``records`` gives its rows a block at a time (fields.Addresses)."""

    def __init__(self, stream: BinaryIO, fmt: str, source: str, keep_extra: bool = True) -> None:
        if fmt not in READ_FORMATS:
            raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(READ_FORMATS)}")
        self.format = fmt
        self.source = source
        self._records = self._read(stream, keep_extra)

    def __iter__(self) -> Iterator[Row]:
        for record in self._records:
            if isinstance(record, Addresses):
                yield from record.rows()
            else:
                yield record

    def records(self) -> Iterator[Record]:
        """The rows, those of an address alone in blocks where the reader makes blocks."""
        return self._records

    def _read(self, stream: BinaryIO, keep_extra: bool) -> Iterator[Record]:
        found = blocks(stream, self.source)
        if self.format in ("auto", "ses", "mailgun", "postmark"):
            fit = _detect(found)
            reader = fit.reader if self.format == "auto" else _variant(self.format, fit.reader)
            found = fit.blocks
        else:
            reader = self.format
        explicit = reader == self.format
        self.format = _SHOWN.get(reader, reader)
        if reader == "csv":
            yield from _read_csv(found, self.source, keep_extra)
        elif reader == "plain":
            yield from _read_plain(found, self.source)
        elif explicit and reader in _DIGEST:  # asked for: every line must be a digest
            kind: DigestKind = "sha256" if reader == "sha256" else "md5"
            yield from _read_digests(found, self.source, kind, strict=True)
        else:
            yield from _READERS[reader](found, self.source)


def _variant(fmt: str, detected: str) -> str:
    """The layout of a vendor's format: the one detected if it is that vendor's."""
    own = {
        "ses": ("ses-csv", "ses-text", "ses-json", "jsonl", "json"),
        "mailgun": ("mailgun", "mailgun-json"),
        "postmark": ("postmark", "postmark-json"),
    }[fmt]
    if detected in own:
        return detected
    return {"ses": "ses-csv", "mailgun": "mailgun", "postmark": "postmark"}[fmt]


# Detection ----------------------------------------------------------------


def _detect(found: Blocks) -> _Fit:
    """Guess the reader from the first two records; the blocks read are given back."""
    head: list[Block] = []
    records: list[str] = []
    for block in found:
        head.append(block)
        lines = lines_of(block)[:_PEEK_LINES]
        records += [text.strip() for text in lines if significant(text)]
        if len(records) >= 2 or len(head) >= _PEEK_BLOCKS:
            break
    text = head[0].text if head else ""
    return _Fit(_guess(records[:2], text), chain(head, found))


def _guess(records: list[str], text: str) -> str:
    if not records:
        return "plain"
    first = records[0]
    second = records[1] if len(records) > 1 else ""
    if first.startswith(("{", "[")):
        return _guess_json(first, text)
    if isinstance(_json_or_none(first), str):
        return "jsonl"
    if first.startswith(vendors.SES_TEXT + "\t") or second.startswith(vendors.SES_TEXT + "\t"):
        return "ses-text"
    fields = split_fields(first)
    names = [name.strip().lower() for name in fields]
    return _guess_header(names, fields, second) or _guess_list(names, fields, second)


def _guess_header(names: list[str], fields: list[str], second: str) -> str | None:
    """A vendor's export, from its header (and its first record where that is needed)."""
    layout = frozenset(names)
    if _is_mailchimp(names):
        return "mailchimp"
    sendgrid = vendors.SENDGRID_LAYOUTS.get(layout)
    if sendgrid and (sendgrid != "invalid" or _sendgrid_invalid(names, second)):
        return "sendgrid"
    mailgun = vendors.MAILGUN_LAYOUTS.get(layout)
    if mailgun and (mailgun != "complained" or _rfc2822(names, second)):
        return "mailgun"
    if frozenset(n.replace(" ", "") for n in names) >= vendors.POSTMARK_COLUMNS:
        return "postmark"
    if _is_ses_csv(fields):
        return "ses-csv"
    return None


def _guess_list(names: list[str], fields: list[str], second: str) -> str:
    digest = _digest_kind(names[0], second)
    if digest:
        return digest
    if any(name in ADDRESS_KEYS for name in names) or len(fields) > 1:
        return "csv"
    return "plain"


def _guess_json(first: str, text: str) -> str:
    """A JSON object per line, or one JSON document (an ESP's answer) over many lines."""
    value = _json_or_none(first)
    found = _DOCUMENT.search(text)
    if isinstance(value, dict):
        key = next((k for k in value if k in _DOCUMENT_KEYS), None)
        return f"{_DOCUMENT_KEYS[key]}-json" if key else "jsonl"
    if value is not None and not isinstance(value, list):
        return "jsonl"
    if first.startswith("{") and found:
        return f"{_DOCUMENT_KEYS[found.group(1)]}-json"
    return "jsonl" if first.endswith("}") else "json"


def _json_or_none(text: str) -> object:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def _record(names: list[str], second: str) -> dict[str, str]:
    return dict(zip(names, (value.strip() for value in split_fields(second)), strict=False))


def _sendgrid_invalid(names: list[str], second: str) -> bool:
    """SendGrid's invalid emails: unix times, and a reason that is none of our words."""
    record = _record(names, second)
    return bool(_UNIX_TIME.fullmatch(record.get("created", ""))) and not reason_of(
        record.get("reason")
    )


def _rfc2822(names: list[str], second: str) -> bool:
    return bool(_RFC2822.match(_record(names, second).get("created_at", "").lower()))


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
        kind = _digest_of(first_field(second).lower())
    return kind


def _digest_of(value: str) -> DigestKind | None:
    if _DIGEST["sha256"].fullmatch(value):
        return "sha256"
    return "md5" if _DIGEST["md5"].fullmatch(value) else None


# Line formats ---------------------------------------------------------------


def _read_plain(found: Blocks, source: str) -> Iterator[Record]:
    """One address a line, a block at a time; blank and ``#`` lines are skipped."""
    first = True
    for block in whole(found, source):
        values = list(map(str.strip, lines_of(block)))
        if first:
            at = next((i for i, value in enumerate(values) if value and value[0] != "#"), None)
            if at is None:
                continue
            _check_plain(block.line + at, values[at], source)
            first = False
        if "" in values or not _RUN_STARTS.isdisjoint(map(_FIRST_CHAR, values)):
            kept = enumerate(values, block.line)
            yield from _runs((line, v) for line, v in kept if v and v[0] != "#")
        else:
            yield Addresses(values, range(block.line, block.line + len(values)))


def _check_plain(line: int, value: str, source: str) -> None:
    if value.startswith("{"):
        raise FormatError(source, line, "looks like JSON lines; use --format jsonl")
    if _FIELD_END.search(value):
        raise FormatError(source, line, "more than one field; use --format csv")


def _read_digests(
    found: Blocks, source: str, kind: DigestKind, strict: bool = False
) -> Iterator[Row]:
    """One digest per line (first field of a CSV line); a header word first is skipped."""
    pattern = _DIGEST[kind]
    header_allowed = True
    for line, text in numbered(found, source):
        value = first_field(text).lower()
        if not value or value[0] == "#":
            continue
        if header_allowed:
            header_allowed = False
            if _HEADER_WORD.fullmatch(value):
                continue
        if strict and not pattern.fullmatch(value):
            raise FormatError(source, line, f"not a {kind} digest")
        yield Row(line, value, kind)


def _read_jsonl(found: Blocks, source: str) -> Iterator[Row]:
    convert = element_row(source)
    for line, text in numbered(found, source):
        if not text.strip():
            continue
        try:
            value = loads(text, source, line)
        except json.JSONDecodeError as exc:
            if exc.pos >= len(text.rstrip()) or exc.msg.startswith("Unterminated"):
                raise FormatError(source, line, "incomplete JSON (truncated line?)") from None
            message = f"not a JSON line: {exc.msg} (column {exc.colno})"
            raise FormatError(source, line, message) from None
        row = element(line, value, source, convert)
        if row:
            yield row


def _read_json(found: Blocks, source: str) -> Iterator[Row]:
    """Bare JSON arrays of addresses or records (or SES pages), one after the other."""
    return read_documents(found, source, vendors.SES_SUMMARIES, element_row(source))


# CSV ------------------------------------------------------------------------


def _header(fields: list[str]) -> list[str] | None:
    names = [name.strip().lower() for name in fields]
    return names if any(name in ADDRESS_KEYS for name in names) else None


def _read_csv(found: Blocks, source: str, keep_extra: bool) -> Iterator[Record]:
    """CSV with a header naming the address column, or addresses in the first column."""
    stream = CsvRecords(found, source)
    records = iter(stream)
    first = next(records, None)
    if first is None:
        return
    names = _header(first[1])
    if names:
        layout = Layout(names, keep_extra)
        if layout.plain:
            yield from _addresses(stream, layout.address or 0)
            return
        for line, fields in records:
            row = layout.row(line, fields, source)
            if row:
                yield row
        return
    _check_csv(first[0], first[1][0].strip(), source)
    for line, fields in chain([first], records):
        value = restored(fields[0].strip())
        if value:
            yield address_row(line, value)


def _addresses(stream: CsvRecords, column: int) -> Iterator[Record]:
    """The rows of a CSV whose only column that counts is the address, a block of records
    at a time (the layout of most files, on its own path): the csv module's records taken
    and their address fields trimmed by C loops, unless the block has records of more
    than one line, blank ones, cells a writer neutralised or domains (then one record at
    a time)."""
    reader, start, field = stream.reader, stream.start, itemgetter(column)
    while True:
        before = reader.line_num
        records: list[list[str]] = []
        try:  # append as read: the records before a broken one say where it starts
            deque(map(records.append, islice(reader, _RECORDS_A_BLOCK)), 0)
        except csv.Error as exc:
            raise stream.error(exc, start + before + _lines_spanned(records)) from None
        if not records:
            return
        values = None
        if reader.line_num - before == len(records) and min(map(len, records)) > column:
            values = list(map(str.strip, map(field, records)))
        if values and "" not in values and _RUN_STARTS.isdisjoint(map(_FIRST_CHAR, values)):
            yield Addresses(values, range(start + before, start + before + len(values)))
        else:
            yield from _runs(_cells(records, column, start + before))


def _lines_spanned(records: list[list[str]]) -> int:
    """The lines the csv module read for these records (a quoted line break is one more)."""
    return len(records) + sum(field.count("\n") for fields in records for field in fields)


def _cells(records: list[list[str]], column: int, line: int) -> Iterator[tuple[int, str]]:
    """The non-empty address cells of records, restored, and the line each record is on."""
    for fields in records:
        value = fields[column].strip() if len(fields) > column else ""
        if value:
            yield line, restored(value)
        line += _lines_spanned([fields])


def _runs(cells: Iterable[tuple[int, str]]) -> Iterator[Record]:
    """(line, value) pairs as Addresses, but for a domain (``@example.com``): a Row of its
    own between them."""
    values: list[str] = []
    lines: list[int] = []
    for line, value in cells:
        if value[0] == "@":
            if values:
                yield Addresses(values, lines)
                values, lines = [], []
            yield address_row(line, value)
        else:
            values.append(value)
            lines.append(line)
    if values:
        yield Addresses(values, lines)


def _check_csv(line: int, value: str, source: str) -> None:
    if value.startswith("{"):
        raise FormatError(source, line, "looks like JSON lines; use --format jsonl")
    kind = _digest_of(value.lower())
    if kind:
        raise FormatError(source, line, f"looks like {kind} digests; use --format {kind}")


_READERS: dict[str, Reader] = {
    "jsonl": _read_jsonl,
    "json": _read_json,
    "sha256": lambda found, source: _read_digests(found, source, "sha256"),
    "md5": lambda found, source: _read_digests(found, source, "md5"),
    "sendgrid": vendors.read_sendgrid,
    "mailchimp": vendors.read_mailchimp,
    "ses-csv": vendors.read_ses_csv,
    "ses-text": vendors.read_ses_text,
    "ses-json": vendors.read_ses_json,
    "mailgun": vendors.read_mailgun,
    "mailgun-json": vendors.read_mailgun_json,
    "postmark": vendors.read_postmark,
    "postmark-json": vendors.read_postmark_json,
}
# what a summary calls each reader
_SHOWN = {
    "ses-csv": "ses",
    "ses-text": "ses (text)",
    "ses-json": "ses (json)",
    "mailgun-json": "mailgun (json)",
    "postmark-json": "postmark (json)",
}
