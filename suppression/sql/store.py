"""The store written once: every operation over the driver hooks a backend provides
(suppression/sqlite.py, suppression/postgres.py)."""

from __future__ import annotations

from collections.abc import Sequence

from suppression.sql.consents import Consents
from suppression.sql.held import Held
from suppression.sql.inbound import Inbound
from suppression.sql.integration import Integration
from suppression.sql.partners import Partners
from suppression.sql.suppressions import Suppressions
from suppression.statecheck import ChainReport, verify


class SqlStore(Suppressions, Consents, Inbound, Held, Partners, Integration):
    """The shared operations; a backend adds connections, transactions, the hot-path
    lookup, the send ledger's writes, the rate counters and the commit point."""

    _key: bytes  # the audit chain's key

    async def verify_chain(self, expect: Sequence[tuple[int, str]] = ()) -> ChainReport:
        """Walk the audit log and rebuild the state it vouches for (statecheck.verify)."""
        return await verify(self, self._key, expect)
