"""The per-recipient rewrite: hand-written cases, broken input and the shared e-mail corpus."""

from __future__ import annotations

import base64
import email
import email.policy
import html
import json
import quopri
import random
import re
from email.message import EmailMessage, Message
from pathlib import Path
from typing import Any

import pytest

from gateway.outbound import mime
from gateway.outbound import rewrite as rewrite_module
from gateway.outbound.rewrite import PLACEHOLDER, FooterTemplates, Links, Prepared, prepare
from tests.support import corpus

pytestmark = pytest.mark.pure

LINK_ID = "AV4xj4zWSLJDo-gX6qMwngDhg0g_KGe6rfUiCZ8MISF3BTayWmVT8QABbmV3c2xldHRlcoqsgLWisrglYxkA9V"
URL = f"https://optgate.example.com/u/{LINK_ID}"
MAILTO = f"unsubscribe+{LINK_ID}@example.com"
LINKS = Links(URL, MAILTO)
OTHER = Links("https://optgate.example.com/u/other", "unsubscribe+other@example.com")
POSTAL = "Example Inc., 1 Main St & Co, Springfield"
FOOTER = FooterTemplates(
    text="\n-- \nTo stop receiving these e-mails: {url}\n{postal_address}\n",
    html='<p style="font-size:small"><a href="{url}">Unsubscribe</a><br>{postal_address}</p>',
    postal_address=POSTAL,
)
TEXT_FOOTER = FOOTER.text.format(url=URL, postal_address=POSTAL)
HTML_FOOTER = FOOTER.html.format(url=html.escape(URL), postal_address=html.escape(POSTAL))
ADDED = {"list-unsubscribe", "list-unsubscribe-post", "list-id", "feedback-id"}
REMOVED = ADDED | {"x-optgate-class", "x-optgate-topic"}
LIST_ID = "Marketing <marketing.lists.example.com>"
FEEDBACK_ID = "newsletter:marketing:example"
MAX_DEPTH = 50


def msg(text: str, *, crlf: bool = False) -> bytes:
    """A hand-written message: dedented source text, optionally with CRLF line ends."""
    lines = text.lstrip("\n").split("\n")
    indent = min((len(line) - len(line.lstrip(" ")) for line in lines if line.strip()), default=0)
    data = "\n".join(line[indent:] for line in lines).encode("utf-8")
    return data.replace(b"\n", b"\r\n") if crlf else data


def rewrite(message: bytes, **kwargs: object) -> tuple[Prepared, bytes]:
    options: dict[str, object] = {"footer": FOOTER, "list_id": LIST_ID, "feedback_id": FEEDBACK_ID}
    options.update(kwargs)
    prepared = prepare(message, **options)  # type: ignore[arg-type]
    return prepared, prepared.render(LINKS)


def parse(data: bytes) -> EmailMessage:
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def raw_headers(data: bytes) -> list[tuple[str, str]]:
    """Header fields as compat32 sees them: raw values, folding whitespace kept."""
    parsed = email.message_from_bytes(data, policy=email.policy.compat32)
    return [(name, str(value)) for name, value in parsed.items()]


def body_text_parts(message: Message) -> dict[str, Message]:
    """The text/plain and text/html parts a reader sees, by IMAP section number."""
    found: dict[str, Message] = {}

    def visit(part: Message, path: str, parent: str, index: int, depth: int) -> None:
        ctype = part.get_content_type()
        if part.get_content_maintype() == "multipart":
            payload = part.get_payload()
            if ctype in ("multipart/signed", "multipart/encrypted") or depth >= MAX_DEPTH:
                return
            if isinstance(payload, list):
                for number, child in enumerate(payload):
                    child_path = f"{path}.{number + 1}" if path else str(number + 1)
                    visit(child, child_path, ctype, number, depth + 1)
        elif shown_inline(part, parent, index):
            found[path or "1"] = part

    visit(message, "", "", 0, 0)
    return found


def content(part: Message) -> str:
    """The decoded text of a part, line breaks as LF."""
    assert isinstance(part, EmailMessage)
    cte = str(part.get("content-transfer-encoding", ""))
    if cte != cte.strip():  # the stdlib does not decode "base64 " (trailing space) at all
        raw = part.get_payload(decode=True)
        assert isinstance(raw, bytes)
        kind = cte.strip().lower()
        if kind == "quoted-printable":
            data = quopri.decodestring(raw)
        elif kind == "base64":
            data = base64.b64decode(raw)
        else:
            data = raw
        return data.decode(part.get_content_charset("ascii"), "replace").replace("\r\n", "\n")
    try:
        text = part.get_content()
    except LookupError:  # a charset name the stdlib cannot look up
        raw = part.get_payload(decode=True)
        assert isinstance(raw, bytes)
        text = raw.decode("utf-8", "replace")
    assert isinstance(text, str)
    return text.replace("\r\n", "\n")


def skipped_paths(prepared: Prepared) -> set[str]:
    return {
        m.group(1) for m in map(re.compile(r"part ([\d.]+):").match, prepared.skipped_parts) if m
    }


def check_rewrite(original: bytes, prepared: Prepared, out: bytes) -> None:
    """The invariants every rewrite keeps, whatever the input."""
    parsed_out = parse(out)
    parsed_in = parse(original)
    assert parsed_out.get_all("List-Unsubscribe") is not None
    assert len(parsed_out.get_all("List-Unsubscribe", [])) == 1
    unsubscribe = " ".join(str(parsed_out["List-Unsubscribe"]).split())
    assert unsubscribe == f"<{URL}>, <mailto:{MAILTO}>"
    assert parsed_out.get_all("List-Unsubscribe-Post") == ["List-Unsubscribe=One-Click"]
    check_lines(original, out)
    assert reader_sees(parsed_out, URL), "no part a reader sees has the link"
    # Header fields: ours on top, then the original ones minus the removed ones, unchanged.
    kept = [(n, v) for n, v in raw_headers(original) if n.lower() not in REMOVED]
    got = raw_headers(out)
    assert [n.lower() for n, _ in got[:4]] == [
        "list-unsubscribe",
        "list-unsubscribe-post",
        "list-id",
        "feedback-id",
    ]
    body_out: Message = parsed_out
    if prepared.footer_part:
        body_out = check_wrapped(kept, got[4:], parsed_out, out)
    elif "1" in prepared.footer_paths and parsed_out.get_content_maintype() != "multipart":
        assert without_cte(got[4:]) == without_cte(kept)  # a single part may go out QP
    else:
        assert got[4:] == kept
    # Body text parts: changed and carrying the URL, or named in skipped_parts.
    texts_in, texts_out = body_text_parts(parsed_in), body_text_parts(body_out)
    assert texts_in.keys() == texts_out.keys()
    assert prepared.footer_parts == len(prepared.footer_paths)
    assert prepared.footer_parts + len(prepared.skipped_parts) >= len(texts_in)
    skipped = skipped_paths(prepared)
    for path in texts_in:
        assert path in prepared.footer_paths or path in skipped or skipped_structure(prepared)
    # a changed part reads as before plus the footer, as sent: a lone CR or LF is CRLF then
    sent_in, sent_out = parse(as_sent(original)), parse(as_sent(out))
    sent_texts_in = body_text_parts(sent_in)
    sent_texts_out = body_text_parts(children(sent_out)[0] if prepared.footer_part else sent_out)
    for path in prepared.footer_paths:
        check_changed_part(sent_texts_in[path], sent_texts_out[path])
    # Every other part decodes to exactly what it was.
    parts_in, parts_out = list(parsed_in.walk()), list(body_out.walk())
    assert len(parts_in) == len(parts_out)
    changed = {id(texts_out[path]) for path in prepared.footer_paths}
    for before, after in zip(parts_in, parts_out, strict=True):
        assert before.get_content_type() == after.get_content_type()
        if id(after) in changed:
            continue
        payloads = [decoded(before), decoded(after)]
        if before is parsed_in and prepared.footer_part and before.defects:
            # the stdlib keeps the last line break of a broken last entity, but not of a
            # broken part before a boundary (RFC 2046: that line break is the boundary's)
            payloads = [p.rstrip(b"\r\n") if p else p for p in payloads]
        assert payloads[0] == payloads[1]
        assert before.preamble == after.preamble
        if before is not parsed_in or not prepared.footer_part:
            assert before.epilogue == after.epilogue
    for path in prepared.footer_paths:
        cte = str(texts_out[path].get("content-transfer-encoding", "7bit")).strip().lower()
        if cte != str(texts_in[path].get("content-transfer-encoding", "7bit")).strip().lower():
            assert cte == "quoted-printable"  # the only change a part's header may see


def as_sent(data: bytes) -> bytes:
    """A message as the SMTP client sends it (aiosmtplib's rule): every line break CRLF."""
    return re.sub(rb"\r\n|\r|\n", b"\r\n", data)


def decoded(part: Message) -> bytes | None:
    payload = part.get_payload(decode=True)
    assert payload is None or isinstance(payload, bytes)
    return payload


def children(part: Message) -> list[Message]:
    """The parts of a multipart (none when the stdlib could not split it)."""
    payload = part.get_payload()
    if not isinstance(payload, list):
        return []
    return [child for child in payload if isinstance(child, Message)]


def without_cte(fields: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(n, v) for n, v in fields if n.lower() != "content-transfer-encoding"]


def check_wrapped(
    kept: list[tuple[str, str]], top: list[tuple[str, str]], parsed: EmailMessage, out: bytes
) -> Message:
    """A message wrapped in multipart/mixed: the original entity first, then the footer.

    Returns the first part, which stands for the original message.
    """
    moved = [(n, v) for n, v in kept if n.lower().startswith("content-")]
    stays = [(n, v) for n, v in kept if not n.lower().startswith("content-")]
    version = [] if any(n.lower() == "mime-version" for n, _ in kept) else [("MIME-Version", "1.0")]
    assert top[:-1] == stays + version
    assert top[-1][0] == "Content-Type"
    assert parsed.get_content_type() == "multipart/mixed"
    first, footer = children(parsed)
    assert [(n, str(v)) for n, v in raw_parts(out)[0].items()] == moved
    assert footer.get_content_type() == "multipart/alternative"
    plain, page = children(footer)
    assert URL in content(plain)
    assert html.escape(URL) in content(page)
    assert page.get_content_type() == "text/html"
    return first


def raw_parts(data: bytes) -> list[Message]:
    """The parts of a wrapped message as compat32 parses them (raw header values)."""
    return children(email.message_from_bytes(data, policy=email.policy.compat32))


def check_lines(original: bytes, out: bytes) -> None:
    """No line over 998 octets that was not in the original already (untouched parts)."""
    long_in = {line for line in re.split(rb"\r\n|\r|\n", original) if len(line) > 998}
    for line in re.split(rb"\r\n|\r|\n", out):
        assert len(line) <= 998 or line in long_in, f"a new line of {len(line)} octets"


def reader_sees(message: Message, url: str) -> bool:
    """Whether every reader sees ``url``, whichever alternative their client shows.

    Written apart from gateway.outbound.mime.shown, on the stdlib's parse: a text/plain or
    text/html part shown inline has it; a multipart/alternative has it in every
    alternative that holds text; multipart/related in its root; any other multipart in
    one of its parts; multipart/signed and multipart/encrypted count as unseen.
    """

    def sees(part: Message, parent: str, index: int, depth: int) -> bool:
        ctype = part.get_content_type()
        if part.get_content_maintype() == "multipart":
            parts = children(part)
            if ctype in ("multipart/signed", "multipart/encrypted") or depth >= MAX_DEPTH:
                return False
            if not parts:
                return False
            results = [sees(c, ctype, i, depth + 1) for i, c in enumerate(parts)]
            if ctype == "multipart/alternative":
                texts = [r for c, r in zip(parts, results, strict=True) if holds_text(c)]
                return bool(texts) and all(texts)
            if ctype == "multipart/related":
                return results[0]
            return any(results)
        if not shown_inline(part, parent, index):
            return False
        found = content(part)
        return (html.escape(url) if ctype == "text/html" else url) in found

    def holds_text(part: Message, parent: str = "", index: int = 0) -> bool:
        """Whether a reader could be shown text from this part."""
        if part.get_content_maintype() != "multipart":
            return shown_inline(part, parent, index)
        ctype = part.get_content_type()
        if ctype in ("multipart/signed", "multipart/encrypted"):
            return True
        payload = children(part)
        if not payload:
            return False
        if ctype == "multipart/related":
            return holds_text(payload[0], ctype, 0)
        return any(holds_text(child, ctype, i) for i, child in enumerate(payload))

    return sees(message, "", 0, 0)


def shown_inline(part: Message, parent: str, index: int) -> bool:
    """A text/plain or text/html part a client shows in the message."""
    return (
        part.get_content_type() in ("text/plain", "text/html")
        and part.get_content_disposition() != "attachment"
        and not part.get_filename()
        and not part.get_param("name")
        and (parent != "multipart/related" or index == 0)
    )


def skipped_structure(prepared: Prepared) -> bool:
    """Whether a whole subtree was left alone (then its text parts need no own entry)."""
    return any(" without its boundary" in s or "left alone" in s for s in prepared.skipped_parts)


def check_changed_part(before: Message, after: Message) -> None:
    text_before, text_after = content(before), content(after)
    is_html = after.get_content_type() == "text/html"
    url = html.escape(URL) if is_html else URL
    assert url in text_after
    if "optgate_unsubscribe_url" in text_before.replace("%7B", "{").replace("%7b", "{"):
        return
    # The parser drops the last line break of an unterminated last part: compare without it.
    footer = (HTML_FOOTER if is_html else TEXT_FOOTER).rstrip("\n")
    if footer in text_after:
        # a footer that would make a line too long sits on lines of its own
        variants = [f"\n{footer}\n", f"\n{footer}", f"{footer}\n", footer]
        variants = [v for v in variants if v in text_after]
        assert text_before.rstrip("\n") in {
            text_after.replace(v, "", 1).rstrip("\n") for v in variants
        }
    else:  # written in a charset that cannot hold the postal address: character references
        assert is_html
        assert "&#" in text_after


# --- hand-written messages -------------------------------------------------------------

PLAIN = """
    From: Shop <news@shop.example>
    To: jane@example.com
    Subject: Spring sale
    X-Optgate-Class: marketing
    X-Optgate-Topic: spring
      sale
    Message-ID: <1@shop.example>

    Hello Jane,
    everything is 20% off.
    """


@pytest.mark.parametrize("crlf", [False, True], ids=["lf", "crlf"])
def test_plain_text_exact_output(crlf: bool) -> None:
    original = msg(PLAIN, crlf=crlf)
    prepared, out = rewrite(original)
    nl = "\r\n" if crlf else "\n"
    expected = (
        f"List-Unsubscribe: <{URL}>,{nl} <mailto:{MAILTO}>{nl}"
        f"List-Unsubscribe-Post: List-Unsubscribe=One-Click{nl}"
        f"List-Id: {LIST_ID}{nl}"
        f"Feedback-ID: {FEEDBACK_ID}{nl}"
        f"From: Shop <news@shop.example>{nl}To: jane@example.com{nl}Subject: Spring sale{nl}"
        f"Message-ID: <1@shop.example>{nl}{nl}"
        f"Hello Jane,{nl}everything is 20% off.{nl}" + TEXT_FOOTER.replace("\n", nl)
    )
    assert out.decode() == expected
    assert prepared.footer_parts == 1
    assert prepared.skipped_parts == ()
    check_rewrite(original, prepared, out)


def test_render_per_recipient_changes_only_the_links() -> None:
    original = msg(PLAIN)
    prepared, out = rewrite(original)
    other = prepared.render(OTHER)
    assert (
        other.replace(OTHER.url.encode(), URL.encode())
        .replace(OTHER.mailto.encode(), MAILTO.encode())
        .replace(b">, <mailto", b">,\n <mailto")
        == out
    )


def test_short_list_unsubscribe_is_not_folded_long_one_is() -> None:
    prepared, _ = rewrite(msg(PLAIN))
    short = prepared.render(Links("https://x.example/u/t", "u+t@x.example"))
    assert short.startswith(b"List-Unsubscribe: <https://x.example/u/t>, <mailto:u+t@x.example>\n")
    long = prepared.render(LINKS)
    first, second = long.split(b"\n")[:2]
    assert first.endswith(b">,")
    assert second.startswith(b" <mailto:")


def test_list_id_and_feedback_id_are_optional() -> None:
    original = msg(
        """
        List-Id: Old list <old.example.com>
        Feedback-ID: old:id
        List-Unsubscribe: <mailto:old@example.com>,
         <https://old.example.com/u>
        List-Unsubscribe-Post: List-Unsubscribe=One-Click
        Subject: x

        body
        """
    )
    _, out = rewrite(original, list_id=None, feedback_id=None)
    parsed = parse(out)
    assert parsed["List-Id"] == "Old list <old.example.com>"
    assert parsed["Feedback-ID"] == "old:id"
    assert "old@example.com" not in out.decode()
    assert out.count(b"List-Unsubscribe:") == 1
    assert out.count(b"List-Unsubscribe-Post:") == 1
    replaced = rewrite(original)[1]
    assert b"old.example.com" not in replaced
    assert b"old:id" not in replaced


def test_control_headers_removed_with_continuations_case_insensitively() -> None:
    original = msg(
        """
        X-OPTGATE-CLASS: marketing
        Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=
        x-optgate-topic:
        \tspring
          sale
        X-Mailer:   keeps   its   spacing\t
        X-Other: folded
           value
        X-Optgate-Topic-Extra: not a control header

        body
        """
    )
    prepared, out = rewrite(original)
    head = out.split(b"\n\n")[0] + b"\n"
    assert b"ptgate-class" not in head.lower()
    assert b"spring" not in head
    assert b"X-Optgate-Topic-Extra: not a control header\n" in head
    assert b"X-Mailer:   keeps   its   spacing\t\nX-Other: folded\n   value\n" in head
    assert b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\n" in head
    check_rewrite(original, prepared, out)


def test_remove_headers_is_configurable() -> None:
    original = msg("X-Secret: 1\nX-Optgate-Class: marketing\nSubject: s\n\nbody\n")
    _, out = rewrite(original, remove_headers=["x-secret"])
    assert b"X-Secret" not in out
    assert b"X-Optgate-Class: marketing\n" in out


def test_untouched_headers_and_8bit_header_bytes_are_byte_identical() -> None:
    head = (
        b"Received: from a (a [192.0.2.1])\r\n\tby b with ESMTP id 1;\r\n"
        b"\tMon, 1 Jan 2024 00:00:00 +0000\r\n"
        b"Subject: caf\xc3\xa9 \xff raw 8-bit\r\n"
        b"DKIM-Signature: v=1; a=rsa-sha256; d=example.com;\r\n h=from:to; b=abc\r\n"
    )
    original = head + b"\r\nbody\r\n"
    prepared, out = rewrite(original)
    assert head in out
    check_rewrite(original, prepared, out)


def test_unix_from_line_stays_first() -> None:
    original = msg("From sender@example.com Mon Jan  1 00:00:00 2024\nSubject: s\n\nbody\n")
    _, out = rewrite(original)
    assert out.startswith(b"From sender@example.com Mon Jan  1 00:00:00 2024\nList-Unsubscribe:")


HTML = """
    Subject: html
    MIME-Version: 1.0
    Content-Type: text/html; charset=utf-8

    <html><body><p>One</p></body>
    <!-- </BODY > in a comment, the last one wins -->
    </BODY >
    </html>
    """


def test_html_footer_goes_before_the_last_body_end() -> None:
    original = msg(HTML)
    prepared, out = rewrite(original)
    assert out.endswith(
        b"in a comment, the last one wins -->\n" + HTML_FOOTER.encode() + b"</BODY >\n</html>\n"
    )
    check_rewrite(original, prepared, out)


def test_html_without_body_end_gets_the_footer_at_the_end() -> None:
    original = msg("Content-Type: text/html\n\n<p>fragment</p>\n")
    prepared, out = rewrite(original)
    assert out.endswith(b"<p>fragment</p>\n" + HTML_FOOTER.encode())
    check_rewrite(original, prepared, out)


ALTERNATIVE = """
    Subject: alt
    MIME-Version: 1.0
    Content-Type: multipart/alternative; boundary="==alt=="

    This is a multi-part message in MIME format.
    --==alt==
    Content-Type: text/plain; charset="utf-8"
    Content-Transfer-Encoding: quoted-printable

    Gr=C3=BC=C3=9Fe, this line is long enough that it needs a soft line break =
    here.
    --==alt==
    Content-Type: text/html; charset="utf-8"
    Content-Transfer-Encoding: 7bit

    <html><body><p>Hi</p></body></html>
    --==alt==--
    epilogue text
    """


@pytest.mark.parametrize("crlf", [False, True], ids=["lf", "crlf"])
def test_alternative_with_qp_text(crlf: bool) -> None:
    original = msg(ALTERNATIVE, crlf=crlf)
    prepared, out = rewrite(original)
    assert prepared.footer_paths == ("1", "2")
    nl = b"\r\n" if crlf else b"\n"
    # The original quoted-printable bytes are kept and the footer follows a soft break.
    assert b"soft line break =" + nl + b"here.=" + nl + b"=0A-- =" not in out
    assert b"here.=" + nl + nl + b"--=20" + nl in out
    assert out.endswith(b"--==alt==--" + nl + b"epilogue text" + nl)
    assert b"This is a multi-part message in MIME format." + nl + b"--==alt==" + nl in out
    for line in out.split(nl):
        assert len(line) <= 76 or not line.startswith(b"To stop")
    check_rewrite(original, prepared, out)


def test_qp_html_is_re_encoded_around_the_body_end() -> None:
    original = msg(
        """
        Content-Type: text/html; charset=iso-8859-1
        Content-Transfer-Encoding: quoted-printable

        <html><body><p>Caf=E9 with a line that is long enough to need a soft break=
         here</p></bo=
        dy></html>
        """
    )
    prepared, out = rewrite(original)
    body = out.split(b"\n\n", 1)[1]
    assert all(len(line) <= 76 for line in body.split(b"\n"))
    decoded = quopri.decodestring(body).decode("iso-8859-1")
    assert decoded.endswith(HTML_FOOTER + "</body></html>\n")
    check_rewrite(original, prepared, out)


def test_qp_text_without_final_line_break() -> None:
    original = b"Content-Type: text/plain\nContent-Transfer-Encoding: quoted-printable\n\nends=20"
    prepared, out = rewrite(original)
    assert content(parse(out)) == "ends " + TEXT_FOOTER
    check_rewrite(original, prepared, out)


MIXED = """
    Subject: mixed
    MIME-Version: 1.0
    Content-Type: multipart/mixed; boundary=outer

    --outer
    Content-Type: multipart/alternative; boundary=inner

    --inner
    Content-Type: text/plain

    Plain body
    --inner
    Content-Type: multipart/related; boundary=rel; type="text/html"

    --rel
    Content-Type: text/html; charset=us-ascii

    <html><body><img src="cid:logo"></body></html>
    --rel
    Content-Type: image/png
    Content-Transfer-Encoding: base64
    Content-ID: <logo>

    iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==
    --rel
    Content-Type: text/html

    <p>a resource of the related part, not shown on its own</p>
    --rel--
    --inner--

    --outer
    Content-Type: text/plain; charset=utf-8
    Content-Disposition: attachment; filename="notes.txt"

    attached text stays as it is
    --outer
    Content-Type: text/plain; name="inline-but-named.txt"

    named text stays as it is
    --outer
    Content-Type: application/pdf; name="x.pdf"
    Content-Disposition: attachment; filename="x.pdf"
    Content-Transfer-Encoding: base64

    JVBERi0xLjQKJcOkw7zDtsOfCjIgMCBvYmoKPDwvTGVuZ3RoIDMgMCBSL0ZpbHRlci9GbGF0ZURl
    Y29kZT4+CnN0cmVhbQp4nDPQM1Qo5ypUMFAw0DM1NVUwtDTUM7BUKErlCtdSyOMCAGnXB2wKZW5k
    --outer
    Content-Type: message/rfc822

    Subject: forwarded
    Content-Type: text/plain

    forwarded text stays as it is
    --outer--
    """


@pytest.mark.parametrize("crlf", [False, True], ids=["lf", "crlf"])
def test_nested_mixed_alternative_related(crlf: bool) -> None:
    original = msg(MIXED, crlf=crlf)
    prepared, out = rewrite(original)
    assert prepared.footer_paths == ("1.1", "1.2.1")
    assert prepared.skipped_parts == ()
    nl = "\r\n" if crlf else "\n"
    for untouched in (
        "attached text stays as it is",
        "named text stays as it is",
        "forwarded text stays as it is",
        "<p>a resource of the related part, not shown on its own</p>",
    ):
        assert f"{untouched}{nl}--" in out.decode()
    # Everything after the changed parts is byte-identical.
    tail = original[original.index(b"--rel" + nl.encode() + b"Content-Type: image/png") :]
    assert out.endswith(tail)
    check_rewrite(original, prepared, out)


def test_base64_text_keeps_whole_lines_before_the_change() -> None:
    text = ("Zeile mit Umlauten: äöü ß. " * 40 + "\r\n") * 3
    encoded = base64.encodebytes(text.encode("utf-8")).decode("ascii")
    original = msg(
        "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: base64\n\n"
    ) + encoded.encode("ascii")
    prepared, out = rewrite(original)
    body = out.split(b"\n\n", 1)[1]
    lines = body.split(b"\n")
    assert all(len(line) <= 76 for line in lines)
    original_lines = encoded.encode("ascii").split(b"\n")
    assert lines[: len(original_lines) - 2] == original_lines[: len(original_lines) - 2]
    assert content(parse(out)) == text.replace("\r\n", "\n") + TEXT_FOOTER
    check_rewrite(original, prepared, out)


def test_base64_html_footer_and_placeholder() -> None:
    page = f'<html><body><a href="{PLACEHOLDER}">stop</a> or {PLACEHOLDER}</body></html>'
    encoded = base64.encodebytes(page.encode()).decode()
    original = msg(f"Content-Type: text/html\nContent-Transfer-Encoding: base64\n\n{encoded}")
    prepared, out = rewrite(original)
    got = content(parse(out))
    assert got == page.replace(PLACEHOLDER, html.escape(URL))
    assert prepared.footer_parts == 1


def test_latin1_footer_is_encoded_in_the_part_charset() -> None:
    footer = FooterTemplates(FOOTER.text, FOOTER.html, "Müller GmbH, Straße 1")
    original = msg(
        """
        Content-Type: multipart/alternative; boundary=b

        --b
        Content-Type: text/plain; charset=iso-8859-1
        Content-Transfer-Encoding: 8bit

        Gr\xfc\xdfe
        --b
        Content-Type: text/html; charset=ISO-8859-1

        <html><body>Gr&uuml;&szlig;e</body></html>
        --b--
        """
    ).replace("Gr\xfc\xdfe".encode(), "Gr\xfc\xdfe".encode("latin-1"))
    prepared, out = rewrite(original, footer=footer)
    assert b"M\xfcller GmbH, Stra\xdfe 1" in out  # latin-1 bytes in the 8bit text part
    assert b"M&#252;ller GmbH, Stra&#223;e 1" in out  # the 7bit html part stays ASCII
    texts = body_text_parts(parse(out))
    assert "Müller GmbH, Straße 1" in content(texts["1"])
    assert content(texts["1"]).startswith("Grüße\n")
    assert prepared.skipped_parts == ()


def test_ascii_text_part_cannot_take_a_non_ascii_footer() -> None:
    footer = FooterTemplates(FOOTER.text, FOOTER.html, "Müller GmbH")
    original = msg(ALTERNATIVE.replace('charset="utf-8"', "charset=us-ascii"))
    prepared, out = rewrite(original, footer=footer)
    assert prepared.footer_paths == ("2",)
    assert prepared.skipped_parts == ("part 1: footer cannot be written in charset ascii",)
    assert b"M&#252;ller GmbH" in out


def test_placeholder_replaces_the_footer() -> None:
    original = msg(
        f"""
        Content-Type: multipart/alternative; boundary=b

        --b
        Content-Type: text/plain

        Unsubscribe: {PLACEHOLDER}
        Again: {PLACEHOLDER}
        --b
        Content-Type: text/html

        <html><body><a href="https://t.example/?u=%7B%7Boptgate_unsubscribe_url%7D%7D">x</a>
        <a href="{PLACEHOLDER}">stop</a></body></html>
        --b--
        """
    )
    prepared, out = rewrite(original, footer=FooterTemplates("{url}", "{url}", "p"))
    texts = body_text_parts(parse(out))
    assert content(texts["1"]) == f"Unsubscribe: {URL}\nAgain: {URL}"
    assert content(texts["2"]).count(URL) == 2
    assert PLACEHOLDER not in out.decode()
    assert prepared.footer_parts == 2


def test_placeholder_in_quoted_printable() -> None:
    original = msg(
        """
        Content-Type: text/plain; charset=utf-8
        Content-Transfer-Encoding: quoted-printable

        Caf=C3=A9 {{optgate_unsub=
        scribe_url}} and on.
        """
    )
    prepared, out = rewrite(original)
    assert content(parse(out)) == f"Café {URL} and on.\n"
    body = out.split(b"\n\n", 1)[1]
    assert all(len(line) <= 76 for line in body.split(b"\n"))
    check_rewrite(original, prepared, out)


def test_html_url_is_escaped() -> None:
    links = Links("https://x.example/u?a=1&b=2", "u+t@x.example")
    prepared = prepare(msg(HTML), footer=FOOTER, list_id=None, feedback_id=None)
    assert b'href="https://x.example/u?a=1&amp;b=2"' in prepared.render(links)


def test_multipart_signed_is_wrapped_not_altered() -> None:
    signed = msg(
        """
        --s
        Content-Type: text/plain

        signed text
        --s
        Content-Type: application/pgp-signature

        sig
        --s--
        """
    )
    content_type = (
        b'Content-Type: multipart/signed; protocol="application/pgp-signature"; boundary=s\n'
    )
    original = b"Subject: s\n" + content_type + b"\n" + signed
    prepared, out = rewrite(original)
    assert prepared.skipped_parts == (
        "message: multipart/signed left alone (changing it breaks it)",
    )
    assert prepared.footer_part
    # the signed entity, its Content-Type field and every byte of its body, is the first part
    assert b"\n\n--=_optgate_" in out
    assert content_type + b"\n" + signed + b"\n--=_optgate_" in out
    assert b"Subject: s\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=" in out
    check_rewrite(original, prepared, out)


# --- broken input ----------------------------------------------------------------------

BROKEN = {
    "empty": b"",
    "one header no newline": b"Subject: x",
    "no separator": b"Subject: x\nthis line is not a header\nbody\n",
    "no headers": b"just a body line\nand another\n",
    "blank first line": b"\nbody after an empty header block\n",
    "multipart without boundary": b"Content-Type: multipart/mixed\n\n--x\n\nbody\n--x--\n",
    "wrong boundary": b"Content-Type: multipart/mixed; boundary=y\n\n--x\n\nbody\n--x--\n",
    "no close delimiter": b"Content-Type: multipart/mixed; boundary=x\n\n--x\n\nbody\n",
    "bad base64": b"Content-Type: text/plain\nContent-Transfer-Encoding: base64\n\n!!!notbase64\n",
    "unknown charset": b"Content-Type: text/plain; charset=x-foo\n\nbody\n",
    "bytes codec as charset": b"Content-Type: text/plain; charset=base64\n\nYm9keQ==\n",
    "utf-16 charset": b"Content-Type: text/plain; charset=utf-16\n\n\xff\xfeh\x00i\x00\n\x00",
    "unknown cte": b"Content-Type: text/plain\nContent-Transfer-Encoding: x-uuencode\n\nbody\n",
    "8bit in 7bit": b"Content-Type: text/plain\n\nna\xefve \xff\xfe\n",
    "8bit in us-ascii": b"Content-Type: text/plain; charset=us-ascii\n\nna\xefve\n",
    "bad utf-8": b"Content-Type: text/html; charset=utf-8\n\n<body>\xc3(\xa0</body>\n",
    "huge line": b"Subject: " + b"x" * 200_000 + b"\n\n" + b"y" * 300_000 + b"\n",
    "nul and cr": b"Subject: a\rb\x00\r\n\r\nbo\rdy\x00\r\n",
    "bad qp": b"Content-Type: text/plain\nContent-Transfer-Encoding: quoted-printable\n\na=\nb=Z",
    "lone delimiter": b"Content-Type: multipart/mixed; boundary=x\n\n--x--\n",
    "rfc2231 boundary": b"Content-Type: multipart/mixed; boundary*=''x\n\n--x\n\nhi\n--x--\n",
}


def deep(levels: int) -> bytes:
    head = b"".join(
        b"--b%d\nContent-Type: multipart/mixed; boundary=b%d\n\n" % (i, i + 1)
        for i in range(levels)
    )
    tail = b"".join(b"\n--b%d--" % i for i in reversed(range(levels)))
    return (
        b"Content-Type: multipart/mixed; boundary=b0\n\n" + head + b"--b%d\n\ntext" % levels + tail
    )


BROKEN["deep nesting"] = deep(80)


@pytest.mark.parametrize("original", BROKEN.values(), ids=BROKEN.keys())
def test_broken_input_never_raises(original: bytes) -> None:
    prepared, out = rewrite(original)
    assert out.startswith(b"List-Unsubscribe: ") or out.startswith(b"From ")
    check_rewrite(original, prepared, out)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("bad base64", "part 1: bad base64"),
        ("unknown charset", "part 1: unknown or unsupported charset x-foo"),
        ("utf-16 charset", "part 1: unknown or unsupported charset utf-16"),
        ("unknown cte", "part 1: unsupported Content-Transfer-Encoding x-uuencode"),
        ("multipart without boundary", "message: multipart/mixed without its boundary"),
        ("wrong boundary", "message: multipart/mixed without its boundary"),
        (
            "deep nesting",
            "part 1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1",
        ),
    ],
)
def test_broken_parts_are_named(name: str, reason: str) -> None:
    prepared, out = rewrite(BROKEN[name])
    assert any(entry.startswith(reason) for entry in prepared.skipped_parts), prepared
    body = BROKEN[name].split(b"\n\n", 1)[1]
    assert prepared.footer_part  # no part took the footer: it has one of its own
    assert b"\n\n" + body + b"\n--=_optgate_" in out  # left byte-identical, inside


def test_8bit_without_charset_is_kept_and_extended() -> None:
    prepared, out = rewrite(BROKEN["8bit in 7bit"])
    assert out.endswith(b"na\xefve \xff\xfe\n" + TEXT_FOOTER.encode())
    assert prepared.footer_parts == 1


@pytest.mark.corpus
def test_random_mutations_keep_the_invariants() -> None:
    seed = msg(MIXED, crlf=True)
    rng = random.Random(1234)
    for _ in range(300):
        data = bytearray(seed)
        for _ in range(rng.randint(1, 8)):
            at = rng.randrange(len(data))
            choice = rng.random()
            if choice < 0.4:
                data[at] = rng.randrange(256)
            elif choice < 0.7:
                del data[at : at + rng.randint(1, 40)]
            else:
                data[at:at] = rng.choice(
                    [b"\r\n", b"\n\n", b"\r", b"--", b"=", b"--outer\r\n", b"\xff", b"</body>"]
                )
        prepared, out = rewrite(bytes(data))
        check_rewrite(bytes(data), prepared, out)


@pytest.mark.parametrize(
    ("url", "mailto"),
    [("https://x/u/t\r\nBcc: a@b", "u@x"), ("https://x/u/t", "u@x>"), ("", "u@x"), ("h t", "u@x")],
)
def test_links_refuse_header_injection(url: str, mailto: str) -> None:
    with pytest.raises(ValueError, match="Links"):
        Links(url, mailto)


@pytest.mark.parametrize(
    ("list_id", "feedback_id"), [("a\r\nBcc: x", None), ("", None), (None, "a\nb"), (None, "é")]
)
def test_bad_header_arguments_are_refused(list_id: str | None, feedback_id: str | None) -> None:
    with pytest.raises(ValueError, match=r"list_id|feedback_id"):
        prepare(b"Subject: x\n\nbody\n", footer=FOOTER, list_id=list_id, feedback_id=feedback_id)


def test_non_ascii_list_id_is_encoded() -> None:
    prepared = prepare(
        b"Subject: x\n\nbody\n",
        footer=FOOTER,
        list_id="Grüße <gruesse.example.com>",
        feedback_id=None,
    )
    out = prepared.render(LINKS)
    assert out.isascii()
    assert str(parse(out)["List-Id"]) == "Grüße <gruesse.example.com>"


# --- the shared corpus -----------------------------------------------------------------


CORPUS = corpus.messages()


def test_corpus_is_there() -> None:
    corpus.require()
    assert len(CORPUS) > 900


@pytest.mark.parametrize("path", corpus.sweep(CORPUS))
def test_corpus_message(path: Path) -> None:
    original = path.read_bytes()
    prepared, out = rewrite(original)
    check_rewrite(original, prepared, out)
    check_bytes(original, prepared, out)
    expected = path.with_suffix(".json")
    if path.parent.parent.name == corpus.STALWART_PARSER and expected.exists():
        check_against_stalwart(original, prepared, json.loads(expected.read_text()))


_CLEAN_HEADER = re.compile(rb"(?:[!-9;-~]+:[^\r\n]*\r?\n(?:[ \t][^\r\n]*\r?\n)*)+(?=\r?\n)")


def check_bytes(original: bytes, prepared: Prepared, out: bytes) -> None:
    """Byte for byte: the output is the input plus our header lines and footers, no more.

    Checked where every change is a plain insertion (7bit, 8bit or binary parts that
    stay so, no placeholder) and the header block is well-formed; header fields are
    told apart here with a regular expression, independently of the code under test.
    A wrapped message is the input's header block without its Content-* fields, the
    multipart/mixed fields, the Content-* fields, the input's body, the footer part.
    """
    parsed, parsed_out = parse(original), parse(out)
    texts = body_text_parts(parsed)
    texts_out = body_text_parts(children(parsed_out)[0] if prepared.footer_part else parsed_out)
    for path in prepared.footer_paths:
        cte = str(texts[path].get("content-transfer-encoding", "7bit")).strip().lower()
        cte_out = str(texts_out[path].get("content-transfer-encoding", "7bit")).strip().lower()
        if cte not in ("7bit", "8bit", "binary") or cte_out != cte:
            return
        if "optgate_unsubscribe_url" in content(texts[path]):
            return
    block = _CLEAN_HEADER.match(original)
    if block is None:
        return
    fields = re.findall(rb"[^ \t\r\n][^\r\n]*\r?\n(?:[ \t][^\r\n]*\r?\n)*", block.group())
    kept = [f for f in fields if f.split(b":")[0].lower().decode() not in REMOVED]
    nl = b"\r\n" if block.group().endswith(b"\r\n") else b"\n"
    ours = out.split(nl + b"Feedback-ID: " + FEEDBACK_ID.encode() + nl, 1)[1]
    if prepared.footer_part:
        moved = [f for f in kept if f.lower().startswith(b"content-")]
        kept = [f for f in kept if not f.lower().startswith(b"content-")]
        boundary = str(parsed_out.get_boundary()).encode()
        version = any(f.lower().startswith(b"mime-version:") for f in kept)
        head = b"".join(kept) + (b"" if version else b"MIME-Version: 1.0" + nl)
        head += b'Content-Type: multipart/mixed; boundary="' + boundary + b'"' + nl
        head += nl + b"--" + boundary + nl + b"".join(moved)
        assert ours.startswith(head)
        inner = ours[len(head) : ours.rindex(nl + b"--" + boundary + nl)]
        ours, kept = inner, []
    variants = [f.replace("\n", "\r\n").encode() for f in (TEXT_FOOTER, HTML_FOOTER)]
    variants += [f.encode() for f in (TEXT_FOOTER, HTML_FOOTER)]
    plain = with_newline = ours
    for variant in variants:
        plain = plain.replace(variant, b"")
        # An empty part without an empty line after its header gets one before the footer.
        with_newline = with_newline.replace(nl + variant, b"").replace(variant, b"")
    assert b"".join(kept) + original[block.end() :] in (plain, with_newline)


def check_against_stalwart(original: bytes, prepared: Prepared, expected: Any) -> None:
    """Compare the parts that got a footer with Stalwart's JMAP text_body and html_body.

    Where the stdlib parser and Stalwart read the structure alike (they differ on
    some malformed messages, such as a part with two Content-Type fields), every
    text part Stalwart would display is footed or explained, and no part Stalwart
    treats as an attachment gets a footer.
    """
    parts = expected["parts"]
    paths = stalwart_paths(parts)
    kinds = {paths[i]: next(iter(parts[i]["body"])) for i in paths}
    bodies = {*expected["text_body"], *expected["html_body"]}
    shown = {paths[i] for i in bodies if kinds[paths[i]] in ("Text", "Html")}
    python = body_text_parts(parse(original))
    handled = set(prepared.footer_paths) | skipped_paths(prepared)
    assert {p for p in shown if p in python} <= handled
    footed = set(prepared.footer_paths)
    assert {p for p in footed if kinds.get(p) in ("Text", "Html")} <= shown


def stalwart_paths(parts: Any) -> dict[int, str]:
    """Stalwart part index -> IMAP section number, for the leaves of the tree."""
    paths: dict[int, str] = {}

    def visit(index: int, path: str) -> None:
        children = parts[index]["body"].get("Multipart")
        if children is None:
            paths[index] = path or "1"
            return
        for number, child in enumerate(children, 1):
            visit(child, f"{path}.{number}" if path else str(number))

    visit(0, "")
    return paths


@pytest.mark.parametrize("cte", ["7-bit", "8 bit", "7bits", "", "  8BIT  "])
def test_misspelled_unencoded_transfer_encodings_are_treated_as_unencoded(cte: str) -> None:
    original = f"Content-Type: text/plain\nContent-Transfer-Encoding: {cte}\n\nhi\n".encode()
    prepared, out = rewrite(original)
    assert out.endswith(b"\nhi\n" + TEXT_FOOTER.encode())
    assert prepared.footer_parts == 1


def test_qp_html_keeps_the_original_encoded_bytes_when_it_can() -> None:
    encoded = (
        '<html><body><p style=3D"x">Caf=E9 with a line long enough to need a soft br=\n'
        "eak</p></body></html>\n"
    )
    original = "Content-Type: text/html; charset=iso-8859-1\n"
    original += f"Content-Transfer-Encoding: quoted-printable\n\n{encoded}"
    prepared, out = rewrite(original.encode())
    body = out.split(b"\n\n", 1)[1]
    assert body.startswith(encoded.split("</body>")[0].encode() + b"=\n")
    assert body.endswith(b"=\n</body></html>\n")
    assert all(len(line) <= 76 for line in body.split(b"\n"))
    check_rewrite(original.encode(), prepared, out)


def test_body_end_far_from_the_end() -> None:
    original = b"Content-Type: text/html\n\n<body>x</body>" + b"</p>" * 40 + b"\n"
    _, out = rewrite(original)
    assert out.endswith(b"<body>x" + HTML_FOOTER.encode() + b"</body>" + b"</p>" * 40 + b"\n")


def test_an_internal_error_still_rewrites_the_headers(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("bug")

    original = msg("List-Unsubscribe: <mailto:old@example.com>\nSubject: s\n\nbody\n")
    monkeypatch.setattr(rewrite_module, "_plan_part", broken)
    prepared, out = rewrite(original)
    assert prepared.skipped_parts == (
        "message: body left unchanged after internal error RuntimeError",
    )
    assert out.endswith(b"\nSubject: s\n\nbody\n")
    assert b"old@example.com" not in out
    monkeypatch.setattr(mime, "split_headers", broken)
    prepared, out = rewrite(original)
    assert out.endswith(original)
    assert out.startswith(b"List-Unsubscribe: <https://")
