"""Bounded reading of an inbound message with the stdlib parser (compat32, which never raises
on bad syntax but records defects): at most MAX_BYTES parsed, MAX_PARTS parts walked,
MAX_DEPTH levels deep, MAX_TEXT characters of any one body part looked at."""

from __future__ import annotations

import email
import email.header
import re
from collections.abc import Iterator
from email import policy
from email.message import Message
from email.parser import BytesHeaderParser, HeaderParser
from email.utils import getaddresses

MAX_BYTES = 1 << 20  # a report and its returned headers come first; attachments may be cut
MAX_PARTS = 64
MAX_DEPTH = 6
MAX_TEXT = 64 * 1024
MAX_HEADER = 4096  # characters of one header field looked at

# bounded repeats (RFC 5321 lengths) keep searches linear on long runs of non-space text
_ADDR_SPEC = re.compile(
    r"[^\s<>()\[\]\\,;:\"@]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?"
)
_ADDRESS_FIELDS = frozenset(
    {"from", "to", "cc", "sender", "reply-to", "return-path", "delivered-to", "x-original-to"}
    | {"x-failed-recipients", "x-hmxmroriginalrecipient"}
)
_RETURNED = frozenset({"message/rfc822", "text/rfc822-headers", "message/rfc822-headers"})


def parse(raw: bytes) -> Message:
    """The message as the stdlib parses it (compat32), from its first MAX_BYTES bytes; only
    its header when the body nests too deep for the stdlib's recursive parser."""
    raw = raw[:MAX_BYTES].removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte order mark
    try:
        return email.message_from_bytes(raw, policy=policy.compat32)
    except RecursionError:
        return BytesHeaderParser(policy=policy.compat32).parsebytes(raw)


def parts(message: Message) -> Iterator[Message]:
    """Every part, depth first, the message itself first; returned messages are entered too.

    Iterative with a depth and a count cap, so deeply nested input costs little.
    message/delivery-status is not entered: its "parts" are header blocks.
    """
    stack: list[tuple[Message, int]] = [(message, 0)]
    seen = 0
    while stack and seen < MAX_PARTS:
        part, depth = stack.pop()
        seen += 1
        yield part
        if depth >= MAX_DEPTH or content_type(part) == "message/delivery-status":
            continue
        payload = part.get_payload()
        if isinstance(payload, list):
            children = [child for child in payload if isinstance(child, Message)]
            stack.extend((child, depth + 1) for child in reversed(children))


def content_type(part: Message) -> str:
    """The part's content type, lower case ("text/plain" when it cannot be read)."""
    try:
        return part.get_content_type()
    except Exception:  # a malformed Content-Type field
        return "text/plain"


def param(part: Message, name: str) -> str:
    """A Content-Type parameter, lower case, or ""."""
    try:
        value = part.get_param(name)
    except Exception:
        return ""
    return value.lower() if isinstance(value, str) else ""


def header(part: Message, name: str) -> str:
    """The first field of this name, RFC 2047 decoded and unfolded, or ""."""
    values = headers(part, name)
    return values[0] if values else ""


def headers(part: Message, name: str) -> list[str]:
    """Every field of this name, unfolded; RFC 2047 decoded unless it holds addresses (an
    encoded display name must not turn into an address)."""
    try:
        found = part.get_all(name) or []
    except Exception:
        return []
    decode = name.lower() not in _ADDRESS_FIELDS
    return [_unfolded(value, decode) for value in found[:20]]


def _unfolded(value: object, decode: bool) -> str:
    text = str(value)[:MAX_HEADER]
    if decode:
        text = _decoded(text)
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return " ".join(text.split())


def _decoded(text: str) -> str:
    """RFC 2047 encoded-words decoded; the text as it came when they cannot be."""
    try:
        return str(email.header.make_header(email.header.decode_header(text)))
    except Exception:
        return text


def text(part: Message) -> str:
    """A single part's body as text: transfer-decoded, charset-decoded, at most MAX_TEXT."""
    if part.is_multipart():
        return ""
    try:
        body = part.get_payload(decode=True)
    except Exception:
        return ""
    if not isinstance(body, bytes):
        return ""
    body = body[: MAX_TEXT * 4]
    charset = param(part, "charset") or "utf-8"
    try:
        decoded = body.decode(charset, "replace")
    except (LookupError, ValueError):
        decoded = body.decode("latin-1")
    return decoded[:MAX_TEXT]


def raw_text(part: Message) -> str:
    """A part's content as the text it came as (header blocks of a delivery-status part
    included), transfer-decoded, at most MAX_TEXT characters."""
    payload = part.get_payload()
    if isinstance(payload, list):
        chunks = []
        for block in payload[:MAX_PARTS]:
            if isinstance(block, Message):
                chunks.append("".join(f"{name}: {value}\n" for name, value in block.items()))
                body = block.get_payload()
                if isinstance(body, str):
                    chunks.append("\n" + body)
        joined = "\n".join(chunks)
        encoding = header(part, "Content-Transfer-Encoding").lower()
        if encoding in ("base64", "quoted-printable"):  # the stdlib split encoded text into blocks
            probe = Message()
            probe["Content-Transfer-Encoding"] = encoding
            probe.set_payload(joined)
            return text(probe)
        return joined[:MAX_TEXT]
    return text(part)


def returned(message: Message) -> Message | None:
    """The returned original's headers (message/rfc822 or text/rfc822-headers), if any."""
    for part in parts(message):
        kind = content_type(part)
        if part is message or kind not in _RETURNED:
            continue
        payload = part.get_payload()
        if isinstance(payload, list) and payload and isinstance(payload[0], Message):
            return payload[0]
        return HeaderParser(policy=policy.compat32).parsestr(text(part).lstrip())
    return None


def addresses(values: list[str]) -> list[str]:
    """The addr-specs named in address fields, in order, without duplicates."""
    found: list[str] = []
    try:
        pairs = getaddresses(values)
    except Exception:
        pairs = []
    for _, address in pairs:
        candidate = address.strip().strip("<>")
        if _ADDR_SPEC.fullmatch(candidate) and candidate not in found:
            found.append(candidate)
    return found


def address_in(value: str) -> str | None:
    """The first addr-spec in free text such as "rfc822; <user@example.com>", else the text
    itself when it is one word with an "@" (an odd address, as written)."""
    bare = value.replace("<", " ").replace(">", " ")
    match = _ADDR_SPEC.search(bare)
    if match:
        return match.group(0).strip(".")
    words = bare.split()
    return words[0] if len(words) == 1 and "@" in words[0] else None
