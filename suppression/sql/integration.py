"""The store's integration tables, written once for both backends: API keys, webhook
endpoints and their outbox, the send ledger's campaign, and the listings and reports
the REST API reads.

``Integration`` implements each operation once over the driver interface
(suppression/sql/driver.py).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TypeVar

from suppression.apikeys import ApiKey
from suppression.errors import OptgateError
from suppression.model import Consent, Suppression
from suppression.outbox import (
    SUBJECT_ERASED,
    Delivery,
    Event,
    PendingState,
    Webhook,
    events_of,
)
from suppression.rates import COUNTED, Counts, tally
from suppression.rows import (
    CONSENT_COLUMNS,
    PAGE,
    SUPPRESSION_COLUMNS,
    Time,
    to_consent,
    to_suppression,
)
from suppression.sql.driver import Driver, Row, Sql, Transaction

T = TypeVar("T")

KEY_COLUMNS = "id, name, scopes, salt, digest, created, revoked"
HOOK_COLUMNS = (
    "name, url, events, include_address, secret, previous_secret, previous_until, created"
)
DELIVERY_COLUMNS = (
    "id, webhook, uid, type, data, address, created, state, attempts, due, status, done"
)

INSERT_OUTBOX = (
    "INSERT INTO outbox (webhook, uid, type, key, data, address, created, state, attempts, due) "
    f"VALUES ($1, $2, $3, $4, $5, $6, $7, '{PendingState.PENDING}', 0, $7)"
)
ERASE_OUTBOX = "UPDATE outbox SET address = NULL WHERE key IN ($1, $2) AND address IS NOT NULL"
_CLAIM = (
    "UPDATE outbox SET owner = $1, due = $2 WHERE id IN (SELECT id FROM outbox "
    f"WHERE state = '{PendingState.PENDING}' AND due <= $3 ORDER BY id LIMIT $4 {{lock}}) "
    f"AND state = '{PendingState.PENDING}' AND due <= $3 RETURNING {DELIVERY_COLUMNS}"
)
_SENT_BY = (
    "SELECT topic, campaign, count(*) FROM send WHERE at >= $1 AND class <> 'transactional' "
    "GROUP BY topic, campaign"
)
# each opt-out since then, with the topic and campaign of the last marketing copy its
# recipient got before it (in the opt-out's scope)
_OPTED_BY = (
    "SELECT d.topic, d.campaign, s.reason, count(*) FROM suppression s "
    "JOIN send d ON d.sha256 = s.key AND d.message = (SELECT x.message FROM send x "
    "WHERE x.sha256 = s.key AND x.at <= s.created AND x.class <> 'transactional' "
    "AND (s.scope = 'global' OR s.scope = 'topic:' || x.topic) ORDER BY x.at DESC LIMIT 1) "
    "WHERE s.created >= $1 AND s.kind = 'sha256' "
    f"AND s.reason IN ({', '.join(repr(r) for r in COUNTED)}) "
    "GROUP BY d.topic, d.campaign, s.reason"
)


@dataclass(frozen=True, slots=True)
class SuppressionFilter:
    """What a suppression listing asks for; ``after`` is the last (stored key, scope) seen."""

    scope: str | None = None
    reason: str | None = None
    source: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    after: tuple[str, str] | None = None


def encode_cursor(stored_key: str, scope: str) -> str:
    """An opaque cursor for the row after which a listing goes on."""
    return base64.urlsafe_b64encode(f"{stored_key}\n{scope}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[str, str]:
    """The (stored key, scope) of a cursor; OptgateError when it is not one."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except ValueError:
        raise OptgateError("cursor is not one a listing gave") from None
    key, sep, scope = text.partition("\n")
    if not sep or not key or not scope:
        raise OptgateError("cursor is not one a listing gave")
    return key, scope


def listing(f: SuppressionFilter, limit: int) -> tuple[str, list[object]]:
    """The listing's statement and arguments: key order (the primary key), so each page
    goes on where the last stopped and a whole listing reads the table once."""
    where: list[str] = []
    args: list[object] = []

    def where_(condition: str, value: object) -> None:
        args.append(value)
        where.append(condition.replace("?", f"${len(args)}"))

    if f.after is not None:
        where_("key >= ?", f.after[0])
        args.append(f.after[1])
        where.append(f"(key > ${len(args) - 1} OR scope > ${len(args)})")
    for column in ("scope", "reason", "source"):
        value = getattr(f, column)
        if value is not None:
            where_(f"{column} = ?", value)
    if f.since is not None:
        where_("created >= ?", f.since)
    if f.until is not None:
        where_("created < ?", f.until)
    args.append(limit)
    condition = f"WHERE {' AND '.join(where)} " if where else ""
    statement = (
        f"SELECT {SUPPRESSION_COLUMNS} FROM suppression {condition}"
        f"ORDER BY key, scope LIMIT ${len(args)}"
    )
    return statement, args


def _key(row: Row, sql: Sql) -> ApiKey:
    key_id, name, scopes, salt, digest, created, revoked = row
    return ApiKey(
        key_id,
        name,
        tuple(scopes.split(",")),
        salt,
        digest,
        sql.time(created),
        sql.time(revoked) if revoked is not None else None,
    )


def _hook(row: Row, sql: Sql) -> Webhook:
    name, url, events, include, secret, previous, until, created = row
    return Webhook(
        name,
        url,
        tuple(e for e in events.split(",") if e),
        None if include is None else bool(include),
        secret,
        sql.time(created),
        previous,
        sql.time(until) if until is not None else None,
    )


def delivery(row: Row, sql: Sql) -> Delivery:
    ident, hook, uid, kind, data, address, created, state, attempts, due, status, done = row
    return Delivery(
        int(ident),
        hook,
        uid,
        kind,
        data,
        address,
        sql.time(created),
        state,
        int(attempts),
        sql.time(due),
        status,
        sql.time(done) if done is not None else None,
    )


def outbox_rows(
    events: Sequence[Event], hooks: Sequence[Row], ref: str, at: datetime, first: int = 0
) -> list[tuple[object, ...]]:
    """One outbox row per event and endpoint that wants its type; ``ref`` (the audit
    event's digest) and the event's place in the change (from ``first``) make the event
    ids stable and unique."""
    wanted = [(name, events_text) for name, events_text in hooks]
    rows: list[tuple[object, ...]] = []
    for index, event in enumerate(events, start=first):
        data = json.dumps(event.data, separators=(",", ":"), sort_keys=True)
        uid = f"evt_{ref[:24]}_{index}"
        for name, types in wanted:
            if f",{event.type}," in types:
                rows.append((name, uid, event.type, event.key, data, event.address, at))
    return rows


ACTIONS_WITH_EVENTS = frozenset({"suppress", "unsuppress", "consent", "erase"})
_ADDED_BY: dict[str, tuple[str, str, Callable[[Row, Time], Suppression | Consent]]] = {
    "suppress": ("suppression", SUPPRESSION_COLUMNS, to_suppression),
    "consent": ("consent", CONSENT_COLUMNS, to_consent),
}


async def _addressed(sql: Sql, events: list[Event]) -> list[Event]:
    """Events of a change that named its subject by hash alone (a one-click, a bounce by
    token) with the address the store keeps for that hash, if it keeps one: an endpoint
    that includes addresses gets it (erasure clears it from the outbox as elsewhere)."""
    keys = sorted({e.key for e in events if e.address is None and e.type != SUBJECT_ERASED})
    if not keys:
        return events
    marks = ", ".join(f"${n}" for n in range(1, len(keys) + 1))
    rows = await sql.fetch(
        f"SELECT sha256, address FROM consent WHERE sha256 IN ({marks}) AND address IS NOT NULL "
        f"UNION ALL SELECT key, address FROM suppression WHERE key IN ({marks}) "
        "AND kind = 'sha256' AND address IS NOT NULL",
        *keys,
    )
    known = {str(key): str(address) for key, address in rows}
    return [
        replace(e, address=known[e.key]) if e.address is None and e.key in known else e
        for e in events
    ]


async def _append_page(
    sql: Sql,
    action: str,
    actor: str,
    page: Sequence[Suppression | Consent],
    hooks: Sequence[Row],
    ref: str,
    at: datetime,
    first: int,
) -> None:
    events = await _addressed(sql, events_of(action, None, actor, page))
    rows = outbox_rows(events, hooks, ref, at, first)
    if rows:
        await sql.executemany(INSERT_OUTBOX, rows)


class Integration(Driver):
    """The integration operations, once for both stores."""

    @staticmethod
    async def _append_events(
        sql: Sql,
        *,
        seq: int,
        ref: str,
        at: datetime,
        actor: str,
        action: str,
        subject: str | None,
        detail: Mapping[str, object],
        changed: Sequence[Suppression | Consent],
    ) -> None:
        """The webhook events of an audited change, in its transaction (none without an
        endpoint that wants them). Called by each store's audit append with the rows the
        change added or removed; an import run, which adds its rows in one statement,
        passes none, and its event's rows are read back from the table, a page at a time."""
        if action not in ACTIONS_WITH_EVENTS:
            return
        hooks = await sql.fetch("SELECT name, events FROM webhook")
        if not hooks:
            return
        if changed or action not in _ADDED_BY or "rows" not in detail:
            events = await _addressed(sql, events_of(action, subject, actor, changed))
            rows = outbox_rows(events, hooks, ref, at)
            if rows:
                await sql.executemany(INSERT_OUTBOX, rows)
            return
        table, columns, convert = _ADDED_BY[action]
        page: list[Suppression | Consent] = []
        offset = 0
        async for row in sql.stream(f"SELECT {columns} FROM {table} WHERE event = $1", seq):
            page.append(convert(row, sql.time))
            if len(page) == PAGE:
                await _append_page(sql, action, actor, page, hooks, ref, at, offset)
                offset, page = offset + len(page), []
        await _append_page(sql, action, actor, page, hooks, ref, at, offset)

    # --- API keys ---------------------------------------------------------------------

    async def add_api_key(self, key: ApiKey, *, actor: str) -> None:
        """Store a key (its digest); a name in use by a key not revoked is an error."""

        async def work(tx: Transaction) -> None:
            if await tx.fetch(
                "SELECT 1 FROM api_key WHERE name = $1 AND revoked IS NULL", key.name
            ):
                raise OptgateError(
                    f"API key {key.name!r} exists already: revoke it first, or choose another name"
                )
            await tx.execute(
                f"INSERT INTO api_key ({KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, NULL)",
                key.id,
                key.name,
                ",".join(key.scopes),
                key.salt,
                key.digest,
                key.created,
            )
            detail = {"name": key.name, "id": key.id, "scopes": list(key.scopes)}
            await tx.audit(actor, "api-key-add", None, detail)

        await self._sql_write(work)

    async def api_keys(self) -> list[ApiKey]:
        """Every key, revoked ones too, by name."""

        async def work(sql: Sql) -> list[ApiKey]:
            rows = await sql.fetch(f"SELECT {KEY_COLUMNS} FROM api_key ORDER BY name, created")
            return [_key(row, sql) for row in rows]

        return await self._sql_read(work)

    async def api_key(self, key_id: str) -> ApiKey | None:
        """One key by its id, or None."""

        async def work(sql: Sql) -> ApiKey | None:
            rows = await sql.fetch(f"SELECT {KEY_COLUMNS} FROM api_key WHERE id = $1", key_id)
            return _key(rows[0], sql) if rows else None

        return await self._sql_read(work)

    async def revoke_api_key(self, name: str, at: datetime, *, actor: str) -> bool:
        """Revoke the live key of that name; False if there is none."""

        async def work(tx: Transaction) -> bool:
            changed = await tx.execute(
                "UPDATE api_key SET revoked = $1 WHERE name = $2 AND revoked IS NULL", at, name
            )
            if changed:
                await tx.audit(actor, "api-key-revoke", None, {"name": name})
            return bool(changed)

        return await self._sql_write(work)

    # --- webhook endpoints ------------------------------------------------------------

    async def add_webhook(self, hook: Webhook, *, actor: str) -> None:
        """Register an endpoint; a name in use is an error."""

        async def work(tx: Transaction) -> None:
            added = await tx.execute(
                f"INSERT INTO webhook ({HOOK_COLUMNS}) VALUES ($1, $2, $3, $4, $5, NULL, NULL, $6) "
                "ON CONFLICT DO NOTHING",
                hook.name,
                hook.url,
                f",{','.join(hook.events)},",
                hook.include_address,
                hook.secret,
                hook.created,
            )
            if not added:
                raise OptgateError(f"webhook {hook.name!r} exists already")
            detail = {"name": hook.name, "events": list(hook.events)}
            await tx.audit(actor, "webhook-add", None, detail)

        await self._sql_write(work)

    async def webhooks(self) -> list[Webhook]:
        """Every endpoint, by name."""

        async def work(sql: Sql) -> list[Webhook]:
            rows = await sql.fetch(f"SELECT {HOOK_COLUMNS} FROM webhook ORDER BY name")
            return [_hook(row, sql) for row in rows]

        return await self._sql_read(work)

    async def remove_webhook(self, name: str, *, actor: str) -> bool:
        """Remove an endpoint and its deliveries; False if there is none of that name."""

        async def work(tx: Transaction) -> bool:
            if not await tx.execute("DELETE FROM webhook WHERE name = $1", name):
                return False
            await tx.execute("DELETE FROM outbox WHERE webhook = $1", name)
            await tx.audit(actor, "webhook-remove", None, {"name": name})
            return True

        return await self._sql_write(work)

    async def rotate_webhook(self, name: str, secret: str, until: datetime, *, actor: str) -> bool:
        """Sign with a new secret; the current one stays valid until ``until``."""

        async def work(tx: Transaction) -> bool:
            changed = await tx.execute(
                "UPDATE webhook SET previous_secret = secret, previous_until = $1, secret = $2 "
                "WHERE name = $3",
                until,
                secret,
                name,
            )
            if changed:
                await tx.audit(actor, "webhook-rotate", None, {"name": name})
            return bool(changed)

        return await self._sql_write(work)

    # --- deliveries -------------------------------------------------------------------

    async def deliveries_due(self, at: datetime) -> bool:
        """Whether any delivery is due (a read: an idle outbox takes no write lock)."""

        async def work(sql: Sql) -> bool:
            rows = await sql.fetch(
                f"SELECT 1 FROM outbox WHERE state = '{PendingState.PENDING}' AND due <= $1 "
                "LIMIT 1",
                at,
            )
            return bool(rows)

        return await self._sql_read(work)

    async def claim_deliveries(
        self, owner: str, limit: int, *, at: datetime, until: datetime
    ) -> list[Delivery]:
        """Lease due deliveries until ``until`` (never one another node's live lease
        holds: PostgreSQL skips rows another transaction locked)."""

        async def work(tx: Transaction) -> list[Delivery]:
            rows = await tx.fetch(_CLAIM.format(lock=tx.lock), owner, until, at, limit)
            return sorted((delivery(row, tx) for row in rows), key=lambda d: d.id)

        return await self._sql_write(work)

    async def delivered(self, owner: str, delivery: int, status: str, at: datetime) -> bool:
        """Mark this owner's delivery done (its address is dropped); False if it is not
        this owner's any more (its lease ran out and another node took it)."""

        async def work(tx: Transaction) -> bool:
            changed = await tx.execute(
                f"UPDATE outbox SET state = '{PendingState.DELIVERED}', done = $1, "
                "address = NULL, status = $2, attempts = attempts + 1, owner = NULL "
                f"WHERE id = $3 AND owner = $4 AND state = '{PendingState.PENDING}'",
                at,
                status,
                delivery,
                owner,
            )
            return bool(changed)

        return await self._sql_write(work)

    async def undelivered(
        self, owner: str, delivery: int, status: str, due: datetime | None
    ) -> bool:
        """Record a failed attempt: due again at ``due``, or dead (None)."""
        state = PendingState.PENDING if due is not None else PendingState.DEAD

        async def work(tx: Transaction) -> bool:
            changed = await tx.execute(
                "UPDATE outbox SET attempts = attempts + 1, status = $1, due = COALESCE($2, due), "
                f"state = $3, owner = NULL WHERE id = $4 AND owner = $5 "
                f"AND state = '{PendingState.PENDING}'",
                status,
                due,
                state,
                delivery,
                owner,
            )
            return bool(changed)

        return await self._sql_write(work)

    async def deliveries(self, state: str | None, limit: int) -> list[Delivery]:
        """The latest deliveries (of one state, or all), newest first."""

        async def work(sql: Sql) -> list[Delivery]:
            where, args = ("WHERE state = $1 ", [state]) if state else ("", [])
            rows = await sql.fetch(
                f"SELECT {DELIVERY_COLUMNS} FROM outbox {where}ORDER BY id DESC "
                f"LIMIT ${len(args) + 1}",
                *args,
                limit,
            )
            return [delivery(row, sql) for row in rows]

        return await self._sql_read(work)

    async def outbox_counts(self) -> dict[str, int]:
        """Deliveries per state."""

        async def work(sql: Sql) -> dict[str, int]:
            rows = await sql.fetch("SELECT state, count(*) FROM outbox GROUP BY state")
            return {str(state): int(count) for state, count in rows}

        return await self._sql_read(work)

    async def retry_deliveries(self, ids: Sequence[int] | None, at: datetime, *, actor: str) -> int:
        """Make dead deliveries due again (those ids, or all); how many."""

        async def work(tx: Transaction) -> int:
            dead = f"state = '{PendingState.DEAD}'"
            statement = (
                f"UPDATE outbox SET state = '{PendingState.PENDING}', due = $1, attempts = 0, "
                f"owner = NULL, status = NULL WHERE {dead}"
            )
            if ids is None:
                changed = await tx.execute(statement, at)
            else:
                changed = 0
                for ident in ids:
                    changed += await tx.execute(f"{statement} AND id = $2", at, ident)
            if changed:
                await tx.audit(actor, "webhook-retry", None, {"deliveries": changed})
            return changed

        return await self._sql_write(work)

    async def prune_deliveries(self, before: datetime) -> int:
        """Forget deliveries done before a time; how many."""

        async def work(tx: Transaction) -> int:
            return await tx.execute(
                f"DELETE FROM outbox WHERE state = '{PendingState.DELIVERED}' AND done < $1",
                before,
            )

        return await self._sql_write(work)

    # --- the REST API's reads ---------------------------------------------------------

    async def list_suppressions(self, f: SuppressionFilter, limit: int) -> list[Suppression]:
        """One page of suppressions in key order, after ``f.after``."""
        statement, args = listing(f, limit)

        async def work(sql: Sql) -> list[Suppression]:
            return [to_suppression(row, sql.time) for row in await sql.fetch(statement, *args)]

        return await self._sql_read(work)

    async def rates(self, since: datetime) -> list[Counts]:
        """Sends and the opt-outs after them per topic and campaign, since a time."""

        async def work(sql: Sql) -> list[Counts]:
            sent = [(str(t), c, int(n)) for t, c, n in await sql.fetch(_SENT_BY, since)]
            opted = [
                (str(t), c, str(r), int(n)) for t, c, r, n in await sql.fetch(_OPTED_BY, since)
            ]
            return tally(sent, opted)

        return await self._sql_read(work)


def stored_cursor_of(record: Suppression) -> str:
    """The cursor after a listed suppression."""
    prefix = {"sha256": "", "md5": "#", "domain": "@"}[record.kind]
    return encode_cursor(prefix + record.key, record.scope)
