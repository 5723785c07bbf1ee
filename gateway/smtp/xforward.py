"""Pure: Postfix's XFORWARD (XFORWARD_README): the original client of a message, as an
up-stream MTA forwards it to optgate and as optgate forwards it to the next hop.

A command is ``XFORWARD NAME=v ADDR=v ...``: xtext-encoded values (RFC 3461), names
case-insensitive, each value at most 255 characters and, decoded, printable ASCII
without whitespace or header specials; ``[UNAVAILABLE]`` (any case) stands for a
value the up-stream MTA does not know. The first command of a transaction sets every
attribute to ``[UNAVAILABLE]``, each command then updates the ones it names.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass

ATTRIBUTES = ("NAME", "ADDR", "PORT", "PROTO", "HELO", "IDENT", "SOURCE")
UNAVAILABLE = "[UNAVAILABLE]"
EHLO_LINE = "XFORWARD " + " ".join(ATTRIBUTES)
MAX_VALUE = 255
MAX_COMMAND = 512 - 2  # RFC 5321's command line, without its CRLF

_XTEXT = re.compile(rb"\+([0-9A-F]{2})")
_HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")
_SPECIALS = set('()<>@,;:\\"[]')


class BadXforward(ValueError):
    """An XFORWARD command optgate cannot take (501); the text says which attribute."""


def _decoded(raw: str) -> str:
    """An xtext value decoded; BadXforward if it is not xtext or not a plain value."""
    data = raw.encode("ascii", "replace")
    if any(b < 0x21 or b > 0x7E or b == 0x3D for b in data):
        raise BadXforward("not xtext")
    if b"+" in _XTEXT.sub(b"", data):
        raise BadXforward("not xtext (a + without two hex digits)")
    text = _XTEXT.sub(lambda m: bytes([int(m.group(1), 16)]), data).decode("latin-1")
    if any(not 0x21 <= ord(c) <= 0x7E for c in text):
        raise BadXforward("control, space or non-ASCII character")
    return text


def _valid(name: str, value: str) -> bool:
    if value.upper() == UNAVAILABLE:
        return True
    if name == "ADDR":
        try:
            ipaddress.ip_address(value[5:] if value.upper().startswith("IPV6:") else value)
        except ValueError:
            return False
        return True
    if name == "PORT":
        return value.isdigit() and int(value) < 65536
    if name == "HELO":  # whatever the client said: a name, an address literal, worse
        return True
    if name == "NAME":
        return value.upper() == "[TEMPUNAVAIL]" or bool(_HOST.fullmatch(value))
    if name == "PROTO":
        return len(value) <= 64 and not _SPECIALS & set(value)
    if name == "IDENT":
        return not _SPECIALS & set(value)
    return value.upper() in ("LOCAL", "REMOTE")  # SOURCE


def parse_xforward(arg: str) -> dict[str, str]:
    """``NAME=v ADDR=v ...`` -> {attribute: decoded value}; BadXforward naming what is wrong."""
    pairs = arg.split()
    if not pairs:
        raise BadXforward("no attribute")
    found: dict[str, str] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        name = name.upper()
        if not sep or name not in ATTRIBUTES:
            raise BadXforward(f"unknown attribute {name[:16]!r}" if sep else "not NAME=VALUE")
        if not raw or len(raw) > MAX_VALUE:
            raise BadXforward(f"{name} value empty or over {MAX_VALUE} characters")
        try:
            value = _decoded(raw)
        except BadXforward as exc:
            raise BadXforward(f"{name}: {exc}") from None
        if not _valid(name, value):
            raise BadXforward(f"bad {name} syntax")
        found[name] = value
    return found


@dataclass(frozen=True, slots=True)
class Forwarded:
    """A message's original client: the attributes (every one of ATTRIBUTES once set)."""

    attributes: tuple[tuple[str, str], ...]

    @classmethod
    def start(cls, given: Mapping[str, str]) -> Forwarded:
        """After the first command of a transaction: the rest is [UNAVAILABLE]."""
        return cls(tuple((name, given.get(name, UNAVAILABLE)) for name in ATTRIBUTES))

    def update(self, given: Mapping[str, str]) -> Forwarded:
        """After a further command of the same transaction."""
        return Forwarded(tuple((name, given.get(name, value)) for name, value in self.attributes))

    @classmethod
    def of_session(cls, addr: str, port: int, helo: str, esmtp: bool) -> Forwarded:
        """A client that sent no XFORWARD is itself the original client (every message of a
        session asks again: the same value, from a cache)."""
        return _of_session(addr, port, helo, esmtp)

    @property
    def client_ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        """The original client's address, if known."""
        for name, value in self.attributes:
            if name == "ADDR":
                return _client_ip(value)
        return None

    def commands(self, offered: frozenset[str]) -> list[bytes]:
        """XFORWARD commands for a next hop that offers the attributes ``offered`` (its EHLO
        line's words), each within the 512 octets of an SMTP command line."""
        return list(_commands(self.attributes, offered))


@functools.lru_cache(maxsize=1024)  # every message of a session (the port is the session's)
def _of_session(addr: str, port: int, helo: str, esmtp: bool) -> Forwarded:
    address = _unmapped(addr)
    shown = f"IPV6:{address}" if address.version == 6 else str(address)
    plain = bool(helo) and len(helo) <= MAX_VALUE and all(0x21 <= ord(c) <= 0x7E for c in helo)
    helo_ok = helo if plain else UNAVAILABLE
    return Forwarded.start(
        {
            "ADDR": shown,
            "PORT": str(port),
            "HELO": helo_ok,
            "PROTO": "ESMTP" if esmtp else "SMTP",
        }
    )


@functools.lru_cache(maxsize=1024)  # classify asks for every message
def _client_ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An ADDR value as an address (an IPv4-mapped one as IPv4); None if unavailable."""
    if value.upper() == UNAVAILABLE:
        return None
    return _unmapped(value[5:] if value.upper().startswith("IPV6:") else value)


def _unmapped(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address (ValueError if it is none), an IPv4-mapped one as IPv4."""
    address = ipaddress.ip_address(text)
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped if mapped is not None else address


@functools.lru_cache(maxsize=1024)  # every copy of a message, and a client's next messages
def _commands(
    attributes: tuple[tuple[str, str], ...], offered: frozenset[str]
) -> tuple[bytes, ...]:
    words = [
        f"{name}={_xtext(value)}".encode("ascii") for name, value in attributes if name in offered
    ]
    commands: list[bytes] = []
    line = b"XFORWARD"
    for word in words:
        if len(line) + 1 + len(word) > MAX_COMMAND:
            commands.append(line)
            line = b"XFORWARD"
        line += b" " + word
    if line != b"XFORWARD":
        commands.append(line)
    return tuple(commands)


def _xtext(value: str) -> str:
    """RFC 3461 xtext: + and = (and anything outside ! .. ~) as +HH."""
    return "".join(c if "!" <= c <= "~" and c not in "+=" else f"+{ord(c):02X}" for c in value)
