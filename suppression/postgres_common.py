"""What the PostgreSQL store (suppression/postgres.py) and its import runs
(postgres_imports.py) share: the advisory lock keys, the errors that are the server's
or the connection's, and a command's row count."""

from __future__ import annotations

import asyncpg

# advisory lock keys (any constants, unique to optgate): one serialises schema
# migrations of nodes starting at once, one every append to the audit chain
MIGRATE_LOCK = 0x6F707467_00000001
AUDIT_LOCK = 0x6F707467_00000002

FAILURES = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


def row_count(status: str) -> int:
    """Rows a command changed, from its status ("INSERT 0 5", "DELETE 2")."""
    return int(status.rsplit(" ", 1)[-1])
