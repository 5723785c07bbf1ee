"""The send ledger's copy states (issue 14, exactly once): a row is written ``held``
before the final "." of a copy goes out, becomes delivered (NULL, as every row of an
earlier schema) on the next hop's 2xx, ``uncertain`` when its reply was lost, and is
removed when the next hop refused or deferred the copy (a retry sends it again)."""

from __future__ import annotations

from suppression.sql.schema import AddColumn, Column

SEND_STATE = AddColumn("send", Column("state", "text", null=True))

HELD = "held"
UNCERTAIN = "uncertain"
# record_sends removes a row given in this state: the copy did not go out
UNSENT = "unsent"
# a lookup's "may have gone out" rows: held (killed before the reply) or uncertain
UNSETTLED = (HELD, UNCERTAIN)
