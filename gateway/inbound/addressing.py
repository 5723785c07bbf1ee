"""optgate's own inbound addresses and the tokens they carry: ``bounce+TOKEN@``,
``unsubscribe+TOKEN@`` and the ``/u/TOKEN`` unsubscribe URL. Candidates only: the
tokens are verified where findings are applied."""

from __future__ import annotations

import re
from email.message import Message

from gateway.inbound import parsing

_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,512}")
_URL_TOKEN = re.compile(r"https?://[^\s<>]*/u/([A-Za-z0-9_-]{1,512})(?=[>\s?#]|$)")
_MAILTO = re.compile(r"mailto:([^\s<>?]+)", re.IGNORECASE)


def tagged(address: str, local: str) -> str | None:
    """ "" for ``local@...``, TOKEN for ``local+TOKEN@...``, None for any other address."""
    mailbox, at, _ = address.strip().strip("<>").rpartition("@")
    if not at:
        return None
    name, plus, tag = mailbox.partition("+")
    if name.lower() != local.lower():
        return None
    if not plus:
        return ""
    return tag if _TOKEN.fullmatch(tag) else None


def ours(address: str, locals_: tuple[str, ...]) -> bool:
    """Whether the address is one of optgate's inbound addresses (any domain)."""
    return any(tagged(address, local) is not None for local in locals_)


def tokens(addresses: list[str], locals_: tuple[str, ...]) -> list[str]:
    """The tokens of those addresses that are optgate inbound addresses."""
    found: list[str] = []
    for address in addresses:
        for local in locals_:
            token = tagged(address, local)
            if token:
                found.append(token)
    return found


def original_tokens(original: Message, locals_: tuple[str, ...]) -> list[str]:
    """Tokens in the returned original's To, Return-Path and List-Unsubscribe."""
    fields = [*parsing.headers(original, "To"), *parsing.headers(original, "Return-Path")]
    found = tokens(parsing.addresses(fields), locals_)
    for value in parsing.headers(original, "List-Unsubscribe"):
        found.extend(_URL_TOKEN.findall(value))
        found.extend(tokens(_MAILTO.findall(value), locals_))
    return found


def unique(values: list[str]) -> tuple[str, ...]:
    """The values in order, each once."""
    return tuple(dict.fromkeys(values))
