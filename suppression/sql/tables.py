"""The store's schema, declared once: every table (in the order ``store copy`` fills
them: a table before those that refer to it) and the migrations that bring a store of
any earlier version to it. Each entry of MIGRATIONS is one schema version."""

from __future__ import annotations

from suppression.sql.schema import AddColumn, Column, Create, Migration, Rekey, Table

SUPPRESSION = Table(
    "suppression",
    (
        Column("key", "key"),
        Column("scope", "key"),
        Column("kind", "text"),
        Column("address", "text", null=True),
        Column("reason", "text"),
        Column("source", "text"),
        Column("evidence", "text", null=True),
        Column("created", "time"),
        Column("event", "int"),
    ),
    primary=("key", "scope"),
)
CONSENT = Table(
    "consent",
    (
        Column("id", "id"),
        Column("sha256", "key"),
        Column("purpose", "key"),
        Column("granted", "bool"),
        Column("source", "text"),
        Column("policy_version", "text", null=True),
        Column("address", "text", null=True),
        Column("evidence", "text", null=True),
        Column("created", "time"),
        Column("event", "int"),
    ),
    indexes=(("consent_by_subject", ("sha256", "purpose", "id")),),
)
AUDIT = Table(
    "audit",
    (
        Column("seq", "int"),
        Column("at", "time"),
        Column("actor", "text"),
        Column("action", "text"),
        Column("subject", "key", null=True),
        Column("body", "text"),
        Column("prev", "text"),
        Column("digest", "text"),
    ),
    primary=("seq",),
    indexes=(("audit_by_subject", ("subject",)),),
    rowid=True,
)
# the send ledger's Feedback-ID campaign (X-Optgate-Campaign), for the rates report
SEND_CAMPAIGN = Column("campaign", "text", null=True)
# the copy's state (suppression/sql/ledger.py); NULL: delivered
SEND_STATE = Column("state", "text", null=True)
SEND = Table(
    "send",
    (
        Column("message", "key"),
        Column("sha256", "key"),
        Column("topic", "text"),
        Column("class", "text"),
        Column("at", "time"),
        SEND_CAMPAIGN,
        SEND_STATE,
    ),
    primary=("message", "sha256"),
    indexes=(("send_by_subject", ("sha256", "at")),),
)
# inbound: one row per soft bounce, keyed by the reporting message's digest
SOFT_BOUNCE = Table(
    "soft_bounce",
    (Column("sha256", "key"), Column("message", "key"), Column("at", "time")),
    primary=("sha256", "message"),
)
PARTNER = Table(
    "partner",
    (
        Column("name", "key"),
        Column("credential", "text"),
        Column("disabled", "bool", default=False),
        Column("rate_per_hour", "small", null=True),
        Column("max_size", "small", null=True),
        Column("created", "time"),
    ),
    primary=("name",),
    rowid=True,
)
OFFER = Table(
    "offer",
    (
        Column("id", "id"),
        Column("partner", "key", references="partner (name)"),
        Column("topic", "text", null=True),
        Column("content", "bytes"),
        Column("state", "text"),
        Column("created", "time"),
    ),
    indexes=(("offer_by_partner", ("partner", "created")),),
)
OFFER_COPY = Table(
    "offer_copy",
    (
        Column("offer", "int", references="offer (id)"),
        Column("sha256", "key"),
        Column("state", "text"),
        Column("owner", "text", null=True),
        Column("until", "time"),
    ),
    primary=("offer", "sha256"),
    indexes=(("offer_copy_open", ("state", "until")),),
)
# opt-outs by mail: per-source counters (one fixed window each) and the requests held
# until the address confirms them by a mailed link
RATE_WINDOW = Table(
    "rate_window",
    (Column("key", "key"), Column("slot", "int"), Column("count", "small")),
    primary=("key", "slot"),
    indexes=(("rate_window_by_slot", ("slot",)),),
)
HELD_REQUEST = Table(
    "held_request",
    (
        Column("secret", "key"),
        Column("sha256", "key"),
        Column("action", "text"),
        Column("scope", "text"),
        Column("created", "time"),
        Column("detail", "text"),
        Column("mailed", "time", null=True),
        Column("done", "time", null=True),
    ),
    primary=("secret",),
    indexes=(("held_request_by_subject", ("sha256",)),),
)
# ESP webhooks: each signed notification's replay key, accepted once (gateway/esp)
ESP_TOKEN = Table(
    "esp_token",
    (Column("vendor", "key"), Column("token", "key"), Column("at", "time")),
    primary=("vendor", "token"),
    indexes=(("esp_token_by_time", ("vendor", "at")),),
)
# integration (issue 17): API keys, webhook endpoints and their outbox
API_KEY = Table(
    "api_key",
    (
        Column("id", "key"),
        Column("name", "key"),
        Column("scopes", "text"),
        Column("salt", "text"),
        Column("digest", "text"),
        Column("created", "time"),
        Column("revoked", "time", null=True),
    ),
    primary=("id",),
    indexes=(("api_key_by_name", ("name",)),),
)
WEBHOOK = Table(
    "webhook",
    (
        Column("name", "key"),
        Column("url", "text"),
        Column("events", "text"),  # ",type,type,": matched with LIKE
        Column("include_address", "bool", null=True),
        Column("secret", "text"),
        Column("previous_secret", "text", null=True),
        Column("previous_until", "time", null=True),
        Column("created", "time"),
    ),
    primary=("name",),
)
OUTBOX = Table(
    "outbox",
    (
        Column("id", "id"),
        Column("webhook", "key"),
        Column("uid", "key"),
        Column("type", "text"),
        Column("key", "key"),  # the subject's hash: erasure clears the address by it
        Column("data", "text"),
        Column("address", "text", null=True),
        Column("created", "time"),
        Column("state", "text"),
        Column("attempts", "int"),
        Column("due", "time"),  # next attempt; while leased, the end of the lease
        Column("owner", "text", null=True),
        Column("status", "text", null=True),
        Column("done", "time", null=True),
    ),
    indexes=(
        ("outbox_due", ("state", "due")),
        ("outbox_by_key", ("key",)),
        ("outbox_by_webhook", ("webhook",)),
    ),
)

MIGRATIONS: tuple[Migration, ...] = (
    Create((SUPPRESSION, CONSENT, AUDIT)),
    Create((SEND,)),
    Create((SOFT_BOUNCE,)),
    Create((PARTNER, OFFER, OFFER_COPY)),
    Rekey(),  # the audit chain is keyed (HMAC) and records row sums from here on
    Create((RATE_WINDOW, HELD_REQUEST)),
    Create((ESP_TOKEN,)),
    Create((API_KEY, WEBHOOK, OUTBOX)),
    AddColumn("send", SEND_CAMPAIGN),
    AddColumn("send", SEND_STATE),
)
# every table, in the order the migrations make them (store copy's order)
TABLES: tuple[Table, ...] = tuple(
    table for step in MIGRATIONS if isinstance(step, Create) for table in step.tables
)
