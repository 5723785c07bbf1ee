"""Hypothesis over MIME structures: every copy shows its link, parses, keeps its lines and
its attachments.

Messages are trees of multipart/mixed, alternative, related, signed and digest parts
around text parts in every charset and transfer encoding optgate meets (UTF-16 and
UTF-32, unknown charsets, bad base64, lines of up to 10,000 octets, nesting past the
walker's limit) and attachments whose bytes are known. For each rewrite:

* a reader sees the personal link, whichever alternative their client shows;
* the output parses, and every changed part decodes;
* no line over 998 octets that the input did not have (untouched parts keep theirs);
* every attachment's encoded body is in the output byte for byte;
* the invariants of tests/test_rewrite.py (headers, untouched parts, footers).

``OPTGATE_FUZZ_EXAMPLES`` sets the number of messages (default 300; scripts/test runs
the default, a longer run is ``OPTGATE_FUZZ_EXAMPLES=5000 pytest tests/test_rewrite_fuzz.py``).
"""

from __future__ import annotations

import base64
import os
import quopri
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway.config import Topic
from gateway.outbound.footers import Footers
from gateway.outbound.rewrite import prepare
from tests.support import corpus
from tests.test_rewrite import (
    LINKS,
    URL,
    body_text_parts,
    check_lines,
    check_rewrite,
    children,
    parse,
    reader_sees,
    rewrite,
)

pytestmark = pytest.mark.pure

EXAMPLES = int(os.environ.get("OPTGATE_FUZZ_EXAMPLES", "300"))
LINE = re.compile(rb"\r\n|\r|\n")
# the usual ones more often than the broken ones
CHARSETS: tuple[str | None, ...] = (None, "utf-8", "utf-8", "utf-8", "iso-8859-1", "us-ascii")
CHARSETS += ("utf-16", "utf-32", "x-unknown", "base64")
ENCODINGS: tuple[str, ...] = ("7bit", "8bit", "8bit", "binary", "quoted-printable", "base64")
ENCODINGS += ("quoted-printable", "base64", "bad-base64", "x-uuencode")
WORDS = ("Grüße", "offer", "€5", "日本語", "naïve", "<b>sale</b>", "&amp;", "=", "--", ".")


@dataclass
class Built:
    """A generated entity: its bytes (LF line ends) and the attachment bodies inside it."""

    data: bytes
    attachments: list[bytes] = field(default_factory=list)


def text_body(draw: st.DrawFn, html: bool) -> str:
    lines = []
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["short", "long", "words"]))
        if kind == "long":
            lines.append("x" * draw(st.sampled_from([900, 998, 999, 1500, 10_000])))
        elif kind == "words":
            lines.append(" ".join(draw(st.lists(st.sampled_from(WORDS), max_size=12))))
        else:
            lines.append(draw(st.text(st.characters(codec="utf-8"), max_size=40)))
    text = "\n".join(lines)
    if html and draw(st.booleans()):
        lang = draw(st.sampled_from(["", ' lang="de"', " lang=fr-CA"]))
        glue = draw(st.sampled_from(["", "\n"]))
        text = f"<html{lang}><body>{text}{glue}</body></html>\n"
    return text


def encode(text: str, charset: str | None, cte: str) -> bytes:
    try:
        raw = text.encode(charset or "ascii")
    except (LookupError, UnicodeEncodeError):
        raw = text.encode("utf-8")  # an unknown charset, or bytes the charset cannot hold
    if cte == "quoted-printable":
        return quopri.encodestring(raw)
    if cte == "base64":
        return base64.encodebytes(raw)
    if cte == "bad-base64":
        return b"!!" + base64.encodebytes(raw)
    return raw


@st.composite
def text_part(draw: st.DrawFn) -> Built:
    html = draw(st.booleans())
    charset = draw(st.sampled_from(CHARSETS))
    cte = draw(st.sampled_from(ENCODINGS))
    ctype = "text/html" if html else "text/plain"
    head = f"Content-Type: {ctype}" + (f"; charset={charset}" if charset else "") + "\n"
    if cte != "7bit" or draw(st.booleans()):
        head += f"Content-Transfer-Encoding: {cte.replace('bad-', '')}\n"
    if draw(st.integers(0, 9)) == 0:
        head += 'Content-Disposition: attachment; filename="notes.txt"\n'
    if draw(st.integers(0, 9)) == 0:
        head += "Content-Language: " + draw(st.sampled_from(["de", "fr", "es-MX", "xx"])) + "\n"
    return Built(head.encode() + b"\n" + encode(text_body(draw, html), charset, cte))


@st.composite
def attachment(draw: st.DrawFn) -> Built:
    data = draw(st.binary(min_size=1, max_size=300))
    body = base64.encodebytes(data)
    kind = draw(st.sampled_from(["application/pdf", "image/png", "application/octet-stream"]))
    head = (
        f'Content-Type: {kind}; name="file"\nContent-Transfer-Encoding: base64\n'
        'Content-Disposition: attachment; filename="file"\n\n'
    )
    return Built(head.encode() + body, [body])


@st.composite
def forwarded(draw: st.DrawFn) -> Built:
    inner = draw(text_part())
    return Built(b"Content-Type: message/rfc822\n\nSubject: fwd\n" + inner.data, inner.attachments)


def multipart(kind: str, parts: list[Built], counter: list[int]) -> Built:
    counter[0] += 1
    boundary = f"b{counter[0]}-{kind.replace('/', '')}"
    extra = '; protocol="application/pgp-signature"' if kind == "multipart/signed" else ""
    body = b"".join(b"--" + boundary.encode() + b"\n" + p.data + b"\n" for p in parts)
    if kind == "multipart/signed":
        body += b"--" + boundary.encode() + b"\nContent-Type: application/pgp-signature\n\nsig\n"
    head = f'Content-Type: {kind}; boundary="{boundary}"{extra}\n\n'.encode()
    return Built(
        head + body + b"--" + boundary.encode() + b"--\n",
        [a for p in parts for a in p.attachments],
    )


@st.composite
def entity(draw: st.DrawFn, depth: int, counter: list[int]) -> Built:
    if depth >= 4 or draw(st.integers(0, 2)) == 0:
        return draw(st.one_of(text_part(), text_part(), attachment(), forwarded()))
    kind = draw(
        st.sampled_from(
            [
                "multipart/mixed",
                "multipart/alternative",
                "multipart/related",
                "multipart/signed",
                "multipart/digest",
            ]
        )
    )
    parts = [draw(entity(depth + 1, counter)) for _ in range(draw(st.integers(1, 3)))]
    return multipart(kind, parts, counter)


def deep(inner: Built, levels: int, counter: list[int]) -> Built:
    for _ in range(levels):
        inner = multipart("multipart/mixed", [inner], counter)
    return inner


@st.composite
def messages(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    counter = [0]
    body = draw(entity(0, counter))
    if draw(st.integers(0, 14)) == 0:  # past the walker's depth limit
        body = deep(body, 52, counter)
    head = b"From: Shop <news@shop.example>\nSubject: offer\nMIME-Version: 1.0\n"
    if draw(st.booleans()):
        head += b"Content-Language: " + draw(st.sampled_from([b"de-DE", b"nl", b"pt-BR"])) + b"\n"
    data = head + body.data
    if draw(st.booleans()):
        data = data.replace(b"\n", b"\r\n")
        return data, [a.replace(b"\n", b"\r\n") for a in body.attachments]
    return data, body.attachments


@pytest.mark.corpus
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(messages())
@example(  # found by Hypothesis: a lone CR after a long line (tests/test_rewrite_lines.py)
    (
        b"From: Shop <news@shop.example>\nMIME-Version: 1.0\nContent-Type: text/html\n"
        b"Content-Transfer-Encoding: 8bit\n\n" + b"x" * 1000 + b"\n\r0\n",
        [],
    )
)
def test_every_generated_message_keeps_the_invariants(case: tuple[bytes, list[bytes]]) -> None:
    original, attachments = case
    prepared, out = rewrite(original)
    check_rewrite(original, prepared, out)  # includes: a reader sees the link, lines
    for body in attachments:
        assert body in out  # byte for byte
    parsed = parse(out)
    for part in parsed.walk():  # every part of the output can be read
        part.get_payload(decode=True)
    changed = body_text_parts(children(parsed)[0] if prepared.footer_part else parsed)
    for path in prepared.footer_paths:
        raw = changed[path].get_payload(decode=False)
        assert isinstance(raw, str)
        assert max(map(len, LINE.split(raw.encode("utf-8", "surrogateescape")))) <= 998


LOCALISED = Footers(
    company="Shop & Co",
    postal_address="Shop & Co GmbH, Straße 1, 10115 Berlin",
    topics={"news": Topic(name="Our newsletter", names={"fr": "Notre lettre d\u2019information"})},
)


def check_localised(original: bytes, language: str) -> None:
    """With the built-in footers (typographic quotes, accents, a multi-line HTML table):
    a reader sees the link, the output parses, no new long line."""
    message = b"Content-Language: " + language.encode() + b"\n" + original
    prepared = prepare(message, footer=LOCALISED.topic("news"), list_id=None, feedback_id=None)
    out = prepared.render(LINKS)
    parsed = parse(out)
    assert reader_sees(parsed, URL)
    check_lines(message, out)
    for part in parsed.walk():
        part.get_payload(decode=True)


@pytest.mark.corpus
@settings(
    max_examples=EXAMPLES // 2,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(messages(), st.sampled_from(["fr", "de", "pt", "en"]))
def test_generated_messages_with_localised_footers(
    case: tuple[bytes, list[bytes]], language: str
) -> None:
    check_localised(case[0], language)


@pytest.mark.parametrize("path", corpus.sweep(corpus.messages()))
def test_corpus_messages_with_a_french_footer(path: Path) -> None:
    check_localised(path.read_bytes(), "fr")
