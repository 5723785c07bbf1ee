"""The pure parts of sender authentication: organisational domains, alignment, DMARC
modes, the own MTAs' Authentication-Results and Received fields."""

from __future__ import annotations

import pytest

from gateway.config import Config
from gateway.inbound.alignment import Modes, aligned, domain_of, modes, organisational
from gateway.inbound.trace import Client, Pass, received_client, trusted_passes

pytestmark = pytest.mark.pure

LOOPBACK = Config().inbound.trusted_relays  # 127.0.0.0/8 and ::1/128


@pytest.mark.parametrize(
    ("domain", "organisation"),
    [
        ("example.com", "example.com"),
        ("mail.example.com", "example.com"),
        ("a.b.mail.example.co.uk", "example.co.uk"),  # not "co.uk": the last two labels
        ("shop.example.com.au", "example.com.au"),
        ("alice.github.io", "alice.github.io"),  # the list's private section
        ("co.uk", "co.uk"),  # a public suffix is its own
    ],
)
def test_organisational_domains_come_from_the_public_suffix_list(
    domain: str, organisation: str
) -> None:
    assert organisational(domain) == organisation


@pytest.mark.parametrize(
    ("authenticated", "author", "strict", "expected"),
    [
        ("example.com", "example.com", True, True),
        ("mail.example.com", "example.com", False, True),
        ("mail.example.com", "example.com", True, False),
        ("example.co.uk", "other.co.uk", False, False),
        ("alice.github.io", "bob.github.io", False, False),
        ("example.net", "example.com", False, False),
    ],
)
def test_alignment(authenticated: str, author: str, strict: bool, expected: bool) -> None:
    assert aligned(authenticated, author, strict) is expected


def test_dmarc_modes() -> None:
    assert modes("v=DMARC1; p=reject; adkim=s; aspf=r") == Modes(dkim_strict=True)
    assert modes("v=DMARC1; p=none; ASPF=S") == Modes(spf_strict=True)
    assert modes("v=DMARC1; p=reject") == Modes()
    assert modes("v=spf1 -all; adkim=s") == Modes()  # not a DMARC record
    assert modes(None) == Modes()


@pytest.mark.parametrize(
    ("text", "domain"),
    [
        ("Ann@Example.COM", "example.com"),
        ("<ann@example.com.>", "example.com"),
        ("ann@bücher.example", "xn--bcher-kva.example"),
        ("ann@localhost", None),
        ("ann@[192.0.2.1]", None),
        ("", None),
    ],
)
def test_domain_of(text: str, domain: str | None) -> None:
    assert domain_of(text) == domain


POSTFIX = (
    "from mail.example.com (mail.example.com [192.0.2.25]) by mx.in.example.com (Postfix) "
    "with ESMTPS id 4Xy; Sun, 29 Nov 2026 02:00:01 +0000"
)


def test_the_client_is_the_first_hop_outside_the_own_relays() -> None:
    delivered = "from mx.in.example.com (localhost [127.0.0.1]) by imap (Dovecot) with LMTP"
    assert received_client([POSTFIX], LOOPBACK) == Client("192.0.2.25", "mail.example.com")
    # a delivery agent on loopback first: its field names the own relay, go on down
    assert received_client([delivered, POSTFIX], LOOPBACK) == Client(
        "192.0.2.25", "mail.example.com"
    )
    ipv6 = "from [IPv6:2001:db8::1] (unknown [IPv6:2001:db8::1]) by mx"
    assert received_client([ipv6], LOOPBACK) == Client("2001:db8::1", "[IPv6:2001:db8::1]")
    assert received_client(["from [198.51.100.7] by mx"], LOOPBACK) == Client(
        "198.51.100.7", "[198.51.100.7]"
    )


@pytest.mark.parametrize(
    "fields",
    [
        [],  # the own relay took it from a local program
        ["by mx.in.example.com (Postfix, from userid 0) id 4Xy"],
        ["from mx (localhost [127.0.0.1]) by imap"],  # only own relays: no client left
        ["from mx (localhost [127.0.0.1]) by imap", "from somewhere by mx"],  # no address
    ],
)
def test_no_client_when_the_fields_do_not_name_one(fields: list[str]) -> None:
    assert received_client(fields, LOOPBACK) is None


def test_the_topmost_trusted_authentication_results_field_alone_is_believed() -> None:
    trusted = ["mx.in.example.com"]
    fields = [
        "imap.in.example.com; none",  # another authserv-id, added later: skipped
        "mx.in.example.com; dkim=pass header.d=Example.COM header.s=s1; spf=fail "
        "smtp.mailfrom=x@example.com; dmarc=pass (p=reject) header.from=example.com",
        # below the trusted field: came with the message
        "mx.in.example.com; spf=pass smtp.mailfrom=forger@example.com",
    ]
    assert trusted_passes(fields, trusted) == (
        Pass("dkim", "example.com"),
        Pass("dmarc", "example.com"),
    )
    assert trusted_passes(fields[2:], ["MX.IN.EXAMPLE.COM"]) == (Pass("spf", "example.com"),)
    assert trusted_passes(fields, ["mx.elsewhere.example"]) == ()
    assert trusted_passes(fields, []) == ()


def test_a_trusted_field_that_does_not_parse_yields_nothing() -> None:
    fields = [
        "mx.in.example.com; dkim=pass (unclosed comment header.d=example.com",
        "mx.in.example.com; dmarc=pass header.from=example.com",
    ]
    assert trusted_passes(fields, ["mx.in.example.com"]) == ()
