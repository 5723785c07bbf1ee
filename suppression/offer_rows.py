"""What the SQLite and PostgreSQL stores share for partners and offers: SQL and row conversion.

Statements use ``$n`` placeholders (suppression/sql/driver.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from suppression.errors import OptgateError
from suppression.model import PARTNER_OFFERS
from suppression.partners import TRANSITIONS, Offer, OfferState, OfferStatus, Partner

PARTNER_COLUMNS = "name, credential, disabled, rate_per_hour, max_size, created"
OFFER_COLUMNS = "id, partner, topic, content, state, created"

# counts per offer; the subquery: copies sent whose recipient later opted out of the partner
_STATUS = """
SELECT o.id, o.partner, o.topic, o.state, o.created,
    count(c.sha256),
    sum(CASE WHEN c.state = 'sent' THEN 1 ELSE 0 END),
    sum(CASE WHEN c.state = 'suppressed' THEN 1 ELSE 0 END),
    sum(CASE WHEN c.state = 'failed' THEN 1 ELSE 0 END),
    sum(CASE WHEN c.state IN ('todo', 'claimed') THEN 1 ELSE 0 END),
    (SELECT count(*) FROM offer_copy x JOIN suppression s ON s.key = x.sha256
        AND s.scope = 'partner:' || o.partner AND s.reason = 'unsubscribed'
        AND s.created >= o.created
     WHERE x.offer = o.id AND x.state = 'sent')
FROM offer o LEFT JOIN offer_copy c ON c.offer = o.id
"""

FINISH_SQL = (
    "UPDATE offer SET state = $1 WHERE state = 'running' AND NOT EXISTS "
    "(SELECT 1 FROM offer_copy c WHERE c.offer = offer.id AND c.state IN ('todo', 'claimed'))"
)

# opt-outs a person made from this partner's offers (not imported lists, not bounces)
OPTOUTS_SQL = """
SELECT s.key, COALESCE(s.address, (SELECT c.address FROM consent c
    WHERE c.sha256 = s.key AND c.address IS NOT NULL ORDER BY c.id DESC LIMIT 1))
FROM suppression s WHERE s.scope = $1 AND s.kind = 'sha256' AND s.reason = 'unsubscribed'
ORDER BY s.key
"""


def status_sql(where: str) -> str:
    """The counts query, filtered by ``where`` (may be empty)."""
    return f"{_STATUS} {where} GROUP BY o.id ORDER BY o.id"


def _granted(purpose: str) -> str:
    return (
        "SELECT sha256 FROM (SELECT sha256, granted, row_number() OVER "
        "(PARTITION BY sha256 ORDER BY created DESC, id DESC) AS n "
        f"FROM consent WHERE purpose = {purpose}) latest WHERE n = 1 AND granted"
    )


def audience_sql(topic: bool) -> str:
    """Insert offer $1's copies, leased until $2 (never): everyone whose latest
    partner-offers consent is a grant (and, with a topic, whose latest consent for topic
    $3 is a grant too)."""
    audience = _granted(f"'{PARTNER_OFFERS}'")
    if topic:
        audience += f" INTERSECT {_granted('$3::text')}"
    return (
        "INSERT INTO offer_copy (offer, sha256, state, owner, until) "
        f"SELECT $1::bigint, sha256, 'todo', NULL, $2::timestamptz FROM ({audience}) audience"
    )


def check_transition(offer_id: int, state: str | None, action: str) -> None:
    """Refuse moves the offer's current state does not allow."""
    if state is None:
        raise OptgateError(f"no offer {offer_id}")
    allowed, _ = TRANSITIONS[action]
    if state not in allowed:
        raise OptgateError(f"offer {offer_id} is {state}: it cannot be {action}d")


Parse = Callable[[Any], datetime]


def _same(value: Any) -> datetime:
    assert isinstance(value, datetime)
    return value


def to_partner(row: Sequence[Any], parse: Parse = _same) -> Partner:
    """A partner row."""
    name, credential, disabled, rate, size, created = row
    return Partner(name, credential, bool(disabled), parse(created), rate, size)


def to_offer(row: Sequence[Any], parse: Parse = _same) -> Offer:
    """An offer row."""
    offer_id, partner, topic, content, state, created = row
    return Offer(offer_id, partner, topic, bytes(content), OfferState(state), parse(created))


def offer_status(row: Sequence[Any], parse: Parse = _same) -> OfferStatus:
    """A row of the counts query."""
    offer_id, partner, topic, state, created, *counts = row
    audience, sent, suppressed, failed, pending, unsubscribed = (int(n or 0) for n in counts)
    return OfferStatus(
        offer_id,
        partner,
        topic,
        OfferState(state),
        parse(created),
        audience,
        sent,
        suppressed,
        failed,
        pending,
        unsubscribed,
    )
