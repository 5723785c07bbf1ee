"""suppression.importing and the stores' import runs: rows in their own scope and purpose,
invalid rows counted, refused rows and broken files keeping nothing, on both backends."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from suppression import importing
from suppression.address import identity, normalize
from suppression.fields import Addresses, Record, Row
from suppression.importing import (
    ConsentOptions,
    RowError,
    Summary,
    SuppressionOptions,
    SuppressionRows,
    import_consents,
    import_suppressions,
)
from suppression.model import Reason
from suppression.partners import Partner
from suppression.scope import GLOBAL, Scope
from suppression.store import Store
from suppression.textio import FormatError
from tests.support.backends import Backend

pytestmark = pytest.mark.pure

T0 = datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)


@pytest.fixture
def store(backend: Backend) -> Store:
    return backend.store


@pytest.fixture
def small_batches(monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(importing, "BATCH", 3)
    return 3


@dataclass
class Given:
    """Rows as a reader gives them."""

    rows: Iterable[Record]
    source: str = "list.csv"
    format: str = "csv"

    def __iter__(self) -> Iterator[Row]:
        for record in self.rows:
            yield from record.rows() if isinstance(record, Addresses) else [record]

    def records(self) -> Iterator[Record]:
        return iter(self.rows)


def address_rows(*values: str, start: int = 1) -> list[Row]:
    return [Row(line, value, "address") for line, value in enumerate(values, start)]


def failing_after(rows: Iterable[Row], line: int) -> Iterator[Row]:
    """A reader that yields rows and then finds the file broken at ``line``."""
    yield from rows
    raise FormatError("list.csv", line, "unterminated quoted field")


async def keys(store: Store, scope: str | None = None) -> set[str]:
    return {s.key async for s in store.iter_suppressions(scope)}


async def state(store: Store) -> tuple[object, ...]:
    """Everything an import could change."""
    return (
        [s async for s in store.iter_suppressions(None)],
        [c async for c in store.iter_consents(None)],
        await store.verify_chain(),
    )


async def run(store: Store, rows: Iterable[Record], **options: object) -> Summary:
    return await import_suppressions(
        store,
        Given(rows),
        options=SuppressionOptions(**options),  # type: ignore[arg-type]
        actor="test",
        note={"file": "list.csv", "format": "csv"},
    )


async def consents(store: Store, rows: Iterable[Row], **options: object) -> Summary:
    return await import_consents(
        store,
        Given(rows),
        options=ConsentOptions(**options),  # type: ignore[arg-type]
        actor="test",
        note={"file": "c.csv", "format": "csv"},
    )


def sha(text: str) -> str:
    return normalize(text).sha256


# all or nothing ----------------------------------------------------------------------


async def test_a_broken_file_after_many_batches_keeps_nothing(store: Store) -> None:
    await run(store, address_rows("before@example.com"))
    before = await state(store)
    good = (Row(n, f"user{n}@example.com", "address") for n in range(2, 150_002))
    with pytest.raises(FormatError, match=r"^list\.csv:150002: "):
        await run(store, failing_after(good, 150_002))
    assert await state(store) == before, "not one of the 150,000 rows read stays"


async def test_a_refused_row_keeps_nothing_and_names_its_line(
    store: Store, small_batches: int
) -> None:
    rows = address_rows(*(f"user{i}@example.com" for i in range(10)))
    rows.append(Row(11, "late@example.com", "address", scope="topic:news"))
    before = await state(store)
    with pytest.raises(RowError, match=r"^list\.csv:11: the row's scope topic:news is not"):
        await run(store, rows, scope=GLOBAL)
    assert await state(store) == before
    # the same file without --scope: every row in its own scope
    summary = await run(store, rows)
    assert summary.added == 11
    assert await keys(store, "topic:news") == {sha("late@example.com")}


async def test_the_fixed_file_imports_in_full(store: Store, small_batches: int) -> None:
    good = address_rows(*(f"user{i}@example.com" for i in range(1, 8)))
    with pytest.raises(FormatError):
        await run(store, failing_after(good, 8))
    assert await keys(store) == set()
    summary = await run(store, good)
    assert (summary.read, summary.added, summary.present) == (7, 7, 0)
    report = await store.verify_chain()
    assert (report.events, report.broken_at) == (1, None), "one audit event for the import"


# counting ------------------------------------------------------------------------------


async def test_invalid_rows_are_reported_by_line_and_skipped(
    store: Store, small_batches: int
) -> None:
    values = ["ok1@example.com", "bad", "x@", "ok2@example.com", "@@", "a b@example.com"]
    values += ["no-at.example.com", "y@example.test", "ok3@example.com"]
    summary = await run(store, address_rows(*values, start=2))  # line 1 is a header
    assert summary.invalid == 6
    assert summary.invalid_lines == [3, 4, 6, 7, 8]  # the first five
    assert summary.added == 3
    assert not summary.all_invalid
    assert str(summary) == (
        "format csv: read 9, added 3, already present 0, invalid 6 (lines 3, 4, 6, 7, 8, ...), "
        "duplicates 0"
    )
    assert await keys(store) == {sha(f"ok{i}@example.com") for i in (1, 2, 3)}


async def test_invalid_rows_of_a_block_of_addresses_are_reported_by_line(store: Store) -> None:
    """A reader's block of addresses (fields.Addresses) is validated at once: its invalid
    rows are counted and named by line like rows one at a time, in the same order."""
    values = [f"ok{i}@example.com" for i in range(40)]
    values[3], values[25], values[26] = "bad", "y@example.test", "a..b@example.com"
    lines = list(range(2, 42))
    block = Addresses(values, lines)
    summary = await run(store, [block, Row(50, "@example.org", "address"), block])
    assert (summary.read, summary.invalid, summary.added) == (81, 6, 38)
    assert summary.duplicates == 37
    assert summary.invalid_lines == [5, 27, 28, 5, 27]
    wanted = {sha(v) for i, v in enumerate(values) if i not in (3, 25, 26)}
    assert await keys(store) == wanted | {identity("@example.org")}


async def test_a_file_of_invalid_rows_only_is_told_apart(store: Store) -> None:
    summary = await run(store, address_rows("bad", "worse@", "@@"))
    assert (summary.read, summary.invalid, summary.all_invalid) == (3, 3, True)
    assert (await store.verify_chain()).events == 0
    empty = await run(store, [])
    assert (empty.read, empty.all_invalid) == (0, False)


async def test_counts_add_up_across_batches(store: Store, small_batches: int) -> None:
    await run(store, address_rows("old@example.com"))
    values = ["a@example.com", "B@example.com", "old@example.com", "a@example.com"]
    values += ["c@example.com", "b@example.com", "invalid", "c@example.com"]
    summary = await run(store, address_rows(*values))
    assert summary.read == 8
    assert summary.added == 3
    assert summary.present == 1
    assert summary.duplicates == 3
    assert summary.invalid == 1
    assert summary.read == summary.added + summary.present + summary.duplicates + summary.invalid


async def test_the_first_of_repeated_rows_wins(store: Store, small_batches: int) -> None:
    rows = [
        Row(1, "a@example.com", "address", "complained", T0),
        Row(2, "b@example.com", "address"),
        Row(3, "b@example.com", "address"),
        Row(4, "A@example.com", "address", "unsubscribed"),
    ]
    await run(store, rows)
    found = {s.address: s async for s in store.iter_suppressions(None)}
    first = found["a@example.com"]
    assert (first.address, first.reason, first.created) == ("a@example.com", Reason.COMPLAINED, T0)


async def test_reimporting_changes_nothing(store: Store, small_batches: int) -> None:
    rows = address_rows("a@example.com", "b@example.com", "c@example.com", "d@example.com")
    first = await run(store, rows)
    before = await state(store)
    again = await run(store, rows)
    assert (first.added, first.present) == (4, 0)
    assert (again.added, again.present, again.duplicates) == (0, 4, 0)
    assert await state(store) == before, "an import that adds nothing appends no event"


async def test_one_audit_event_names_the_run_and_no_address(
    store: Store, small_batches: int
) -> None:
    rows = address_rows(*(f"p{i}@example.com" for i in range(7)))
    rows.append(Row(8, "t@example.com", "address", scope="topic:news", source="web"))
    await run(store, rows)
    record = await store.subject(normalize("p1@example.com"))
    (event,) = record.events
    body = json.loads(event.body)
    assert (body["action"], body["actor"]) == ("suppress", "test")
    detail = body["detail"]
    assert (detail["file"], detail["read"], detail["added"]) == ("list.csv", 8, 8)
    assert detail["rows"]["suppression"][0] == 8
    assert (detail["scopes"], detail["sources"]) == (["global", "topic:news"], ["import", "web"])
    assert "@" not in event.body
    assert (await store.verify_chain()).intact, "the event vouches for the rows it added"


async def test_the_chain_vouches_for_what_an_import_added_whatever_came_between(
    store: Store, small_batches: int
) -> None:
    """The run sums its rows for the event number it expects; another writer taking that
    number, rows that were there, repeats, times of their own: the sum is made again."""
    await run(store, address_rows("old@example.com"))
    rows = [
        *address_rows("old@example.com", "a@example.com", "a@example.com"),
        Row(4, "t@example.com", "address", "bounced", T0, scope="topic:news"),
    ]
    async with store.suppression_import(actor="test", note={"file": "x"}) as staged:
        convert = SuppressionRows(SuppressionOptions(), "x", Summary("csv"))
        for part in (rows[:2], rows[2:]):
            for batch in convert.batches(part):
                await staged.add(batch)
            await store.audit(actor="dpo", action="subject-access", subject=None)  # the head
        result = await staged.commit()
    assert (result.added, result.present, result.duplicates) == (2, 1, 1)
    report = await store.verify_chain()
    assert report.intact, report
    fresh = await run(store, address_rows(*(f"n{i}@example.com" for i in range(5))))
    assert fresh.added == 5
    assert (await store.verify_chain()).intact
    consented = await consents(store, [crow(2, "c@example.com", purpose="news", created=T0)])
    assert consented.added == 1
    assert (await store.verify_chain()).intact


# what a row says -----------------------------------------------------------------------


async def test_each_row_keeps_its_scope_reason_source_time_and_evidence(store: Store) -> None:
    await store.add_partner(Partner("acme", "x", False, T0), actor="test")
    evidence = '{"channel": "one-click", "ip": "192.0.2.1"}'
    rows = [
        Row(
            1, "u@example.com", "address", "unsubscribed", T0, source="one-click", evidence=evidence
        ),
        Row(2, "n@example.com", "address", scope="topic:news"),
        Row(3, "p@example.com", "address", "complained", scope="partner:acme", source="complaint"),
        Row(4, identity("erased@example.com"), "sha256", "bounced", T0, scope="topic:deals"),
        Row(5, normalize("m@example.com").md5, "md5", scope="partner:acme"),
        Row(6, "@Example.NET", "address", "manual", source="cli"),
    ]
    summary = await run(store, rows)
    assert summary.added == 6
    found = {(s.key, s.scope): s async for s in store.iter_suppressions(None)}
    u = found[sha("u@example.com"), "global"]
    assert (u.reason, u.created, u.source, u.evidence) == (
        Reason.UNSUBSCRIBED,
        T0,
        "one-click",
        evidence,
    )
    assert found[sha("n@example.com"), "topic:news"].reason is Reason.IMPORTED
    assert found[sha("p@example.com"), "partner:acme"].source == "complaint"
    erased = found[identity("erased@example.com"), "topic:deals"]
    assert (erased.kind, erased.address, erased.reason) == ("sha256", None, Reason.BOUNCED)
    assert found[normalize("m@example.com").md5, "partner:acme"].kind == "md5"
    domain = found[identity("@example.net"), "global"]
    assert (domain.kind, domain.address) == ("domain", "@example.net")


async def test_scope_option_fills_rows_without_one_and_reason_overrides(store: Store) -> None:
    rows = [Row(1, "a@example.com", "address", "unsubscribed"), Row(2, "b@example.com", "address")]
    await run(store, rows, scope=Scope.topic("news"), reason=Reason.COMPLAINED)
    found = [s async for s in store.iter_suppressions("topic:news")]
    assert {s.reason for s in found} == {Reason.COMPLAINED}
    assert await keys(store, "global") == set()
    same = [Row(1, "c@example.com", "address", scope="topic:news")]
    same_scope = await run(store, same, scope=Scope.topic("news"))
    assert same_scope.added == 1, "the same scope is no conflict"


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (Row(4, "a@example.com", "address", scope="topic:Bad Name"), "topic 'Bad Name' is not"),
        (Row(4, "a@example.com", "address", scope="everywhere"), "is not valid"),
        (Row(4, "a@example.com", "address", evidence="{not json"), "evidence is not JSON"),
        (Row(4, "a@example.com", "address", status="Subscribed"), "list of subscribers"),
        (Row(4, "a@example.com", "address", status="active"), "--allow-subscribed"),
    ],
)
async def test_refused_rows(store: Store, row: Row, message: str) -> None:
    with pytest.raises(RowError, match=message) as caught:
        await run(store, [*address_rows("ok@example.com"), row])
    assert caught.value.line == 4
    assert await keys(store) == set()


async def test_subscribers_import_only_when_allowed(store: Store) -> None:
    rows = [Row(2, "s@example.com", "address", status="subscribed")]
    summary = await run(store, rows, allow_subscribed=True)
    assert summary.added == 1
    other = [Row(2, "x@example.com", "address", status="unsubscribed")]
    assert (await run(store, other)).added == 1, "other statuses are no subscriber list"


async def test_policy_blocks_are_skipped_and_counted(store: Store) -> None:
    def blocked(status: str | None, text: str) -> bool:
        return (status or "").startswith("5.7") or "block" in text

    rows = [
        Row(2, "gone@example.com", "address", "bounced", status="5.1.1", diagnostic="no user"),
        Row(3, "spam@example.com", "address", "bounced", status="5.7.1", diagnostic="policy"),
        Row(4, "rbl@example.com", "address", "bounced", diagnostic="listed on a block list"),
        Row(5, "x@example.com", "address", "unsubscribed", status="5.7.1"),
    ]
    summary = await run(store, rows, policy_block=blocked)
    assert (summary.read, summary.added, summary.policy) == (4, 2, 2)
    assert str(summary).endswith(", policy blocks skipped 2")
    assert await keys(store) == {sha("gone@example.com"), sha("x@example.com")}


def converted(row: Row, **options: object) -> tuple[object, ...]:
    """What one row becomes: (kind, key, address) and the rest of its shape."""
    rows = SuppressionRows(SuppressionOptions(**options), "x", Summary("csv"))  # type: ignore[arg-type]
    ((segment,),) = rows.batches([row])
    ((key, address),) = zip(segment.keys, segment.addresses, strict=True)
    return (segment.shape.kind, key, address)


def test_rows_become_keys_of_their_kind() -> None:
    digest = identity("x@example.com")
    assert converted(Row(1, digest, "sha256")) == ("sha256", digest, None)
    md5 = normalize("x@example.com").md5
    assert converted(Row(1, md5, "md5")) == ("md5", md5, None)
    domain = identity("@example.net")
    assert converted(Row(1, "@Example.NET", "address")) == ("domain", domain, "@example.net")
    plain = converted(Row(1, " X@Example.com ", "address"), keep_addresses=False)
    assert plain == ("sha256", identity("x@example.com"), None)
    kept = converted(Row(1, " X@Example.com ", "address"))
    assert kept == ("sha256", identity("x@example.com"), "x@example.com")
    own = converted(Row(1, "X@Example.com", "address", scope="topic:news"))
    assert own == kept, "the long way gives what the short one does"


@pytest.mark.parametrize(
    ("value", "kind"),
    [("0" * 63, "sha256"), ("z" * 64, "sha256"), ("0" * 64, "md5"), ("@", "address")],
)
def test_what_is_not_a_key_is_invalid(value: str, kind: str) -> None:
    summary = Summary("csv")
    rows = SuppressionRows(SuppressionOptions(), "x", summary)
    row = Row(4, value, "sha256" if kind == "sha256" else "md5" if kind == "md5" else "address")
    assert list(rows.batches([row])) == []
    assert (summary.invalid, summary.invalid_lines) == (1, [4])


# consents ------------------------------------------------------------------------------


def crow(line: int, value: str, kind: str = "address", **fields: object) -> Row:
    extra = {k: str(v) for k, v in fields.items() if k in ("purpose", "state", "policy_version")}
    extra.update({k: str(v) for k, v in fields.items() if k.startswith("x_")})
    created = fields.get("created")
    source = fields.get("source")
    evidence = fields.get("evidence")
    return Row(
        line,
        value,
        kind,  # type: ignore[arg-type]
        created=created if isinstance(created, datetime) else None,
        extra=extra,
        source=source if isinstance(source, str) else None,
        evidence=evidence if isinstance(evidence, str) else None,
    )


async def test_consent_import_honours_rows_and_revocations(store: Store) -> None:
    rows = [
        crow(2, "jane@example.com", created=T0, policy_version="3", x_ip="192.0.2.1"),
        crow(3, "rick@example.com", source="shop"),
        crow(4, "gone@example.com", created=T0, state="granted"),
        crow(5, "gone@example.com", state="revoked"),
        crow(6, "0" * 32, "md5"),
        crow(7, "not an address"),
    ]
    summary = await consents(store, rows, purpose="news", version="2")
    assert (summary.read, summary.added, summary.invalid) == (6, 4, 2)
    assert summary.invalid_lines == [6, 7]
    people = [normalize(a) for a in ("jane@example.com", "rick@example.com", "gone@example.com")]
    facts = await store.lookup_many(people, ["global"], "news")
    jane, rick, gone = (facts[a.sha256].consent for a in people)
    assert jane is not None
    assert rick is not None
    assert gone is not None
    assert (jane.granted, jane.policy_version, jane.created, jane.source) == (
        True,
        "3",
        T0,
        "import",
    )
    assert json.loads(jane.evidence or "{}") == {"x_ip": "192.0.2.1"}
    assert (rick.policy_version, rick.source) == ("2", "shop")
    assert gone.granted is False, "a revoked row is imported as a revocation"


async def test_consent_rows_keep_their_own_purpose_and_erased_rows_their_hash(
    store: Store,
) -> None:
    erased = identity("erased@example.com")
    evidence = '{"ip": "198.51.100.7", "form": "footer"}'
    rows = [
        crow(2, "a@example.com", purpose="partner-offers", created=T0, evidence=evidence),
        crow(3, "a@example.com", purpose="news", state="revoked", created=T0),
        crow(4, erased, "sha256", purpose="news", created=T0, source="web"),
        crow(5, "b@example.com"),  # no purpose of its own: --purpose
    ]
    summary = await consents(store, rows[:3])
    assert summary.added == 3
    records = {(c.sha256, c.purpose): c async for c in store.iter_consents(None)}
    offers = records[sha("a@example.com"), "partner-offers"]
    assert (offers.granted, offers.evidence) == (True, evidence), "evidence kept verbatim"
    assert records[sha("a@example.com"), "news"].granted is False
    hashed = records[erased, "news"]
    assert (hashed.address, hashed.source) == (None, "web")
    assert (await consents(store, rows[3:], purpose="marketing")).added == 1


@pytest.mark.parametrize(
    ("row", "options", "message"),
    [
        (crow(3, "a@example.com"), {}, "no purpose: give --purpose or a purpose column"),
        (crow(3, "a@example.com", purpose="offers"), {"purpose": "news"}, "is not --purpose news"),
        (crow(3, "a@example.com", purpose="Bad Name"), {}, "purpose 'Bad Name' is not valid"),
        (crow(3, "a@example.com", state="maybe"), {"purpose": "x"}, "neither granted nor revoked"),
        (crow(3, "a@example.com", evidence="[1"), {"purpose": "x"}, "evidence is not JSON"),
        (
            crow(3, "a@example.com", evidence="[1]", x_ip="1"),
            {"purpose": "x"},
            "evidence is not a JSON object",
        ),
        (
            Row(3, "a@example.com", "address", "unsubscribed"),
            {"purpose": "x"},
            "this is a suppression list",
        ),
    ],
)
async def test_refused_consent_rows(
    store: Store, row: Row, options: dict[str, object], message: str
) -> None:
    before = await state(store)
    with pytest.raises(RowError, match=message):
        await consents(store, [crow(2, "ok@example.com", purpose="x"), row], **options)
    assert await state(store) == before


async def test_a_consent_import_that_breaks_keeps_nothing(store: Store, small_batches: int) -> None:
    good = [crow(n, f"c{n}@example.com", purpose="news") for n in range(2, 12)]
    before = await state(store)
    with pytest.raises(FormatError):
        await consents(store, failing_after(good, 12))
    assert await state(store) == before
    summary = await consents(store, good)
    assert summary.added == 10
    assert (await store.verify_chain()).events == 1, "one audit event for the import"
