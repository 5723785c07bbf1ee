"""One JSON document (an ESP's API answer) read value by value, in flat memory.

``aws sesv2 list-suppressed-destinations``, Mailgun's suppression lists and
Postmark's suppression dump answer with one object holding an array of
records (and paging keys); pages may follow one another. The array's elements
are decoded one at a time, so an answer of any size reads in flat memory.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping

from suppression.fields import Row, make_row
from suppression.textio import Blocks, FormatError

_NOT_SPACE = re.compile(r"\S")
_MAX_JSON_VALUE = 1 << 20  # characters one record (or other value) may take
_DECODER = json.JSONDecoder()

Element = Callable[[int, Mapping[str, object]], Row | None]  # (line, record) -> Row


class JsonCursor:
    """Reads a JSON document value by value, holding one value at a time."""

    def __init__(self, blocks: Blocks, source: str) -> None:
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
        self._buffer = self._buffer[self._pos :] + block.text
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
            except RecursionError:
                raise self.error("JSON nested too deeply") from None
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
        rest = self._buffer[exc.pos :].strip()
        if self._ended and (not rest or exc.msg.startswith("Unterminated")):
            return self.error(f"truncated JSON: {exc.msg}")
        at = self.line + self._buffer.count("\n", self._pos, exc.pos)
        return FormatError(self._source, at, f"invalid JSON: {exc.msg}")


def element_row(source: str) -> Element:
    """The plain conversion of an array element: an address string, or named fields."""

    def convert(line: int, value: Mapping[str, object]) -> Row | None:
        return make_row(line, value, source)

    return convert


def read_documents(blocks: Blocks, source: str, key: str, convert: Element) -> Iterator[Row]:
    """Rows of JSON documents one after the other: objects whose ``key`` holds the array of
    records (other keys, such as paging, are skipped), or bare arrays."""
    cursor = JsonCursor(blocks, source)
    while char := cursor.peek():
        if char == "[":
            yield from _array(cursor, source, convert)
        else:
            yield from _page(cursor, source, key, convert)


def _page(cursor: JsonCursor, source: str, key: str, convert: Element) -> Iterator[Row]:
    start = cursor.line
    cursor.take("{")
    found = False
    separator = "," if cursor.peek() != "}" else cursor.take("}")
    while separator == ",":
        name = cursor.value()
        cursor.take(":")
        if isinstance(name, str) and name.lower() == key.lower():
            found = True
            yield from _array(cursor, source, convert)
        else:
            cursor.value()
        separator = cursor.take(",}")
    if not found:
        raise FormatError(source, start, f"no {key} in this JSON object")


def _array(cursor: JsonCursor, source: str, convert: Element) -> Iterator[Row]:
    cursor.take("[")
    separator = "," if cursor.peek() != "]" else cursor.take("]")
    while separator == ",":
        cursor.peek()
        line = cursor.line
        value = cursor.value()
        row = element(line, value, source, convert)
        if row:
            yield row
        separator = cursor.take(",]")


def element(line: int, value: object, source: str, convert: Element) -> Row | None:
    """A JSON record: an address string, or an object converted by ``convert``."""
    if isinstance(value, str):
        return Row(line, value.strip(), "address") if value.strip() else None
    if isinstance(value, dict):
        return convert(line, {str(k).strip().lower(): v for k, v in value.items()})
    raise FormatError(source, line, "expected a JSON object or string")
