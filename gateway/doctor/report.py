"""The doctor's result: one :class:`Check` per line of the report, and the report printed."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum


class Status(StrEnum):
    """How a check came out."""

    PASS = "PASS"  # noqa: S105 - a status word, not a password
    WARN = "WARN"
    FAIL = "FAIL"


@dataclass(frozen=True)
class Check:
    """One line of the report."""

    status: Status
    name: str
    detail: str  # what was found, and what to do about it

    def line(self) -> str:
        """``STATUS  name: detail``."""
        return f"{self.status}  {self.name}: {self.detail}"


Found = tuple[Status, str]


def failed(checks: Sequence[Check]) -> bool:
    """Whether any check failed."""
    return any(c.status is Status.FAIL for c in checks)


def print_report(checks: Iterable[Check]) -> None:
    """The report on stdout, one line per check."""
    for check in checks:
        print(check.line())
