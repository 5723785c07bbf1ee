"""Pure: which language to speak, from a message's language tag or a browser's
Accept-Language header, among the languages optgate has wording for.

Tags are matched as RFC 4647 "lookup" does: ``de-AT`` finds ``de-at`` or else
``de``. Accept-Language is ordered by q-value, then by position (RFC 9110 §12.5.4).
"""

from __future__ import annotations

from collections.abc import Collection

MAX_RANGES = 32  # language ranges of one Accept-Language header looked at


def best(tag: str | None, available: Collection[str], default: str) -> str:
    """The available language a tag falls back to ("de-AT" -> "de"), else ``default``."""
    candidate = (tag or "").strip().lower().replace("_", "-")
    while candidate:
        if candidate in available:
            return candidate
        candidate = candidate.rpartition("-")[0]
    return default


def negotiate(header: str | None, available: Collection[str], default: str) -> str:
    """The language an Accept-Language header likes best among ``available``."""
    ranked = []
    for position, item in enumerate((header or "").split(",")[:MAX_RANGES]):
        tag, _, parameters = item.partition(";")
        weight = _quality(parameters)
        if tag.strip() and weight > 0:
            ranked.append((-weight, position, tag.strip()))
    for _, _, tag in sorted(ranked):
        if tag == "*":
            return default
        found = best(tag, available, "")
        if found:
            return found
    return default


def _quality(parameters: str) -> float:
    for parameter in parameters.split(";"):
        name, _, value = parameter.strip().partition("=")
        if name.strip().lower() == "q":
            try:
                return min(max(float(value), 0.0), 1.0)
            except ValueError:
                return 0.0
    return 1.0
