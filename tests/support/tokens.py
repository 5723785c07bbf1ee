"""Token scopes as tests write them: ``confirm:PURPOSE`` or a suppression scope's text."""

from __future__ import annotations

from gateway.tokens import Confirmation
from suppression.scope import Scope


def claimed(text: str) -> Scope | Confirmation:
    """What a token of that scope claims (a confirmation link, or an opt-out's scope)."""
    kind, _, name = text.partition(":")
    return Confirmation(name) if kind == "confirm" else Scope.parse(text)
