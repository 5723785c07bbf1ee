"""One JSON document (an ESP's API answer) read record by record, in flat memory, by ijson.

``aws sesv2 list-suppressed-destinations``, Mailgun's suppression lists and
Postmark's suppression dump answer with one object holding an array of
records (and paging keys); pages may follow one another. ijson's parser
(yajl, in C) is fed the text a line at a time and gives its events; each
element of the array is built on its own (ijson's ObjectBuilder) and numbered
by the line it starts on, so an answer of any size reads in flat memory.
Values besides the array (paging keys) are skipped, never built.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import ijson

from suppression.fields import Row, make_row
from suppression.textio import Blocks, FormatError

MAX_DEPTH = 500  # nesting a document may have (a record's values included)
# characters a record may go on for after the piece of text it starts in (the parser
# gives no positions: a record is at most this and one piece, MAX_LINE and a block)
MAX_RECORD = 1 << 20
_OPEN = frozenset({"start_map", "start_array"})
_CLOSE = frozenset({"end_map", "end_array"})

Element = Callable[[int, Mapping[str, object]], Row | None]  # (line, record) -> Row


def element_row(source: str) -> Element:
    """The plain conversion of an array element: an address string, or named fields."""

    def convert(line: int, value: Mapping[str, object]) -> Row | None:
        return make_row(line, value, source)

    return convert


def element(line: int, value: object, source: str, convert: Element) -> Row | None:
    """A JSON record: an address string, or an object converted by ``convert``."""
    if isinstance(value, str):
        return Row(line, value.strip(), "address") if value.strip() else None
    if isinstance(value, dict):
        return convert(line, {str(k).strip().lower(): v for k, v in value.items()})
    raise FormatError(source, line, "expected a JSON object or string")


def _pieces(blocks: Blocks) -> Iterator[tuple[int, bytes]]:
    """The text a line (or a part of a line longer than a block) at a time, with its
    number."""
    for block in blocks:
        *lines, last = block.text.split("\n")
        for line, text in enumerate(lines, block.line):
            yield line, (text + "\n").encode()
        if last:  # a line that goes on in the next block, or the file's last
            yield block.line + len(lines), last.encode()


def _shown(event: str, value: object) -> str:
    return {"start_map": "{", "start_array": "["}.get(event, repr(value))


class _Documents:
    """Where the reader is in the documents, from the parser's events: in a page (an
    object) or not, in its array of records or a value skipped, in a record being built."""

    def __init__(self, source: str, key: str, convert: Element) -> None:
        self.source, self.key, self.convert = source, key, convert
        self.depth = 0  # containers open after the event just taken
        self.in_page = False
        self.page_line = 0  # where the page being read starts
        self.found = False  # the page being read has the key
        self.want_array = False  # the key was just read: its value must be an array
        self.skip_value = False  # a key not wanted was just read: its value is skipped
        self.skip_to: int | None = None  # the depth at which the value skipped ends
        self.array_depth = 0  # the depth inside the array of records (0: not in one)
        self.builder: ijson.ObjectBuilder | None = None  # the record being built
        self.record_line = 0  # where it starts
        self.record_size = 0

    def error(self, line: int, message: str) -> FormatError:
        return FormatError(self.source, line, message)

    def take(self, line: int, event: str, value: object) -> Row | None:
        """One parser event; the Row of a record it completes."""
        before = self.depth
        if event in _OPEN:
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise self.error(line, "JSON nested too deeply")
        elif event in _CLOSE:
            self.depth -= 1
        if self.builder is not None:
            self.builder.event(event, value)
            if self.depth > self.array_depth:  # the record goes on
                return None
            record, self.builder = self.builder.value, None
            return element(self.record_line, record, self.source, self.convert)
        if self.array_depth and before == self.array_depth:
            return self._element(line, event, value)
        self._structure(line, event, value)
        return None

    def _element(self, line: int, event: str, value: object) -> Row | None:
        if event == "end_array":  # the array of records ends
            self.array_depth = 0
        elif event in _OPEN:  # built whole, and refused by element unless an object
            self.builder, self.record_line, self.record_size = ijson.ObjectBuilder(), line, 0
            self.builder.event(event, value)
        else:
            return element(line, value, self.source, self.convert)
        return None

    def _structure(self, line: int, event: str, value: object) -> None:
        if self.skip_value:
            self.skip_value = False
            if event in _OPEN:
                self.skip_to = self.depth - 1
        elif self.skip_to is not None:
            if event in _CLOSE and self.depth == self.skip_to:
                self.skip_to = None
        elif self.want_array:
            self.want_array = False
            if event != "start_array":
                raise self.error(line, f"expected one of [ in JSON, found {_shown(event, value)}")
            self.found, self.array_depth = True, self.depth
        elif self.in_page:
            if event == "map_key":
                wanted = str(value).lower() == self.key.lower()
                self.want_array, self.skip_value = wanted, not wanted
            elif event == "end_map":
                if not self.found:
                    raise self.error(self.page_line, f"no {self.key} in this JSON object")
                self.in_page = False
        elif event == "start_array":
            self.array_depth = self.depth  # a bare array of records
        elif event == "start_map":
            self.in_page, self.page_line, self.found = True, line, False
        else:
            raise self.error(line, f"expected one of [ {{ in JSON, found {_shown(event, value)}")

    @property
    def open(self) -> bool:
        """A document not ended."""
        return bool(self.depth)


def read_documents(blocks: Blocks, source: str, key: str, convert: Element) -> Iterator[Row]:
    """Rows of JSON documents one after the other: objects whose ``key`` holds the array of
    records (other keys, such as paging, are skipped), or bare arrays."""
    state = _Documents(source, key, convert)
    events = ijson.sendable_list()
    parser = ijson.basic_parse_coro(events, multiple_values=True, use_float=True)
    line = 1
    for line, text in _pieces(blocks):
        if state.builder is not None:  # a record goes on: it may not go on without end
            state.record_size += len(text)
            if state.record_size > MAX_RECORD:
                raise state.error(state.record_line, f"a JSON record over {MAX_RECORD >> 10} KiB")
        try:
            parser.send(text)
        except ijson.JSONError as exc:
            raise state.error(line, f"invalid JSON: {_reason(exc)}") from None
        for event, value in events:
            row = state.take(line, event, value)
            if row:
                yield row
        del events[:]
    at = state.record_line if state.builder is not None else line
    try:
        parser.close()
    except ijson.JSONError as exc:
        raise state.error(at, f"truncated JSON: {_reason(exc)}") from None
    if state.open:
        raise state.error(at, "truncated JSON: the document breaks off")


def _reason(exc: Exception) -> str:
    """The first line of the parser's message (the next ones show the text)."""
    lines = str(exc).strip().splitlines()
    return lines[0].removeprefix("parse error: ") if lines else type(exc).__name__
