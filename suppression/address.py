"""Address normalisation and the identity hash that keys every record.

The identity of an address is the lowercase hex SHA-256 of the address
trimmed and lower-cased as a whole: the form hashed suppression lists use
when companies share them. MD5 of the same form exists for import and export
only. A whole-domain suppression is keyed by the identity of ``@domain``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import repeat
from operator import itemgetter

from email_validator import EmailNotValidError, validate_email

from suppression.errors import InvalidAddress

# A strict subset of what email-validator accepts: dot-atom ASCII local part,
# LDH labels (no hyphen first or last: checked after the match, which is faster
# than a pattern that backtracks over each label), an alphabetic TLD. Anything
# else goes through email-validator.
_SIMPLE = re.compile(
    r"(?=[^@]{1,64}@)(?=.{1,254}\Z)"  # a local part of at most 64, at most 254 in all
    r"[a-z0-9!#$%&'*+/=?^_`{|}~-]++(?:\.[a-z0-9!#$%&'*+/=?^_`{|}~-]++)*+"
    r"@((?:[a-z0-9-]{1,63}\.)+([a-z]{2,63}))"
)
# Special-use names email-validator refuses (RFC 6761 and friends).
_SPECIAL_TLDS = frozenset({"arpa", "invalid", "local", "localhost", "onion", "test"})
_HEX = re.compile(r"[0-9a-f]+")
# normal_forms: the local parts of a block, joined by line breaks, each a dot-atom as
# _SIMPLE takes it; the domain part of _SIMPLE
_ATOM = r"[a-z0-9!#$%&'*+/=?^_`{|}~-]++"
_LOCAL_PARTS = re.compile(rf"{_ATOM}(?:[.\n]{_ATOM})*+")
_DOMAIN = re.compile(r"(?:[a-z0-9-]{1,63}\.)+([a-z]{2,63})")
_SHORT = 69  # no address this long has a local part over 64 (the shortest domain is a.bc)
_SMALL_BLOCK = 8  # addresses normal_forms checks one at a time
_local_parts, _domains = itemgetter(0), itemgetter(2)
_hexdigest = type(hashlib.sha256()).hexdigest
# RFC 5321 4.5.1: the one address without a domain every SMTP server must take
POSTMASTER = "postmaster"


def identity(address: str) -> str:
    """SHA-256 identity of an address (or of ``@domain``)."""
    return hashlib.sha256(address.strip().lower().encode()).hexdigest()


def md5_identity(address: str) -> str:
    """MD5 of the same form, for partners who exchange MD5 lists."""
    return hashlib.md5(address.strip().lower().encode(), usedforsecurity=False).hexdigest()


def is_digest(value: str, length: int) -> bool:
    """True when value is lowercase hex of the given length."""
    return len(value) == length and _HEX.fullmatch(value) is not None


@dataclass(frozen=True, slots=True)
class Address:
    """A valid, normalised address with the keys it is looked up by."""

    normalized: str
    sha256: str

    @property
    def domain(self) -> str:
        """The domain part ('' for the domain-less postmaster)."""
        _, at, domain = self.normalized.rpartition("@")
        return domain if at else ""

    @property
    def md5(self) -> str:
        """The MD5 form partners' hash lists use."""
        return md5_identity(self.normalized)

    @property
    def domain_key(self) -> str:
        """The key of a whole-domain suppression covering this address."""
        return identity("@" + self.domain)


def _simple(lowered: str) -> str | None:
    match = _SIMPLE.fullmatch(lowered)
    if match is None:
        return None
    domain, tld = match.group(1, 2)
    # "--" marks Punycode (xn--, which email-validator turns into Unicode) or a
    # reserved label it refuses (ab--c): leave both to email-validator
    if tld in _SPECIAL_TLDS or ("-" in domain and _bad_hyphen(domain)):
        return None
    return lowered


@lru_cache(maxsize=1 << 16)
def _simple_domain(domain: str) -> bool:
    """The domain of an address _simple takes (the domains of a list repeat: cached)."""
    match = _DOMAIN.fullmatch(domain)
    return (
        match is not None
        and match.group(1) not in _SPECIAL_TLDS
        and not ("-" in domain and _bad_hyphen(domain))
    )


def _all_simple(lowered: Sequence[str]) -> bool:
    """Whether _simple takes every one of the (trimmed, lower-cased) addresses: its checks
    made on the whole block at once, by C loops over the block rather than one regular
    expression match per address: the local parts joined by line breaks must match
    _LOCAL_PARTS (an @ in each: rpartition leaves "" without one), and there be no other
    line break; each distinct domain is checked once."""
    parts = list(map(str.rpartition, lowered, repeat("@")))
    local = list(map(_local_parts, parts))
    text = "\n".join(local)
    longest = max(map(len, lowered))
    return (
        longest <= 254
        and (longest <= _SHORT or max(map(len, local)) <= 64)
        and _LOCAL_PARTS.fullmatch(text) is not None
        and text.count("\n") == len(local) - 1
        and all(map(_simple_domain, set(map(_domains, parts))))
    )


def _bad_hyphen(domain: str) -> bool:
    """A hyphen that starts or ends a label, or two in a row."""
    return "--" in domain or "-." in domain or ".-" in domain or domain[0] == "-"


def normal_form(raw: str) -> str:
    """The normalised form of a valid address (its identity is the SHA-256 of it);
    InvalidAddress with the reason otherwise."""
    text = raw.strip()
    lowered = text.lower()
    if lowered == POSTMASTER:
        return POSTMASTER
    normalized = _simple(lowered)
    if normalized is None:
        try:
            info = validate_email(text, check_deliverability=False, allow_smtputf8=True)
        except EmailNotValidError as exc:
            raise InvalidAddress(f"{text!r} is not a valid address: {exc}") from None
        normalized = info.normalized.lower()
    return normalized


def normal_forms(raws: Sequence[str]) -> list[str | None]:
    """normal_form of each of many addresses, None for an invalid one, at a fraction of the
    cost of one call each: a block the fast path takes whole is checked at once (most
    blocks of most files); a block it does not is halved until the addresses at fault
    are found, and those go through normal_form."""
    lowered = list(map(str.lower, map(str.strip, raws)))
    found: list[str | None] = []
    pending = [(0, len(lowered))]
    while pending:
        start, end = pending.pop()
        if end - start <= _SMALL_BLOCK:
            found += map(_normal_or_none, raws[start:end])
        elif _all_simple(lowered[start:end]):
            found += lowered[start:end]
        else:
            middle = (start + end) // 2
            pending += ((middle, end), (start, middle))
    return found


def _normal_or_none(raw: str) -> str | None:
    try:
        return normal_form(raw)
    except InvalidAddress:
        return None


def identities(normals: Sequence[str]) -> list[str]:
    """identity of each of many normal forms (no trimming or lower-casing: they are
    normal), in one C loop."""
    return list(map(_hexdigest, map(hashlib.sha256, map(str.encode, normals))))


def normalize(raw: str) -> Address:
    """Validate and normalise an address; raise InvalidAddress with the reason."""
    normalized = normal_form(raw)
    return Address(normalized, identity(normalized))


def normalize_domain(raw: str) -> str:
    """Validate ``@domain`` (or ``domain``) and return the normalised domain."""
    domain = raw.strip().lstrip("@")
    try:
        return normalize("postmaster@" + domain).domain
    except InvalidAddress:
        raise InvalidAddress(f"{raw.strip()!r} is not a valid domain") from None
