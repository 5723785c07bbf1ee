"""Lines within 998 octets (RFC 5322 §2.1.1) whatever the rewrite inserts, in every encoding.

A next hop re-folds longer lines wherever it likes (Postfix inside an href), which
breaks the link and the DKIM signature.
"""

from __future__ import annotations

import base64
import quopri
import re

import pytest

from gateway.outbound.rewrite import FooterTemplates, Links, prepare
from tests.test_rewrite import (
    FOOTER,
    HTML_FOOTER,
    LINKS,
    TEXT_FOOTER,
    URL,
    body_text_parts,
    check_rewrite,
    content,
    parse,
    rewrite,
)

pytestmark = pytest.mark.pure

ENCODINGS = ("7bit", "8bit", "binary", "quoted-printable", "base64")
LENGTHS = (900, 969, 998, 999, 1162, 4000, 10_000)
LINE = re.compile(rb"\r\n|\r|\n")


def longest(data: bytes) -> int:
    return max(map(len, LINE.split(data)))


def encode(body: bytes, cte: str) -> bytes:
    if cte == "quoted-printable":
        return quopri.encodestring(body)
    if cte == "base64":
        return base64.encodebytes(body)
    return body


def html_message(line: int, cte: str, *, crlf: bool = False) -> bytes:
    """An HTML part whose ``</body>`` ends a line of ``line`` octets."""
    tail = b"</body></html>"
    filler = b"<p>" + b"x" * (line - len(tail) - 10) + b"</p>"
    body = b"<html><body>\n" + filler + b"   " + tail + b"\n"
    assert len(body.split(b"\n")[1]) == line
    head = f"Content-Type: text/html; charset=utf-8\nContent-Transfer-Encoding: {cte}\n\n"
    message = head.encode() + encode(body, cte)
    return message.replace(b"\n", b"\r\n") if crlf else message


def text_message(line: int, cte: str) -> bytes:
    """A text part whose last line (without a line break) has ``line`` octets."""
    body = b"Hello,\n" + b"y" * line
    head = f"Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: {cte}\n\n"
    return head.encode() + encode(body, cte)


@pytest.mark.parametrize("cte", ENCODINGS)
@pytest.mark.parametrize("line", LENGTHS)
@pytest.mark.parametrize("kind", ["html", "text"])
def test_no_line_over_998_octets_in_any_encoding(kind: str, line: int, cte: str) -> None:
    original = (html_message if kind == "html" else text_message)(line, cte)
    prepared, out = rewrite(original)
    assert prepared.footer_paths == ("1",)
    assert longest(out) <= 998
    check_rewrite(original, prepared, out)
    part = body_text_parts(parse(out))["1"]
    decoded = content(part)
    assert (HTML_FOOTER if kind == "html" else TEXT_FOOTER).strip("\n") in decoded


def test_the_reported_869_octet_body_line_stays_8bit_with_the_footer_on_its_own_lines() -> None:
    # the issue: </body> at the end of an 869-octet line came out on a 1,162-octet line
    original = html_message(869, "8bit", crlf=True)
    prepared, out = rewrite(original)
    assert longest(out) <= 998
    assert b"Content-Transfer-Encoding: 8bit\r\n" in out  # a line break was enough
    assert b"</p>   \r\n" + HTML_FOOTER.encode() + b"</body></html>\r\n" in out
    check_rewrite(original, prepared, out)


@pytest.mark.parametrize("cte", ["7bit", "8bit", "binary"])
def test_an_unencoded_part_with_a_long_line_goes_out_quoted_printable(cte: str) -> None:
    original = text_message(5000, cte)
    prepared, out = rewrite(original)
    assert b"Content-Transfer-Encoding: quoted-printable\n" in out
    assert f"Content-Transfer-Encoding: {cte}".encode() not in out
    assert longest(out.split(b"\n\n", 1)[1]) <= 76
    assert content(parse(out)) == "Hello,\n" + "y" * 5000 + TEXT_FOOTER
    check_rewrite(original, prepared, out)


def test_a_missing_transfer_encoding_field_is_added_when_the_part_goes_quoted_printable() -> None:
    original = b"Subject: s\nContent-Type: text/plain\n\n" + b"z" * 3000 + b"\n"
    prepared, out = rewrite(original)
    assert b"Content-Type: text/plain\nContent-Transfer-Encoding: quoted-printable\n\n" in out
    assert longest(out) <= 998
    check_rewrite(original, prepared, out)


def test_a_long_link_in_a_placeholder_moves_the_part_to_quoted_printable() -> None:
    # a link inside the text cannot move to a line of its own
    original = (
        b"Content-Type: text/html\nContent-Transfer-Encoding: 8bit\n\n"
        b'<a href="{{optgate_unsubscribe_url}}">' + b"w" * 900 + b"</a>\n"
    )
    short = prepare(original, footer=FOOTER, list_id=None, feedback_id=None)
    assert b"Content-Transfer-Encoding: 8bit" in short.render(Links("https://x/u/t", "u@x"))
    out = short.render(LINKS)
    assert longest(out) <= 998
    assert b"Content-Transfer-Encoding: quoted-printable" in out
    assert f'<a href="{URL}">'.encode() in quopri.decodestring(out.split(b"\n\n", 1)[1])


def test_a_footer_line_too_long_for_any_line_goes_quoted_printable() -> None:
    footer = FooterTemplates("\n" + "v" * 990 + " {url}\n", "<p>{url}</p>", "p")
    prepared = prepare(
        b"Content-Type: text/plain\n\nshort\n", footer=footer, list_id=None, feedback_id=None
    )
    out = prepared.render(LINKS)
    assert longest(out) <= 998
    assert content(parse(out)) == "short\n\n" + "v" * 990 + f" {URL}\n"


def test_malformed_quoted_printable_with_long_lines_is_re_encoded() -> None:
    encoded = b"<html><body>" + b"q" * 2000 + b"</body></html>\n"  # QP lines must be <= 76
    original = b"Content-Type: text/html\nContent-Transfer-Encoding: quoted-printable\n\n" + encoded
    prepared, out = rewrite(original)
    assert longest(out.split(b"\n\n", 1)[1]) <= 76
    assert content(parse(out)) == "<html><body>" + "q" * 2000 + HTML_FOOTER + "</body></html>\n"
    check_rewrite(original, prepared, out)


# A lone CR: a line break once sent, so one in an unencoded part may become a line break of
# the quoted-printable copy; an encoded one (=0D) is text and stays text.
LONE_CR = b"x" * 1000 + b"\n\r0\n"  # Hypothesis's example: a long line, then a lone CR


@pytest.mark.parametrize("ctype", ["text/plain", "text/html"])
def test_a_lone_cr_after_a_long_line_reads_as_sent(ctype: str) -> None:
    original = (
        f"Content-Type: {ctype}\nContent-Transfer-Encoding: 8bit\n\n".encode("ascii") + LONE_CR
    )
    prepared, out = rewrite(original)
    check_rewrite(original, prepared, out)  # failed here: "\n\r0" became "\n\n0"
    assert b"Content-Transfer-Encoding: quoted-printable" in out  # for the long line
    assert content(body_text_parts(parse(out))["1"]).startswith("x" * 1000 + "\n\n0\n")


def test_an_encoded_cr_stays_text_when_the_part_is_encoded_anew() -> None:
    # a raw line over 998 octets: the part is encoded anew, not copied
    original = b"Content-Transfer-Encoding: quoted-printable\n\n" + b"x" * 1000 + b"\n=0D0\n"
    prepared, out = rewrite(original)
    check_rewrite(original, prepared, out)
    text = body_text_parts(parse(out))["1"].get_payload(decode=True)
    assert isinstance(text, bytes)
    assert text.startswith(b"x" * 1000 + b"\n\r0\n")  # was "\n\n0\n": the CR a line break
    assert longest(out) <= 998
