"""One typed, frozen settings object: TOML file, then OPTGATE_* environment, then defaults.

Every option is declared once, below, with its default and its meaning.
``OPTGATE_<SECTION>_<KEY>`` overrides ``[section] key``; section names never
contain an underscore. Unknown keys and values of the wrong type are errors
that name the key.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from suppression.errors import ConfigError


def _opt(default: Any, doc: str) -> Any:
    """A field with its default and its documentation."""
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata={"doc": doc})
    return field(default=default, metadata={"doc": doc})


@dataclass(frozen=True)
class SMTP:
    """The listener senders (or Postfix's content_filter) connect to."""

    listen: str = _opt("127.0.0.1:10025", "host:port to accept mail on")
    allowed_clients: list[str] = _opt(
        ["127.0.0.0/8", "::1/128"], "networks allowed to relay through optgate"
    )
    max_message_size: int = _opt(26214400, "largest message in bytes (SIZE); 552 beyond it")
    max_recipients: int = _opt(1000, "recipients per message; 452 beyond it")
    max_sessions: int = _opt(200, "concurrent SMTP sessions; 421 beyond it")
    timeout: int = _opt(300, "seconds a session may sit idle (command or data)")
    hostname: str = _opt("", "name in the greeting and EHLO; empty: the machine's name")


@dataclass(frozen=True)
class Relay:
    """The next hop every kept copy is relayed to."""

    next_hop: str = _opt("127.0.0.1:10026", "host:port of the next MTA")
    starttls: str = _opt("opportunistic", "opportunistic, required or never")
    pool_size: int = _opt(32, "most connections kept open to the next hop")
    timeout: int = _opt(60, "seconds to wait for the next hop before answering 451")
    ledger_hours: int = _opt(72, "how long a delivery is remembered to skip it on retry")


@dataclass(frozen=True)
class Store:
    """Where suppressions, consents and the audit log live."""

    url: str = _opt("sqlite:///optgate.db", "sqlite:///PATH or postgresql://user@host/db")
    keep_addresses: bool = _opt(True, "keep plaintext addresses beside their hashes")
    audit_key_file: str = _opt(
        "optgate-audit.key", "key of the audit log's HMAC chain, kept outside the database"
    )
    audit_anchor_file: str = _opt(
        "optgate-audit.head",
        "the audit log's head as last verified (SEQ:DIGEST), kept outside the database",
    )
    verify_minutes: int = _opt(
        60, "how often optgate serve verifies the audit log and the state it vouches for; 0: never"
    )


@dataclass(frozen=True)
class Policy:
    """What is sent and what is dropped."""

    action: str = _opt("drop", "drop: accept and discard; reject: 550 at RCPT")
    require_consent: bool = _opt(True, "marketing mail needs a consent record for its topic")
    default_topic: str = _opt("marketing", "topic of marketing mail without X-Optgate-Topic")
    consent_versions: dict[str, str] = _opt(
        {}, "purpose -> lowest policy version a consent must have been given under"
    )
    sender_topics: dict[str, str] = _opt(
        {}, "envelope sender (address or @domain) -> topic, when X-Optgate-Topic is absent"
    )


@dataclass(frozen=True)
class Unsubscribe:
    """The links and footer every marketing copy carries."""

    base_url: str = _opt("http://127.0.0.1:8080", "public URL of the web endpoint")
    mailto: str = _opt("unsubscribe@example.com", "address for mailto: unsubscribes")
    key_file: str = _opt("optgate.key", "token signing keys, one per line, first signs")
    list_domain: str = _opt("lists.example.com", "domain of List-Id values (topic.DOMAIN)")
    feedback_id: str = _opt("optgate", "sender id part of the Feedback-ID header")
    company: str = _opt("Example Ltd", "company name shown in the footer and pages")
    confirm_from: str = _opt(
        "subscriptions@example.com", "sender of double opt-in confirmation requests"
    )
    postal_address: str = _opt(
        "Example Ltd, 1 Example Street, Example City", "postal address (CAN-SPAM)"
    )
    footer_text: str = _opt(
        "\n-- \nYou receive this because you subscribed to {topic}.\n"
        "Unsubscribe: {url}\n{postal_address}\n",
        "plain-text footer; {url}, {topic}, {postal_address}",
    )
    footer_html: str = _opt(
        '<p style="font-size:12px;color:#666">You receive this because you subscribed to '
        '{topic}. <a href="{url}">Unsubscribe</a><br>{postal_address}</p>',
        "HTML footer; {url}, {topic}, {postal_address}",
    )


@dataclass(frozen=True)
class Web:
    """The one-click and confirmation web endpoint."""

    listen: str = _opt("127.0.0.1:8080", "host:port of the web endpoint")
    rate_limit: int = _opt(
        60, "requests per minute per client IP on the link pages (bursts up to it); 0: no limit"
    )
    trusted_proxies: list[str] = _opt(
        [], "networks of reverse proxies whose X-Forwarded-For names the client"
    )
    accent_color: str = _opt("#0b57d0", "colour of buttons and headings, #rgb or #rrggbb")
    api_keys: list[str] = _opt(
        [], "bearer keys for POST /api/consent-requests; none: the API is off"
    )
    page_note: str = _opt(
        "Questions about your data? Write to privacy@example.com.",
        "a sentence at the foot of every page, above the postal address",
    )


@dataclass(frozen=True)
class Dkim:
    """DKIM signing of every relayed copy, after the rewrite."""

    keys: list[str] = _opt(
        [],
        "DOMAIN:SELECTOR:ALGORITHM:KEYFILE entries (ALGORITHM rsa or ed25519); the key whose "
        "domain is the From domain (or its parent) signs, both when there are two (dual signing); "
        "none: no signing",
    )
    canonicalization: str = _opt("relaxed/relaxed", "header/body: relaxed or simple each")
    extra_headers: list[str] = _opt([], "headers signed besides the standard set")


@dataclass(frozen=True)
class Inbound:
    """Mail to optgate itself: unsubscribe@, VERP bounces, feedback-loop complaints."""

    domains: list[str] = _opt(
        [],
        "domains whose unsubscribe, bounce and feedback addresses optgate accepts mail for; "
        "the first is the VERP bounce domain; none: inbound mail and VERP are off",
    )
    unsubscribe_local: str = _opt("unsubscribe", "local part of unsubscribe@ (and +TOKEN)")
    bounce_local: str = _opt("bounce", "local part of the VERP envelope sender bounce+TOKEN@")
    feedback_local: str = _opt("fbl", "local part of the feedback-loop (ARF complaint) address")
    soft_bounce_limit: int = _opt(
        5, "soft bounces of one address within soft_bounce_days that suppress it as bounced"
    )
    soft_bounce_days: int = _opt(14, "the window soft bounces are counted in, in days")
    keep_raw: str = _opt(
        "", "directory that keeps each inbound message as DIGEST.eml (0600); empty: not kept"
    )
    max_message_size: int = _opt(10485760, "largest inbound message in bytes; 552 beyond it")
    listen: str = _opt(
        "", "host:port of a listener for inbound mail only; empty: the [smtp] listener takes it"
    )
    lmtp: bool = _opt(False, "the inbound listener speaks LMTP (Postfix lmtp: transport)")
    allowed_clients: list[str] = _opt(
        ["127.0.0.0/8", "::1/128"], "networks that may connect to the inbound listener"
    )
    verp_transactional: bool = _opt(
        False, "transactional mail gets a VERP envelope sender too (else it keeps its own)"
    )


@dataclass(frozen=True)
class Partners:
    """Partner offers: the submission listener, the fan-out and the partners' reports."""

    listen: str = _opt("", "host:port partners submit offers to (SMTP AUTH); empty: off")
    tls: str = _opt("starttls", "starttls (AUTH only after STARTTLS) or implicit (TLS at connect)")
    tls_cert: str = _opt("", "PEM certificate file; empty: a self-signed one made at start (tests)")
    tls_key: str = _opt("", "PEM private key of tls_cert")
    sender: str = _opt(
        "offers@example.com", "From address and envelope sender of every partner offer copy"
    )
    audience_domain: str = _opt(
        "partners.example.com", "partners send to offer@DOMAIN or offer+TOPIC@DOMAIN"
    )
    max_message_size: int = _opt(10485760, "largest offer in bytes, unless the partner has its own")
    rate_per_hour: int = _opt(10, "offers a partner may submit per hour, unless it has its own")
    headers: list[str] = _opt(
        [
            "subject",
            "date",
            "mime-version",
            "content-type",
            "content-transfer-encoding",
            "content-language",
        ],
        "header fields of an offer kept in its copies; every other field is removed",
    )
    report_threshold: int = _opt(
        10, "k-anonymity of partner reports: counts below it show as <k, others round down to k"
    )
    footer_text: str = _opt(
        "\n-- \nAn offer from {partner}, sent by {company} because you agreed to partner "
        "offers. {partner} does not receive your address.\n"
        "No more offers from {partner}, or from any partner: {url}\n{postal_address}\n",
        "plain-text footer of offers; {partner}, {company}, {url}, {postal_address}",
    )
    footer_html: str = _opt(
        '<p style="font-size:12px;color:#666">An offer from {partner}, sent by {company} because '
        "you agreed to partner offers. {partner} does not receive your address. "
        '<a href="{url}">No more offers from {partner}, or from any partner</a><br>'
        "{postal_address}</p>",
        "HTML footer of offers; {partner}, {company}, {url}, {postal_address}",
    )
    lease: int = _opt(300, "seconds a node holds claimed copies before another may take them")
    batch: int = _opt(200, "copies a node claims at once")
    auth_per_minute: int = _opt(
        10, "AUTH attempts a client address may make a minute (a guess costs a scrypt); 0: no limit"
    )
    retry_hours: int = _opt(
        120, "a copy the next hop keeps deferring (4xx) fails this long after its offer came"
    )


@dataclass(frozen=True)
class Esp:
    """Bounces and complaints an ESP reports over HTTP: POST {base_url path}/hooks/VENDOR."""

    ses_topics: list[str] = _opt(
        [], "ARNs of the SNS topics whose SES notifications /hooks/ses takes; none: it is off"
    )
    sendgrid_public_key: str = _opt(
        "",
        "the Signed Event Webhook's verification key (base64 or PEM); empty: /hooks/sendgrid off",
    )
    sendgrid_groups: dict[str, str] = _opt(
        {},
        "SendGrid unsubscribe group id -> the optgate topic its group_unsubscribe stops; "
        "a group not named here stops everything (global)",
    )
    mailgun_signing_keys: list[str] = _opt(
        [],
        "HTTP webhook signing keys (the account's, a parent account's, old and new while "
        "rotating); none: /hooks/mailgun is off",
    )
    postmark_credentials: list[str] = _opt(
        [], "USER:PASSWORD of each Postmark webhook's basic auth; none: /hooks/postmark is off"
    )
    max_age: int = _opt(
        300, "seconds a SendGrid or Mailgun signature's timestamp may be from now; older is stale"
    )
    max_body: int = _opt(1048576, "largest notification in bytes; 413 beyond it")


@dataclass(frozen=True)
class Config:
    """All settings."""

    smtp: SMTP = field(default_factory=SMTP)
    relay: Relay = field(default_factory=Relay)
    store: Store = field(default_factory=Store)
    policy: Policy = field(default_factory=Policy)
    unsubscribe: Unsubscribe = field(default_factory=Unsubscribe)
    web: Web = field(default_factory=Web)
    dkim: Dkim = field(default_factory=Dkim)
    inbound: Inbound = field(default_factory=Inbound)
    partners: Partners = field(default_factory=Partners)
    esp: Esp = field(default_factory=Esp)


_CHOICES = {
    ("dkim", "canonicalization"): (
        "relaxed/relaxed",
        "relaxed/simple",
        "simple/relaxed",
        "simple/simple",
    ),
    ("relay", "starttls"): ("opportunistic", "required", "never"),
    ("policy", "action"): ("drop", "reject"),
    ("partners", "tls"): ("starttls", "implicit"),
}


def _sections() -> dict[str, type[Any]]:
    hints = typing.get_type_hints(Config)
    return {f.name: hints[f.name] for f in dataclasses.fields(Config)}


def _check(name: str, value: Any, kind: Any) -> Any:
    """Check a TOML value against a declared type."""
    origin = typing.get_origin(kind)
    if kind is bool or kind is str:
        ok = isinstance(value, kind)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    elif origin is list:
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    elif origin is dict:
        ok = isinstance(value, dict) and all(isinstance(v, str) for v in value.values())
    else:  # pragma: no cover - every declared type is handled above
        raise TypeError(kind)
    if not ok:
        raise ConfigError(f"{name}: expected {_describe(kind)}, got {value!r}")
    return value


def _describe(kind: Any) -> str:
    base = typing.get_origin(kind) or kind  # _from_env passes the bare list / dict
    if base is list or base is dict:
        return "a list of strings" if base is list else "a table of strings"
    return {bool: "true or false", int: "a non-negative integer", str: "a string"}[kind]


def _from_env(name: str, text: str, kind: Any) -> Any:
    """Parse an environment value by the declared type (TOML syntax for lists/tables)."""
    if kind is str:
        return text
    if kind is bool and text.lower() in ("true", "1", "yes", "false", "0", "no"):
        return text.lower() in ("true", "1", "yes")
    if kind is list and not text.lstrip().startswith("["):
        return [part.strip() for part in text.split(",") if part.strip()]
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        raise ConfigError(f"{name}: expected {_describe(kind)}, got {text!r}") from None


def _merge(raw: Mapping[str, Any], environ: Mapping[str, str], origin: str) -> Config:
    sections = _sections()
    for section in raw:
        if section not in sections:
            raise ConfigError(f"{origin}: unknown section [{section}]")
    built: dict[str, Any] = {}
    for section, cls in sections.items():
        table = raw.get(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{origin}: [{section}] must be a table")
        hints = typing.get_type_hints(cls)
        for key in table:
            if key not in hints:
                raise ConfigError(f"{origin}: unknown key {key!r} in [{section}]")
        values = {key: _check(f"[{section}] {key}", v, hints[key]) for key, v in table.items()}
        for key, kind in hints.items():
            env = f"OPTGATE_{section.upper()}_{key.upper()}"
            if env in environ:
                base = typing.get_origin(kind) or kind
                values[key] = _check(env, _from_env(env, environ[env], base), kind)
        for key, value in values.items():
            choices = _CHOICES.get((section, key))
            if choices and value not in choices:
                raise ConfigError(f"[{section}] {key}: {value!r} is not one of {choices}")
        built[section] = cls(**values)
    _reject_unknown_env(environ, sections)
    return Config(**built)


def _reject_unknown_env(environ: Mapping[str, str], sections: Mapping[str, type[Any]]) -> None:
    known = {"OPTGATE_CONFIG"}
    for section, cls in sections.items():
        known |= {f"OPTGATE_{section.upper()}_{k.upper()}" for k in typing.get_type_hints(cls)}
    for name in environ:
        if name.startswith("OPTGATE_") and name not in known:
            raise ConfigError(f"unknown environment variable {name}: no such setting")


def load(path: str | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Load settings from a file (or $OPTGATE_CONFIG, or none) plus the environment."""
    env = os.environ if environ is None else environ
    chosen = path or env.get("OPTGATE_CONFIG")
    raw: dict[str, Any] = {}
    if chosen:
        try:
            raw = tomllib.loads(Path(chosen).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config {chosen}: {exc.strerror}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config {chosen} is not valid TOML: {exc}") from None
    return _merge(raw, env, chosen or "environment")


def host_port(value: str, name: str) -> tuple[str, int]:
    """Split ``host:port`` (``[v6]:port`` too); port 0 picks a free port."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"{name}: {value!r} is not host:port")
    return host.strip("[]") or "127.0.0.1", int(port)
