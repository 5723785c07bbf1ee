"""The partner and offer part of the Store contract, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from suppression.address import normalize
from suppression.errors import OptgateError
from suppression.model import PARTNER_OFFERS, Consent, ImportItem, Reason, now
from suppression.partners import (
    CopyState,
    OfferState,
    Partner,
    UnknownPartner,
    check_credential,
    hash_credential,
)
from suppression.store import Store
from tests.support.backends import Backend

pytestmark = pytest.mark.pure

LEASE = timedelta(minutes=5)


@pytest.fixture
def store(backend: Backend) -> Store:
    return backend.store


def acme() -> Partner:
    return Partner("acme", hash_credential("s3cret"), False, now())


async def consent(store: Store, addresses: list[str], purpose: str, granted: bool = True) -> None:
    records = [
        Consent(normalize(a).sha256, purpose, granted, "test", now(), address=a) for a in addresses
    ]
    await store.record_consents(records, actor="test")


def test_credentials_are_salted_scrypt_hashes() -> None:
    one, two = hash_credential("s3cret"), hash_credential("s3cret")
    assert one != two
    assert one.startswith("scrypt$")
    assert "s3cret" not in one
    assert check_credential("s3cret", one)
    assert check_credential("s3cret", two)
    assert not check_credential("s3cret!", one)
    assert not check_credential("s3cret", "garbage")


async def test_partners_are_added_listed_and_disabled(store: Store) -> None:
    await store.add_partner(acme(), actor="t")
    with pytest.raises(OptgateError, match="exists already"):
        await store.add_partner(acme(), actor="t")
    [listed] = await store.partners()
    assert listed.name == "acme"
    assert not listed.disabled
    assert await store.disable_partner("acme", actor="t") is True
    assert await store.disable_partner("acme", actor="t") is False
    found = await store.partner("acme")
    assert found is not None
    assert found.disabled
    with pytest.raises(UnknownPartner):
        await store.disable_partner("nobody", actor="t")
    assert (await store.verify_chain()).broken_at is None


async def test_offer_audience_is_the_consenting_snapshot(store: Store) -> None:
    await store.add_partner(acme(), actor="t")
    fans = [f"fan{i}@example.com" for i in range(5)]
    await consent(store, fans, PARTNER_OFFERS)
    await consent(store, fans[:1], PARTNER_OFFERS, granted=False)  # revoked later
    await consent(store, fans[:3], "travel")
    plain = await store.add_offer("acme", None, b"Subject: a\r\n\r\nx\r\n", actor="partner:acme")
    topical = await store.add_offer("acme", "travel", b"Subject: b\r\n\r\ny\r\n", actor="t")
    assert await store.offers_since("acme", now() - timedelta(hours=1)) == 2

    assert await store.plan_offers() == 2
    assert await store.plan_offers() == 0
    statuses = {s.id: s for s in await store.offer_statuses("acme")}
    assert statuses[plain].audience == 4  # fan0 revoked
    assert statuses[topical].audience == 2  # fan1, fan2 (fan0 revoked partner offers)
    assert statuses[plain].state is OfferState.RUNNING
    offer = await store.offer(plain)
    assert offer is not None
    assert offer.content.startswith(b"Subject: a")


async def test_copies_are_claimed_once_settled_and_the_offer_finishes(store: Store) -> None:
    await store.add_partner(acme(), actor="t")
    fans = [f"fan{i}@example.com" for i in range(10)]
    await consent(store, fans, PARTNER_OFFERS)
    offer = await store.add_offer("acme", None, b"x", actor="t")
    await store.plan_offers()

    first, second = await asyncio.gather(
        store.claim_copies("node-a", 6, LEASE), store.claim_copies("node-b", 6, LEASE)
    )
    hashes_a = {c.sha256 for c in first}
    hashes_b = {c.sha256 for c in second}
    assert not hashes_a & hashes_b
    assert len(hashes_a | hashes_b) == 10
    assert {c.address for c in first + second} == set(fans)
    assert await store.claim_copies("node-c", 10, LEASE) == []

    # only the owner moves its copies
    assert await store.settle_copies("node-b", offer, sorted(hashes_a), CopyState.SENT) == set()
    sent = await store.settle_copies("node-a", offer, sorted(hashes_a), CopyState.SENT)
    assert sent == hashes_a
    await store.settle_copies("node-b", offer, sorted(hashes_b), CopyState.SUPPRESSED)
    assert await store.finish_offers() == 1
    [status] = await store.offer_statuses(None)
    assert (status.state, status.sent, status.suppressed, status.pending) == (
        OfferState.DONE,
        len(hashes_a),
        len(hashes_b),
        0,
    )


async def test_an_expired_lease_is_taken_over_and_the_old_owner_loses_it(store: Store) -> None:
    await store.add_partner(acme(), actor="t")
    await consent(store, ["one@example.com", "two@example.com"], PARTNER_OFFERS)
    offer = await store.add_offer("acme", None, b"x", actor="t")
    await store.plan_offers()
    dead = await store.claim_copies("dead-node", 10, timedelta(0))
    assert len(dead) == 2
    await asyncio.sleep(0.01)
    alive = await store.claim_copies("live-node", 10, LEASE)
    assert {c.sha256 for c in alive} == {c.sha256 for c in dead}
    assert await store.settle_copies("dead-node", offer, [dead[0].sha256], CopyState.SENT) == set()
    # a temporary failure: back to todo, claimable again after retry_at
    retry = now() + timedelta(hours=1)
    moved = await store.settle_copies(
        "live-node", offer, [alive[0].sha256], CopyState.TODO, retry_at=retry
    )
    assert moved == {alive[0].sha256}
    assert await store.claim_copies("other", 10, LEASE) == []
    [status] = await store.offer_statuses("acme")
    assert status.pending == 2


async def test_offers_pause_resume_and_cancel(store: Store) -> None:
    await store.add_partner(acme(), actor="t")
    await consent(store, ["one@example.com"], PARTNER_OFFERS)
    offer = await store.add_offer("acme", None, b"x", actor="t")
    assert await store.change_offer(offer, "pause", actor="t") is OfferState.PAUSED
    assert await store.plan_offers() == 0
    assert await store.change_offer(offer, "resume", actor="t") is OfferState.QUEUED
    await store.plan_offers()
    assert await store.change_offer(offer, "pause", actor="t") is OfferState.PAUSED
    assert await store.claim_copies("n", 10, LEASE) == []
    assert await store.change_offer(offer, "resume", actor="t") is OfferState.RUNNING
    assert await store.change_offer(offer, "cancel", actor="t") is OfferState.CANCELLED
    assert await store.claim_copies("n", 10, LEASE) == []
    with pytest.raises(OptgateError, match="cannot be resumed"):
        await store.change_offer(offer, "resume", actor="t")
    with pytest.raises(OptgateError, match="no offer 999"):
        await store.change_offer(999, "cancel", actor="t")


async def test_partner_optouts_and_unsubscribed_counts(store: Store) -> None:
    await store.add_partner(acme(), actor="t")
    fans = ["one@example.com", "two@example.com", "three@example.com"]
    await consent(store, fans, PARTNER_OFFERS)
    offer = await store.add_offer("acme", None, b"x", actor="t")
    await store.plan_offers()
    claims = await store.claim_copies("n", 10, LEASE)
    await store.settle_copies("n", offer, [c.sha256 for c in claims], CopyState.SENT)
    one, two = normalize(fans[0]), normalize(fans[1])
    await store.suppress(
        [ImportItem(one.sha256, "sha256", None, Reason.UNSUBSCRIBED)],
        scope="partner:acme",
        source="one-click",
        actor="web",
    )
    # a bounce or an imported list is not an opt-out to hand back
    await store.suppress(
        [ImportItem(two.sha256, "sha256", None, Reason.BOUNCED)],
        scope="partner:acme",
        source="bounce",
        actor="t",
    )
    assert await store.partner_optouts("acme") == [(one.sha256, fans[0])]
    assert await store.partner_optouts("other") == []
    [status] = await store.offer_statuses("acme")
    assert status.unsubscribed == 1


async def test_mark_sent_calls_then_with_the_copies_it_moved(store: Store) -> None:
    await store.add_partner(acme(), actor="t")
    await consent(store, ["one@example.com", "two@example.com"], PARTNER_OFFERS)
    offer = await store.add_offer("acme", None, b"x", actor="t")
    await store.plan_offers()
    mine = await store.claim_copies("me", 1, LEASE)
    theirs = await store.claim_copies("them", 1, LEASE)
    seen: list[set[str]] = []
    hashes = [mine[0].sha256, theirs[0].sha256]
    moved = await store.mark_sent("me", offer, hashes, seen.append)
    assert moved == {mine[0].sha256}
    assert seen == [moved]
    # sent is final: a second commit point moves nothing
    assert await store.mark_sent("me", offer, hashes, seen.append) == set()
    [status] = await store.offer_statuses("acme")
    assert (status.sent, status.pending) == (1, 1)
