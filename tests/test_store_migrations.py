"""A store an earlier optgate made migrates to the schema declared once
(suppression/sql/tables.py), keeping its rows."""

from __future__ import annotations

from suppression.address import normalize
from suppression.opening import open_store
from suppression.sql.tables import TABLES
from tests.support.backends import Backend
from tests.support.keys import AUDIT_KEY

# schema 2 as optgate's first releases wrote it (their migrations' text, verbatim)
_SCHEMA_2 = {
    "sqlite": (
        "DROP TABLE suppression",
        "DROP TABLE consent",
        "DROP TABLE audit",
        "DROP TABLE send",
        """CREATE TABLE suppression (key TEXT NOT NULL, scope TEXT NOT NULL, kind TEXT NOT NULL,
        address TEXT, reason TEXT NOT NULL, source TEXT NOT NULL, evidence TEXT,
        created TEXT NOT NULL, event INTEGER NOT NULL, PRIMARY KEY (key, scope)) WITHOUT ROWID""",
        """CREATE TABLE consent (id INTEGER PRIMARY KEY, sha256 TEXT NOT NULL,
        purpose TEXT NOT NULL, granted INTEGER NOT NULL, source TEXT NOT NULL,
        policy_version TEXT, address TEXT, evidence TEXT, created TEXT NOT NULL,
        event INTEGER NOT NULL)""",
        """CREATE TABLE audit (seq INTEGER PRIMARY KEY, at TEXT NOT NULL, actor TEXT NOT NULL,
        action TEXT NOT NULL, subject TEXT, body TEXT NOT NULL, prev TEXT NOT NULL,
        digest TEXT NOT NULL)""",
        """CREATE TABLE send (message TEXT NOT NULL, sha256 TEXT NOT NULL, topic TEXT NOT NULL,
        class TEXT NOT NULL, at TEXT NOT NULL, PRIMARY KEY (message, sha256)) WITHOUT ROWID""",
        "INSERT INTO suppression VALUES ('{key}', 'global', 'sha256', NULL, 'manual', 'cli', "
        "NULL, '2025-05-01T00:00:00.000000Z', 0)",
        "INSERT INTO send VALUES ('m1', '{key}', 'news', 'marketing', "
        "'2025-05-01T00:00:00.000000Z')",
        "PRAGMA user_version = 2",
    ),
    "postgresql": (
        "DROP TABLE suppression, consent, audit, send, soft_bounce, offer_copy, offer, partner, "
        "rate_window, held_request, esp_token, api_key, webhook, outbox",
        """CREATE TABLE suppression (key TEXT COLLATE "C" NOT NULL, scope TEXT COLLATE "C"
        NOT NULL, kind TEXT NOT NULL, address TEXT, reason TEXT NOT NULL, source TEXT NOT NULL,
        evidence TEXT, created TIMESTAMPTZ NOT NULL, event BIGINT NOT NULL,
        PRIMARY KEY (key, scope))""",
        """CREATE TABLE consent (id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        sha256 TEXT COLLATE "C" NOT NULL, purpose TEXT COLLATE "C" NOT NULL,
        granted BOOLEAN NOT NULL, source TEXT NOT NULL, policy_version TEXT, address TEXT,
        evidence TEXT, created TIMESTAMPTZ NOT NULL, event BIGINT NOT NULL)""",
        """CREATE TABLE audit (seq BIGINT PRIMARY KEY, at TIMESTAMPTZ NOT NULL,
        actor TEXT NOT NULL, action TEXT NOT NULL, subject TEXT COLLATE "C", body TEXT NOT NULL,
        prev TEXT NOT NULL, digest TEXT NOT NULL)""",
        """CREATE TABLE send (message TEXT COLLATE "C" NOT NULL, sha256 TEXT COLLATE "C"
        NOT NULL, topic TEXT NOT NULL, class TEXT NOT NULL, at TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (message, sha256))""",
        "INSERT INTO suppression VALUES ('{key}', 'global', 'sha256', NULL, 'manual', 'cli', "
        "NULL, '2025-05-01 00:00:00+00', 0)",
        "INSERT INTO send VALUES ('m1', '{key}', 'news', 'marketing', '2025-05-01 00:00:00+00')",
        "UPDATE schema_version SET version = 2",
    ),
}


async def test_a_store_of_schema_2_migrates_to_the_declared_tables(backend: Backend) -> None:
    await backend.store.close()
    dialect = "postgresql" if backend.url.startswith("postgresql") else "sqlite"
    address = normalize("old@example.com")
    for statement in _SCHEMA_2[dialect]:
        backend.raw_sql(statement.format(key=address.sha256))
    backend.store = await open_store(backend.url, audit_key=AUDIT_KEY)
    if dialect == "sqlite":
        names = [r[0] for r in backend.query("SELECT name FROM sqlite_master WHERE type='table'")]
        found = {n: [r[1] for r in backend.query(f'PRAGMA table_info("{n}")')] for n in names}
    else:
        found = {}
        for table, column in backend.query(
            "SELECT table_name, column_name FROM information_schema.columns WHERE "
            "table_schema = current_schema() AND table_name != 'schema_version' "
            "ORDER BY table_name, ordinal_position"
        ):
            found.setdefault(table, []).append(column)
    assert found == {t.name: t.names for t in TABLES}
    facts = await backend.store.lookup_many([address], ["global"], None)
    assert [s.reason for s in facts[address.sha256].suppressions] == ["manual"]
    assert backend.query("SELECT topic, campaign, state FROM send") == [("news", None, None)]
