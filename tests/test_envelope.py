"""What MAIL FROM and RCPT TO may carry: every RFC 5321 / RFC 6531 recipient form is
either relayed or refused at RCPT (never a 250 without a copy), and malformed paths,
NUL and other control characters are 501 and never reach the next hop."""

from __future__ import annotations

import pytest

from gateway.errors import PathError
from gateway.runtime.service import Running
from gateway.smtp.paths import parse_path
from suppression.address import identity, normalize
from tests.support.dialogue import dialogue
from tests.support.people import SENDER
from tests.support.smtp import Sink, message

pytestmark = pytest.mark.pure

TRANSACTIONAL = {"X-Optgate-Class": "transactional"}  # no consent needed: relayed if valid

# (RCPT TO argument, needs SMTPUTF8, the recipient the next hop must get or None: refused)
FORMS = [
    ("<user@example.com>", False, "user@example.com"),
    ("<First.Last+tag@Example.COM>", False, "First.Last+tag@Example.COM"),
    ("<!#$%&'*+-/=?^_`{|}~@example.com>", False, "!#$%&'*+-/=?^_`{|}~@example.com"),
    ('<"john"@example.com>', False, "john@example.com"),  # quotes it never needed
    ("<@relay.example,@hop.example:route@example.com>", False, "route@example.com"),
    ("<Postmaster>", False, "Postmaster"),  # RFC 5321 4.5.1: no domain
    ("<postmaster@example.com>", False, "postmaster@example.com"),
    ("<用户@example.com>", True, "用户@example.com"),  # RFC 6531 local part
    ("<user@例え.jp>", True, "user@例え.jp"),  # U-label
    ("<user@xn--r8jz45g.jp>", False, "user@xn--r8jz45g.jp"),  # its A-label
    (f"<{'a' * 64}@example.com>", False, f"{'a' * 64}@example.com"),
    ("<user@123.example>", False, "user@123.example"),
    ('<"quoted local"@example.com>', False, None),
    ('<"a\\"b"@example.com>', False, None),
    ("<user@[127.0.0.1]>", False, None),
    ("<user@[IPv6:2001:db8::1]>", False, None),
    ("<user@[x-tag:content]>", False, None),
    ("<user@mailhost>", False, None),  # a single label
    ("<user@example.test>", False, None),  # special-use (RFC 6761)
    ("<用户@example.com>", False, None),  # UTF-8 without SMTPUTF8
]


@pytest.mark.parametrize(("rcpt", "utf8", "relayed"), FORMS)
async def test_every_recipient_form_is_relayed_or_refused_at_rcpt(
    gate: Running, next_hop: Sink, rcpt: str, utf8: bool, relayed: str | None
) -> None:
    async with dialogue(gate.smtp_port) as smtp:
        options = " SMTPUTF8" if utf8 else ""
        assert (await smtp.say(f"MAIL FROM:<{SENDER}>{options}")).code == 250
        answer = await smtp.say(f"RCPT TO:{rcpt}")
        if relayed is None:
            assert answer.code == 553, answer
            assert answer.lines[0].startswith(b"5.6.7" if not rcpt.isascii() else b"5.1.3")
            return
        assert answer.code == 250, answer
        assert (await smtp.say("DATA")).code == 354
        assert (await smtp.data(message(headers=TRANSACTIONAL))).code == 250
    assert [m.rcpt_tos for m in next_hop.messages] == [[relayed]]


@pytest.mark.parametrize(
    ("command", "enhanced"),
    [
        (b"MAIL FROM:<a@[>", b"5.1.7"),  # aiosmtpd's parser raised: 451
        (b"MAIL FROM:<a\x00b@example.com>", b"5.1.7"),
        (b"MAIL FROM:<news@sender.example\x07>", b"5.1.7"),
        (b"MAIL FROM:<news@sender.example>SIZE=10", b"5.1.7"),
        (b"MAIL FROM:<news@sender.example> SIZE=1\x00", b"5.1.7"),
        (b"MAIL FROM:<(comment)news@sender.example>", b"5.1.7"),
        (b"MAIL FROM:<news @ sender.example>", b"5.1.7"),
        (b"MAIL FROM:<news@sender..example>", b"5.1.7"),
        (b"MAIL FROM:<ne\xffws@sender.example>", b"5.1.7"),  # not UTF-8
        (b"MAIL FROM:<news@[300.1.2.3]>", b"5.1.7"),
        (b"MAIL FROM:<Postmaster>", b"5.1.7"),  # a recipient only
    ],
)
async def test_malformed_senders_are_501(
    gate: Running, next_hop: Sink, command: bytes, enhanced: bytes
) -> None:
    async with dialogue(gate.smtp_port) as smtp:
        answer = await smtp.say(command)
        assert answer.code == 501, answer
        assert answer.lines[0].startswith(enhanced)
        assert (await smtp.say(b"NOOP")).code == 250  # the session goes on
    assert next_hop.messages == []


@pytest.mark.parametrize(
    "command",
    [
        b"RCPT TO:<a@[>",
        b"RCPT TO:<fan\x00@example.com>",
        b"RCPT TO:<fan@example.com\x1b>",
        b"RCPT TO:<fan@example.com\xc2\x85>",  # NEL, a C1 control
        b"RCPT TO:<fan..x@example.com>",
        b"RCPT TO:<.fan@example.com>",
        b"RCPT TO:<fan@example.com> NOTIFY=\x00",
        b"RCPT TO:<fan@-example.com>",
        b"RCPT TO:<fan@example.com",
        b"RCPT TO:<>",  # the null path is a sender only
    ],
)
async def test_malformed_recipients_are_501_and_nothing_is_relayed(
    gate: Running, next_hop: Sink, command: bytes
) -> None:
    async with dialogue(gate.smtp_port) as smtp:
        assert (await smtp.say(f"MAIL FROM:<{SENDER}>")).code == 250
        answer = await smtp.say(command)
        assert answer.code == 501, answer
        assert answer.lines[0].startswith(b"5.1.3")
        assert (await smtp.say(b"DATA")).code == 503  # no recipient was taken
    assert next_hop.messages == []


async def test_vrfy_confirms_nothing_and_parses_nothing(gate: Running) -> None:
    async with dialogue(gate.smtp_port) as smtp:
        assert (await smtp.say(b"VRFY <a@[>")).code == 252
        assert (await smtp.say(b"VRFY")).code == 501


@pytest.mark.parametrize(
    ("arg", "path", "params"),
    [
        ("<>", "<>", ""),
        ("<Postmaster>", "Postmaster", ""),
        ("<a@b.example> SIZE=10  BODY=8BITMIME", "a@b.example", "SIZE=10  BODY=8BITMIME"),
        ("a@b.example SIZE=10", "a@b.example", "SIZE=10"),  # no <>: what many clients send
        ('<"a\\b"@x.example>', "ab@x.example", ""),
        ('<"a b\\\\c"@x.example>', '"a b\\\\c"@x.example', ""),
        ("<@r.example:a@x.example>", "a@x.example", ""),
    ],
)
def test_paths_come_back_in_one_spelling(arg: str, path: str, params: str) -> None:
    assert parse_path(arg) == (path, params)


@pytest.mark.parametrize(
    "arg", ["", "<", "<a@>", "<@x.example>", "<a@x.example>>", "<a@[IPv6:zz]>", "<a@[:x]>"]
)
def test_what_is_no_path(arg: str) -> None:
    with pytest.raises(PathError):
        parse_path(arg)


def test_postmaster_is_the_one_address_without_a_domain() -> None:
    postmaster = normalize(" PostMaster ")
    assert (postmaster.normalized, postmaster.domain) == ("postmaster", "")
    assert postmaster.sha256 == identity("postmaster")
