"""Per-table digests of a store's content, as `store copy` computes them
(suppression/copying.py), without the columns that say when and by which event a row
was written: two stores holding the same records have the same digests."""

from __future__ import annotations

from suppression.copying import Digest, PostgresSide, Side, SQLiteSide
from suppression.sql.tables import TABLES

# the columns that point to the audit log, or number rows: they differ between stores
NOT_CONTENT = {"suppression": ("event",), "consent": ("id", "event")}


async def content_digests(url: str) -> dict[str, tuple[int, str]]:
    """(rows, digest) of the suppression and consent tables, in the tables' own order."""
    side: Side = await (
        SQLiteSide.open(url) if url.startswith("sqlite") else PostgresSide.open(url)
    )
    found = {}
    try:
        async with side.transaction(write=False):
            for table in TABLES:
                if table.name not in NOT_CONTENT:
                    continue
                keep = [
                    i for i, name in enumerate(table.names) if name not in NOT_CONTENT[table.name]
                ]
                digest = Digest()
                async for rows in side.read(table):
                    digest.add([tuple(row[i] for i in keep) for row in rows])
                found[table.name] = (digest.rows, digest.hexdigest())
    finally:
        await side.close()
    return found
