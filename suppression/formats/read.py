"""Streaming readers for bulk suppression and consent files.

``Reading`` turns a byte stream into ``Row`` values in flat memory (one block
and one record at a time) and names the format it read, detected from the
first records for ``auto`` (formats/detect.py). Besides plain lists, CSV
(optgate's own export among them), JSON lines and digest lists it reads the
ESPs' exports (suppression/vendors.py). Rows of an address alone come a block
at a time from ``records`` (fields.Addresses).
"""

from __future__ import annotations

import csv
import json
import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from itertools import chain, islice
from operator import itemgetter
from typing import BinaryIO

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
    restored,
)
from suppression.formats import READ_FORMATS
from suppression.formats.detect import DIGESTS, HEADER_WORD, detect, digest_of, variant
from suppression.jsondoc import element, element_row, read_documents
from suppression.textio import (
    Blocks,
    CsvRecords,
    FormatError,
    blocks,
    first_field,
    lines_of,
    numbered,
    whole,
)

_RECORDS_A_BLOCK = 10_000  # CSV records of an address alone taken at a time
_FIRST_CHAR = itemgetter(0)
# a cell beginning with one of these goes a record at a time: ' (neutralised by a writer),
# @ (a domain), # (a comment in a plain list)
_RUN_STARTS = frozenset("'@#")
_FIELD_END = re.compile(r"[,;\t]")

Reader = Callable[[Blocks, str], Iterator[Row]]


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
            fit = detect(found)
            reader = fit.reader if self.format == "auto" else variant(self.format, fit.reader)
            found = fit.blocks
        else:
            reader = self.format
        explicit = reader == self.format
        self.format = _SHOWN.get(reader, reader)
        if reader == "csv":
            yield from _read_csv(found, self.source, keep_extra)
        elif reader == "plain":
            yield from _read_plain(found, self.source)
        elif explicit and reader in DIGESTS:  # asked for: every line must be a digest
            kind: DigestKind = "sha256" if reader == "sha256" else "md5"
            yield from _read_digests(found, self.source, kind, strict=True)
        else:
            yield from READERS[reader](found, self.source)


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
    pattern = DIGESTS[kind]
    header_allowed = True
    for line, text in numbered(found, source):
        value = first_field(text).lower()
        if not value or value[0] == "#":
            continue
        if header_allowed:
            header_allowed = False
            if HEADER_WORD.fullmatch(value):
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
    """The column names, when the record names an address or digest column."""
    names = [name.strip().lower() for name in fields]
    return names if any(name in _KEY_COLUMNS for name in names) else None


_KEY_COLUMNS = frozenset((*ADDRESS_KEYS, "sha256", "md5"))


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
    kind = digest_of(value.lower())
    if kind:
        raise FormatError(source, line, f"looks like {kind} digests; use --format {kind}")


READERS: dict[str, Reader] = {
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
