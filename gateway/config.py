"""One typed, frozen settings object: TOML file, then OPTGATE_* environment, then defaults.

Every option is declared once, below, with its default, its meaning and, where
it has them, its choices (a ``Literal`` type); ``optgate config show`` and
``optgate config example`` are generated from these declarations.
``OPTGATE_<SECTION>_<KEY>`` overrides ``[section] key``; section names never
contain an underscore. Values are typed at load: ``host:port`` becomes a
``HostPort``, a list of networks a tuple of ``ip_network`` values, resolvers
``HostPort`` values (port 53 unless given). Unknown keys, values of the wrong
type and values that do not parse are errors that name the key.

Paths: a relative path in a config file is relative to that file's directory,
one in an environment variable to the current directory; ``load`` makes both
absolute. The embedded store and the token key file default to the state
directory (``gateway/runtime/statedir.py``).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

from gateway.runtime import statedir
from suppression.errors import ConfigError

Resolve = Callable[[str, Path], str]  # a value and the directory it is relative to
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Networks = tuple[Network, ...]


class HostPort(NamedTuple):
    """A host and a port (port 0: any free one); ``str`` writes ``host:port``."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> HostPort:
        """``host:port`` or ``[v6]:port`` (an empty host is 127.0.0.1); ValueError if not."""
        host, sep, port = text.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ValueError(f"{text!r} is not host:port")
        return cls(host.strip("[]") or "127.0.0.1", int(port))

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Parsed:
    """How an option's TOML value (``raw``: str or list[str]) becomes its typed value at
    load (``parse``: ValueError says what is wrong), and back for ``config show``."""

    raw: Any
    parse: Callable[[Any], Any]
    show: Callable[[Any], Any]


def _networks(texts: Sequence[str]) -> Networks:
    return tuple(ipaddress.ip_network(text, strict=False) for text in texts)


def _resolver(text: str) -> HostPort:
    """An IP address, ``IPv4:port`` or ``[IPv6]:port`` (port 53 unless given)."""
    with_port = text.startswith("[") or text.count(":") == 1
    server = HostPort.parse(text) if with_port else HostPort(text, 53)
    try:
        ipaddress.ip_address(server.host)
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address[:port]") from None
    return server


def _senders(texts: Sequence[str]) -> tuple[str, ...]:
    """Envelope sender addresses, lower-cased (``local@domain``)."""
    senders = []
    for text in texts:
        local, at, domain = text.strip().lower().rpartition("@")
        if not at or not local or not _domain_like(domain) or any(c.isspace() for c in local):
            raise ValueError(f"{text!r} is not an address (local@domain)")
        senders.append(f"{local}@{domain}")
    return tuple(senders)


def _domain_like(text: str) -> bool:
    labels = text.split(".")
    return len(labels) > 1 and all(
        label and len(label) < 64 and label.replace("-", "").isalnum() for label in labels
    )


def _domains(texts: Sequence[str]) -> tuple[str, ...]:
    """Domain names, lower-cased (a leading @ dropped)."""
    domains = []
    for text in texts:
        domain = text.strip().lower().removeprefix("@").rstrip(".")
        if not _domain_like(domain):
            raise ValueError(f"{text!r} is not a domain name")
        domains.append(domain)
    return tuple(domains)


HOST_PORT = Parsed(str, HostPort.parse, str)
SENDERS = Parsed(list[str], _senders, list)
DOMAINS = Parsed(list[str], _domains, list)
HOST_PORT_OR_OFF = Parsed(
    str, lambda text: HostPort.parse(text) if text else None, lambda v: str(v) if v else ""
)
NETWORKS = Parsed(list[str], _networks, lambda value: [str(n) for n in value])
RESOLVERS = Parsed(
    list[str], lambda texts: tuple(_resolver(t) for t in texts), lambda v: [str(s) for s in v]
)


def _path(value: str, base: Path) -> str:
    """A file or directory option; empty stays empty (off, or derived)."""
    return str(base / Path(value).expanduser()) if value else value


def _store_url(value: str, base: Path) -> str:
    """``sqlite:///PATH`` with PATH made absolute; other URLs as given."""
    prefix = "sqlite:///"
    rest = value.removeprefix(prefix)
    if not value.startswith(prefix) or not rest or rest == ":memory:" or rest.startswith("/"):
        return value
    return prefix + _path(rest, base)


def _dkim_key(value: str, base: Path) -> str:
    """``DOMAIN:SELECTOR:ALGORITHM:KEYFILE`` with KEYFILE made absolute."""
    parts = value.split(":", 3)
    if len(parts) != 4 or not parts[3].strip():
        return value  # the signer names the malformed entry
    return ":".join([*parts[:3], _path(parts[3].strip(), base)])


def _opt(
    default: Any,
    doc: str,
    *,
    parsed: Parsed | None = None,
    path: Resolve | None = None,
    secret: bool = False,
) -> Any:
    """A field with its default (as TOML writes it), its documentation and how it is
    checked and shown.

    ``parsed``: how its value is typed at load; ``path``: how a relative path in the
    value is resolved (for a list, in each entry); ``secret``: never printed. The
    choices of a ``Literal`` field are its type's.
    """
    metadata = {"doc": doc, "parsed": parsed, "path": path, "secret": secret}
    if parsed is not None:
        return field(default=parsed.parse(default), metadata=metadata)
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class SMTP:
    """The listener senders (or Postfix's content_filter) connect to."""

    listen: HostPort = _opt("127.0.0.1:10025", "host:port to accept mail on", parsed=HOST_PORT)
    allowed_clients: Networks = _opt(
        ["127.0.0.0/8", "::1/128"], "networks allowed to relay through optgate", parsed=NETWORKS
    )
    max_message_size: int = _opt(26214400, "largest message in bytes (SIZE); 552 beyond it")
    max_recipients: int = _opt(1000, "recipients per message; 452 beyond it")
    max_sessions: int = _opt(200, "concurrent SMTP sessions; 421 beyond it")
    timeout: int = _opt(300, "seconds a session may sit idle (command or data)")
    hostname: str = _opt("", "name in the greeting and EHLO; empty: the machine's name")
    lmtp: bool = _opt(
        False, "speak LMTP: one reply per recipient after DATA (Postfix content_filter = lmtp:)"
    )


@dataclass(frozen=True)
class Relay:
    """The next hop every kept copy is relayed to."""

    next_hop: HostPort = _opt("127.0.0.1:10026", "host:port of the next MTA", parsed=HOST_PORT)
    starttls: Literal["opportunistic", "required", "never"] = _opt(
        "opportunistic", "STARTTLS to the next hop when offered, always (451 without), or never"
    )
    tls_verify: Literal["auto", "always", "never"] = _opt(
        "auto",
        "check the next hop's certificate (chain and name) when STARTTLS is used: auto (unless "
        "next_hop is a loopback address), always, or never; failing: 451 4.7.5, nothing sent",
    )
    tls_ca_file: str = _opt(
        "",
        "PEM file of the CA(s) the next hop's certificate is checked against (a private CA); "
        "empty: the system's CAs",
        path=_path,
    )
    next_hop_sessions: int = _opt(
        20,
        "SMTP sessions the next hop serves this node at once (Postfix: the reinjection "
        "listener's maxproc, which must be at least this); the workers share them",
    )
    pool_size: int = _opt(
        0,
        "most connections each worker holds to the next hop; 0: next_hop_sessions / workers "
        "(at least 1)",
    )
    idle_seconds: int = _opt(2, "a pooled connection idle this long is closed (QUIT)")
    busy_seconds: int = _opt(
        30,
        "how long a copy waits while the next hop is busy (connection refused, 421) "
        "before 451 4.4.5",
    )
    timeout: int = _opt(60, "seconds to wait for the next hop before answering 451")
    ledger_hours: int = _opt(72, "how long a delivery is remembered to skip it on retry")
    uncertain: Literal["skip", "resend"] = _opt(
        "skip",
        "a copy whose reply after the final dot was lost (it may have arrived): not sent "
        "again on the client's retry (skip), or sent again (resend, may duplicate)",
    )

    def per_worker(self, workers: int) -> int:
        """Each worker's pool: ``pool_size`` if set, else its share of the next hop's
        sessions (at least one), so that all workers together never hold more."""
        return self.pool_size or max(1, self.next_hop_sessions // max(1, workers))


@dataclass(frozen=True)
class Store:
    """Where suppressions, consents and the audit log live."""

    state_dir: str = _opt(
        "",
        "directory of the embedded store and the token key file; empty: $STATE_DIRECTORY "
        "(systemd), else /var/lib/optgate as root, else $XDG_STATE_HOME/optgate "
        "(~/.local/state/optgate)",
        path=_path,
    )
    url: str = _opt(
        "",
        "sqlite:///PATH or postgresql://user@host/db; empty: sqlite in the state directory "
        "(optgate.db)",
        path=_store_url,
    )
    keep_addresses: bool = _opt(True, "keep plaintext addresses beside their hashes")
    audit_key_file: str = _opt(
        "",
        "key of the audit log's HMAC chain, kept outside the database; made by optgate serve "
        "or optgate store migrate; empty: optgate-audit.key in the state directory",
        path=_path,
    )
    audit_anchor_file: str = _opt(
        "",
        "the audit log's head as last verified (SEQ:DIGEST), kept outside the database; "
        "empty: optgate-audit.head in the state directory",
        path=_path,
    )
    verify_minutes: int = _opt(
        60, "how often optgate serve verifies the audit log and the state it vouches for; 0: never"
    )


@dataclass(frozen=True)
class Policy:
    """What is sent and what is dropped."""

    action: Literal["drop", "reject"] = _opt(
        "drop", "drop: accept and discard; reject: 550 at RCPT"
    )
    require_consent: bool = _opt(True, "marketing mail needs a consent record for its topic")
    default_topic: str = _opt("marketing", "topic of marketing mail without X-Optgate-Topic")
    consent_versions: dict[str, str] = _opt(
        {}, "purpose -> lowest policy version a consent must have been given under"
    )
    sender_topics: dict[str, str] = _opt(
        {}, "envelope sender (address or @domain) -> topic, when X-Optgate-Topic is absent"
    )
    transactional_senders: tuple[str, ...] = _opt(
        [],
        "envelope senders whose mail without X-Optgate-Class is transactional (exempt from "
        'opt-outs), e.g. ["noreply@shop.example"] for password resets and receipts',
        parsed=SENDERS,
    )
    transactional_domains: tuple[str, ...] = _opt(
        [],
        "envelope sender domains (exact, subdomains not included) whose mail without "
        "X-Optgate-Class is transactional",
        parsed=DOMAINS,
    )
    transactional_networks: Networks = _opt(
        [],
        "client networks whose mail without X-Optgate-Class is transactional (the original "
        "client: XFORWARD ADDR from a content filter's Postfix, else the connecting one)",
        parsed=NETWORKS,
    )
    marketing_senders: tuple[str, ...] = _opt(
        [],
        "envelope senders whose mail without X-Optgate-Class stays marketing inside a "
        "transactional domain or network (a newsletter sent from the shop's domain)",
        parsed=SENDERS,
    )


@dataclass(frozen=True)
class Unsubscribe:
    """The links and footer every marketing copy carries."""

    base_url: str = _opt("http://127.0.0.1:8080", "public URL of the web endpoint")
    mailto: str = _opt("unsubscribe@example.com", "address for mailto: unsubscribes")
    key_file: str = _opt(
        "",
        "token signing keys, hex, one per line, the first signs; made by optgate serve or "
        "optgate store migrate; empty: optgate.key in the state directory",
        path=_path,
    )
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
        "",
        "plain-text footer for every language, replacing the built-in localised one; "
        "{url}, {topic} (its display name), {postal_address}; empty: the built-in one",
    )
    footer_html: str = _opt(
        "",
        "HTML footer for every language, replacing the built-in localised one; "
        "{url}, {topic}, {postal_address}; empty: the built-in one",
    )


@dataclass(frozen=True)
class Footer:
    """The language of footers and pages, and footer wording for every topic."""

    default_language: str = _opt(
        "en",
        "language of footers (message without a Content-Language or lang optgate knows) and "
        "pages (browser asking for none): en, de, fr, es, it, nl, pt, or one worded below",
    )
    reason: dict[str, str] = _opt(
        {}, "language -> the footer's sentence; {topic} (display name), {company}"
    )
    unsubscribe: dict[str, str] = _opt({}, "language -> the words of the footer's link")


@dataclass(frozen=True)
class Topic:
    """One topic as readers see it ([topics.NAME], in the file only): name and wording."""

    name: str = _opt("", "display name in footers and pages; empty: the topic itself")
    names: dict[str, str] = _opt({}, "language -> display name")
    reason: dict[str, str] = _opt({}, "language -> this topic's footer sentence")
    unsubscribe: dict[str, str] = _opt({}, "language -> this topic's link words")


@dataclass(frozen=True)
class Web:
    """The one-click and confirmation web endpoint."""

    listen: HostPort = _opt("127.0.0.1:8080", "host:port of the web endpoint", parsed=HOST_PORT)
    rate_limit: int = _opt(
        60, "requests per minute per client IP on the link pages (bursts up to it); 0: no limit"
    )
    trusted_proxies: Networks = _opt(
        [], "networks of reverse proxies whose X-Forwarded-For names the client", parsed=NETWORKS
    )
    accent_color: str = _opt("#0b57d0", "colour of buttons and headings, #rgb or #rrggbb")
    api_keys: list[str] = _opt(
        [], "bearer keys for POST /api/consent-requests; none: the API is off", secret=True
    )
    page_note: str = _opt(
        "Questions about your data? Write to privacy@example.com.",
        "a sentence at the foot of every page, above the postal address",
    )


@dataclass(frozen=True)
class Api:
    """The admin listener: the REST API (/api/v1), /metrics and /healthz; never public."""

    listen: HostPort | None = _opt(
        "127.0.0.1:8081",
        "host:port of the admin listener (runs with the web part); empty: off",
        parsed=HOST_PORT_OR_OFF,
    )
    rate_limit: int = _opt(
        600, "API requests a minute per key, counted over all workers and nodes; 0: no limit"
    )
    max_body: int = _opt(1048576, "largest API request body in bytes; 413 beyond it")
    max_items: int = _opt(10000, "addresses one API request may name; 400 beyond it")


@dataclass(frozen=True)
class Webhooks:
    """Signed webhooks out (Standard Webhooks) to the endpoints of `optgate webhooks add`."""

    include_address: bool = _opt(
        False,
        "events carry the address (else only its SHA-256) for endpoints that do not say "
        "(webhooks add --include-address / --hash-only)",
    )
    timeout: int = _opt(10, "seconds an endpoint has to answer one delivery")
    retry_seconds: int = _opt(
        5, "wait before the first retry; each further one waits twice as long, at most an hour"
    )
    give_up_after: int = _opt(
        86400, "seconds after its event a delivery that keeps failing is given up (dead)"
    )
    lease: int = _opt(60, "seconds a node holds the deliveries it claimed before another may")
    batch: int = _opt(50, "deliveries a node claims and sends at once")
    keep_days: int = _opt(7, "days delivered events stay listed (webhooks list)")
    rotation_hours: int = _opt(
        24, "hours the old secret still signs after webhooks rotate (both signatures sent)"
    )


@dataclass(frozen=True)
class Dkim:
    """DKIM signing of every relayed copy, after the rewrite."""

    keys: list[str] = _opt(
        [],
        "DOMAIN:SELECTOR:ALGORITHM:KEYFILE entries (ALGORITHM rsa or ed25519); the key whose "
        "domain is the From domain (or its parent) signs, both when there are two (dual signing); "
        "none: no signing",
        path=_dkim_key,
    )
    canonicalization: Literal[
        "relaxed/relaxed", "relaxed/simple", "simple/relaxed", "simple/simple"
    ] = _opt("relaxed/relaxed", "header/body: relaxed or simple each")
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
        "",
        "directory that keeps each inbound message as DIGEST.eml (0600); empty: not kept",
        path=_path,
    )
    max_message_size: int = _opt(10485760, "largest inbound message in bytes; 552 beyond it")
    listen: HostPort | None = _opt(
        "",
        "host:port of a listener for inbound mail only; empty: the [smtp] listener takes it",
        parsed=HOST_PORT_OR_OFF,
    )
    lmtp: bool = _opt(False, "the inbound listener speaks LMTP (Postfix lmtp: transport)")
    allowed_clients: Networks = _opt(
        ["127.0.0.0/8", "::1/128"],
        "networks that may connect to the inbound listener",
        parsed=NETWORKS,
    )
    verp_transactional: bool = _opt(
        False, "transactional mail gets a VERP envelope sender too (else it keeps its own)"
    )
    # who wrote an opt-out by mail without a genuine token: DMARC-aligned DKIM or SPF of the
    # From domain, or the own MTA's Authentication-Results; else it waits for a mailed link
    authserv_ids: list[str] = _opt(
        [],
        "authserv-ids of the own MTA: its topmost Authentication-Results header (RFC 8601) is "
        "believed, every other one ignored; none: optgate's own DKIM and SPF checks only",
    )
    trusted_relays: Networks = _opt(
        ["127.0.0.0/8", "::1/128"],
        "networks of the own MTAs that hand inbound mail over: for them the client is the one "
        "their topmost Received header names; any other peer is the sending MTA itself",
        parsed=NETWORKS,
    )
    dns_servers: tuple[HostPort, ...] = _opt(
        [],
        "IP or IP:port ([IPv6]:port) of the resolvers for DKIM, SPF and DMARC lookups; "
        "none: the system's",
        parsed=RESOLVERS,
    )
    optout_rate_client: int = _opt(
        20, "opt-out mails held for a confirmation link an hour per client IP; beyond it 451"
    )
    optout_rate_domain: int = _opt(
        50, "opt-out mails held for a confirmation link an hour per From domain; beyond it 451"
    )
    optout_rate_address: int = _opt(
        3, "confirmation links mailed (held opt-outs, lift requests) an hour per address"
    )
    optout_rate_authenticated: int = _opt(
        1000, "authenticated opt-out mails an hour per From domain; beyond it 451"
    )


@dataclass(frozen=True)
class Partners:
    """Partner offers: the submission listener, the fan-out and the partners' reports."""

    listen: HostPort | None = _opt(
        "", "host:port partners submit offers to (SMTP AUTH); empty: off", parsed=HOST_PORT_OR_OFF
    )
    tls: Literal["starttls", "implicit"] = _opt(
        "starttls", "starttls (AUTH only after STARTTLS) or implicit (TLS at connect)"
    )
    tls_cert: str = _opt(
        "", "PEM certificate file; empty: a self-signed one made at start (tests)", path=_path
    )
    tls_key: str = _opt("", "PEM private key of tls_cert", path=_path)
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
        secret=True,
    )
    postmark_credentials: list[str] = _opt(
        [],
        "USER:PASSWORD of each Postmark webhook's basic auth; none: /hooks/postmark is off",
        secret=True,
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
    api: Api = field(default_factory=Api)
    webhooks: Webhooks = field(default_factory=Webhooks)
    dkim: Dkim = field(default_factory=Dkim)
    inbound: Inbound = field(default_factory=Inbound)
    partners: Partners = field(default_factory=Partners)
    esp: Esp = field(default_factory=Esp)
    footer: Footer = field(default_factory=Footer)
    topics: dict[str, Topic] = field(default_factory=dict)  # [topics.NAME] tables


@dataclass(frozen=True)
class Option:
    """One declared option, as the loader, ``config show`` and ``config example`` see it:
    ``kind`` and ``default`` as TOML holds them (str, int, bool, list or table of strings)."""

    section: str
    key: str
    kind: Any
    default: Any
    doc: str
    choices: tuple[str, ...]
    path: Resolve | None
    secret: bool
    parsed: Parsed | None

    @property
    def env(self) -> str:
        """The environment variable that overrides it."""
        return f"OPTGATE_{self.section.upper()}_{self.key.upper()}"

    def typed(self, name: str, value: Any) -> Any:
        """A checked TOML value as the option's type; a ConfigError naming ``name``."""
        if self.choices and value not in self.choices:
            where = f"[{self.section}] {self.key}"
            raise ConfigError(f"{where}: {value!r} is not one of {self.choices}")
        if self.parsed is None:
            return value
        try:
            return self.parsed.parse(value)
        except ValueError as exc:
            raise ConfigError(f"{name}: {exc}") from None

    def text(self, value: Any) -> Any:
        """A loaded value as TOML would hold it."""
        return self.parsed.show(value) if self.parsed else value


def sections() -> dict[str, type[Any]]:
    """Section name -> its dataclass, in declaration order."""
    hints = typing.get_type_hints(Config)
    return {f.name: hints[f.name] for f in dataclasses.fields(Config) if f.name != "topics"}


def _topics(raw: Any, origin: str) -> dict[str, Topic]:
    """The [topics.NAME] tables (no environment variables: topic names need not fit them)."""
    if not isinstance(raw, dict) or not all(isinstance(t, dict) for t in raw.values()):
        raise ConfigError(f"{origin}: [topics] holds one table per topic, as [topics.NAME]")
    hints = typing.get_type_hints(Topic)
    topics = {}
    for name, table in raw.items():
        for key in table:
            if key not in hints:
                raise ConfigError(f"{origin}: unknown key {key!r} in [topics.{name}]")
        checked = {k: _check(f"[topics.{name}] {k}", v, hints[k]) for k, v in table.items()}
        topics[name] = Topic(**checked)
    return topics


def options() -> Iterator[Option]:
    """Every declared option, section by section, in declaration order."""
    for section, cls in sections().items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
            meta, kind = f.metadata, hints[f.name]
            parsed: Parsed | None = meta["parsed"]
            literal = typing.get_origin(kind) is Literal
            yield Option(
                section,
                f.name,
                parsed.raw if parsed else str if literal else kind,
                parsed.show(default) if parsed else default,
                meta["doc"],
                typing.get_args(kind) if literal else (),
                meta["path"],
                meta["secret"],
                parsed,
            )


@dataclass(frozen=True)
class Effective:
    """The loaded configuration and where each value came from.

    ``origins[(section, key)]`` is ``default``, ``file PATH``, ``env OPTGATE_X_Y``
    or, for the state directory and what lies in it, ``derived ...``.
    """

    config: Config
    file: str | None
    origins: Mapping[tuple[str, str], str]


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


def _resolved(option: Option, value: Any, base: Path) -> Any:
    """The value with its relative paths resolved against ``base``."""
    if option.path is None:
        return value
    if isinstance(value, list):
        return [option.path(entry, base) for entry in value]
    return option.path(value, base)


def _values(
    raw: Mapping[str, Any], environ: Mapping[str, str], origin: str, base: Path
) -> tuple[dict[str, dict[str, Any]], dict[tuple[str, str], str]]:
    """Checked values per section (file, then environment) and where each came from."""
    known = sections()
    for section in raw:
        if section not in known and section != "topics":
            raise ConfigError(f"{origin}: unknown section [{section}]")
    for section in known:
        table = raw.get(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{origin}: [{section}] must be a table")
        for key in table:
            if key not in typing.get_type_hints(known[section]):
                raise ConfigError(f"{origin}: unknown key {key!r} in [{section}]")
    values: dict[str, dict[str, Any]] = {section: {} for section in known}
    origins: dict[tuple[str, str], str] = {}
    for option in options():
        where = (option.section, option.key)
        if option.key in raw.get(option.section, {}):
            name = f"[{option.section}] {option.key}"
            value = _check(name, raw[option.section][option.key], option.kind)
            value = _resolved(option, value, base)
            values[option.section][option.key] = option.typed(name, value)
            origins[where] = f"file {origin}"
        if option.env in environ:
            base_kind = typing.get_origin(option.kind) or option.kind
            value = _from_env(option.env, environ[option.env], base_kind)
            value = _check(option.env, value, option.kind)
            here = Path.cwd() if option.path else Path()  # relative to where it is run
            value = _resolved(option, value, here)
            values[option.section][option.key] = option.typed(option.env, value)
            origins[where] = f"env {option.env}"
        origins.setdefault(where, "default")
    return values, origins


_IN_STATE_DIR = {  # options that, left empty, name this file in the state directory
    ("store", "url"): statedir.STORE_FILE,
    ("store", "audit_key_file"): statedir.AUDIT_KEY_FILE,
    ("store", "audit_anchor_file"): statedir.AUDIT_ANCHOR_FILE,
    ("unsubscribe", "key_file"): statedir.KEY_FILE,
}


def _derive(
    values: dict[str, dict[str, Any]],
    origins: dict[tuple[str, str], str],
    environ: Mapping[str, str],
) -> None:
    """Fill in the state directory, and the store and key files that default to it."""
    store = values["store"]
    needed = any(not values[section].get(key) for section, key in _IN_STATE_DIR)
    if not store.get("state_dir"):
        try:
            directory, origins["store", "state_dir"] = statedir.default(environ, os.geteuid())
        except ConfigError:
            if needed:
                raise
            return  # nothing lives there: it need not be found
        store["state_dir"] = str(directory)
    directory = Path(store["state_dir"])
    for (section, key), name in _IN_STATE_DIR.items():
        if not values[section].get(key):
            path = directory / name
            values[section][key] = f"sqlite:///{path}" if key == "url" else str(path)
            origins[section, key] = "derived from the state directory"


def _reject_unknown_env(environ: Mapping[str, str]) -> None:
    known = {"OPTGATE_CONFIG"} | {option.env for option in options()}
    for name in environ:
        if name.startswith("OPTGATE_") and name not in known:
            raise ConfigError(f"unknown environment variable {name}: no such setting")


def effective(path: str | None = None, environ: Mapping[str, str] | None = None) -> Effective:
    """Load settings from a file (or $OPTGATE_CONFIG, or none) plus the environment,
    with the origin of every value."""
    env = os.environ if environ is None else environ
    chosen = path or env.get("OPTGATE_CONFIG") or None
    raw: dict[str, Any] = {}
    base = Path()
    if chosen:
        try:
            raw = tomllib.loads(Path(chosen).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config {chosen}: {exc.strerror}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config {chosen} is not valid TOML: {exc}") from None
        chosen = str(Path(chosen).absolute())
        base = Path(chosen).parent
    values, origins = _values(raw, env, chosen or "environment", base)
    _reject_unknown_env(env)
    _derive(values, origins, env)
    built = {section: cls(**values[section]) for section, cls in sections().items()}
    topics = _topics(raw.get("topics", {}), chosen or "environment")
    return Effective(Config(**built, topics=topics), chosen, origins)


def load(path: str | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Load settings from a file (or $OPTGATE_CONFIG, or none) plus the environment."""
    return effective(path, environ).config
