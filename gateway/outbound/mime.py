"""Find the parts of a MIME message in its raw bytes, without re-generating it.

Only offsets are computed here: callers splice new bytes in at those offsets
and copy everything else unchanged, so untouched headers and parts stay
byte-identical. Header blocks are split with the same rules as the stdlib
feed parser (a header block ends at an empty line or at the first line that is
not a header), and each part's Content-Type, Content-Transfer-Encoding and
Content-Disposition fields are read with the stdlib (``email.message``,
compat32) so that boundary, charset and filename parameters mean what they
mean to the stdlib parser.

Parts are named like IMAP body sections: "1" is the body of a single-part
message or the first child of a top-level multipart, "2.1" the first child of
the second child, and so on. The top-level multipart itself is "message".
"""

from __future__ import annotations

import binascii
import codecs
import functools
import itertools
import re
from collections.abc import Collection
from dataclasses import dataclass, field
from email import policy
from email.message import Message
from email.parser import BytesHeaderParser
from typing import NamedTuple

MAX_DEPTH = 50
BODY_TYPES = frozenset({"text/plain", "text/html"})
_SIGNED_TYPES = frozenset({"multipart/signed", "multipart/encrypted"})
# Lines the stdlib feed parser takes for header lines: "From ", a field name and a colon,
# or a continuation. The header block ends at the first other line.
# Lines end in CRLF, LF or a lone CR, as for the stdlib parser.
_HEADER_LINES = re.compile(rb"(?:(?:From |[\x21-\x39\x3b-\x7e]*:|[\t ])[^\r\n]*(?:\r\n|\r|\n)?)*")
# One field: a line and its continuation lines; group 1 is the name ("From " lines and
# continuations with nothing to continue have none).
_FIELD = re.compile(
    rb"(?:From |([\x21-\x39\x3b-\x7e]*):)?[^\r\n]*(?:\r\n|\r|\n)?(?:[\t ][^\r\n]*(?:\r\n|\r|\n)?)*"
)
# What may follow "--boundary" on a boundary line: "--" for the close delimiter, padding.
_DELIMITER_TAIL = re.compile(rb"(--)?[ \t]*(\r\n|\r|\n|\Z)")
_MODERN = BytesHeaderParser(policy=policy.default)
_MIME_FIELDS = frozenset({"content-type", "content-transfer-encoding", "content-disposition"})
RAW_ENCODINGS = frozenset({"7bit", "8bit", "binary"})
# Content-Transfer-Encoding without spaces, "-" and "_": the stdlib and mail readers
# treat misspellings such as "7-bit" or "8 bit" as unencoded, and so do we.
_TRANSFER_ENCODINGS = {
    "": "7bit",
    "7bit": "7bit",
    "7bits": "7bit",
    "8bit": "8bit",
    "8bits": "8bit",
    "binary": "binary",
    "quotedprintable": "quoted-printable",
    "base64": "base64",
}
_ASCII_PROBE = "Az09 {}<>/:;=&%#?._-\r\n"
QP_LINE = 76  # longest quoted-printable line, "=" of a soft break included


class Field(NamedTuple):
    """One header field as raw bytes ``[start, end)``, continuation lines included."""

    name: str  # lowercased field name; "" for a unix "From " line
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class HeaderBlock:
    fields: tuple[Field, ...]
    end: int  # where the fields end (the separator line, if any, starts here)
    body_start: int  # after the empty separator line, or ``end`` when there is none


@dataclass(frozen=True, slots=True)
class TextPart:
    """A text/plain or text/html part a reader sees; ``[start, end)`` is its encoded body."""

    path: str
    content_type: str
    charset: str | None  # lowercased charset parameter, None when absent
    cte: str  # lowercased Content-Transfer-Encoding, "7bit" when absent
    start: int
    end: int
    separated: bool  # whether an empty line separates the part's header block from its body
    header_end: int = 0  # where the part's header fields end (a new field goes here)
    cte_fields: tuple[Field, ...] = ()  # its Content-Transfer-Encoding fields
    type_fields: tuple[Field, ...] = ()  # its Content-Type fields
    language: str = ""  # its own Content-Language field, raw


@dataclass(frozen=True, slots=True)
class Node:
    """One entity of the message tree: a leaf, or a multipart with its children."""

    path: str  # "" for the top level
    content_type: str
    block: HeaderBlock
    end: int  # where its body ends
    children: tuple[Node, ...] = ()
    opaque: bool = False  # a multipart left alone: signed or encrypted, too deep, no boundary
    text: TextPart | None = None  # set for a body text part a reader sees


@dataclass(slots=True)
class Walk:
    """The result of :func:`find_text_parts`."""

    parts: list[TextPart] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    tree: Node | None = None


def split_headers(buf: bytes, start: int, end: int) -> HeaderBlock:
    """Split ``buf[start:end]`` into its header fields and the start of its body."""
    fields_end = _HEADER_LINES.match(buf, start, end).end()  # type: ignore[union-attr]
    fields = tuple(
        Field("" if name is None else name.lower().decode("latin-1"), *match.span())
        for match in _FIELD.finditer(buf, start, fields_end)
        if (name := match.group(1)) is not None or match.end() > match.start()
    )
    if buf.startswith(b"\r\n", fields_end, end):
        return HeaderBlock(fields, fields_end, fields_end + 2)
    if buf.startswith((b"\n", b"\r"), fields_end, end):
        return HeaderBlock(fields, fields_end, fields_end + 1)
    return HeaderBlock(fields, fields_end, fields_end)


def parse_header_block(buf: bytes, block: HeaderBlock, default_type: str) -> Message:
    """The stdlib (compat32) view of the MIME fields of one header block.

    Each field goes through the same ``header_source_parse`` step the feed parser
    uses; the parser machinery itself is skipped as it costs more than the fields.
    """
    message = Message()
    for name, start, end in block.fields:
        if name in _MIME_FIELDS:
            source = buf[start:end].decode("ascii", "surrogateescape")
            message.set_raw(*policy.compat32.header_source_parse([source]))
    message.set_default_type(default_type)
    return message


def _mime_fields(buf: bytes, block: HeaderBlock) -> bytes:
    lines = [buf[f.start : f.end] for f in block.fields if f.name in _MIME_FIELDS]
    return b"".join(line if line.endswith(b"\n") else line + b"\n" for line in lines)


def find_text_parts(buf: bytes, top: HeaderBlock, body_end: int) -> Walk:
    """Every body text part of the message whose header block is ``top``, and its tree."""
    walk = Walk()
    walk.tree = _visit(buf, top, "text/plain", body_end, _Place("", "", 0, 0), walk)
    return walk


def parse_tree(buf: bytes, top: HeaderBlock, body_end: int) -> Node:
    """The tree of the entity whose header block is ``top`` (message/rfc822 bodies are leaves)."""
    tree = find_text_parts(buf, top, body_end).tree
    assert tree is not None
    return tree


def shown(node: Node, changed: Collection[str]) -> bool:
    """Whether every reader sees one of the ``changed`` text parts, whichever alternative
    their client shows: all text alternatives of a multipart/alternative, the root of a
    multipart/related, any part of other multiparts; never inside an opaque multipart."""
    if node.text is not None:
        return node.text.path in changed
    if node.opaque or not node.children:
        return False
    if node.content_type == "multipart/alternative":
        candidates = [child for child in node.children if _has_text(child)]
        return bool(candidates) and all(shown(child, changed) for child in candidates)
    if node.content_type == "multipart/related":
        return shown(node.children[0], changed)
    return any(shown(child, changed) for child in node.children)


def _has_text(node: Node) -> bool:
    return node.text is not None or node.opaque or any(map(_has_text, node.children))


@dataclass(frozen=True, slots=True)
class _Place:
    path: str  # "" for the top level
    parent: str  # content type of the enclosing multipart, "" at the top
    index: int  # 0-based position among the siblings
    depth: int

    def child(self, parent: str, index: int) -> _Place:
        prefix = f"{self.path}." if self.path else ""
        return _Place(f"{prefix}{index + 1}", parent, index, self.depth + 1)

    @property
    def label(self) -> str:
        return f"part {self.path}" if self.path else "message"

    @property
    def leaf_path(self) -> str:
        return self.path or "1"


def _visit(
    buf: bytes, block: HeaderBlock, default_type: str, end: int, place: _Place, walk: Walk
) -> Node:
    headers = parse_header_block(buf, block, default_type)
    ctype = headers.get_content_type()
    if headers.get_content_maintype() == "multipart":
        return _visit_multipart(buf, headers, block, end, place, walk)
    text = None
    if ctype in BODY_TYPES and _is_inline(headers, place):
        text = TextPart(
            path=place.leaf_path,
            content_type=ctype,
            charset=_charset(headers),
            cte=str(headers.get("content-transfer-encoding", "7bit")).strip().lower(),
            start=block.body_start,
            end=end,
            separated=block.body_start > block.end,
            header_end=block.end,
            cte_fields=tuple(f for f in block.fields if f.name == "content-transfer-encoding"),
            type_fields=tuple(f for f in block.fields if f.name == "content-type"),
            language=raw_value(buf, block, "content-language"),
        )
        walk.parts.append(text)
    return Node(place.path, ctype, block, end, text=text)


def raw_value(buf: bytes, block: HeaderBlock, name: str) -> str:
    """The first value of a header field, unfolded ("" when absent)."""
    for found in block.fields:
        if found.name == name:
            value = buf[found.start : found.end].partition(b":")[2]
            return b" ".join(value.split()).decode("latin-1")
    return ""


def _visit_multipart(
    buf: bytes, headers: Message, block: HeaderBlock, end: int, place: _Place, walk: Walk
) -> Node:
    ctype = " ".join(headers.get_content_type().split())[:60]  # goes into a log line
    opaque = Node(place.path, ctype, block, end, opaque=True)
    if ctype in _SIGNED_TYPES:
        walk.skipped.append(f"{place.label}: {ctype} left alone (changing it breaks it)")
        return opaque
    if place.depth >= MAX_DEPTH:
        walk.skipped.append(f"{place.label}: nested deeper than {MAX_DEPTH} levels")
        return opaque
    children = _children(buf, headers, block, end)
    if children is None:
        walk.skipped.append(f"{place.label}: {ctype} without its boundary")
        return opaque
    default_type = "message/rfc822" if ctype == "multipart/digest" else "text/plain"
    nodes = []
    for index, (child_start, child_end) in enumerate(children):
        child_block = split_headers(buf, child_start, child_end)
        child = place.child(ctype, index)
        nodes.append(_visit(buf, child_block, default_type, child_end, child, walk))
    return Node(place.path, ctype, block, end, tuple(nodes))


def _children(
    buf: bytes, headers: Message, block: HeaderBlock, end: int
) -> list[tuple[int, int]] | None:
    boundary = _boundary(headers)
    children = split_multipart(buf, block.body_start, end, boundary) if boundary else None
    if children is None:
        # The modern parser reads some broken parameter lists better (junk after a
        # quoted boundary, for one); it is slow, so it is only asked when needed.
        modern = _MODERN.parsebytes(_mime_fields(buf, block))
        retry = _boundary(modern)
        if retry and retry != boundary:
            children = split_multipart(buf, block.body_start, end, retry)
    return children


def _is_inline(headers: Message, place: _Place) -> bool:
    if headers.get_content_disposition() == "attachment":
        return False
    if headers.get_filename():  # a filename, or else a Content-Type name
        return False
    # In multipart/related only the root (first) part is displayed; the rest are resources.
    return place.parent != "multipart/related" or place.index == 0


def _charset(headers: Message) -> str | None:
    charset = headers.get_content_charset()
    return charset.strip() if charset else None


def _boundary(headers: Message) -> bytes | None:
    boundary = headers.get_boundary()
    if not boundary:
        return None
    try:
        return boundary.encode("ascii", "surrogateescape")
    except UnicodeEncodeError:
        return boundary.encode("utf-8", "surrogateescape")


def split_multipart(
    buf: bytes, start: int, end: int, boundary: bytes
) -> list[tuple[int, int]] | None:
    """The ``[start, end)`` ranges of the parts between boundary lines, or None without any.

    As in RFC 2046 the line break before a boundary line belongs to the boundary.
    A missing close delimiter lets the last part run to ``end``.
    """
    delimiters = _delimiter_lines(buf, start, end, boundary)
    if not delimiters:
        return None
    parts = [
        (line.after, max(line.after, following.before))
        for line, following in itertools.pairwise(delimiters)
    ]
    if not delimiters[-1].closing:
        parts.append((delimiters[-1].after, end))
    return parts


class _Delimiter(NamedTuple):
    before: int  # where the line break before the boundary line starts
    eol: int  # where the boundary line's own line break starts
    after: int  # where the next line starts
    closing: bool


def _delimiter_lines(buf: bytes, start: int, end: int, boundary: bytes) -> list[_Delimiter]:
    """Each boundary line up to the close delimiter, line breaks as the stdlib sees them."""
    delimiter = b"--" + boundary
    found: list[_Delimiter] = []
    at = buf.find(delimiter, start, end)
    while at >= 0 and not (found and found[-1].closing):
        line = _DELIMITER_TAIL.match(buf, at + len(delimiter), end)
        if line and (at == start or buf[at - 1] in b"\r\n"):
            crlf = at - 2 >= start and buf[at - 2 : at] == b"\r\n"
            before = at if at == start else at - 2 if crlf else at - 1
            found.append(_Delimiter(before, line.start(2), line.end(), line.group(1) is not None))
        at = buf.find(delimiter, at + 1, end)
    return found


# --- transfer encodings and charsets ---------------------------------------------------


def transfer_encoding(cte: str) -> str | None:
    """The Content-Transfer-Encoding we can handle, spelling slips forgiven, else None."""
    return _TRANSFER_ENCODINGS.get(re.sub(r"[\s_-]", "", cte.lower()))


_LONE_CR = re.compile(rb"\r(?!\n)")


def decode_body(raw: bytes, cte: str) -> bytes | None:
    """The decoded body for a :func:`transfer_encoding` result; None for bad base64."""
    if cte == "quoted-printable":  # a bare CR in the encoded text is a line break when sent
        return binascii.a2b_qp(_LONE_CR.sub(b"\n", raw))
    if cte == "base64":
        try:
            return binascii.a2b_base64(raw.translate(None, b" \t\r\n"), strict_mode=True)
        except binascii.Error:
            return None
    return raw


def text_codec(charset: str | None, decoded: bytes) -> str | None:
    """The Python codec for a text part, or None when its charset is unknown or unusable.

    Without a charset parameter a part is US-ASCII, unless its bytes are 8-bit
    and valid UTF-8. Undecodable bytes are carried through with surrogateescape.
    """
    if charset is None:
        if decoded.isascii():
            return "ascii"
        try:
            decoded.decode("utf-8")
        except UnicodeDecodeError:
            return "ascii"  # undecodable bytes stay as they are (surrogateescape)
        return "utf-8"
    return _ascii_compatible_codec(charset)


@functools.lru_cache(maxsize=256)
def _ascii_compatible_codec(charset: str) -> str | None:
    """The codec for ``charset`` if ASCII text encodes to itself in it, else None."""
    try:
        name = codecs.lookup(charset).name
        if _ASCII_PROBE.encode(name) != _ASCII_PROBE.encode("ascii"):
            return None
        if b"ok".decode(name) != "ok":
            return None
    except (LookupError, ValueError, TypeError, UnicodeError):
        return None
    return name


def qp_encode(data: bytes, eol: bytes, *, text_cr: bool = False) -> bytes:
    """Quoted-printable text with ``eol`` line breaks and lines of at most 76 characters.

    A CR without an LF is a line break, as it becomes on the wire (``data`` as it would
    be sent), or with ``text_cr`` a character of the text, written ``=0D`` (``data``
    decoded from an encoding that carried it so).
    """
    data = data.replace(b"\r\n", b"\n")
    if text_cr and b"\r" in data:  # each line alone: a CR is data there, encoded
        lines = data.split(b"\n")
        encoded = b"\n".join(binascii.b2a_qp(line, quotetabs=False, istext=False) for line in lines)
    else:
        data = data.replace(b"\r", b"\n")
        encoded = binascii.b2a_qp(data, quotetabs=False, istext=True, header=False)
    return encoded if eol == b"\n" else encoded.replace(b"\n", eol)


def qp_soft_break(encoded: bytes, eol: bytes) -> bytes:
    """End quoted-printable text with a soft line break, keeping lines within 76 characters."""
    start = encoded.rfind(b"\n") + 1
    if len(encoded) - start < QP_LINE:
        return encoded + b"=" + eol
    cut = start + QP_LINE - 1
    escape = encoded.rfind(b"=", cut - 2, cut)  # never split an "=XX" escape
    cut = escape if escape >= 0 else cut
    return encoded[:cut] + b"=" + eol + encoded[cut:] + b"=" + eol


def base64_lines(data: bytes, eol: bytes, *, trailing: bool) -> bytes:
    """Base64 in 76-character lines, ending with ``eol`` when ``trailing``."""
    encoded = binascii.b2a_base64(data, newline=False)
    lines = eol.join([encoded[i : i + 76] for i in range(0, len(encoded), 76)])
    return lines + eol if trailing and lines else lines


# --- line lengths ----------------------------------------------------------------------

MAX_LINE = 998  # octets of a line, line break excluded (RFC 5322 §2.1.1, RFC 5321 §4.5.3.1.6)
# On the wire a lone CR or LF becomes CRLF as well (the SMTP client normalises them).
LINE_BREAK = re.compile(rb"\r\n|\r|\n")


class Lines(NamedTuple):
    """The line lengths of a piece of a body, for joining pieces without rescanning them."""

    first: int  # octets before the first line break (all of them without one)
    last: int  # octets after the last line break
    longest: int  # the longest line between two line breaks
    breaks: bool  # whether there is a line break at all


def lines(data: bytes) -> Lines:
    """The :class:`Lines` of ``data``."""
    pieces = LINE_BREAK.split(data)
    inner = max(map(len, pieces[1:-1]), default=0)
    return Lines(len(pieces[0]), len(pieces[-1]), inner, len(pieces) > 1)


def follow(longest: int, current: int, piece: Lines) -> tuple[int, int]:
    """(longest line so far, length of the open line) after appending ``piece``."""
    if not piece.breaks:
        return longest, current + piece.first
    return max(longest, current + piece.first, piece.longest), piece.last


def longest_line(data: bytes) -> int:
    """The longest line of ``data`` in octets, line breaks excluded."""
    return max(map(len, LINE_BREAK.split(data)))
