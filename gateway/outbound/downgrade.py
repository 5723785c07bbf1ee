"""Pure: a copy's 8bit and binary parts made 7bit, for a next hop without 8BITMIME.

RFC 6152 §3: a client may send 8-bit data only to a server that offers
8BITMIME; otherwise it converts the message to 7bit (RFC 1652 §6) or returns
it. Postfix does that conversion itself when it relays to such a hop, after
optgate signed the copy, and the DKIM body hash then no longer matches. So the
copy is converted before it is signed.

Every leaf whose body is not 7bit data (RFC 2045 §2.7: 8-bit octets, NUL, or
lines over 998 octets) and is sent unencoded (7bit, 8bit, binary) is
re-encoded, text/* as quoted-printable and anything else as base64, and its
Content-Transfer-Encoding field says so; a message/rfc822 part is converted
inside, and a multipart or message/rfc822 whose own field said 8bit or binary
says 7bit. Everything else stays byte for byte: a 7bit message comes back as
the very same object. multipart/signed and multipart/encrypted are left alone
(converting them breaks their signature, as Postfix's conversion would), and
so are header fields with 8-bit octets (they need SMTPUTF8 or RFC 2047, which
no conversion of the body gives).
"""

from __future__ import annotations

from gateway.outbound import mime

_DESCRIPTIVE = frozenset({"8bit", "binary"})  # what a multipart's own field may wrongly say
MAX_DEPTH = 20  # message/rfc822 inside message/rfc822 ...


def to_seven_bit(message: bytes) -> bytes:
    """The message with its body 7bit, or ``message`` itself when it already is."""
    if _seven_bit(message):
        return message
    edits: list[tuple[int, int, bytes]] = []
    eol = b"\r\n" if b"\r\n" in message[:4096] else b"\n"
    top = mime.split_headers(message, 0, len(message))
    _entity(message, mime.parse_tree(message, top, len(message)), eol, edits, 0)
    if not edits:
        return message
    out, cursor = [], 0
    for start, end, data in sorted(edits):
        out += [message[cursor:start], data]
        cursor = end
    out.append(message[cursor:])
    return b"".join(out)


def _seven_bit(data: bytes) -> bool:
    """7bit data: ASCII without NUL, no line over 998 octets."""
    return data.isascii() and b"\x00" not in data and mime.longest_line(data) <= mime.MAX_LINE


def _entity(
    buf: bytes, node: mime.Node, eol: bytes, edits: list[tuple[int, int, bytes]], depth: int
) -> None:
    start, end = node.block.body_start, node.end
    if node.opaque or _seven_bit(buf[start:end]):
        return
    if node.children or node.content_type == "message/rfc822":
        _say_7bit(buf, node.block, eol, edits)
        if node.content_type == "message/rfc822" and depth < MAX_DEPTH:
            inner = mime.split_headers(buf, start, end)
            _entity(buf, mime.parse_tree(buf, inner, end), eol, edits, depth + 1)
        for child in node.children:
            _entity(buf, child, eol, edits, depth)
        return
    fields = [f for f in node.block.fields if f.name == "content-transfer-encoding"]
    cte = _encoding(buf, fields)
    if cte not in mime.RAW_ENCODINGS:
        return  # quoted-printable or base64 already, or an encoding we cannot read
    body = buf[start:end]
    if node.content_type.startswith("text/"):
        name, encoded = b"quoted-printable", mime.qp_encode(body, eol)
    else:
        name, encoded = b"base64", mime.base64_lines(body, eol, trailing=body.endswith(b"\n"))
    edits.append((start, end, encoded))
    _set_field(buf, node.block, fields, b"Content-Transfer-Encoding: " + name + eol, eol, edits)


def _encoding(buf: bytes, fields: list[mime.Field]) -> str | None:
    if not fields:
        return "7bit"
    value = buf[fields[0].start : fields[0].end].partition(b":")[2]
    return mime.transfer_encoding(value.decode("latin-1").strip())


def _say_7bit(
    buf: bytes, block: mime.HeaderBlock, eol: bytes, edits: list[tuple[int, int, bytes]]
) -> None:
    """A composite entity's field says 7bit once its parts are (RFC 2045 §6.4)."""
    fields = [f for f in block.fields if f.name == "content-transfer-encoding"]
    if fields and _encoding(buf, fields) in _DESCRIPTIVE:
        _set_field(buf, block, fields, b"Content-Transfer-Encoding: 7bit" + eol, eol, edits)


def _set_field(
    buf: bytes,
    block: mime.HeaderBlock,
    fields: list[mime.Field],
    new: bytes,
    eol: bytes,
    edits: list[tuple[int, int, bytes]],
) -> None:
    """Replace the first of ``fields`` by ``new`` and drop the others (or add ``new``)."""
    if not fields:
        ended = block.end == 0 or buf[block.end - 1] in b"\r\n"
        edits.append((block.end, block.end, new if ended else eol + new))
        return
    edits.append((fields[0].start, fields[0].end, new))
    edits.extend((f.start, f.end, b"") for f in fields[1:])
