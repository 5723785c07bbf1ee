"""Bytes to checked text for the import readers: blocks of whole lines, CSV records.

A stream is read 64 KiB at a time and decoded as UTF-8 (a BOM is dropped);
binary data, bad UTF-8, UTF-16 and lines longer than 1 MiB raise FormatError
naming the first line at fault. Nothing holds more than a block and one line.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
from collections.abc import Iterator
from itertools import chain
from typing import BinaryIO, NamedTuple

from suppression.errors import OptgateError

MAX_LINE = 1 << 20  # bytes; a longer line is not a suppression record
_BLOCK = 1 << 16  # bytes read at a time
_BINARY = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f]")
_FIELD_END = re.compile(r"[,;\t]")


class FormatError(OptgateError):
    """The file cannot be read as asked, or a row of it is refused: nothing is imported."""

    def __init__(self, source: str, line: int, message: str) -> None:
        super().__init__(f"{source}:{line}: {message}")
        self.source = source
        self.line = line
        self.message = message


class Block(NamedTuple):
    """Decoded text read in one go, numbered from ``line``: whole lines, each ending in LF
    except perhaps the file's last."""

    line: int
    text: str
    partial: bool  # the last line goes on in the next block: it is over MAX_LINE


Blocks = Iterator[Block]
Records = Iterator[tuple[int, list[str]]]  # CSV records and the line each starts on


def blocks(stream: BinaryIO, source: str) -> Blocks:
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
        if not chunk or (not cut and len(data) >= MAX_LINE):
            cut = len(data)  # the last line, or a part of a line too long
        data, tail = data[:cut], data[cut:]
        if data:
            text = _decode(decoder, data, line, source)
            yield Block(line, text, not text.endswith("\n") and bool(chunk))
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


def whole(found: Blocks, source: str) -> Blocks:
    """Blocks of whole lines; the first line longer than MAX_LINE raises FormatError."""
    for block in found:
        if block.partial:
            at = block.line + block.text.count("\n")
            raise FormatError(source, at, f"line longer than {MAX_LINE >> 10} KiB")
        yield block


def lines_of(block: Block) -> list[str]:
    """A block's lines without their LF."""
    lines = block.text.split("\n")
    if block.text.endswith("\n"):
        lines.pop()
    return lines


def numbered(found: Blocks, source: str) -> Iterator[tuple[int, str]]:
    """Lines with their numbers; a line longer than MAX_LINE raises FormatError."""
    return chain.from_iterable(
        enumerate(lines_of(block), block.line) for block in whole(found, source)
    )


def significant(text: str) -> bool:
    """A line that is neither blank nor a ``#`` comment."""
    stripped = text.strip()
    return bool(stripped) and not stripped.startswith("#")


def sniff(text: str) -> str:
    """The delimiter a header line uses: comma, semicolon or tab."""
    return max((",", ";", "\t"), key=text.count)


def split_fields(text: str) -> list[str]:
    """One line's fields, by the delimiter it uses (the line as one field if it is no CSV)."""
    try:
        return next(csv.reader([text], delimiter=sniff(text)), [text])
    except csv.Error:
        return [text]


def first_field(text: str) -> str:
    """The first field of a line, unquoted and trimmed."""
    return _FIELD_END.split(text, maxsplit=1)[0].strip().strip('"').strip()


class CsvRecords:
    """A CSV stream: iterating gives its non-blank records with the line each starts on;
    leading blank and ``#`` lines are skipped. The delimiter is sniffed from the first
    record unless given. Lines go to the csv module block by block (io.StringIO splits
    them in C), so a record costs no Python step of its own but the csv module's."""

    def __init__(self, found: Blocks, source: str, delimiter: str | None = None) -> None:
        self.source = source
        self.start = 0
        self.ended = False
        checked = whole(found, source)
        head: list[str] = []
        for block in checked:
            lines = lines_of(block)
            at = next((i for i, text in enumerate(lines) if significant(text)), None)
            if at is not None:
                self.start, head = block.line + at, lines[at:]
                break

        def texts() -> Iterator[Iterator[str]]:
            yield iter([text + "\n" for text in head])
            for block in checked:
                yield io.StringIO(block.text, newline="\n")
            self.ended = True

        self.reader = csv.reader(
            chain.from_iterable(texts()),
            delimiter=delimiter or (sniff(head[0]) if head else ","),
            strict=True,
        )

    def error(self, exc: csv.Error, at: int) -> FormatError:
        """The csv module's error, for the record that starts on line ``at``."""
        if self.ended:
            return FormatError(self.source, at, "unterminated quoted field")
        line = self.start + self.reader.line_num - 1
        return FormatError(self.source, line, f"malformed CSV: {exc}")

    def __iter__(self) -> Records:
        reader, start = self.reader, self.start
        while True:
            at = start + reader.line_num
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise self.error(exc, at) from None
            if any(fields):
                yield at, fields


def csv_records(found: Blocks, source: str, delimiter: str | None = None) -> Records:
    """The records of a CSV stream (CsvRecords)."""
    return iter(CsvRecords(found, source, delimiter))
