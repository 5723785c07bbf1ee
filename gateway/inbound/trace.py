"""What the own MTAs wrote on top of an inbound message: their Authentication-Results
verdict (RFC 8601) and, through their Received fields, the client that sent it.

Anything below the own MTAs' fields came with the message, from whoever sent it,
and is not believed: a sender can write any Authentication-Results or Received
field it likes. Pure: header values in, findings out.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass

import authres

from gateway.config import Network

# "from HELO (rDNS [192.0.2.1])", "from HELO ([IPv6:2001:db8::1])", "from [192.0.2.1] (...)"
_FROM = re.compile(
    r"^\s*from\s+(?P<helo>\S+)\s+(?:\([^()]*?\[(?:IPv6:)?(?P<ip>[0-9A-Fa-f:.]+)\][^()]*\))?",
    re.IGNORECASE,
)
_BRACKETED = re.compile(r"^\[(?:IPv6:)?(?P<ip>[0-9A-Fa-f:.]+)\]$", re.IGNORECASE)
_AUTHSERV_ID = re.compile(r"^\s*([^\s;()]+)")


@dataclass(frozen=True, slots=True)
class Client:
    """The MTA that sent a message: its address and what it said in HELO / EHLO."""

    ip: str
    helo: str


@dataclass(frozen=True, slots=True)
class Pass:
    """One passing result of a trusted Authentication-Results field."""

    method: str  # "dmarc", "dkim" or "spf"
    domain: str  # header.from, header.d (or header.i) or smtp.mailfrom (or smtp.helo)


def inside(ip: str, relays: Sequence[Network]) -> bool:
    """Whether an address belongs to one of the networks (IPv4-mapped IPv6 as IPv4)."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return any(address in network for network in relays)


def received_client(fields: Sequence[str], relays: Sequence[Network]) -> Client | None:
    """The client the own relays received the message from: walking the Received fields
    from the top, the first hop whose address is not one of the relays. None when a field
    on the way names no address (local submission, an unknown format)."""
    for field in fields:
        hop = _hop(field)
        if hop is None:
            return None
        if not inside(hop.ip, relays):
            return hop
    return None


def _hop(field: str) -> Client | None:
    found = _FROM.match(field)
    if found is None:
        return None
    helo, ip = found.group("helo"), found.group("ip")
    if ip is None:  # "from [192.0.2.1]" with no comment
        bracketed = _BRACKETED.match(helo)
        ip = bracketed.group("ip") if bracketed else None
    if ip is None:
        return None
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        return None
    return Client(ip, helo)


def trusted_passes(fields: Sequence[str], authserv_ids: Sequence[str]) -> tuple[Pass, ...]:
    """The passing dmarc / dkim / spf results of the topmost Authentication-Results field
    whose authserv-id is trusted. Fields of other authserv-ids are skipped, every field below
    the trusted one is ignored, and a trusted field that does not parse yields nothing."""
    trusted = {i.lower() for i in authserv_ids}
    for value in fields:
        named = _AUTHSERV_ID.match(value)
        if named is None or named.group(1).lower() not in trusted:
            continue
        try:
            header = authres.AuthenticationResultsHeader.parse_value(value)
        except (authres.AuthResError, ValueError, IndexError):
            return ()
        if str(header.authserv_id).lower() not in trusted:
            return ()
        return tuple(p for result in header.results if (p := _pass(result)) is not None)
    return ()


_PROPERTIES = {
    "dmarc": (("header", "from"),),
    "dkim": (("header", "d"), ("header", "i")),
    "spf": (("smtp", "mailfrom"), ("smtp", "helo")),
}


def _pass(result: object) -> Pass | None:
    method = str(getattr(result, "method", "")).lower()
    if str(getattr(result, "result", "")).lower() != "pass" or method not in _PROPERTIES:
        return None
    values = {
        (str(p.type).lower(), str(p.name).lower()): str(p.value)
        for p in getattr(result, "properties", ())
    }
    for key in _PROPERTIES[method]:
        if values.get(key):
            domain = values[key].rpartition("@")[2].strip().rstrip(".").lower()
            return Pass(method, domain) if domain else None
    return None
