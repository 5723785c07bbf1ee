"""suppression.address: the fast path agrees with email-validator; identities are plain hashes."""

from __future__ import annotations

import hashlib
import random
import string

import pytest
from email_validator import EmailNotValidError, validate_email

from suppression import address as addr
from suppression.address import (
    identity,
    is_digest,
    md5_identity,
    normalize,
    normalize_domain,
)
from suppression.errors import InvalidAddress

pytestmark = pytest.mark.pure

ATEXT = string.ascii_letters + string.digits + "!#$%&'*+/=?^_`{|}~-"
NOT_ATEXT = ' ()<>[]:;@\\,"\t'
LABELS = (
    "example",
    "a",
    "b-c",
    "-x",
    "x-",
    "q1",
    "1a",
    "0",
    "",
    "a_b",
    "UPPER",
    "münchen",
    "bücher",
    "例え",
    "xn--mnchen-3ya",
    "XN--BCHER-KVA",
    "ab--c",
    "a-b--c",
    "a" * 63,
    "a" * 64,
)
TLDS = (
    "com",
    "org",
    "co",
    "museum",
    "COM",
    "x",
    "c0m",
    "123",
    "рф",
    "xn--p1ai",
    "a" * 63,
    "a" * 64,
    # special-use names email-validator refuses
    "test",
    "local",
    "localhost",
    "invalid",
    "onion",
    "arpa",
    "Test",
    "LOCAL",
)


def slow_path(raw: str) -> str | None:
    """What normalize answers when only email-validator decides."""
    try:
        info = validate_email(raw.strip(), check_deliverability=False, allow_smtputf8=True)
    except EmailNotValidError:
        return None
    return info.normalized.lower()


def fast_path(raw: str) -> str | None:
    try:
        return normalize(raw).normalized
    except InvalidAddress:
        return None


def generated(rng: random.Random) -> str:
    """An address-like string: mostly plausible, often broken in one way."""
    chars = ATEXT + "." * 6
    if rng.random() < 0.2:
        chars += NOT_ATEXT
    if rng.random() < 0.1:
        chars += "éÉß"
    local = "".join(rng.choice(chars) for _ in range(rng.choice((1, 2, 7, 20, 63, 64, 65))))
    if rng.random() < 0.04:
        local = f'"{local}"'
    domain = ".".join(rng.choice(LABELS) for _ in range(rng.choice((1, 2, 3))))
    domain += "." + rng.choice(TLDS)
    if rng.random() < 0.1:  # total length near the 254 limit
        last = rng.choice((56, 57, 58, 59, 60, 61, 62))
        domain = ".".join(("a" * 63, "b" * 63, "c" * 63, "d" * last, "com"))
        domain = domain[-rng.choice((170, 180, 185, 186, 187, 188, 190, 200)) :].lstrip(".-")
    text = f"{local}@{domain}"
    roll = rng.random()
    if roll < 0.06:
        text = text.upper()
    elif roll < 0.12:
        text = f" \t{text} \n"
    elif roll < 0.14:
        text = text.replace("@", "")
    elif roll < 0.16:
        text += "@example.com"
    return text


@pytest.mark.corpus
def test_fast_path_and_email_validator_agree_on_generated_addresses() -> None:
    rng = random.Random(20241128)
    fast_hits = slow_valid = invalid = 0
    for _ in range(4000):
        text = generated(rng)
        expected = slow_path(text)
        got = fast_path(text)
        assert got == expected, text
        if got is None:
            invalid += 1
            continue
        assert normalize(text).sha256 == hashlib.sha256(got.encode()).hexdigest()
        assert fast_path(got) == got, "normalising is idempotent"
        if addr._simple(text.strip().lower()) is not None:
            fast_hits += 1
        else:
            slow_valid += 1
    # the generator reaches both paths and both verdicts
    assert fast_hits > 300
    assert slow_valid > 100
    assert invalid > 1000


def test_normal_forms_of_a_block_are_each_addresses_normal_form() -> None:
    """normal_forms checks whole blocks at once and halves those with a bad address: in
    blocks clean and dirty, long and short, it answers what normal_form answers."""
    rng = random.Random(20261203)
    texts = [generated(rng) for _ in range(4000)]
    texts += [f"user.{n}@example{n % 7}.com" for n in range(3000)]
    texts += ["postmaster", "a@b.com\nc@d.com", "@example.com", "x" * 64 + "@a.bc"]
    rng.shuffle(texts)
    start = 0
    for size in (1, 9, 64, 1000, 3000, 10_000):
        block = texts[start : start + size]
        start += size
        assert addr.normal_forms(block) == [fast_path(text) for text in block]
    clean = [f"User.{n}@Example{n % 7}.com " for n in range(500)]
    assert addr.normal_forms(clean) == [fast_path(text) for text in clean]
    assert addr.identities(["jane@example.com"]) == [identity("jane@example.com")]


@pytest.mark.parametrize(
    "odd",
    [
        "a@b.com\nc@d.com",
        "a..b@example.com",
        ".a@example.com",
        "a.@example.com",
        "a@example.test",
        "a@ex--ample.com",
        "a@-example.com",
        "a@example-.com",
        "x" * 65 + "@a.bc",
        "a@" + ("b" * 63 + ".") * 4 + "com",
        "a@b@example.com",
        "a b@example.com",
        "é@example.com",
        "@example.com",
        "a@example.c",
        "a@example.com.",
        "postmaster",
        "",
    ],
)
def test_one_odd_address_in_a_clean_block_is_found(odd: str) -> None:
    block = [f"user{n}@example.com" for n in range(30)]
    block.insert(17, odd)
    assert addr.normal_forms(block) == [fast_path(text) for text in block]


@pytest.mark.parametrize(
    ("a_label", "u_label"),
    [
        ("user@xn--mnchen-3ya.de", "user@münchen.de"),
        ("USER@XN--MNCHEN-3YA.DE", "User@München.de"),
        ("x@mail.xn--bcher-kva.example", "x@mail.bücher.example"),
    ],
)
def test_punycode_and_unicode_domains_are_one_identity(a_label: str, u_label: str) -> None:
    # a suppression of one spelling must match mail to the other
    assert normalize(a_label) == normalize(u_label)
    assert normalize(a_label).normalized == u_label.lower()


@pytest.mark.parametrize(
    "text",
    [
        "x@ab--c.com",  # reserved label form (two characters, two hyphens)
        "x@xn--zz.com",  # not valid Punycode
        "x@example.test",
        "x@example.local",
        "x@localhost",
        "x@host.invalid",
        "x@something.onion",
        "x@1.0.0.127.in-addr.arpa",
        "x@example",  # no dot in the domain
        "a..b@example.com",
        ".a@example.com",
        "a.@example.com",
        "a b@example.com",
        "@example.com",
        "x@",
        "",
        "   ",
        "x@-example.com",
        "x@example-.com",
        "x@" + "a" * 64 + ".com",
        "x@example.com@example.com",
    ],
)
def test_invalid_addresses_raise(text: str) -> None:
    with pytest.raises(InvalidAddress):
        normalize(text)


def test_length_limits() -> None:
    assert normalize("a" * 64 + "@example.com").normalized == "a" * 64 + "@example.com"
    # email-validator checks the 64-octet local part limit only when strict; so do we
    assert normalize("a" * 65 + "@example.com").normalized == "a" * 65 + "@example.com"
    domain = ".".join(("a" * 63, "b" * 63, "c" * 63, "d" * 50, "com"))
    longest = "x" * 7 + "@" + domain
    assert len(longest) == 254
    assert normalize(longest.upper()).normalized == longest
    for text in ("x" + longest, "x" * 7 + "@" + domain.replace("d" * 50, "d" * 51)):
        assert len(text) == 255
        with pytest.raises(InvalidAddress):
            normalize(text)


def test_normalize_trims_lowercases_and_keeps_the_local_part() -> None:
    a = normalize("  Jane.Doe+News@Example.COM \n")
    assert a.normalized == "jane.doe+news@example.com"
    assert a.domain == "example.com"
    assert a.sha256 == hashlib.sha256(b"jane.doe+news@example.com").hexdigest()
    assert a.md5 == hashlib.md5(b"jane.doe+news@example.com").hexdigest()  # noqa: S324
    assert a.domain_key == hashlib.sha256(b"@example.com").hexdigest()
    # internationalised local parts are kept (SMTPUTF8), lower-cased
    assert normalize("JÖRG@Example.com").normalized == "jörg@example.com"


@pytest.mark.parametrize(
    "text", ["x@example.com", " X@Example.Com ", "MiXeD.Case@Sub.Example.ORG", "@example.net"]
)
def test_identity_is_sha256_of_the_trimmed_lowercase_form(text: str) -> None:
    form = text.strip().lower().encode()
    assert identity(text) == hashlib.sha256(form).hexdigest()
    assert md5_identity(text) == hashlib.md5(form).hexdigest()  # noqa: S324
    assert is_digest(identity(text), 64)
    assert is_digest(md5_identity(text), 32)


def test_is_digest() -> None:
    assert is_digest("0" * 64, 64)
    assert not is_digest("0" * 64, 32)
    assert not is_digest("A" * 64, 64)  # lowercase hex only
    assert not is_digest("g" * 32, 32)
    assert not is_digest(" " + "0" * 63, 64)


@pytest.mark.parametrize(
    ("text", "domain"),
    [
        ("@Example.NET", "example.net"),
        ("example.net", "example.net"),
        ("  @sub.example.org ", "sub.example.org"),
        ("@xn--mnchen-3ya.de", "münchen.de"),
        ("@MÜNCHEN.de", "münchen.de"),
    ],
)
def test_normalize_domain(text: str, domain: str) -> None:
    assert normalize_domain(text) == domain
    # a domain suppression's key is the identity of "@domain", as every address there looks it up
    assert identity("@" + domain) == normalize("someone@" + domain).domain_key


@pytest.mark.parametrize("text", ["@", "@example", "@exa mple.com", "@example.test", "@-x.com"])
def test_invalid_domains_name_the_input(text: str) -> None:
    with pytest.raises(InvalidAddress, match="is not a valid domain"):
        normalize_domain(text)
