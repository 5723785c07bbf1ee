"""What the SQLite store (suppression/sqlite.py), its import runs (sqlite_imports.py) and
store copies (copying.py) share: times as SQLite keeps them (UTC text), rows as records,
``?`` placeholders, and the page cache the writer connection runs with."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from suppression.model import Consent, Suppression
from suppression.rows import to_consent, to_suppression

CACHE_KIB = 32768  # the writer connection's page cache (PRAGMA cache_size)


def time_text(value: datetime) -> str:
    """A time as SQLite keeps it: UTC text to the microsecond."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> datetime:
    """A kept time read back."""
    return datetime.fromisoformat(text)


def suppression_of(row: Sequence[Any]) -> Suppression:
    """A suppression row (rows.SUPPRESSION_COLUMNS) as its record."""
    return to_suppression(row, parse_time)


def consent_of(row: Sequence[Any]) -> Consent:
    """A consent row (rows.CONSENT_COLUMNS) as its record."""
    return to_consent(row, parse_time)


def question_marks(count: int) -> str:
    """``count`` placeholders, comma-separated."""
    return ",".join("?" * count)
