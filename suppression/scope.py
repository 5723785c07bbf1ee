"""Where a suppression applies: everything, one topic, or one partner's offers.

A ``Scope`` is parsed once where text comes in (a command's ``--scope``, an API body,
a token, an import row, the configuration) and carried as this value; ``str(scope)``
(``global``, ``topic:NAME``, ``partner:NAME``) is the form the store keeps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from suppression.errors import OptgateError
from suppression.model import check_name

ScopeKind = Literal["global", "topic", "partner"]


class InvalidScope(OptgateError):
    """Text that is not ``global``, ``topic:NAME`` or ``partner:NAME``."""


@dataclass(frozen=True, slots=True, order=True)
class Scope:
    """A suppression's scope; a topic's or a partner's carries a valid name."""

    kind: ScopeKind
    name: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ("global", "topic", "partner"):
            raise InvalidScope(f"scope kind {self.kind!r} is not global, topic or partner")
        if self.kind != "global":
            check_name(self.name, self.kind)
        elif self.name:
            raise InvalidScope(f"the global scope has no name, not {self.name!r}")

    @classmethod
    def parse(cls, text: str) -> Scope:
        """``global``, ``topic:NAME`` or ``partner:NAME``; InvalidScope otherwise."""
        if text == "global":
            return GLOBAL
        kind, sep, name = text.partition(":")
        if not sep or kind not in ("topic", "partner"):
            raise InvalidScope(
                f"scope {text!r} is not valid: use global, topic:NAME or partner:NAME"
            )
        return cls.topic(name) if kind == "topic" else cls.partner(name)

    @classmethod
    def topic(cls, name: str) -> Scope:
        """One topic (list); its name checked."""
        return cls("topic", name)

    @classmethod
    def partner(cls, name: str) -> Scope:
        """One partner's offers; its name checked."""
        return cls("partner", name)

    @property
    def is_global(self) -> bool:
        """Everything: the scope every class of mail heeds."""
        return self.kind == "global"

    def __str__(self) -> str:
        return self.kind if self.kind == "global" else f"{self.kind}:{self.name}"


GLOBAL = Scope("global")
