"""One message's replies from its copies' outcomes: one per recipient (LMTP, RFC 2033)
and one for the transaction (SMTP), where a partial refusal is 250 and a DSN."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.smtp.relay import Outcome


@dataclass(frozen=True, slots=True)
class Reply:
    """One SMTP reply."""

    code: int
    text: str

    def __str__(self) -> str:
        return f"{self.code} {self.text}"


RELAYED = Reply(250, "2.0.0 OK: relayed")
DROPPED = Reply(250, "2.0.0 OK: not relayed by policy")
ALREADY = Reply(250, "2.0.0 OK: already delivered, not sent again")
UNCERTAIN = Reply(250, "2.0.0 OK: sent before, its reply was lost; not sent again")


def of_copy(outcome: Outcome) -> Reply:
    """One recipient's reply from its copy's outcome."""
    if outcome.delivered:
        return RELAYED
    status = enhanced_status(outcome.code, outcome.message)
    # 451 or 554 of our own, with the next hop's reply in the text (its 530 or 421 would
    # say something about our session with it, not the client's)
    code = 451 if outcome.temporary else 554
    return Reply(code, f"{status} next hop: {outcome.code} {outcome.message}"[:400])


def enhanced_status(code: int, text: str) -> str:
    """The enhanced status code (RFC 3463) a reply text starts with, else one for its code."""
    first = text.split(" ", 1)[0]
    parts = first.split(".")
    if len(parts) == 3 and all(p.isdigit() for p in parts) and first[0] == str(code)[0]:
        return first
    return "4.4.0" if 400 <= code < 500 else f"{str(code)[0]}.0.0"


@dataclass(frozen=True, slots=True)
class Result:
    """Every envelope recipient's reply, in envelope order."""

    replies: tuple[Reply, ...]

    @property
    def refused(self) -> list[int]:
        """Positions of the recipients refused for good."""
        return [i for i, r in enumerate(self.replies) if r.code >= 500]

    def smtp(self) -> Reply:
        """The one reply of an SMTP transaction: 451 while a copy may still be retried, 554
        when every copy was refused, else 250 (the refused ones then get a DSN)."""
        temporary = [r for r in self.replies if 400 <= r.code < 500]
        if temporary:
            return Reply(451, temporary[0].text)
        refused = self.refused
        if refused and len(refused) == len(self.replies):
            return self.replies[refused[0]]
        counts = [
            (sum(1 for r in self.replies if r == plain), label)
            for plain, label in (
                (RELAYED, "relayed"),
                (ALREADY, "already delivered"),
                (UNCERTAIN, "uncertain (reply lost, not resent)"),
                (DROPPED, "not relayed by policy"),
            )
        ]
        text = ", ".join(f"{n} {label}" for n, label in counts if n) or "nothing to relay"
        if refused:
            text += f", {len(refused)} refused (a delivery status notification follows)"
        return Reply(250, f"2.0.0 OK: {text}")
