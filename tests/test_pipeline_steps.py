"""The declared pipelines driven without a socket (issue 16): OUTBOUND and PARTNER_OFFERS
over a SQLite store, the next hop scripted. A table of cases -> each recipient's reply,
what the next hop was given (rendered, signed), what the ledger and the offer queue hold;
then every pipeline with a step dropped or two swapped fails that table."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, closing
from dataclasses import dataclass, field, replace
from email import message_from_bytes
from email.policy import default
from pathlib import Path
from typing import Any

import dkim
import pytest

from gateway.config import Config
from gateway.keygen import generate, private_pem, record_value, write_private
from gateway.outbound import pipelines
from gateway.outbound.message import Decision, Envelope
from gateway.outbound.pipeline import Pipeline
from gateway.outbound.policy import Verdict
from gateway.outbound.steps import Copy, Mail, Services, Step, Steps, evolve, run
from gateway.partners.fanout import FanOut
from gateway.runtime.metrics import Metrics
from gateway.runtime.service import build_pipeline
from gateway.smtp.outcomes import ALREADY, DROPPED, RELAYED, UNCERTAIN
from gateway.smtp.relay import Commit, Outcome
from gateway.smtp.xforward import Forwarded
from gateway.tokens import TokenSigner
from suppression.address import normalize
from suppression.model import PARTNER_OFFERS, Consent, ImportItem, Reason, Send, now
from suppression.opening import open_store
from suppression.partners import Partner, hash_credential
from suppression.scope import Scope
from suppression.store import Store
from tests.support.keys import AUDIT_KEY
from tests.support.smtp import gateway_config, message

pytestmark = pytest.mark.pure

DOMAIN, SELECTOR = "sender.example", "s1"
SENDER = f"news@{DOMAIN}"
DKIM_DOMAINS = (DOMAIN, "example.com")
FAN, FAN2 = "fan@example.com", "fan2@example.com"  # consented to marketing (and offers)
GONE = "gone@example.com"  # consented, then unsubscribed (global)
STRANGER = "stranger@example.com"  # no consent
DEALS = "deals@example.com"  # consented to partner offers and to the topic "deals"
TOKEN_KEY = bytes(range(32, 64))
RESETS = f"noreply@{DOMAIN}"  # [policy] transactional_senders: password resets, no header
APP_SERVER = Forwarded.start({"ADDR": "10.1.2.3"})  # in [policy] transactional_networks


@pytest.fixture(autouse=True)
def no_sockets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any connection attempt fails the test: the pipeline runs on values and a file."""

    def refuse(*args: Any) -> None:
        raise AssertionError("a socket-free test tried to connect")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


# --- a scripted next hop ------------------------------------------------------------------


@dataclass
class Given:
    """One copy the next hop was given."""

    sender: str
    rcpt: str
    data: bytes
    options: tuple[str, ...]
    ledger_at_end: str | None  # the ledger's state of the copy when its "." went out
    client: Forwarded | None = None  # the original client, for the next hop's XFORWARD


@dataclass
class ScriptedHop:
    """A next hop whose answer per recipient is scripted: 250 (default), a refusal at RCPT
    ("451", "554"), or "lost" (the "." went out, no reply came)."""

    ledger_state: Callable[[str], str | None]
    script: Mapping[str, str] = field(default_factory=dict)
    eight_bit: bool = True
    given: list[Given] = field(default_factory=list)

    async def offers_8bitmime(self) -> bool:
        return self.eight_bit

    async def send(
        self, mail_from: str, rcpt: str, data: bytes, options: Sequence[str] = ()
    ) -> Outcome:
        self.given.append(Given(mail_from, rcpt, data, tuple(options), None))
        return Outcome(250, "2.0.0 queued")

    async def send_committed(
        self,
        mail_from: str,
        rcpt: str,
        data: bytes,
        commit: Commit,
        options: Sequence[str] = (),
        xforward: Forwarded | None = None,
    ) -> Outcome | None:
        answer = self.script.get(rcpt, "250")
        if answer in ("451", "554"):
            return Outcome(int(answer), f"{answer[0]}.0.0 scripted")
        ended: list[str | None] = []

        def finish() -> None:
            ended.append(self.ledger_state(rcpt))

        if not await commit(finish) or not ended:
            return None
        self.given.append(Given(mail_from, rcpt, data, tuple(options), ended[0], xforward))
        if answer == "lost":
            return Outcome(451, "no reply after the end of data (TimeoutError)", True)
        return Outcome(250, "2.0.0 queued")


# --- the world: a configuration, a SQLite store, keys -------------------------------------


@dataclass
class World:
    config: Config
    store: Store
    path: Path
    hop: ScriptedHop
    pipeline: Pipeline
    signer: TokenSigner
    dns: Mapping[str, str]

    @property
    def list_domain(self) -> str:
        return self.config.unsubscribe.list_domain

    @property
    def services(self) -> Services:
        return self.pipeline.services

    def rows(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        with closing(sqlite3.connect(self.path)) as db:
            return db.execute(sql, args).fetchall()

    def ledger(self, message: str) -> dict[str, str | None]:
        """The send ledger's rows of a message: recipient -> state (None: delivered)."""
        rows = dict(self.rows("SELECT sha256, state FROM send WHERE message = ?", message))
        return {a: rows[normalize(a).sha256] for a in EVERYONE if normalize(a).sha256 in rows}

    def verifies(self, data: bytes) -> bool:
        def lookup(name: bytes, timeout: int = 5) -> bytes:
            return self.dns.get(name.decode(), "").encode()

        return bool(dkim.DKIM(data).verify(dnsfunc=lookup))


EVERYONE = (FAN, FAN2, GONE, STRANGER, DEALS)


@asynccontextmanager
async def fresh(tmp_path: Path) -> AsyncIterator[World]:
    """A store with the people above and the partner acme, a scripted hop, the pipeline."""
    await asyncio.to_thread(tmp_path.mkdir, parents=True, exist_ok=True)
    key = generate("ed25519")
    write_private(tmp_path / "dkim.pem", private_pem(key))
    # the sender's domain, and the company's (partner offers are From it)
    keys = ",".join(f"{d}:{SELECTOR}:ed25519:{tmp_path / 'dkim.pem'}" for d in DKIM_DOMAINS)
    config = gateway_config(
        tmp_path,
        9,
        dkim_keys=keys,
        policy_transactional_senders=RESETS,
        policy_transactional_networks="10.0.0.0/8",
    )
    path = tmp_path / "pipeline.db"
    store = await open_store(f"sqlite:///{path}", audit_key=AUDIT_KEY)
    consents = [
        Consent(normalize(a).sha256, purpose, True, "test", now(), address=a)
        for a in (FAN, FAN2, GONE, DEALS)
        for purpose in ("marketing", PARTNER_OFFERS)
    ] + [
        Consent(normalize(a).sha256, "deals", True, "test", now(), address=a) for a in (FAN2, DEALS)
    ]
    await store.record_consents(consents, actor="test")
    gone = normalize(GONE)
    item = ImportItem(gone.sha256, "sha256", gone.normalized, Reason.UNSUBSCRIBED)
    await store.suppress([item], scope="global", source="test", actor="test")
    await store.add_partner(Partner("acme", hash_credential("s3cret"), False, now()), actor="t")

    def ledger_state(rcpt: str) -> str | None:
        sha = normalize(rcpt).sha256
        with closing(sqlite3.connect(path)) as db:
            rows = db.execute("SELECT state FROM send WHERE sha256 = ?", (sha,)).fetchall()
        return rows[-1][0] if rows else "none"

    hop = ScriptedHop(ledger_state)
    signer = TokenSigner([TOKEN_KEY])
    pipeline = build_pipeline(config, store, hop, signer, Metrics())
    dns = {f"{SELECTOR}._domainkey.{d}.": record_value(key) for d in DKIM_DOMAINS}
    try:
        yield World(config, store, path, hop, pipeline, signer, dns)
    finally:
        pipeline.close()
        await store.close()


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async with fresh(tmp_path) as made:
        yield made


# --- OUTBOUND: the table ------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """A message to some recipients, what the ledger had, what the next hop says."""

    name: str
    rcpts: tuple[str, ...]
    replies: tuple[str, ...]  # per recipient: relayed, dropped, already, uncertain, 451, 554
    given: tuple[str, ...]  # the recipients the next hop was given a copy for
    ledger: Mapping[str, str | None]  # after: recipient -> state (None: delivered)
    headers: Mapping[str, str] = field(default_factory=dict)
    before: Mapping[str, str | None] = field(default_factory=dict)  # the ledger had
    script: Mapping[str, str] = field(default_factory=dict)
    links: bool = True  # each copy carries its recipient's unsubscribe links
    sender: str = SENDER  # the envelope sender
    client: Forwarded | None = None  # the original client (XFORWARD, else the session's)
    class_by: str = "default"  # what classify took the class from


TRANSACTIONAL = {"X-Optgate-Class": "transactional"}
CASES = (
    Case(
        "marketing: kept, unsubscribed, no consent",
        (FAN, GONE, STRANGER),
        ("relayed", "dropped", "dropped"),
        (FAN,),
        {FAN: None},
    ),
    Case(
        "transactional: exempt from the opt-out, no links",
        (FAN, GONE),
        ("relayed", "relayed"),
        (FAN, GONE),
        {FAN: None, GONE: None},
        headers=TRANSACTIONAL,
        links=False,
        class_by="header",
    ),
    Case(
        "transactional by envelope sender: no header, exempt from the opt-out, no links",
        (GONE, STRANGER, FAN),
        ("relayed", "relayed", "relayed"),
        (GONE, STRANGER, FAN),
        {FAN: None, GONE: None, STRANGER: None},
        sender=RESETS,
        links=False,
        class_by="sender",
    ),
    Case(
        "the class header wins over a transactional sender",
        (FAN, GONE),
        ("relayed", "dropped"),
        (FAN,),
        {FAN: None},
        headers={"X-Optgate-Class": "marketing"},
        sender=RESETS,
        class_by="header",
    ),
    Case(
        "transactional by the original client's network (XFORWARD ADDR)",
        (FAN, STRANGER),
        ("relayed", "relayed"),
        (FAN, STRANGER),
        {FAN: None, STRANGER: None},
        client=APP_SERVER,
        links=False,
        class_by="network",
    ),
    Case(
        "a retry: the delivered copy is not sent again",
        (FAN, FAN2),
        ("already", "relayed"),
        (FAN2,),
        {FAN: None, FAN2: None},
        before={FAN: None},
    ),
    Case(
        "a retry: uncertain and held copies are not sent again",
        (FAN, FAN2),
        ("uncertain", "uncertain"),
        (),
        {FAN: "uncertain", FAN2: "held"},
        before={FAN: "uncertain", FAN2: "held"},
    ),
    Case(
        "the next hop defers one, refuses one, loses the reply of one",
        (FAN, FAN2, DEALS),
        ("451", "554", "uncertain"),
        (DEALS,),
        {DEALS: "uncertain"},
        script={FAN: "451", FAN2: "554", DEALS: "lost"},
    ),
    Case(
        "a recipient given twice is one copy",
        (FAN, FAN.upper()),
        ("relayed", "relayed"),
        (FAN,),
        {FAN: None},
    ),
    Case(
        "a bad control header refuses the message",
        (FAN, FAN2),
        ("550", "550"),
        (),
        {},
        headers={"X-Optgate-Class": "bulk"},
    ),
)
NAMED = {"relayed": RELAYED, "dropped": DROPPED, "already": ALREADY, "uncertain": UNCERTAIN}


def content(case: Case) -> bytes:
    return message(headers={"X-Optgate-Topic": "marketing", **case.headers})


async def outbound(world: World, case: Case, steps: Steps) -> Mail:
    """Run a case: the ledger as it was before, the script, the steps."""
    data = content(case)
    envelope = Envelope(case.sender, case.rcpts, data, ("BODY=8BITMIME",), case.client)
    classified = await pipelines.OUTBOUND[0](Mail(envelope), world.services)
    if case.before and classified.message is not None:
        key = classified.message.ledger_key
        rows = [
            Send(key, normalize(a).sha256, "marketing", "marketing", now(), None, state)
            for a, state in case.before.items()
        ]
        await world.store.record_sends(rows)
    world.hop.script, world.hop.given = case.script, []
    return await run(steps, Mail(envelope), world.services)


def check(world: World, case: Case, mail: Mail) -> None:
    """What the case says, on the finished Mail, the next hop and the ledger."""
    assert mail.result is not None, "no step answered the message"
    got = [str(r) for r in mail.result.replies]
    assert len(got) == len(case.rcpts), "not one reply per recipient"
    for reply, expected in zip(got, case.replies, strict=True):
        if expected in NAMED:
            assert reply == str(NAMED[expected])
        else:
            assert reply[:3] == expected
    assert [g.rcpt for g in world.hop.given] == list(case.given)
    if mail.message is not None:
        assert mail.message.class_by == case.class_by
    # only the copies that go out are rendered: never one the ledger says went before
    rendered = {c.decision.raw for c in mail.copies if c.data}
    assert rendered == set(case.given) | {r for r, w in case.script.items() if w != "lost"}
    for given in world.hop.given:
        assert given.ledger_at_end == "held", "the copy was not held before its final '.'"
        assert given.options == ("BODY=8BITMIME",)
        assert given.client == case.client, "the original client was not passed on"
        assert world.verifies(given.data), "not signed after the rewrite"
        copy = message_from_bytes(given.data, policy=default)
        assert copy["X-Optgate-Topic"] is None
        assert copy["X-Optgate-Class"] is None
        if case.links:
            assert copy["List-Id"] == f"marketing <marketing.{world.list_domain}>"
            token = str(copy["List-Unsubscribe"]).split("/u/")[1].split(">")[0]
            claims = world.signer.verify(token)
            assert claims.scope == Scope.topic("marketing")
            assert claims.recipient == normalize(given.rcpt).sha256
            assert f"/u/{token}".encode() in given.data.split(b"\r\n\r\n", 1)[1]  # footer
        else:
            assert copy["List-Unsubscribe"] is None
            assert given.sender == case.sender
    key = mail.message.ledger_key if mail.message else ""
    assert world.ledger(key) == dict(case.ledger)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_outbound(world: World, case: Case) -> None:
    check(world, case, await outbound(world, case, pipelines.OUTBOUND))


async def test_outbound_counts_what_it_did(world: World) -> None:
    [retry] = [c for c in CASES if c.before == {FAN: None}]
    await outbound(world, retry, pipelines.OUTBOUND)
    registry = world.services.metrics.registry
    assert registry.get_sample_value("optgate_already_delivered_total") == 1
    keep = {"verdict": "keep", "reason": "already-delivered"}
    assert registry.get_sample_value("optgate_recipients_total", keep) == 1
    assert registry.get_sample_value("optgate_messages_total", {"reply": "2xx"}) == 1


async def test_the_relay_step_is_replaceable(world: World) -> None:
    """A scripted relay step instead of the next hop: the other steps do the rest."""

    class Scripted:
        name = "relay"

        async def __call__(self, mail: Mail, services: Services) -> Mail:
            return mail.with_copies(
                {
                    i: replace(c, outcome=Outcome(554, "5.7.1 scripted"))
                    for i, c in enumerate(mail.copies)
                    if c.sends
                }
            )

    steps = tuple(Scripted() if s.name == "relay" else s for s in pipelines.OUTBOUND)
    [first] = [c for c in CASES if c.rcpts == (FAN, GONE, STRANGER)]
    mail = await outbound(world, first, steps)
    assert mail.result is not None
    assert [r.code for r in mail.result.replies] == [554, 250, 250]
    assert world.hop.given == []
    assert world.ledger(mail.message.ledger_key if mail.message else "") == {}


# --- PARTNER_OFFERS -----------------------------------------------------------------------


@dataclass(frozen=True)
class OfferCase:
    name: str
    topic: str | None
    states: Mapping[str, str]  # recipient -> its copy's state after one batch
    ledger: Mapping[str, str | None]
    script: Mapping[str, str] = field(default_factory=dict)
    revoked: tuple[str, ...] = ()  # their consent to the audience topic, after planning


OFFER_CASES = (
    OfferCase(
        "each outcome settles its copy",
        None,
        {FAN: "sent", FAN2: "todo", DEALS: "failed", GONE: "suppressed"},
        {FAN: None},
        {FAN2: "451", DEALS: "554"},
    ),
    OfferCase(
        "a lost reply stays sent, never twice",
        None,
        {FAN: "sent", FAN2: "sent", DEALS: "sent", GONE: "suppressed"},
        {FAN: None, FAN2: None, DEALS: None},
        {FAN2: "lost"},
    ),
    OfferCase(
        "the audience topic's consent is asked again",
        "deals",
        {DEALS: "sent", FAN2: "suppressed"},
        {DEALS: None},
        revoked=(FAN2,),
    ),
)


async def fan_out(world: World, case: OfferCase) -> tuple[int, dict[str, str]]:
    """Store an offer and run one batch of the fan-out; the offer and its copies' states."""
    offer = message(headers={"X-Optgate-Topic": "ignored"}, message_id="<o1@acme.example>")
    offer_id = await world.store.add_offer("acme", case.topic, offer, actor="test")
    await world.store.plan_offers()
    revoked = [Consent(normalize(a).sha256, "deals", False, "test", now()) for a in case.revoked]
    await world.store.record_consents(revoked, actor="test")
    world.hop.script, world.hop.given = case.script, []
    u = world.config.unsubscribe
    worker = FanOut(
        pipeline=world.pipeline,
        settings=world.config.partners,
        company=u.company,
        postal_address=u.postal_address,
        owner="node-1",
    )
    assert await worker.step()
    states = dict(world.rows("SELECT sha256, state FROM offer_copy WHERE offer = ?", offer_id))
    return offer_id, {
        a: states[normalize(a).sha256] for a in EVERYONE if normalize(a).sha256 in states
    }


def check_offer(world: World, case: OfferCase, offer_id: int, states: dict[str, str]) -> None:
    assert states == dict(case.states)
    assert world.ledger(f"offer-{offer_id}") == dict(case.ledger)
    went = [a for a, s in case.script.items() if s == "lost"] + [
        a for a, s in case.states.items() if s == "sent" and a not in case.script
    ]
    assert sorted(g.rcpt for g in world.hop.given) == sorted(went)
    for given in world.hop.given:
        assert given.ledger_at_end == "none"  # the offer queue commits, not the ledger
        assert given.options == ()
        assert world.verifies(given.data)
        copy = message_from_bytes(given.data, policy=default)
        assert copy["From"] == f"acme via {world.config.unsubscribe.company} <offers@example.com>"
        assert copy["List-Id"] == f"{PARTNER_OFFERS} <{PARTNER_OFFERS}.{world.list_domain}>"
        token = str(copy["List-Unsubscribe"]).split("/u/")[1].split(">")[0]
        assert world.signer.verify(token).scope == Scope.partner("acme")
        assert b"acme" in given.data.split(b"\r\n\r\n", 1)[1]  # the partner footer


@pytest.mark.parametrize("case", OFFER_CASES, ids=[c.name for c in OFFER_CASES])
async def test_partner_offers(world: World, case: OfferCase) -> None:
    check_offer(world, case, *await fan_out(world, case))


# --- the lists themselves -----------------------------------------------------------------

NAMES = ["classify", "decide", "skip_delivered", "render", "sign", "relay", "record"]


def test_both_pipelines_are_the_same_list_of_steps() -> None:
    assert [s.name for s in pipelines.OUTBOUND] == NAMES
    assert [s.name for s in pipelines.PARTNER_OFFERS] == NAMES
    shared = [a is b for a, b in zip(pipelines.OUTBOUND, pipelines.PARTNER_OFFERS, strict=True)]
    # decide, skip_delivered, render and sign are one implementation; an offer has its
    # own class, its own commit point (the offer queue) and its own record
    assert shared == [False, True, True, True, True, False, False]


def variants(steps: Steps) -> Iterator[tuple[str, Steps]]:
    """The list with one step dropped, and with two neighbours swapped."""
    for i, step in enumerate(steps):
        yield f"without {step.name}", steps[:i] + steps[i + 1 :]
    for i in range(len(steps) - 1):
        swapped: list[Step] = list(steps)
        swapped[i], swapped[i + 1] = swapped[i + 1], swapped[i]
        yield f"{steps[i + 1].name} before {steps[i].name}", tuple(swapped)


async def fails(attempt: Callable[[], Any]) -> bool:
    try:
        await attempt()
    except Exception:  # a wrong answer, or a step that found its input missing
        return True
    return False


@pytest.mark.parametrize("name", [name for name, _ in variants(pipelines.OUTBOUND)])
async def test_outbound_table_catches_a_dropped_or_swapped_step(tmp_path: Path, name: str) -> None:
    steps = dict(variants(pipelines.OUTBOUND))[name]
    caught = False
    for n, case in enumerate(CASES):
        async with fresh(tmp_path / str(n)) as world:

            async def attempt(world: World = world, case: Case = case) -> None:
                check(world, case, await outbound(world, case, steps))

            if await fails(attempt):
                caught = True
                break
    assert caught, f"the table passes {name}"


# skip_delivered does nothing to an offer (its copy states, not the ledger, say what
# went out): it is in PARTNER_OFFERS for the shape, and no table can miss it
OFFER_VARIANTS = [n for n, _ in variants(pipelines.PARTNER_OFFERS) if "skip_delivered" not in n]


@pytest.mark.parametrize("name", OFFER_VARIANTS)
async def test_offer_table_catches_a_dropped_or_swapped_step(
    tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pipelines, "PARTNER_OFFERS", dict(variants(pipelines.PARTNER_OFFERS))[name])
    caught = False
    for n, case in enumerate(OFFER_CASES):
        async with fresh(tmp_path / str(n)) as world:

            async def attempt(world: World = world, case: OfferCase = case) -> None:
                check_offer(world, case, *await fan_out(world, case))

            if await fails(attempt):
                caught = True
                break
    assert caught, f"the table passes {name}"


def test_evolve_is_dataclasses_replace_for_the_steps_values() -> None:
    """The steps copy their Mail and Copy values with steps.evolve: the same values as
    dataclasses.replace gives, the original left as it was, an unknown field refused."""
    keep = Verdict(True, "not-suppressed", "not suppressed")
    decision = Decision("fan@example.com", normalize("fan@example.com"), keep)
    copy = Copy(decision)
    mail = Mail(Envelope(SENDER, ("fan@example.com",), b"x", (), APP_SERVER))
    assert evolve(copy, skipped=True, data=b"y") == replace(copy, skipped=True, data=b"y")
    assert evolve(mail, copies=(copy,)) == replace(mail, copies=(copy,))
    assert evolve(mail) == mail
    assert mail.copies == ()
    assert mail.with_copies({}) is mail
    with pytest.raises(TypeError, match="no field 'copy'"):
        evolve(mail, copy=copy)
    with pytest.raises(AttributeError):
        evolve(mail).copies = ()  # type: ignore[misc]
