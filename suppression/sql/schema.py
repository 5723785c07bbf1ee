"""Tables declared once: each makes the SQLite and the PostgreSQL DDL and the column kinds
``store copy`` converts by.

Kinds: ``text``; ``key`` (text compared byte by byte: PostgreSQL's "C" collation, as
SQLite does anyway); ``int``; ``bool`` (SQLite 0/1); ``time`` (SQLite ISO-8601 text in
UTC, PostgreSQL timestamptz); ``id`` (a generated integer primary key).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["text", "key", "int", "bool", "time", "id"]

_SQLITE: dict[Kind, str] = {
    "text": "TEXT",
    "key": "TEXT",
    "int": "INTEGER",
    "bool": "INTEGER",
    "time": "TEXT",
    "id": "INTEGER PRIMARY KEY",
}
_POSTGRES: dict[Kind, str] = {
    "text": "TEXT",
    "key": 'TEXT COLLATE "C"',
    "int": "BIGINT",
    "bool": "BOOLEAN",
    "time": "TIMESTAMPTZ",
    "id": "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
}


@dataclass(frozen=True, slots=True)
class Column:
    """One column: its name, kind and whether it may be NULL."""

    name: str
    kind: Kind
    null: bool = False


@dataclass(frozen=True, slots=True)
class Table:
    """One table: columns, primary key (unless a column is an ``id``), indexes."""

    name: str
    columns: tuple[Column, ...]
    primary: tuple[str, ...] = ()
    indexes: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @property
    def identity(self) -> str | None:
        """The generated id column, if there is one."""
        return next((c.name for c in self.columns if c.kind == "id"), None)

    def ddl(self, dialect: Literal["sqlite", "postgresql"]) -> str:
        """CREATE TABLE and CREATE INDEX statements, each IF NOT EXISTS (a migration run
        again changes nothing)."""
        types = _SQLITE if dialect == "sqlite" else _POSTGRES
        lines = [
            f"{c.name} {types[c.kind]}{'' if c.null or c.kind == 'id' else ' NOT NULL'}"
            for c in self.columns
        ]
        if self.primary:
            lines.append(f"PRIMARY KEY ({', '.join(self.primary)})")
        rowid = " WITHOUT ROWID" if dialect == "sqlite" and self.primary else ""
        body = ",\n    ".join(lines)
        statements = [f"CREATE TABLE IF NOT EXISTS {self.name} (\n    {body}\n){rowid};"]
        statements += [
            f"CREATE INDEX IF NOT EXISTS {name} ON {self.name} ({', '.join(columns)});"
            for name, columns in self.indexes
        ]
        return "\n".join(statements)


@dataclass(frozen=True, slots=True)
class AddColumn:
    """A column added to a table of an earlier schema (idempotent: a store already holding
    it is left as it is)."""

    table: str
    column: Column

    def ddl(self, dialect: Literal["sqlite", "postgresql"]) -> str:
        """ALTER TABLE (SQLite has no IF NOT EXISTS here: its store checks first)."""
        types = _SQLITE if dialect == "sqlite" else _POSTGRES
        guard = " IF NOT EXISTS" if dialect == "postgresql" else ""
        null = "" if self.column.null else " NOT NULL"
        return (
            f"ALTER TABLE {self.table} ADD COLUMN{guard} "
            f"{self.column.name} {types[self.column.kind]}{null}"
        )
