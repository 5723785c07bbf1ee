"""The rates people watch: per topic and per campaign, what was sent and how many of its
recipients unsubscribed, bounced or complained afterwards.

Gmail's bulk-sender rules keep spam complaints below 0.3% (and ask for under 0.1%);
``flag`` says where a row stands against those lines.
"""

from __future__ import annotations

from dataclasses import dataclass

COMPLAINT_LIMIT = 0.003  # Gmail: never reach 0.3% of the mail sent
COMPLAINT_TARGET = 0.001  # Gmail: stay below 0.1%
COUNTED = ("unsubscribed", "bounced", "complained")


@dataclass(frozen=True, slots=True)
class Counts:
    """One topic and campaign (None: mail without a campaign) over a period."""

    topic: str
    campaign: str | None
    sent: int
    unsubscribed: int = 0
    bounced: int = 0
    complained: int = 0

    def rate(self, count: int) -> float:
        """A count as a fraction of the copies sent (0 when none were)."""
        return count / self.sent if self.sent else 0.0

    @property
    def flag(self) -> str:
        """``over`` Gmail's 0.3% complaint line, ``above-target`` its 0.1%, else ``ok``."""
        rate = self.rate(self.complained)
        if rate >= COMPLAINT_LIMIT:
            return "over"
        return "above-target" if rate >= COMPLAINT_TARGET else "ok"

    def plus(self, other: Counts) -> Counts:
        """The sum of two rows (the topic's total over its campaigns)."""
        return Counts(
            self.topic,
            None,
            self.sent + other.sent,
            self.unsubscribed + other.unsubscribed,
            self.bounced + other.bounced,
            self.complained + other.complained,
        )

    def as_json(self) -> dict[str, object]:
        """Counts, rates (fractions) and the flag."""
        return {
            "topic": self.topic,
            "campaign": self.campaign,
            "sent": self.sent,
            **{name: getattr(self, name) for name in COUNTED},
            **{f"{name}_rate": round(self.rate(getattr(self, name)), 6) for name in COUNTED},
            "complaints": self.flag,
        }


def tally(
    sent: list[tuple[str, str | None, int]], opted: list[tuple[str, str | None, str, int]]
) -> list[Counts]:
    """Rows per (topic, campaign) from the sends and the opt-outs attributed to them,
    ordered by topic then campaign (no campaign first)."""
    rows: dict[tuple[str, str | None], dict[str, int]] = {}
    for topic, campaign, count in sent:
        rows.setdefault((topic, campaign), {})["sent"] = int(count)
    for topic, campaign, reason, count in opted:
        rows.setdefault((topic, campaign), {})[reason] = int(count)
    ordered = sorted(rows, key=lambda k: (k[0], k[1] is not None, k[1] or ""))
    return [Counts(t, c, **{"sent": 0, **rows[t, c]}) for t, c in ordered]
