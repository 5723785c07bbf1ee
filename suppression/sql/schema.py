"""Tables declared once: each makes the SQLite and the PostgreSQL DDL, the column kinds
``store copy`` converts by and the array types of PostgreSQL's bulk inserts.

Kinds: ``text``; ``key`` (text compared byte by byte: PostgreSQL's "C" collation, as
SQLite does anyway); ``int`` (64 bits); ``small`` (32 bits); ``bool`` (SQLite 0/1);
``time`` (SQLite ISO-8601 text in UTC, PostgreSQL timestamptz); ``bytes``; ``id`` (a
generated integer primary key).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["text", "key", "int", "small", "bool", "time", "bytes", "id"]
Dialect = Literal["sqlite", "postgresql"]

_SQLITE: dict[Kind, str] = {
    "text": "TEXT",
    "key": "TEXT",
    "int": "INTEGER",
    "small": "INTEGER",
    "bool": "INTEGER",
    "time": "TEXT",
    "bytes": "BLOB",
    "id": "INTEGER PRIMARY KEY",
}
_POSTGRES: dict[Kind, str] = {
    "text": "TEXT",
    "key": 'TEXT COLLATE "C"',
    "int": "BIGINT",
    "small": "INTEGER",
    "bool": "BOOLEAN",
    "time": "TIMESTAMPTZ",
    "bytes": "BYTEA",
    "id": "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
}
# a column's type in a PostgreSQL array parameter (unnest)
ARRAY: dict[Kind, str] = {
    "text": "text",
    "key": "text",
    "int": "bigint",
    "small": "integer",
    "bool": "boolean",
    "time": "timestamptz",
    "bytes": "bytea",
    "id": "bigint",
}


@dataclass(frozen=True, slots=True)
class Column:
    """One column: its name, kind, whether it may be NULL, the key it refers to."""

    name: str
    kind: Kind
    null: bool = False
    references: str | None = None  # "table (column)"
    default: bool | None = None  # (of a bool column)

    def ddl(self, dialect: Dialect) -> str:
        """The column's definition."""
        types = _SQLITE if dialect == "sqlite" else _POSTGRES
        null = "" if self.null or self.kind == "id" else " NOT NULL"
        refers = f" REFERENCES {self.references}" if self.references else ""
        if self.default is not None:
            value = str(self.default).lower() if dialect == "postgresql" else int(self.default)
            refers = f" DEFAULT {value}{refers}"
        return f"{self.name} {types[self.kind]}{null}{refers}"


@dataclass(frozen=True, slots=True)
class Table:
    """One table: columns, primary key (unless a column is an ``id``), indexes. SQLite
    keeps a table with a primary key WITHOUT ROWID unless ``rowid``."""

    name: str
    columns: tuple[Column, ...]
    primary: tuple[str, ...] = ()
    indexes: tuple[tuple[str, tuple[str, ...]], ...] = ()
    rowid: bool = False

    @property
    def identity(self) -> str | None:
        """The generated id column, if there is one."""
        return next((c.name for c in self.columns if c.kind == "id"), None)

    @property
    def names(self) -> list[str]:
        """The column names, in order."""
        return [c.name for c in self.columns]

    @property
    def order(self) -> str:
        """A total order (the primary key, or the id), the same under both collations."""
        return ", ".join(self.primary) if self.primary else str(self.identity)

    def column(self, name: str) -> Column:
        """The column of that name."""
        return next(c for c in self.columns if c.name == name)

    def ddl(self, dialect: Dialect) -> str:
        """CREATE TABLE and CREATE INDEX statements, each IF NOT EXISTS (a migration run
        again changes nothing)."""
        lines = [c.ddl(dialect) for c in self.columns]
        if self.primary:
            lines.append(f"PRIMARY KEY ({', '.join(self.primary)})")
        plain = dialect == "postgresql" or not self.primary or self.rowid
        body = ",\n    ".join(lines)
        rowid = "" if plain else " WITHOUT ROWID"
        statements = [f"CREATE TABLE IF NOT EXISTS {self.name} (\n    {body}\n){rowid};"]
        statements += [
            f"CREATE INDEX IF NOT EXISTS {name} ON {self.name} ({', '.join(columns)});"
            for name, columns in self.indexes
        ]
        return "\n".join(statements)


@dataclass(frozen=True, slots=True)
class Create:
    """A migration that makes tables."""

    tables: tuple[Table, ...]

    def ddl(self, dialect: Dialect) -> str:
        """Their DDL."""
        return "\n".join(table.ddl(dialect) for table in self.tables)


@dataclass(frozen=True, slots=True)
class AddColumn:
    """A column added to a table of an earlier schema (idempotent: a store already holding
    it is left as it is)."""

    table: str
    column: Column

    def ddl(self, dialect: Dialect) -> str:
        """ALTER TABLE (SQLite has no IF NOT EXISTS here: its store checks first)."""
        guard = " IF NOT EXISTS" if dialect == "postgresql" else ""
        return f"ALTER TABLE {self.table} ADD COLUMN{guard} {self.column.ddl(dialect)}"


@dataclass(frozen=True, slots=True)
class Rekey:
    """The migration that keys the audit chain (suppression/sql/audit.py: rekey)."""


Migration = Create | AddColumn | Rekey
