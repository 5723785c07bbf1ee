"""The send ledger's copy states (issue 14, exactly once): a row is written ``held``
before the final "." of a copy goes out, becomes delivered (NULL, as every row of an
earlier schema) on the next hop's 2xx, ``uncertain`` when its reply was lost, and is
removed when the next hop refused or deferred the copy (a retry sends it again)."""

from __future__ import annotations

from collections.abc import Sequence

from suppression.model import Send
from suppression.sql.driver import Row

HELD = "held"
UNCERTAIN = "uncertain"
# record_sends removes a row given in this state: the copy did not go out
UNSENT = "unsent"
# a lookup's "may have gone out" rows: held (killed before the reply) or uncertain
UNSETTLED = (HELD, UNCERTAIN)

SEND_UPSERT = (
    "INSERT INTO send (message, sha256, topic, class, at, campaign, state) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (message, sha256) DO UPDATE SET "
    "topic = excluded.topic, class = excluded.class, at = excluded.at, "
    "campaign = excluded.campaign, state = excluded.state"
)
SEND_FORGET = "DELETE FROM send WHERE message = $1 AND sha256 = $2"


def ledger_rows(sends: Sequence[Send]) -> tuple[list[Row], list[tuple[str, str]]]:
    """The rows SEND_UPSERT writes and the keys SEND_FORGET removes: one per (message,
    recipient), the last given wins."""
    latest = {(s.message, s.sha256): s for s in sends}
    kept: list[Row] = [
        (s.message, s.sha256, s.topic, s.kind, s.at, s.campaign, s.state)
        for s in latest.values()
        if s.state != UNSENT
    ]
    return kept, [key for key, s in latest.items() if s.state == UNSENT]
