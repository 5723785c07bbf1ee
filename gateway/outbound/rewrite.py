"""Per-recipient rewrite of a message: List-Unsubscribe headers and a footer.

Two phases, because the relay sends one copy per kept recipient:

* :func:`prepare` runs once per message. It finds the header fields to drop
  and the text parts a reader sees (see :mod:`gateway.outbound.mime`), decides where
  each footer or link goes, and turns the message into a list of fixed byte
  segments with "holes" between them.
* :meth:`Prepared.render` runs once per recipient and only fills the holes
  (the List-Unsubscribe line, the link, a footer, or for base64 parts the
  re-encoded tail of the part), then joins the bytes.

Every reader sees the link: when no body part a reader's client shows can
take the footer (an unknown charset, bad base64, multipart/signed, nesting
too deep), the message becomes multipart/mixed with its own body first,
byte for byte, and a footer part after it, as Mailman does.

No line the rewrite writes is longer than 998 octets: a footer that would
lengthen a long line of a 7bit, 8bit or binary part goes on lines of its own,
and a part that would still have a longer line goes out quoted-printable.

Everything outside the changed text parts, including every kept header
field, is copied from the original bytes. Nothing here raises on any message
bytes: parts that cannot be changed safely are left alone and named in
:attr:`Prepared.skipped_parts`.
"""

from __future__ import annotations

import hashlib
import html
import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from email import policy
from email.header import Header
from email.message import Message
from typing import Protocol

from markupsafe import Markup

from gateway.outbound import mime
from gateway.templating import ENVIRONMENT, URL_MARK

PLACEHOLDER = "{{optgate_unsubscribe_url}}"
CONTROL_HEADERS = ("x-optgate-class", "x-optgate-topic", "x-optgate-campaign")
ONE_CLICK = "List-Unsubscribe-Post: List-Unsubscribe=One-Click"
FOLD_AT = 78
MAX_LINE = mime.MAX_LINE  # octets in a line (RFC 5322)
MAX_LINK = 900  # so that each folded List-Unsubscribe line stays under MAX_LINE

# The placeholder as written, or as a campaign tool may have percent-encoded it inside a URL.
_PLACEHOLDER = re.compile(
    r"\{\{optgate_unsubscribe_url\}\}|%7[Bb]%7[Bb]optgate_unsubscribe_url%7[Dd]%7[Dd]"
)
_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)
_URL_SAFE = re.compile(r"[\x21-\x3b=\x3f-\x7e]+")  # printable ASCII except "<" and ">"
_PRINTABLE = re.compile(r"[\x20-\x7e]+")
_B64_CHUNK = 57  # input bytes per 76-character base64 line
_TAG = re.compile(r"[A-Za-z]{1,8}(?:[-_][A-Za-z0-9]{1,8})*")
# The lang attribute of the html element, looked for near the start of an HTML part.
_HTML_LANG = re.compile(
    r"<html\b[^>]*?\slang\s*=\s*[\"']?\s*([A-Za-z]{1,8}(?:[-_][A-Za-z0-9]{1,8})*)", re.IGNORECASE
)
_LANG_SCAN = 65536  # characters of an HTML part searched for its lang attribute


@dataclass(frozen=True, slots=True)
class FooterPieces:
    """A footer ready to insert: each form split where the recipient's URL goes."""

    text: tuple[str, ...]
    html: tuple[str, ...]  # HTML already: inserted as it is
    language: str = ""  # the language tag it is written in ("" when unknown)


class Footer(Protocol):
    """Where :func:`prepare` gets the footer for a part in a language."""

    def pieces(self, language: str | None) -> FooterPieces:
        """The footer for text in ``language`` (a tag as the message gives it, or None)."""
        ...


@dataclass(frozen=True, slots=True)
class FooterTemplates:
    """Footers with ``{url}`` and ``{postal_address}`` placeholders, in one language."""

    text: str
    html: str  # both values are HTML-escaped on insertion
    postal_address: str

    def pieces(self, language: str | None = None) -> FooterPieces:
        """The same footer whatever the language."""
        escaped = html.escape(self.postal_address)
        return FooterPieces(
            tuple(
                p.replace("{postal_address}", self.postal_address) for p in _split_url(self.text)
            ),
            tuple(p.replace("{postal_address}", escaped) for p in _split_url(self.html)),
        )


@dataclass(frozen=True, slots=True)
class Links:
    """One recipient's unsubscribe links."""

    url: str  # https://host/u/TOKEN, listed first in List-Unsubscribe
    mailto: str  # unsubscribe+TOKEN@example.com, without "mailto:"

    def __post_init__(self) -> None:
        for name in ("url", "mailto"):
            value = getattr(self, name)
            if len(value) > MAX_LINK or not _URL_SAFE.fullmatch(value):
                raise ValueError(
                    f"Links.{name} must be at most {MAX_LINK} characters of printable ASCII"
                    " without spaces, < or >"
                )


Hole = Callable[[Links], bytes]
Segment = bytes | Hole


@dataclass(frozen=True, slots=True)
class Prepared:
    """A message ready to render per recipient; ``statics`` and ``holes`` are opaque."""

    statics: tuple[bytes, ...]  # one more than holes: static, hole, static, ..., static
    holes: tuple[Hole, ...]
    footer_parts: int  # body parts that received a footer or had the placeholder replaced
    skipped_parts: tuple[str, ...]  # why body parts were left alone, for the log
    footer_paths: tuple[str, ...] = ()  # section numbers ("1", "2.1") of the changed parts
    footer_part: bool = False  # the footer went into a part of its own (multipart/mixed)

    def render(self, links: Links) -> bytes:
        statics = self.statics
        out = [statics[0]]
        for index, hole in enumerate(self.holes, 1):
            out.append(hole(links))
            out.append(statics[index])
        return b"".join(out)


def prepare(
    message: bytes,
    *,
    footer: Footer,
    list_id: str | None,
    feedback_id: str | None,
    remove_headers: Collection[str] = CONTROL_HEADERS,
) -> Prepared:
    """Plan the rewrite of ``message``; raises only for bad arguments, never for bad bytes."""
    message = bytes(message)
    eol = _line_ending(message)
    added = _static_headers(list_id, feedback_id, eol)
    remove = {name.lower() for name in remove_headers}
    remove |= {"list-unsubscribe", "list-unsubscribe-post"}
    remove |= {"list-id"} if list_id is not None else set()
    remove |= {"feedback-id"} if feedback_id is not None else set()
    try:
        return _prepare(message, eol, added, remove, footer)
    except Exception as exc:  # a bug must not cost the message: headers only, body untouched
        reason = f"message: body left unchanged after internal error {type(exc).__name__}"
    try:
        return _prepare(message, eol, added, remove, None, (reason,))
    except Exception:  # even the header block: prepend our fields to the original bytes
        edits = _Edits()
        edits.insert(0, [_ListUnsubscribe(eol), added])
        return edits.prepared(message, [reason], [], footer_part=False)


def strip_headers(message: bytes, names: Collection[str] = CONTROL_HEADERS) -> bytes:
    """The message without the named header fields; every other byte stays as it was."""
    remove = {name.lower() for name in names}
    top = mime.split_headers(message, 0, len(message))
    kept = [message[f.start : f.end] for f in top.fields if f.name not in remove]
    return b"".join(kept) + message[top.end :]


def _prepare(
    message: bytes,
    eol: bytes,
    added: bytes,
    remove: set[str],
    footer: Footer | None,
    notes: tuple[str, ...] = (),
) -> Prepared:
    """The plan; with ``footer`` None only the header block is rewritten."""
    top = mime.split_headers(message, 0, len(message))
    edits = _Edits()
    fields = top.fields
    start = 0
    if fields and not fields[0].name and message.startswith(b"From "):
        start = fields[0].end  # keep a unix From_ line first
        fields = fields[1:]
    edits.insert(start, [_ListUnsubscribe(eol), added])
    for field in fields:
        if field.name in remove:
            edits.replace(field.start, field.end, [])
    if footer is None:
        return edits.prepared(message, list(notes), [], footer_part=False)
    skipped, done, wrapped = _rewrite_body(edits, message, top, footer, eol, remove)
    return edits.prepared(message, [*notes, *skipped], done, footer_part=wrapped)


def _rewrite_body(
    edits: _Edits,
    message: bytes,
    top: mime.HeaderBlock,
    footer: Footer,
    eol: bytes,
    remove: set[str],
) -> tuple[list[str], list[str], bool]:
    """Plan the body's edits; return (skip reasons, changed parts, whether it was wrapped)."""
    walk = mime.find_text_parts(message, top, len(message))
    found = [(part, _decode_part(message[part.start : part.end], part)) for part in walk.parts]
    language = _language(message, top, found)
    skipped, done = list(walk.skipped), []
    for part, decoded in found:
        pieces = footer.pieces(_first_tag(part.language) or language)
        planned = _plan_part(message, part, decoded, pieces, eol)
        if isinstance(planned, str):
            skipped.append(f"part {part.path}: {planned}")
            continue
        for start, end, segments in planned:
            edits.replace(start, end, segments)
        done.append(part.path)
    assert walk.tree is not None
    if mime.shown(walk.tree, done):
        return skipped, done, False
    _wrap(edits, message, top, footer.pieces(language), eol, remove)
    return skipped, done, True


def _language(
    message: bytes, top: mime.HeaderBlock, found: list[tuple[mime.TextPart, _Decoded | str]]
) -> str | None:
    """The message's language: its Content-Language, else the lang of its HTML, else None."""
    tag = _first_tag(mime.raw_value(message, top, "content-language"))
    if tag:
        return tag
    for part, decoded in found:
        if part.content_type == "text/html" and not isinstance(decoded, str):
            match = _HTML_LANG.search(decoded[3], 0, _LANG_SCAN)
            if match:
                return match.group(1)
    return None


def _first_tag(value: str) -> str | None:
    """The first language tag of a Content-Language value ("de-DE, en" -> "de-DE")."""
    match = _TAG.match(value.split(",")[0].strip())
    return match.group() if match else None


_Edit = tuple[int, int, Sequence["Segment"]]


class _Edits:
    """Replacements of byte ranges of the message; :meth:`prepared` applies them in order."""

    def __init__(self) -> None:
        self._edits: list[tuple[int, int, int, Sequence[Segment]]] = []

    def replace(self, start: int, end: int, segments: Sequence[Segment]) -> None:
        self._edits.append((start, end, len(self._edits), segments))

    def insert(self, at: int, segments: Sequence[Segment]) -> None:
        """Insert at ``at``, after what was inserted there before."""
        self.replace(at, at, segments)

    def prepared(
        self, message: bytes, skipped: list[str], paths: list[str], *, footer_part: bool
    ) -> Prepared:
        builder = _Builder()
        cursor = 0
        for start, end, _, segments in sorted(self._edits, key=lambda edit: edit[:3]):
            if start < cursor:
                raise ValueError("overlapping edits")
            builder.add(message[cursor:start])
            builder.extend(segments)
            cursor = end
        builder.add(message[cursor:])
        return builder.finish(len(paths), skipped, paths, footer_part)


class _Builder:
    """Collects bytes and holes, merging neighbouring bytes into one static segment."""

    def __init__(self) -> None:
        self._statics: list[bytes] = []
        self._holes: list[Hole] = []
        self._chunks: list[bytes] = []

    def add(self, data: bytes) -> None:
        if data:
            self._chunks.append(data)

    def hole(self, hole: Hole) -> None:
        self._statics.append(b"".join(self._chunks))
        self._chunks = []
        self._holes.append(hole)

    def extend(self, segments: Sequence[Segment]) -> None:
        for segment in segments:
            if isinstance(segment, bytes):
                self.add(segment)
            else:
                self.hole(segment)

    def finish(
        self, footers: int, skipped: list[str], paths: list[str], footer_part: bool
    ) -> Prepared:
        statics = (*self._statics, b"".join(self._chunks))
        return Prepared(
            statics, tuple(self._holes), footers, tuple(skipped), tuple(paths), footer_part
        )


# --- headers ---------------------------------------------------------------------------


def _line_ending(message: bytes, default: bytes = b"\r\n") -> bytes:
    newline = message.find(b"\n")
    if newline < 0:
        return default
    return b"\r\n" if newline > 0 and message[newline - 1] == 0x0D else b"\n"


def _static_headers(list_id: str | None, feedback_id: str | None, eol: bytes) -> bytes:
    lines = [ONE_CLICK]
    if list_id is not None:
        lines.append(f"List-Id: {_list_id_value(list_id)}")
    if feedback_id is not None:
        if not _PRINTABLE.fullmatch(feedback_id):
            raise ValueError("feedback_id must be one line of printable ASCII")
        lines.append(f"Feedback-ID: {feedback_id}")
    for line in lines:
        if len(line) > MAX_LINE:
            raise ValueError(f"header line longer than {MAX_LINE} characters: {line[:40]}...")
    return b"".join(line.encode("ascii") + eol for line in lines)


def _list_id_value(list_id: str) -> str:
    if "\r" in list_id or "\n" in list_id or not list_id.strip():
        raise ValueError("list_id must be one non-empty line")
    if list_id.isascii():
        return list_id
    phrase, bracket, rest = list_id.rpartition("<")
    if not bracket or not rest.isascii():
        raise ValueError("a non-ASCII list_id needs an ASCII '<list.id>' part")
    return f"{Header(phrase.strip(), 'utf-8').encode()} <{rest}"


class _ListUnsubscribe:
    """The per-recipient ``List-Unsubscribe`` field, folded after the comma when long."""

    __slots__ = ("eol",)

    def __init__(self, eol: bytes) -> None:
        self.eol = eol

    def __call__(self, links: Links) -> bytes:
        first = f"List-Unsubscribe: <{links.url}>,".encode("ascii")
        second = f" <mailto:{links.mailto}>".encode("ascii")
        if len(first) + len(second) <= FOLD_AT:
            return first + second + self.eol
        return first + self.eol + second + self.eol


# --- footers ---------------------------------------------------------------------------


def _split_url(template: str) -> list[str]:
    return template.replace("\r\n", "\n").split("{url}")


@dataclass(frozen=True, slots=True)
class _Fill:
    """Charset-encoded bytes with the recipient's URL between them."""

    pieces: tuple[bytes, ...]
    html: bool

    def __call__(self, links: Links) -> bytes:
        url = html.escape(links.url) if self.html else links.url
        return url.encode("ascii").join(self.pieces)


# --- planning one text part ------------------------------------------------------------

_Decoded = tuple[str, bytes, str, str]  # transfer encoding, decoded bytes, codec, text


def _plan_part(
    buf: bytes, part: mime.TextPart, found: _Decoded | str, pieces: FooterPieces, eol: bytes
) -> list[_Edit] | str:
    """The edits that change the part, or why the part is left alone."""
    if isinstance(found, str):
        return found
    cte, decoded, codec, text = found
    is_html = part.content_type == "text/html"
    spans, is_footer = _edit_spans(text, is_html)
    slices = _byte_slices(decoded, text, spans, codec)
    if slices is None:
        return f"charset {codec} does not round-trip"
    part_eol = _line_ending(decoded, eol)
    upgradable = codec == "ascii" and decoded.isascii() and part.content_type == "text/plain"
    made = _make_fill(pieces, codec, is_html, is_footer, cte, part_eol, upgradable=upgradable)
    if isinstance(made, str):
        return made
    fill, utf8, quoted = made
    declare = b""
    if utf8:  # an ASCII part that now holds UTF-8
        declared = _utf8_content_type(buf, part)
        if declared is None:
            return f"footer cannot be written in charset {codec}"
        declare = declared + eol
    lead = _body_lead(buf, part, eol)
    if cte in mime.RAW_ENCODINGS:
        body = _RawBody(slices, fill, part_eol, eol, breakable=is_footer, quoted=quoted)
        return [*_header_edits(buf, part, body, declare, eol), (part.start, part.end, [lead, body])]
    raw = buf[part.start : part.end]
    if cte == "quoted-printable":
        segments = _qp_segments(raw, slices, fill, eol)
    else:
        segments = _base64_segments(slices, fill, eol, trailing=raw.endswith(b"\n"))
    edits = _header_edits(buf, part, None, declare, eol) if declare else []
    return [*edits, (part.start, part.end, [lead, *segments])]


def _body_lead(buf: bytes, part: mime.TextPart, eol: bytes) -> bytes:
    """What an empty part without an empty line after its header needs before a footer."""
    if part.start != part.end or part.separated:
        return b""
    ended = part.start == 0 or buf[part.start - 1] == 0x0A
    return eol if ended else eol + eol


def _decode_part(raw: bytes, part: mime.TextPart) -> _Decoded | str:
    """(transfer encoding, decoded bytes, codec, text) of a part, or why it cannot be read."""
    cte = mime.transfer_encoding(part.cte)
    if cte is None:
        return f"unsupported Content-Transfer-Encoding {_printable(part.cte)}"
    decoded = mime.decode_body(raw, cte)
    if decoded is None:
        return "bad base64"
    codec = mime.text_codec(part.charset, decoded)
    if codec is None:
        return f"unknown or unsupported charset {_printable(part.charset or '')}"
    try:
        return cte, decoded, codec, decoded.decode(codec, "surrogateescape")
    except (UnicodeError, LookupError):
        return f"cannot decode charset {codec}"


def _printable(value: str) -> str:
    """A header value fit for a one-line log reason."""
    return " ".join(value.split())[:40] or "(empty)"


def _edit_spans(text: str, is_html: bool) -> tuple[list[tuple[int, int]], bool]:
    """Where URLs replace placeholders, or the one empty span where the footer goes."""
    if "optgate_unsubscribe_url" in text:
        spans = [match.span() for match in _PLACEHOLDER.finditer(text)]
        if spans:
            return spans, False
    at = _last_body_end(text) if is_html else len(text)
    return [(at, at)], True


def _last_body_end(text: str) -> int:
    """Where the last ``</body>`` starts, else the end of the text."""
    end = len(text)
    for _ in range(16):  # it is nearly always among the last few closing tags
        end = text.rfind("</", 0, end)
        if end < 0:
            return len(text)
        if _BODY_END.match(text, end):
            return end
    starts = [match.start() for match in _BODY_END.finditer(text, 0, end)]
    return starts[-1] if starts else len(text)


def _byte_slices(
    decoded: bytes, text: str, spans: list[tuple[int, int]], codec: str
) -> list[bytes] | None:
    """``decoded`` cut at ``spans`` (text offsets), the spans themselves left out."""
    slices: list[bytes] = []
    offset = previous = 0
    for start, end in spans:
        head = decoded[offset:] if start == len(text) else _encode(text[previous:start], codec)
        span = _encode(text[start:end], codec)
        if not decoded.startswith(head, offset) or not decoded.startswith(span, offset + len(head)):
            return None
        slices.append(head)
        offset += len(head) + len(span)
        previous = end
    tail = decoded[offset:]
    return [*slices, tail] if tail == _encode(text[previous:], codec) else None


def _encode(text: str, codec: str) -> bytes:
    return text.encode(codec, "surrogateescape")


# Typographic punctuation and what a charset without it writes instead.
_PLAIN = str.maketrans(
    dict.fromkeys("\u201c\u201d\u201e\u00ab\u00bb", '"')  # double quotes, guillemets
    | dict.fromkeys("\u2018\u2019\u201a\u2039\u203a", "'")  # single quotes
    | dict.fromkeys("\u2013\u2014", "-")  # dashes
    | dict.fromkeys("\u00a0\u202f", " ")  # no-break spaces
    | {"\u2026": "..."}
)


def _make_fill(
    pieces: FooterPieces,
    codec: str,
    is_html: bool,
    is_footer: bool,
    cte: str,
    eol: bytes,
    *,
    upgradable: bool,
) -> tuple[_Fill, bool, bool] | str:
    """The fill, whether the part must now declare charset=utf-8, and whether it must go
    out quoted-printable for it; or why the footer cannot be written into the part.

    HTML takes character references for what its charset lacks. Text is written in
    the part's charset, else with plain punctuation, else (a 7bit part) in its charset
    quoted-printable, else (an ASCII part) in UTF-8, which the part then declares.
    """
    if not is_footer:
        return _Fill((b"", b""), is_html), False, False
    newline = eol.decode("ascii")
    texts = [piece.replace("\n", newline) for piece in (pieces.html if is_html else pieces.text)]
    seven = cte == "7bit"
    if is_html:
        target = "ascii" if seven else codec
        return (
            _Fill(tuple(t.encode(target, "xmlcharrefreplace") for t in texts), True),
            False,
            False,
        )
    tries = [("ascii", False, False), ("ascii", True, False)] if seven else []
    tries += [(codec, False, seven), (codec, True, seven)]
    tries += [("utf-8", False, seven)] if upgradable else []
    for index, (charset, plain, quoted) in enumerate(tries):
        try:
            written = tuple((t.translate(_PLAIN) if plain else t).encode(charset) for t in texts)
        except UnicodeEncodeError:
            continue
        return _Fill(written, False), upgradable and index == len(tries) - 1, quoted
    return f"footer cannot be written in charset {codec}"


def _utf8_content_type(buf: bytes, part: mime.TextPart) -> bytes | None:
    """The part's Content-Type field with charset=utf-8 (ASCII text is UTF-8 as it is)."""
    if not part.type_fields:
        return b"Content-Type: text/plain; charset=utf-8"
    first = part.type_fields[0]
    source = buf[first.start : first.end].decode("ascii", "surrogateescape")
    field = Message()
    field.set_raw(*policy.compat32.header_source_parse([source]))
    field.set_param("charset", "utf-8")
    line = f"Content-Type: {field.get('content-type')}"
    return line.encode("ascii") if line.isascii() and len(line) <= MAX_LINE else None


# --- 7bit, 8bit and binary parts: lines within MAX_LINE ------------------------------------


class _RawBody:
    """An unencoded part with its links or footer, every line within MAX_LINE octets.

    A footer that would make a line too long goes on lines of its own (it sits
    before ``</body>`` or at the end of the text, where a line break changes
    nothing a reader sees); a link inside the text cannot move. When a line is
    still too long (the part had one already, or a footer line with a long URL),
    the part goes out quoted-printable and its Content-Transfer-Encoding field
    says so (:class:`_Switch`). Decided per recipient: URLs differ in length.
    """

    __slots__ = (
        "_always",
        "_breakable",
        "_eol",
        "_fill",
        "_lines",
        "_plans",
        "_quoted",
        "_slices",
        "_wire_eol",
    )

    def __init__(
        self,
        slices: list[bytes],
        fill: _Fill,
        eol: bytes,
        wire_eol: bytes,
        *,
        breakable: bool,
        quoted: bool = False,
    ) -> None:
        self._slices = tuple(slices)
        self._lines = tuple(map(mime.lines, slices))
        self._fill, self._eol, self._wire_eol = fill, eol, wire_eol
        self._breakable = breakable
        self._always = quoted  # the fill is 8-bit and the part 7bit: quoted-printable always
        self._quoted: list[Segment] | None = None  # made when first needed
        # fill length -> line breaks around each fill, or None: quoted-printable. Only the
        # URL's length varies between recipients, and tokens have one or two lengths.
        self._plans: dict[int, tuple[tuple[bool, bool], ...] | None] = {}

    def fits(self, links: Links) -> bool:
        """Whether the part goes out unencoded for these links."""
        return self._plan(self._fill(links)) is not None

    def __call__(self, links: Links) -> bytes:
        fill = self._fill(links)
        plan = self._plan(fill)
        if plan is not None:
            out = [self._slices[0]]
            for piece, (before, after) in zip(self._slices[1:], plan, strict=True):
                out += [self._eol, fill] if before else [fill]
                out += [self._eol, piece] if after else [piece]
            return b"".join(out)
        if self._quoted is None:
            self._quoted = _qp_segments(None, list(self._slices), self._fill, self._wire_eol)
        return b"".join(s if isinstance(s, bytes) else s(links) for s in self._quoted)

    def _plan(self, fill: bytes) -> tuple[tuple[bool, bool], ...] | None:
        if self._always:
            return None
        if len(fill) not in self._plans:
            if len(self._plans) > 64:  # URLs of many lengths: a bound, not a leak
                self._plans.clear()
            self._plans[len(fill)] = self._layout(mime.lines(fill))
        return self._plans[len(fill)]

    def _layout(self, added: mime.Lines) -> tuple[tuple[bool, bool], ...] | None:
        """Where line breaks go around each fill, or None when a line stays too long."""
        breaks = []
        longest, current = mime.follow(0, 0, self._lines[0])
        for stats in self._lines[1:]:
            before = self._breakable and current and current + added.first > MAX_LINE
            if before:
                longest, current = max(longest, current), 0
            longest, current = mime.follow(longest, current, added)
            after = self._breakable and current and current + stats.first > MAX_LINE
            if after:
                longest, current = max(longest, current), 0
            longest, current = mime.follow(longest, current, stats)
            breaks.append((bool(before), bool(after)))
        return tuple(breaks) if max(longest, current) <= MAX_LINE else None


@dataclass(frozen=True, slots=True)
class _Switch:
    """A part's Content-Transfer-Encoding field: as it was, or the quoted-printable one."""

    body: _RawBody
    original: bytes
    quoted: bytes

    def __call__(self, links: Links) -> bytes:
        return self.original if self.body.fits(links) else self.quoted


def _header_edits(
    buf: bytes, part: mime.TextPart, body: _RawBody | None, declare: bytes, eol: bytes
) -> list[_Edit]:
    """The part's header changes: a new Content-Type field (``declare``, if any), and for an
    unencoded part Content-Transfer-Encoding fields that follow ``body`` (:class:`_Switch`)."""
    quoted = b"Content-Transfer-Encoding: quoted-printable" + eol
    fields = part.cte_fields if body is not None else ()
    edits: list[_Edit] = []
    if declare and part.type_fields:
        first = part.type_fields[0]
        edits.append((first.start, first.end, [declare]))
    added: list[Segment] = [declare] if declare and not part.type_fields else []
    if body is not None and not fields:
        added.append(_Switch(body, b"", quoted))
    if added:
        at = part.header_end
        ended = at == 0 or buf[at - 1] in b"\r\n"
        edits.append((at, at, added if ended else [eol, *added]))
    if fields and body is not None:
        first, *others = fields
        edits.append(
            (first.start, first.end, [_Switch(body, buf[first.start : first.end], quoted)])
        )
        edits += [(f.start, f.end, [_Switch(body, buf[f.start : f.end], b"")]) for f in others]
    return edits


# --- a footer part of its own ----------------------------------------------------------


def _wrap(
    edits: _Edits,
    message: bytes,
    top: mime.HeaderBlock,
    pieces: FooterPieces,
    eol: bytes,
    remove: set[str],
) -> None:
    """Make the message multipart/mixed: its own body first, unchanged, then a footer part.

    The top's Content-* fields move into the first part, byte for byte; so does the
    body (a multipart/signed stays intact inside it).
    """
    moved = [f for f in top.fields if f.name.startswith("content-") and f.name not in remove]
    for found in moved:
        edits.replace(found.start, found.end, [])
    fields = b"".join(message[f.start : f.end] for f in moved)
    if fields and not fields.endswith((b"\n", b"\r")):
        fields += eol
    outer, inner = _boundaries(message)
    head = b"" if top.end == 0 or message[top.end - 1] in b"\r\n" else eol
    if not any(f.name == "mime-version" for f in top.fields):
        head += b"MIME-Version: 1.0" + eol
    head += b'Content-Type: multipart/mixed; boundary="' + outer + b'"' + eol
    head += eol + b"--" + outer + eol + fields
    if top.body_start == top.end:  # no empty line ended the header block: the part needs one
        head += eol
    edits.insert(top.end, [head])
    edits.insert(len(message), [eol + b"--" + outer + eol, *_footer_part(pieces, inner, eol)])
    edits.insert(len(message), [eol + b"--" + outer + b"--" + eol])


def _boundaries(message: bytes) -> tuple[bytes, bytes]:
    """Two boundaries that occur nowhere in the message, neither a prefix of the other."""
    seed = hashlib.sha256(message).hexdigest()
    for counter in range(1000):
        stem = f"=_optgate_{seed[:16]}_{counter}".encode("ascii")
        if stem not in message:
            return stem + b"_m", stem + b"_a"
    raise ValueError("no boundary found")  # 1000 stems, each in the message: a bug


def _footer_part(pieces: FooterPieces, boundary: bytes, eol: bytes) -> list[Segment]:
    """A multipart/alternative with the footer as text and as HTML, both quoted-printable."""
    text = [*pieces.text]
    text[0] = text[0].lstrip("\n")
    footer = Markup(URL_MARK.join(pieces.html))  # noqa: S704 - HTML already (FooterPieces)
    document = ENVIRONMENT.get_template("footer_part.html").render(
        language=pieces.language, footer=footer
    )
    page = document.split(URL_MARK)
    language = f"Content-Language: {pieces.language}".encode("ascii") if pieces.language else b""
    language_field = language + eol if language else b""
    segments: list[Segment] = [
        b'Content-Type: multipart/alternative; boundary="'
        + boundary
        + b'"'
        + eol
        + b"Content-Disposition: inline"
        + eol
        + eol
    ]
    for subtype, forms, is_html in ((b"plain", text, False), (b"html", page, True)):
        fill = _Fill(tuple(form.encode("utf-8") for form in forms), is_html)
        segments += [
            b"--"
            + boundary
            + eol
            + b"Content-Type: text/"
            + subtype
            + b"; charset=utf-8"
            + eol
            + b"Content-Transfer-Encoding: quoted-printable"
            + eol
            + language_field
            + eol,
            _QPFill(fill, eol, soft_after=False),
            eol,
        ]
    segments.append(b"--" + boundary + b"--")
    return segments


# --- quoted-printable and base64 -------------------------------------------------------


def _qp_segments(raw: bytes | None, slices: list[bytes], fill: _Fill, eol: bytes) -> list[Segment]:
    """Quoted-printable with the fill; the original encoded bytes kept where they can be
    (``raw`` given, its lines within MAX_LINE, one change where it can be split)."""
    fine = raw is not None and mime.longest_line(raw) <= MAX_LINE
    cut = _encoded_cut(raw, slices) if raw is not None and fine else None
    if raw is not None and cut is not None:  # keep the original encoded bytes
        head, tail = raw[:cut], raw[cut:]
        if head.endswith(b"="):
            head += eol  # a dangling "=" becomes a soft line break
        elif head and not head.endswith(b"\n"):
            head = mime.qp_soft_break(head, eol)
        return [head, _QPFill(fill, eol, soft_after=bool(tail)), tail]
    segments: list[Segment] = []
    for index, piece in enumerate(slices):
        encoded = mime.qp_encode(piece, eol, text_cr=raw is not None)  # decoded: CRs are text
        last = index == len(slices) - 1
        if encoded and not encoded.endswith(b"\n") and not last:
            encoded = mime.qp_soft_break(encoded, eol)
        segments.append(encoded)
        if not last:
            segments.append(
                _QPFill(fill, eol, soft_after=index < len(slices) - 2 or bool(slices[-1]))
            )
    return segments


def _encoded_cut(raw: bytes, slices: list[bytes]) -> int | None:
    """The offset in ``raw`` that decodes to the one change point, if there is one."""
    if len(slices) != 2:
        return None
    if not slices[1]:
        return len(raw)
    cut = raw.lower().rfind(b"</body")
    if cut < 0 or mime.decode_body(raw[cut:], "quoted-printable") != slices[1]:
        return None
    return cut if mime.decode_body(raw[:cut], "quoted-printable") == slices[0] else None


@dataclass(frozen=True, slots=True)
class _QPFill:
    fill: _Fill
    eol: bytes
    soft_after: bool  # end with a soft line break when more text follows on the same line

    def __call__(self, links: Links) -> bytes:
        encoded = mime.qp_encode(self.fill(links), self.eol)
        if self.soft_after and not encoded.endswith(b"\n"):
            encoded = mime.qp_soft_break(encoded, self.eol)
        return encoded


def _base64_segments(
    slices: list[bytes], fill: _Fill, eol: bytes, *, trailing: bool
) -> list[Segment]:
    fixed = len(slices[0]) // _B64_CHUNK * _B64_CHUNK  # whole lines before the first change
    head = mime.base64_lines(slices[0][:fixed], eol, trailing=True) if fixed else b""
    tail = (slices[0][fixed:], *slices[1:])
    return [head, _Base64Fill(tail, fill, eol, trailing)]


@dataclass(frozen=True, slots=True)
class _Base64Fill:
    """Re-encodes the part from its first change on; the lines before it are fixed."""

    slices: tuple[bytes, ...]
    fill: _Fill
    eol: bytes
    trailing: bool

    def __call__(self, links: Links) -> bytes:
        data = self.fill(links).join(self.slices)
        return mime.base64_lines(data, self.eol, trailing=self.trailing)
