"""suppression.importing: validated rows written in all-or-nothing batches."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from suppression import importing
from suppression.address import identity, normalize
from suppression.errors import InvalidAddress
from suppression.formats import FormatError, Row
from suppression.importing import Summary, import_consents, import_suppressions, to_item
from suppression.model import Reason
from suppression.store import Store, open_store
from tests.support.keys import AUDIT_KEY

T0 = datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
NOTE = {"file": "list.csv", "format": "csv"}


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await open_store(f"sqlite:///{tmp_path / 'store.db'}", audit_key=AUDIT_KEY)
    yield opened
    await opened.close()


@pytest.fixture
def small_batches(monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(importing, "BATCH", 3)
    return 3


def address_rows(*values: str, start: int = 1) -> list[Row]:
    return [Row(line, value, "address") for line, value in enumerate(values, start)]


def failing_after(rows: list[Row], line: int) -> Iterator[Row]:
    """A reader that yields rows and then finds the file broken at ``line``."""
    yield from rows
    raise FormatError("list.csv", line, "unterminated quoted field")


async def keys(store: Store, scope: str | None = None) -> set[str]:
    return {s.key async for s in store.iter_suppressions(scope)}


async def events(store: Store) -> int:
    return (await store.verify_chain()).events


async def run(store: Store, rows: Iterator[Row] | list[Row], **options: object) -> Summary:
    scope = str(options.pop("scope", "global"))
    reason = options.pop("reason", None)
    assert reason is None or isinstance(reason, Reason)
    return await import_suppressions(
        store,
        rows,
        scope=scope,
        reason=reason,
        actor="test",
        note=NOTE,
        keep_addresses=bool(options.pop("keep_addresses", True)),
    )


def sha(text: str) -> str:
    return normalize(text).sha256


async def test_reader_error_keeps_complete_batches_and_none_of_the_failing_one(
    store: Store, small_batches: int
) -> None:
    good = address_rows(*(f"user{i}@example.com" for i in range(1, 8)))  # lines 1-7
    with pytest.raises(FormatError, match=r"^list\.csv:8: "):
        await run(store, failing_after(good, 8))
    # batches [1-3] and [4-6] were complete and stay; row 7 was in the failing batch
    assert await keys(store) == {sha(f"user{i}@example.com") for i in range(1, 7)}
    report = await store.verify_chain()
    assert (report.events, report.broken_at) == (2, None)

    # the run can be repeated once the file is fixed: nothing is doubled
    summary = await run(store, good)
    assert (summary.read, summary.added, summary.present) == (7, 1, 6)
    assert await keys(store) == {sha(f"user{i}@example.com") for i in range(1, 8)}


async def test_error_in_the_first_batch_leaves_the_store_untouched(
    store: Store, small_batches: int
) -> None:
    with pytest.raises(FormatError):
        await run(store, failing_after(address_rows("a@example.com", "b@example.com"), 3))
    assert await keys(store) == set()
    assert await events(store) == 0


async def test_invalid_rows_are_reported_by_line_and_skipped(
    store: Store, small_batches: int
) -> None:
    values = ["ok1@example.com", "bad", "x@", "ok2@example.com", "@@", "a b@example.com"]
    values += ["no-at.example.com", "y@example.test", "ok3@example.com"]
    summary = await run(store, address_rows(*values, start=2))  # line 1 is a header
    assert summary.invalid == 6
    assert summary.invalid_lines == [3, 4, 6, 7, 8]  # the first five
    assert summary.added == 3
    assert str(summary) == (
        "read 9, added 3, already present 0, invalid 6 (lines 3, 4, 6, 7, 8, ...), duplicates 0"
    )
    assert await keys(store) == {sha(f"ok{i}@example.com") for i in (1, 2, 3)}


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


async def test_reimporting_changes_nothing(store: Store, small_batches: int) -> None:
    rows = address_rows("a@example.com", "b@example.com", "c@example.com", "d@example.com")
    first = await run(store, rows)
    before = [s async for s in store.iter_suppressions(None)]
    audited = await events(store)
    again = await run(store, rows)
    assert (first.added, first.present) == (4, 0)
    assert (again.added, again.present, again.duplicates) == (0, 4, 0)
    assert [s async for s in store.iter_suppressions(None)] == before
    assert await events(store) == audited, "an import that adds nothing appends no event"


async def test_progress_is_reported_after_every_batch(store: Store, small_batches: int) -> None:
    seen: list[tuple[int, int]] = []
    rows = address_rows(*(f"p{i}@example.com" for i in range(7)))
    await import_suppressions(
        store,
        rows,
        scope="global",
        reason=None,
        actor="test",
        note=NOTE,
        progress=lambda s: seen.append((s.read, s.added)),
    )
    assert seen == [(3, 3), (6, 6), (7, 7)]


async def test_scope_and_reason(store: Store) -> None:
    rows = [
        Row(1, "u@example.com", "address", "unsubscribed", T0),
        Row(2, "n@example.com", "address"),
    ]
    await run(store, rows, scope="topic:news")
    found = {s.key: s async for s in store.iter_suppressions("topic:news")}
    assert found[sha("u@example.com")].reason is Reason.UNSUBSCRIBED
    assert found[sha("u@example.com")].created == T0  # the file's time, not the import's
    assert found[sha("n@example.com")].reason is Reason.IMPORTED
    assert await keys(store, "global") == set()

    await run(store, rows, reason=Reason.COMPLAINED)  # --reason overrides the file
    assert {s.reason async for s in store.iter_suppressions("global")} == {Reason.COMPLAINED}


def test_to_item_kinds() -> None:
    digest = identity("x@example.com")
    assert to_item(Row(1, digest, "sha256"), None, True).key == digest
    md5 = normalize("x@example.com").md5
    item = to_item(Row(1, md5, "md5"), None, True)
    assert (item.key, item.kind, item.address) == (md5, "md5", None)
    domain = to_item(Row(1, "@Example.NET", "address"), None, True)
    assert (domain.kind, domain.key, domain.address) == (
        "domain",
        identity("@example.net"),
        "@example.net",
    )
    plain = to_item(Row(1, " X@Example.com ", "address"), None, False)
    assert (plain.key, plain.address) == (identity("x@example.com"), None)
    kept = to_item(Row(1, " X@Example.com ", "address"), None, True)
    assert kept.address == "x@example.com"


@pytest.mark.parametrize(
    ("value", "kind"),
    [("0" * 63, "sha256"), ("z" * 64, "sha256"), ("0" * 64, "md5"), ("@", "address")],
)
def test_to_item_rejects_what_is_not_a_key(value: str, kind: str) -> None:
    row = Row(4, value, "sha256" if kind == "sha256" else "md5" if kind == "md5" else "address")
    with pytest.raises(InvalidAddress):
        to_item(row, None, True)


async def test_consent_import_honours_rows_and_revocations(store: Store) -> None:
    rows = [
        Row(2, "jane@example.com", "address", None, T0, {"policy_version": "3", "ip": "192.0.2.1"}),
        Row(3, "rick@example.com", "address", None, None, {"source": "shop"}),
        Row(4, "gone@example.com", "address", None, T0, {"state": "granted"}),
        Row(5, "gone@example.com", "address", None, None, {"state": "revoked"}),
        Row(6, "0" * 64, "sha256"),
        Row(7, "not an address", "address"),
    ]
    summary = await import_consents(
        store, rows, purpose="news", source="import", version="2", actor="test"
    )
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
    assert json.loads(jane.evidence or "{}") == {"ip": "192.0.2.1"}
    assert (rick.policy_version, rick.source) == ("2", "shop")
    assert gone.granted is False, "a revoked row is imported as a revocation"
