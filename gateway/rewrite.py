"""Per-recipient rewrite of a message: List-Unsubscribe headers and a footer.

Two phases, because the relay sends one copy per kept recipient:

* :func:`prepare` runs once per message. It finds the header fields to drop
  and the text parts a reader sees (see :mod:`gateway.mime`), decides where
  each footer or link goes, and turns the message into a list of fixed byte
  segments with "holes" between them.
* :meth:`Prepared.render` runs once per recipient and only fills the holes
  (the List-Unsubscribe line, the link, a footer, or for base64 parts the
  re-encoded tail of the part), then joins the bytes.

Everything outside the changed text parts, including every kept header
field, is copied from the original bytes. Nothing here raises on any message
bytes: parts that cannot be changed safely are left alone and named in
:attr:`Prepared.skipped_parts`.
"""

from __future__ import annotations

import binascii
import html
import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from email.header import Header

from gateway import mime

PLACEHOLDER = "{{optgate_unsubscribe_url}}"
CONTROL_HEADERS = ("x-optgate-class", "x-optgate-topic")
ONE_CLICK = "List-Unsubscribe-Post: List-Unsubscribe=One-Click"
FOLD_AT = 78
MAX_LINE = 998  # octets in a header line (RFC 5322)
MAX_LINK = 900  # so that each folded List-Unsubscribe line stays under MAX_LINE

# The placeholder as written, or as a campaign tool may have percent-encoded it inside a URL.
_PLACEHOLDER = re.compile(
    r"\{\{optgate_unsubscribe_url\}\}|%7[Bb]%7[Bb]optgate_unsubscribe_url%7[Dd]%7[Dd]"
)
_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)
_URL_SAFE = re.compile(r"[\x21-\x3b=\x3f-\x7e]+")  # printable ASCII except "<" and ">"
_PRINTABLE = re.compile(r"[\x20-\x7e]+")
_B64_CHUNK = 57  # input bytes per 76-character base64 line


@dataclass(frozen=True, slots=True)
class FooterTemplates:
    """Footers with ``{url}`` and ``{postal_address}`` placeholders."""

    text: str
    html: str  # both values are HTML-escaped on insertion
    postal_address: str


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
    footer: FooterTemplates,
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
    pieces = _footer_pieces(footer)
    try:
        return _prepare(message, eol, added, remove, pieces)
    except Exception as exc:  # a bug must not cost the message: headers only, body untouched
        reason = f"message: body left unchanged after internal error {type(exc).__name__}"
    try:
        return _prepare(message, eol, added, remove, None, (reason,))
    except Exception:  # even the header block: prepend our fields to the original bytes
        builder = _Builder()
        builder.hole(_ListUnsubscribe(eol))
        builder.add(added + message)
        return builder.finish(0, [reason], [])


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
    pieces: _FooterPieces | None,
    notes: tuple[str, ...] = (),
) -> Prepared:
    """The plan; with ``pieces`` None only the header block is rewritten."""
    top = mime.split_headers(message, 0, len(message))
    builder = _Builder()
    fields = top.fields
    if fields and not fields[0].name and message.startswith(b"From "):
        builder.add(message[: fields[0].end])  # keep a unix From_ line first
        fields = fields[1:]
    builder.hole(_ListUnsubscribe(eol))
    builder.add(added)
    for field in fields:
        if field.name not in remove:
            builder.add(message[field.start : field.end])
    if pieces is None:
        builder.add(message[top.end :])
        return builder.finish(0, list(notes), [])
    skipped, done = _rewrite_body(builder, message, top, pieces, eol)
    return builder.finish(len(done), [*notes, *skipped], done)


def _rewrite_body(
    builder: _Builder, message: bytes, top: mime.HeaderBlock, pieces: _FooterPieces, eol: bytes
) -> tuple[list[str], list[str]]:
    """Add the body from ``top.end`` on to ``builder``; return (skip reasons, changed parts)."""
    walk = mime.find_text_parts(message, top, len(message))
    cursor, skipped, done = top.end, list(walk.skipped), []
    for part in walk.parts:
        planned = _plan_part(message, part, pieces, eol)
        if isinstance(planned, str):
            skipped.append(f"part {part.path}: {planned}")
            continue
        builder.add(message[cursor : part.start])
        if part.start == part.end and not part.separated:  # no body: start one
            ended = part.start == 0 or message[part.start - 1] == 0x0A
            builder.add(eol if ended else eol + eol)
        builder.extend(planned)
        cursor = part.end
        done.append(part.path)
    builder.add(message[cursor:])
    return skipped, done


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

    def finish(self, footers: int, skipped: list[str], paths: list[str]) -> Prepared:
        statics = (*self._statics, b"".join(self._chunks))
        return Prepared(statics, tuple(self._holes), footers, tuple(skipped), tuple(paths))


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


@dataclass(frozen=True, slots=True)
class _FooterPieces:
    """The footers split at ``{url}``, the postal address already filled in."""

    text: tuple[str, ...]
    html: tuple[str, ...]


def _footer_pieces(footer: FooterTemplates) -> _FooterPieces:
    escaped = html.escape(footer.postal_address)
    return _FooterPieces(
        text=tuple(
            p.replace("{postal_address}", footer.postal_address) for p in _split_url(footer.text)
        ),
        html=tuple(p.replace("{postal_address}", escaped) for p in _split_url(footer.html)),
    )


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


def _plan_part(
    buf: bytes, part: mime.TextPart, pieces: _FooterPieces, eol: bytes
) -> list[Segment] | str:
    """The segments that replace the part's body, or why the part is left alone."""
    raw = buf[part.start : part.end]
    found = _decode_part(raw, part)
    if isinstance(found, str):
        return found
    cte, decoded, codec, text = found
    is_html = part.content_type == "text/html"
    spans, is_footer = _edit_spans(text, is_html)
    slices = _byte_slices(decoded, text, spans, codec)
    if slices is None:
        return f"charset {codec} does not round-trip"
    fill = _make_fill(pieces, codec, is_html, is_footer, cte, _line_ending(decoded, eol))
    if isinstance(fill, str):
        return fill
    if cte in mime.RAW_ENCODINGS:
        return _interleave(slices, fill)
    if cte == "quoted-printable":
        return _qp_segments(raw, slices, fill, eol)
    return _base64_segments(slices, fill, eol, trailing=raw.endswith(b"\n"))


def _decode_part(raw: bytes, part: mime.TextPart) -> tuple[str, bytes, str, str] | str:
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


def _make_fill(
    pieces: _FooterPieces, codec: str, is_html: bool, is_footer: bool, cte: str, eol: bytes
) -> _Fill | str:
    if not is_footer:
        return _Fill((b"", b""), is_html)
    newline = eol.decode("ascii")
    texts = [piece.replace("\n", newline) for piece in (pieces.html if is_html else pieces.text)]
    target = "ascii" if cte == "7bit" else codec
    if is_html:
        return _Fill(tuple(t.encode(target, "xmlcharrefreplace") for t in texts), True)
    try:
        return _Fill(tuple(t.encode(target) for t in texts), False)
    except UnicodeEncodeError:
        where = "a 7bit part" if target == "ascii" and codec != "ascii" else f"charset {codec}"
        return f"footer cannot be written in {where}"


def _interleave(slices: list[bytes], fill: Hole) -> list[Segment]:
    segments: list[Segment] = [slices[0]]
    for piece in slices[1:]:
        segments += [fill, piece]
    return segments


# --- quoted-printable and base64 -------------------------------------------------------


def _qp_segments(raw: bytes, slices: list[bytes], fill: _Fill, eol: bytes) -> list[Segment]:
    cut = _encoded_cut(raw, slices)
    if cut is not None:  # one change where the original encoded bytes can be split: keep them
        head, tail = raw[:cut], raw[cut:]
        if head.endswith(b"="):
            head += eol  # a dangling "=" becomes a soft line break
        elif head and not head.endswith(b"\n"):
            head = mime.qp_soft_break(head, eol)
        return [head, _QPFill(fill, eol, soft_after=bool(tail)), tail]
    segments: list[Segment] = []
    for index, piece in enumerate(slices):
        encoded = mime.qp_encode(piece, eol)
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
    if cut < 0 or binascii.a2b_qp(raw[cut:]) != slices[1]:
        return None
    return cut if binascii.a2b_qp(raw[:cut]) == slices[0] else None


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
