"""The paths of MAIL FROM and RCPT TO, parsed by RFC 5321's grammar (4.1.2, 4.1.3).

aiosmtpd parses them with the e-mail header parser, which is lenient the
wrong way for an SMTP edge: it takes comments and spaces inside ``<...>``,
lets NUL and other control characters through to the next hop, and raises on
some malformed input (``<a@[>``), which became a 451. Here a path either fits
the grammar, with RFC 6531's UTF-8 in local parts and domain labels, or it is
refused with a reason (501).

A path comes back in one canonical spelling: a source route (``<@a,@b:m>``)
is dropped (RFC 5321 4.1.1.3 asks servers to ignore it), a quoted local part
that needs no quotes loses them (``"john"@x`` is ``john@x``), and a quoted one
that needs them keeps only the escapes it needs. ``<>`` comes back as ``<>``
(aiosmtpd's null sender) and RCPT's domain-less ``<Postmaster>`` as it was
written; which command may carry which is the session's decision.
"""

from __future__ import annotations

import ipaddress
import re

from gateway.errors import PathError

NULL = "<>"
POSTMASTER = "postmaster"

_U = "\u00a0-\ud7ff\ue000-\U0010ffff"  # UTF-8 beyond ASCII: no C1 controls, no lone surrogates
_ATOM = rf"[A-Za-z0-9!#$%&'*+/=?^_`{{|}}~{_U}-]+"
_DOT_STRING = rf"{_ATOM}(?:\.{_ATOM})*"
_QUOTED = rf'"(?:[\x20\x21\x23-\x5b\x5d-\x7e{_U}]|\\[\x20-\x7e])*"'
_LET_DIG = rf"[A-Za-z0-9{_U}]"
_LABEL = rf"{_LET_DIG}(?:[A-Za-z0-9{_U}-]*{_LET_DIG})?"
_DOMAIN = rf"{_LABEL}(?:\.{_LABEL})*"
_LITERAL = r"\[[\x21-\x5a\x5e-\x7e]+\]"  # dcontent; its inside is checked below
_MAILBOX = rf"(?P<local>{_DOT_STRING}|{_QUOTED})@(?P<domain>{_DOMAIN}|{_LITERAL})"
_ROUTE = rf"@{_DOMAIN}(?:,@{_DOMAIN})*:"

_PATH = re.compile(rf"<(?:{_ROUTE})?{_MAILBOX}>")
_BARE = re.compile(_MAILBOX)  # without <>: not RFC 5321, but what many clients send
_SPECIAL = re.compile(r"<(?:|postmaster)>", re.IGNORECASE)
_DOT_STRING_ONLY = re.compile(_DOT_STRING)
_QUOTED_PAIR = re.compile(r"\\(.)")
_GENERAL_TAG = re.compile(r"[A-Za-z0-9-]*[A-Za-z0-9]")
_UNFIT = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_PARAM = re.compile(rf"[A-Za-z0-9][A-Za-z0-9-]*(?:=[\x21-\x3c\x3e-\x7e{_U}]+)?")


def parse_path(arg: str) -> tuple[str, str]:
    """The canonical path in ``arg`` (what follows ``FROM:`` or ``TO:``) and its parameters.

    Raises PathError for anything that is not a path, however it fails.
    """
    text = arg.lstrip(" ")
    special = _SPECIAL.match(text)
    if special is not None:
        path, rest = special.group(0)[1:-1] or NULL, text[special.end() :]
    else:
        match = (_PATH if text.startswith("<") else _BARE).match(text)
        if match is None:
            raise PathError(_why(text))
        path, rest = _mailbox(match.group("local"), match.group("domain")), text[match.end() :]
    return path, _parameters(rest)


def _mailbox(local: str, domain: str) -> str:
    if domain.startswith("["):
        _check_literal(domain[1:-1])
    if local.startswith('"'):
        inside = _QUOTED_PAIR.sub(r"\1", local[1:-1])
        if _DOT_STRING_ONLY.fullmatch(inside):
            local = inside  # the same mailbox: quotes it never needed
        else:
            local = '"' + inside.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{local}@{domain}"


def _check_literal(inside: str) -> None:
    """An address literal is an IPv4 address, ``IPv6:`` and one, or ``tag:content``."""
    tag, colon, content = inside.partition(":")
    try:
        if not colon:
            ipaddress.IPv4Address(inside)
        elif tag.upper() == "IPV6":
            ipaddress.IPv6Address(content)
        elif not _GENERAL_TAG.fullmatch(tag) or not content:
            raise ValueError(inside)
    except ValueError:
        raise PathError(f"[{inside}] is not an address literal") from None


def _parameters(rest: str) -> str:
    """What follows the path: nothing, or parameters after a space (RFC 5321 4.1.2)."""
    if not rest.strip(" "):
        return ""
    if not rest.startswith(" "):
        raise PathError("a space must separate the path from its parameters")
    for param in rest.split(" "):
        if param and not _PARAM.fullmatch(param):
            raise PathError("malformed parameter after the path")
    return rest.strip(" ")


def _why(text: str) -> str:
    """The reason a path did not parse, as precise as cheaply possible."""
    if _UNFIT.search(text):
        return "control characters or bytes that are not UTF-8 in the path"
    if not text.startswith("<"):
        return "the path must be written <local-part@domain>"
    if ">" not in text:
        return "the path does not end with >"
    return "the path is not local-part@domain (RFC 5321 4.1.2)"
