"""Which addresses are optgate's own: unsubscribe@, bounce+TOKEN@, the feedback loop's."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from gateway.config import Inbound
from gateway.tokens import SHORT_TOKEN_CHARS
from suppression.errors import ConfigError

MAX_LOCAL_PART = 64  # RFC 5321 4.5.3.1.1
_LOCAL = re.compile(r"[a-z0-9][a-z0-9._-]*")
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_DOMAIN = re.compile(rf"(?=.{{1,253}}$)(?:{_LABEL}\.)+{_LABEL}")


class Role(StrEnum):
    """What mail to an inbound address is."""

    UNSUBSCRIBE = "unsubscribe"
    BOUNCE = "bounce"
    FEEDBACK = "feedback"


@dataclass(frozen=True, slots=True)
class Mailboxes:
    """The inbound addresses of ``[inbound]``: local parts (with any ``+TOKEN``) at its domains."""

    domains: tuple[str, ...]  # normalised; the first is the VERP bounce domain
    locals: dict[str, Role]

    @classmethod
    def from_config(cls, inbound: Inbound) -> Mailboxes | None:
        """The configured mailboxes, or None when inbound mail is off (no domains)."""
        if not inbound.domains:
            return None
        domains = tuple(dict.fromkeys(_domain(d) for d in inbound.domains))
        locals_ = {
            _local(inbound.unsubscribe_local, "unsubscribe_local"): Role.UNSUBSCRIBE,
            _local(inbound.bounce_local, "bounce_local"): Role.BOUNCE,
            _local(inbound.feedback_local, "feedback_local"): Role.FEEDBACK,
        }
        if len(locals_) != len(Role):
            raise ConfigError("[inbound] unsubscribe_local, bounce_local and feedback_local differ")
        return cls(domains, locals_)

    def role(self, address: str) -> Role | None:
        """The role of an envelope recipient, or None when it is not an inbound address."""
        local, at, domain = address.strip().strip("<>").rpartition("@")
        if not at or domain.lower().rstrip(".") not in self.domains:
            return None
        return self.locals.get(local.partition("+")[0].lower())

    def local(self, role: Role) -> str:
        """The local part of a role."""
        return next(local for local, known in self.locals.items() if known is role)


def _domain(value: str) -> str:
    """A domain as an MTA writes it in RCPT: lower-case, IDNA (A-labels)."""
    try:
        domain = value.strip().rstrip(".").encode("idna").decode("ascii").lower()
    except UnicodeError:
        domain = ""
    if not _DOMAIN.fullmatch(domain):
        raise ConfigError(f"[inbound] domains: {value!r} is not a domain name")
    return domain


def _local(value: str, key: str) -> str:
    local = value.strip().lower()
    if not _LOCAL.fullmatch(local):
        raise ConfigError(f"[inbound] {key}: {value!r} is not a local part (a-z 0-9 . _ -)")
    if len(local) + 1 + SHORT_TOKEN_CHARS > MAX_LOCAL_PART:
        raise ConfigError(
            f"[inbound] {key}: {value!r} with +TOKEN would exceed {MAX_LOCAL_PART} characters; "
            f"use at most {MAX_LOCAL_PART - 1 - SHORT_TOKEN_CHARS}"
        )
    return local
