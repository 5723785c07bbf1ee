"""The Store interface every backend passes, as narrow interfaces named for their callers
(a caller depends only on what it uses); suppression/opening.py opens one by URL."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from suppression.address import Address
from suppression.apikeys import ApiKey
from suppression.model import (
    AuditEvent,
    BatchResult,
    Consent,
    ConsentItem,
    Facts,
    HeldRequest,
    ImportItem,
    ImportRows,
    Ledger,
    OptOutCheck,
    Send,
    Suppression,
)
from suppression.outbox import Delivery, Webhook
from suppression.partners import Claim, CopyState, Offer, OfferState, OfferStatus, Partner
from suppression.rates import Counts
from suppression.sql.integration import SuppressionFilter
from suppression.statecheck import ChainReport


@dataclass(frozen=True, slots=True)
class SoftBounce:
    """A soft bounce counted against an address: the reporting message's digest, when."""

    message: str
    at: datetime


@dataclass(frozen=True, slots=True)
class OfferCopy:
    """An address's copy of a partner's offer (the fan-out's row)."""

    offer: int
    partner: str
    state: str
    until: datetime


@dataclass(frozen=True, slots=True)
class SubjectRecord:
    """Everything the store holds about one address."""

    suppressions: tuple[Suppression, ...]
    consents: tuple[Consent, ...]
    events: tuple[AuditEvent, ...]
    sends: tuple[Send, ...]  # the send ledger: what was sent, when, on which topic
    held: tuple[HeldRequest, ...]  # opt-outs and lifts waiting for their mailed link
    soft_bounces: tuple[SoftBounce, ...]
    deliveries: tuple[Delivery, ...]  # webhook outbox events about the address
    offer_copies: tuple[OfferCopy, ...]


@dataclass(frozen=True, slots=True)
class Erasure:
    """What ``erase`` did."""

    cleared: int  # records whose plaintext or evidence was deleted
    revoked: int  # consents revoked (one per purpose whose latest record was a grant)


@dataclass(frozen=True, slots=True)
class Holder:
    """What a token's recipient hash leads to: for pages that must not see more."""

    address: str | None  # plaintext if the store keeps it
    suppressions: tuple[Suppression, ...]  # keyed by this hash (not domain or MD5 rows)
    consents: tuple[Consent, ...]  # the latest record per purpose

    @classmethod
    def of(cls, suppressions: Sequence[Suppression], consents: Sequence[Consent]) -> Holder:
        """From a hash's suppressions and all its consent records, oldest first."""
        latest = {c.purpose: c for c in consents}
        known = [s.address for s in suppressions] + [c.address for c in consents]
        address = next((a for a in known if a and not a.startswith("@")), None)
        return cls(address, tuple(suppressions), tuple(latest[p] for p in sorted(latest)))

    def consented(self) -> tuple[str, ...]:
        """Purposes whose latest record is a grant."""
        return tuple(c.purpose for c in self.consents if c.granted)


class ApiKeys(Protocol):
    """The REST API's keys (suppression/apikeys.py): digests only."""

    async def add_api_key(self, key: ApiKey, *, actor: str) -> None:
        """Store a key; a name a live key has is an error. Audited."""

    async def api_keys(self) -> list[ApiKey]:
        """Every key, revoked ones too, by name."""

    async def api_key(self, key_id: str) -> ApiKey | None:
        """One key by its id, or None."""

    async def revoke_api_key(self, name: str, at: datetime, *, actor: str) -> bool:
        """Revoke the live key of that name; False if there is none. Audited."""


class Webhooks(Protocol):
    """Webhook endpoints and the outbox their deliveries wait in (suppression/outbox.py).

    Every audited change of a suppression or a consent adds its events to the outbox in
    its own transaction; deliveries are leased, settled by their owner, retried, or dead.
    """

    async def add_webhook(self, hook: Webhook, *, actor: str) -> None:
        """Register an endpoint; a name in use is an error. Audited."""

    async def webhooks(self) -> list[Webhook]:
        """Every endpoint, by name."""

    async def remove_webhook(self, name: str, *, actor: str) -> bool:
        """Remove an endpoint and its deliveries; False if unknown. Audited."""

    async def rotate_webhook(self, name: str, secret: str, until: datetime, *, actor: str) -> bool:
        """Sign with a new secret, the old one valid until ``until``. Audited."""

    async def deliveries_due(self, at: datetime) -> bool:
        """Whether any delivery is due (a read)."""

    async def claim_deliveries(
        self, owner: str, limit: int, *, at: datetime, until: datetime
    ) -> list[Delivery]:
        """Lease deliveries due at ``at`` until ``until``."""

    async def delivered(self, owner: str, delivery: int, status: str, at: datetime) -> bool:
        """Mark this owner's delivery done; False if it is not this owner's any more."""

    async def undelivered(
        self, owner: str, delivery: int, status: str, due: datetime | None
    ) -> bool:
        """A failed attempt: due again at ``due``, or dead (None)."""

    async def deliveries(self, state: str | None, limit: int) -> list[Delivery]:
        """The latest deliveries (of one state, or all), newest first."""

    async def outbox_counts(self) -> dict[str, int]:
        """Deliveries per state."""

    async def retry_deliveries(self, ids: Sequence[int] | None, at: datetime, *, actor: str) -> int:
        """Make dead deliveries due again (those ids, or all); how many. Audited."""

    async def prune_deliveries(self, before: datetime) -> int:
        """Forget deliveries done before a time."""


class Listings(Protocol):
    """What the REST API reads beyond the command line's reports."""

    async def list_suppressions(self, f: SuppressionFilter, limit: int) -> list[Suppression]:
        """One page of suppressions in key order after ``f.after``."""

    async def rates(self, since: datetime) -> list[Counts]:
        """Sends and the opt-outs after them per topic and campaign, since a time."""


class SuppressionImport(Protocol):
    """One suppression import, all or nothing (``Store.suppression_import``).

    Batches are staged where no reader sees them (SQLite: a private temporary
    database; PostgreSQL: a temporary table of the run's own transaction), so
    memory stays flat and the store's write lock is not held while the file is
    read. ``commit`` then adds every staged row that is not there yet in one
    transaction, in key order, with one audit event. Without ``commit`` (an
    error, a kill) the store is exactly as before. The first of several rows
    with the same key and scope wins; an existing suppression keeps its reason.
    """

    async def add(self, segments: Sequence[ImportRows]) -> None:
        """Stage a batch: segments of rows, in the order of the file."""

    async def commit(self) -> BatchResult:
        """Write what was staged; the counts of the whole run (``present``: suppressed
        before, ``duplicates``: repeated within the input)."""


class ConsentImport(Protocol):
    """One consent import, all or nothing (``Store.consent_import``): one write
    transaction from the first batch to ``commit`` (which appends the run's one audit
    event), so each batch is compared with the records on file and with the run's own
    earlier rows (rows.new_consents). Other writers wait while it runs."""

    async def add(self, items: Sequence[ConsentItem]) -> BatchResult:
        """Append the batch's records that are not on record yet; its counts."""

    async def commit(self) -> None:
        """Append the audit event (if anything was added) and commit."""


class Lookups(Protocol):
    """The relay's per-message facts and its send ledger (gateway/outbound/pipeline.py)."""

    async def lookup_many(
        self,
        recipients: Sequence[Address],
        scopes: Sequence[str],
        purpose: str | None,
        ledger: Ledger | None = None,
    ) -> dict[str, Facts]:
        """Facts for every recipient (keyed by sha256) in one round trip."""

    async def record_sends(self, sends: Sequence[Send]) -> None:
        """Write send ledger rows (one per message and recipient, the last wins); a row in
        state ``unsent`` is removed instead (suppression/sql/ledger.py)."""

    async def hold_sends(self, sends: Sequence[Send], then: Callable[[], None]) -> None:
        """The relay's commit point: ``sends`` (rows in state ``held``) committed, then
        ``then()`` (a copy's final ".") called straight after, with no other task between."""


class Auditing(Protocol):
    """An audit event of its own: a read that is audited (a subject access, a request)."""

    async def audit(
        self, *, actor: str, action: str, subject: str | None, detail: Mapping[str, object] = {}
    ) -> int:
        """Append an audit event that goes with no other change (e.g. a subject access)."""


class OptOuts(Auditing, Protocol):
    """What every opt-out channel changes and reads (web, inbound, CLI, partners, API)."""

    async def suppress(
        self,
        items: Sequence[ImportItem],
        *,
        scope: str,
        source: str,
        actor: str,
        evidence: str | None = None,
        note: Mapping[str, object] | None = None,
    ) -> BatchResult:
        """Add suppressions in one transaction with one audit event; existing ones stay.

        ``evidence`` is kept on each new row, ``note`` only in the audit event.
        """

    async def unsuppress(self, keys: Sequence[str], *, scope: str, actor: str) -> int:
        """Lift suppressions (audited); return how many existed."""

    async def record_consents(self, consents: Sequence[Consent], *, actor: str) -> int:
        """Append consent or revocation records in one transaction; return how many."""

    async def erase(self, address: Address, *, actor: str) -> Erasure:
        """Delete plaintext and evidence, revoke every consent and keep a tombstone (a
        global suppression, reason erased, keyed by the hash alone); audited. Afterwards
        no byte of the address is left in the store's files (SQLite) or rows (PostgreSQL)."""

    async def holder(self, sha256: str) -> Holder:
        """Suppressions and current consents of one identity hash."""


class InboundFacts(Protocol):
    """What inbound mail and ESP notifications need: short tokens resolve through the
    ledger, soft bounces are counted, replay keys accepted once."""

    async def sent_to(self, prefix: str) -> list[tuple[str, str]]:
        """(recipient hash, topic) pairs of the send ledger whose hash starts with ``prefix``."""

    async def record_soft_bounce(
        self,
        sha256: str,
        message: str,
        *,
        at: datetime,
        actor: str,
        detail: Mapping[str, object],
    ) -> bool:
        """Count one soft bounce per (recipient, reporting message), audited; False if known."""

    async def soft_bounces(self, sha256: str, since: datetime, until: datetime) -> frozenset[str]:
        """The reporting messages of a recipient's soft bounces from ``since`` to ``until``."""

    async def claim_esp_token(
        self, vendor: str, token: str, *, at: datetime, forget_before: datetime
    ) -> bool:
        """Record a notification's replay key; False if it is on record (a replay). Keys
        recorded before ``forget_before`` are forgotten first: a replay that late is stale."""

    async def release_esp_token(self, vendor: str, token: str) -> None:
        """Forget a key whose notification was not applied, so that the vendor's retry is."""


class RateLimits(Protocol):
    """Per-source rate limits (gateway/runtime/ratelimit.py), for every node at once."""

    async def take_rate(
        self, buckets: Sequence[tuple[str, int]], *, window: int, at: datetime
    ) -> bool:
        """Count one event in each (key, limit) bucket's current fixed window of ``window``
        seconds if every one is below its limit, for every node at once; if any is full,
        change nothing and return False. Windows are at most an hour long (limits of
        several windows share the counters); counts of windows over for an hour go."""


class HeldRequests(Protocol):
    """Opt-outs by mail held for a confirmation link (gateway/web/held.py)."""

    async def hold_request(self, request: HeldRequest, *, actor: str) -> HeldRequest:
        """Keep a request until its link is used (audited); the one on record if its
        secret is known already."""

    async def held_request(self, secret: str) -> HeldRequest | None:
        """The request whose link secret hashes to ``secret``, or None."""

    async def mark_mailed(self, secret: str, *, at: datetime) -> None:
        """Record that a request's link went to the next hop."""

    async def finish_request(
        self, secret: str, *, at: datetime, actor: str, detail: Mapping[str, object]
    ) -> bool:
        """Mark a request done (audited with ``detail``); False when it was done already."""


class PartnerReports(Protocol):
    """What partner reports and imports read (gateway/actions.py, suppression/importing.py):
    the partners, their offers' counts."""

    async def partner(self, name: str) -> Partner | None:
        """One partner, or None."""

    async def partners(self) -> list[Partner]:
        """Every partner, by name."""

    async def offer_statuses(self, partner: str | None) -> list[OfferStatus]:
        """Offers (of one partner, or all) with exact fan-out counts, oldest first."""


class OfferQueue(PartnerReports, Protocol):
    """Partners, offers and their fan-out (suppression/partners.py, gateway/partners/fanout.py)."""

    async def add_partner(self, partner: Partner, *, actor: str) -> None:
        """Register a partner (credential hashed); an existing name is an error. Audited."""

    async def disable_partner(self, name: str, *, actor: str) -> bool:
        """Refuse the partner from now on; False if it was already. Audited."""

    async def add_offer(
        self, partner: str, topic: str | None, content: bytes, *, actor: str
    ) -> int:
        """Store an offer (queued), committed on return; its id. Audited."""

    async def offers_since(self, partner: str, since: datetime) -> int:
        """How many offers a partner submitted since a time."""

    async def offer(self, offer_id: int) -> Offer | None:
        """One offer with its content."""

    async def change_offer(self, offer_id: int, action: str, *, actor: str) -> OfferState:
        """pause / resume / cancel; the new state. Audited."""

    async def plan_offers(self) -> int:
        """Snapshot the audience of each queued offer into its copies; how many offers."""

    async def claim_copies(self, owner: str, limit: int, lease: timedelta) -> list[Claim]:
        """Lease open copies of running offers (never one another owner's live lease holds)."""

    async def settle_copies(
        self,
        owner: str,
        offer: int,
        sha256s: Sequence[str],
        state: CopyState,
        *,
        retry_at: datetime | None = None,
    ) -> set[str]:
        """Move this owner's claimed or sent copies to a state; the hashes that moved."""

    async def mark_sent(
        self, owner: str, offer: int, sha256s: Sequence[str], then: Callable[[set[str]], None]
    ) -> set[str]:
        """The commit point: mark this owner's claimed copies sent and call ``then(moved)``
        as soon as the change can no longer be lost with this process (SQLite: committed;
        PostgreSQL: the COMMIT is on its way to the server), before anything else runs."""

    async def finish_offers(self) -> int:
        """Mark running offers without open copies done."""

    async def partner_optouts(self, partner: str) -> list[tuple[str, str | None]]:
        """(hash, plaintext if kept) of the people who opted out of a partner's offers."""


class Subjects(Protocol):
    """What the store holds about one address (a subject access, an address checked)."""

    async def subject(self, address: Address) -> SubjectRecord:
        """Every record about one address."""


class Reports(Protocol):
    """The reports the command line and the REST API both make (gateway/actions.py)."""

    def compliance(self) -> AsyncIterator[OptOutCheck]:
        """Every address opt-out with the count and last time of mail relayed after it."""

    async def verify_chain(self, expect: Sequence[tuple[int, str]] = ()) -> ChainReport:
        """Walk the audit log, check every link and rebuild the suppression and consent
        state it vouches for against the tables (suppression/statecheck.py); ``expect``:
        (seq, digest) heads anchored earlier that the chain must still hold."""


class Admin(Subjects, Reports, Protocol):
    """The command line's imports, reports, exports and checks."""

    def suppression_import(
        self, *, actor: str, note: Mapping[str, object]
    ) -> AbstractAsyncContextManager[SuppressionImport]:
        """A suppression import run; ``note`` (file, format) goes in its audit event."""

    def consent_import(
        self, *, actor: str, note: Mapping[str, object]
    ) -> AbstractAsyncContextManager[ConsentImport]:
        """A consent import run; ``note`` goes in its audit event."""

    def iter_suppressions(self, scope: str | None) -> AsyncIterator[Suppression]:
        """Stream suppressions (of one scope, or all)."""

    def iter_consents(self, purpose: str | None) -> AsyncIterator[Consent]:
        """Stream consent records (of one purpose, or all)."""

    def iter_events(self) -> AsyncGenerator[AuditEvent, None]:
        """Stream the audit log in sequence order."""

    async def close(self) -> None:
        """Release connections."""


class Store(
    Lookups,
    OptOuts,
    InboundFacts,
    RateLimits,
    HeldRequests,
    OfferQueue,
    Admin,
    ApiKeys,
    Webhooks,
    Listings,
    Protocol,
):
    """Suppressions, consents and the audit log, behind one async interface: every
    narrow interface at once (what a backend implements, and what opening one gives)."""


class Partnering(OfferQueue, Lookups, Protocol):
    """The partner fan-out (gateway/partners/fanout.py): offers, the relay's facts, the ledger."""


class Confirmations(HeldRequests, RateLimits, OptOuts, Protocol):
    """Opt-outs held for a mailed link (gateway/web/held.py): counted, held, then applied."""


class InboundApply(InboundFacts, OptOuts, Protocol):
    """Inbound findings applied (gateway/inbound/apply.py)."""


class Mailbox(InboundFacts, Confirmations, Protocol):
    """The inbound listener (gateway/inbound/): findings applied, or held for a link."""


class Importer(Admin, PartnerReports, Protocol):
    """Imports and exports (suppression/importing.py, gateway/cli/bulk.py): the runs, and
    the partners a row's scope must name."""


class Checks(Lookups, Subjects, Protocol):
    """Addresses checked (gateway/actions.py: check, explain): the relay's facts, and the
    suppressions on record."""


class SubjectAccess(Subjects, Auditing, Protocol):
    """A data subject's access (gateway/actions.py): every record, the access audited."""


class ConsentRequests(Lookups, Auditing, Protocol):
    """Double opt-in requests (gateway/web/optin.py): the verdict, the request audited."""


class RestApi(Lookups, OptOuts, Subjects, Reports, PartnerReports, ApiKeys, Listings, Protocol):
    """The REST API (gateway/api/routes.py): its keys, the command line's operations
    (checks, opt-outs, consents, subjects, reports) and the listings."""
