"""DMARC identifier alignment (RFC 7489 3.1): is an authenticated domain the From domain's?

Relaxed alignment asks for the same organisational domain, the registered domain
under a public suffix: ``mail.example.co.uk`` and ``example.co.uk`` align, and
``a.example.com`` and ``b.example.com`` do, but ``alice.github.io`` and
``bob.github.io`` do not. The public suffix list is the snapshot publicsuffixlist
ships (ICANN and private sections, as DMARC uses it); nothing is fetched at run
time. Strict alignment (``adkim=s`` / ``aspf=s`` in the From domain's DMARC
record) asks for the very same domain.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from publicsuffixlist import PublicSuffixList


@functools.cache
def _suffixes() -> PublicSuffixList:
    return PublicSuffixList()  # parses the bundled list once (~30 ms)


def domain_of(text: str) -> str | None:
    """A domain (or the domain of an address) in the A-label form DNS and DKIM use, or None."""
    domain = text.rpartition("@")[2].strip().strip("<>").rstrip(".").lower()
    if not domain or any(c in domain for c in " \t\r\n[]"):
        return None
    try:
        ascii_domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        return None
    return ascii_domain if "." in ascii_domain else None


def organisational(domain: str) -> str:
    """The organisational domain: the public suffix and one label more (itself if it is a
    public suffix)."""
    return _suffixes().privatesuffix(domain) or domain


@dataclass(frozen=True, slots=True)
class Modes:
    """The alignment a domain's DMARC record asks for: strict (True) or relaxed."""

    dkim_strict: bool = False
    spf_strict: bool = False


def modes(record: str | None) -> Modes:
    """adkim / aspf of a DMARC record ("v=DMARC1; p=reject; adkim=s"); relaxed by default."""
    if not record or not record.strip().lower().startswith("v=dmarc1"):
        return Modes()
    tags: dict[str, str] = {}
    for part in record.split(";"):
        name, _, value = part.partition("=")
        tags.setdefault(name.strip().lower(), value.strip().lower())
    return Modes(tags.get("adkim") == "s", tags.get("aspf") == "s")


def aligned(authenticated: str, author: str, strict: bool) -> bool:
    """Whether an authenticated domain (DKIM d=, SPF MAIL FROM) aligns with the From domain."""
    if authenticated == author:
        return True
    return not strict and organisational(authenticated) == organisational(author)
