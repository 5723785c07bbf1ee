"""The import and export commands: ``suppress import|export``, ``consent import|export``.

Imports stream the file into one all-or-nothing run (suppression/importing.py)
and print a summary that names the detected format: on stdout, as one JSON
object with ``--json``; exit 1 when every row was invalid. Exports stream the
store page by page; their summary goes to stderr (stdout may be the export),
as JSON with ``--json``. A refused row or a broken file is an error (exit 2)
and nothing of the import is kept.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import BinaryIO, TextIO, TypeVar

from gateway.cli.progress import shown
from gateway.config import Config
from gateway.inbound.diagnosis import judge, status_of
from gateway.runtime.stores import opened
from suppression.errors import OptgateError
from suppression.formats.read import Reading
from suppression.formats.write import ExportRecord, WriteSummary, write_consents, write_records
from suppression.importing import (
    ConsentOptions,
    Summary,
    SuppressionOptions,
    import_consents,
    import_suppressions,
)
from suppression.model import Reason, check_name
from suppression.scope import Scope
from suppression.store import Admin, Importer
from suppression.textio import FormatError

T = TypeVar("T")
EXPORT_PAGE = 5000


@contextlib.contextmanager
def output_file(name: str | None) -> Iterator[TextIO]:
    """The file ``name`` for writing, or stdout when None; a failure is an OptgateError."""
    if name is None:
        yield sys.stdout
        return
    try:
        handle = Path(name).open("w", encoding="utf-8", newline="")  # noqa: SIM115
    except OSError as exc:
        raise OptgateError(f"cannot write {name}: {exc.strerror}") from None
    with handle:
        yield handle


@contextlib.contextmanager
def _no_cycles_collected() -> Iterator[None]:
    """The cyclic garbage collector off while an import runs: it makes millions of tuples
    and strings and no cycles, and the collector's passes over them took a tenth of an
    import's time (py-spy, 1,000,000 rows)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


@contextlib.contextmanager
def _input(name: str) -> Iterator[BinaryIO]:
    if name == "-":
        yield sys.stdin.buffer
        return
    try:
        handle = Path(name).open("rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise OptgateError(f"cannot read {name}: {exc.strerror}") from None
    with handle:
        yield handle


def _note(name: str) -> dict[str, object]:
    """The audit note of an import: the file's name, withheld if it looks like an address
    (the audit log is never erased)."""
    shown_name = Path(name).name
    return {"file": "(withheld)" if "@" in shown_name else shown_name, "format": "auto"}


def policy_block(status: str | None, text: str) -> bool:
    """A bounce that records a policy block (spam, block list, 5.7.x), not a bad address:
    the inbound classifier's rules (gateway/inbound/diagnosis.py)."""
    status = status or ""
    found = status_of(status if "." in status else "", f"{status} {text}")
    return judge("failed", found, text).why in ("policy", "sender")


def _report(summary: Summary, as_json: bool) -> int:
    print(json.dumps(summary.as_dict()) if as_json else summary)
    return 1 if summary.all_invalid else 0


async def _run_import(
    config: Config,
    handle: BinaryIO,
    summary: Summary,
    run: Callable[[Importer], Awaitable[Summary]],
) -> None:
    """An import into the configured store with its progress shown; errors keep nothing."""
    async with opened(config) as store, shown(sys.stderr, summary, handle):
        try:
            with _no_cycles_collected():
                await run(store)
        except FormatError as exc:
            raise OptgateError(f"{exc}; nothing was imported") from None


async def suppress_import(args: argparse.Namespace, config: Config) -> int:
    """optgate suppress import."""
    options = SuppressionOptions(
        scope=args.scope,  # parsed by the CLI (None: each row's own, else global)
        reason=Reason(args.reason) if args.reason else None,
        keep_addresses=config.store.keep_addresses,
        allow_subscribed=args.allow_subscribed,
        policy_block=policy_block,
    )
    name = "<stdin>" if args.file == "-" else args.file
    with _input(args.file) as handle:
        reading = Reading(handle, args.format, name, keep_extra=False)
        summary = Summary(args.format)
        await _run_import(
            config,
            handle,
            summary,
            lambda store: import_suppressions(
                store, reading, options=options, actor=args.actor, note=_note(name), summary=summary
            ),
        )
    return _report(summary, args.json)


async def consent_import(args: argparse.Namespace, config: Config) -> int:
    """optgate consent import."""
    options = ConsentOptions(
        purpose=check_name(args.purpose, "purpose") if args.purpose else None,
        source=args.source,
        version=args.policy_version,
        keep_addresses=config.store.keep_addresses,
    )
    name = "<stdin>" if args.file == "-" else args.file
    with _input(args.file) as handle:
        reading = Reading(handle, args.format, name)
        summary = Summary(args.format)
        await _run_import(
            config,
            handle,
            summary,
            lambda store: import_consents(
                store, reading, options=options, actor=args.actor, note=_note(name), summary=summary
            ),
        )
    return _report(summary, args.json)


async def _paged(
    records: AsyncIterator[T],
    write: Callable[[list[T], bool], WriteSummary],
) -> WriteSummary:
    """Write records a page at a time (memory stays flat); the header with the first.

    The store's stream is ended on the way out: a write that fails midway (a closed
    pipe) ends its query while the store is still open, not at the event loop's end.
    """
    written = skipped = 0
    page: list[T] = []
    first = True

    def flush() -> None:
        nonlocal written, skipped, first
        result = write(page, first)
        written, skipped, first = written + result.written, skipped + result.skipped, False
        page.clear()

    async with _ended(records):
        async for record in records:
            page.append(record)
            if len(page) == EXPORT_PAGE:
                flush()
    flush()
    return WriteSummary(written, skipped)


async def _suppression_records(store: Admin, scope: Scope | None) -> AsyncIterator[ExportRecord]:
    found = store.iter_suppressions(str(scope) if scope else None)
    async with _ended(found):
        async for s in found:
            yield ExportRecord(
                s.key, s.address, s.scope, s.reason.value, s.source, s.created, s.kind, s.evidence
            )


@contextlib.asynccontextmanager
async def _ended(rows: AsyncIterator[T]) -> AsyncIterator[None]:
    """A stream ended (its query closed) on the way out, whatever happened."""
    try:
        yield
    finally:
        close = getattr(rows, "aclose", None)
        if close is not None:
            await close()


def _exported(fmt: str, summary: WriteSummary, as_json: bool) -> None:
    if as_json:
        shown_summary = {"format": fmt, "exported": summary.written, "skipped": summary.skipped}
        print(json.dumps(shown_summary), file=sys.stderr)
    else:
        print(f"exported {summary.written}, skipped {summary.skipped}", file=sys.stderr)


async def suppress_export(args: argparse.Namespace, config: Config) -> int:
    """optgate suppress export (streams)."""
    scope = args.scope  # parsed by the CLI
    async with opened(config) as store:
        with output_file(args.output) as out:
            summary = await _paged(
                _suppression_records(store, scope),
                lambda page, header: write_records(page, args.format, out, header=header),
            )
    _exported(args.format, summary, args.json)
    return 0


async def consent_export(args: argparse.Namespace, config: Config) -> int:
    """optgate consent export: every record, in order (csv or jsonl)."""
    purpose = check_name(args.purpose, "purpose") if args.purpose else None
    async with opened(config) as store:
        with output_file(args.output) as out:
            summary = await _paged(
                store.iter_consents(purpose),
                lambda page, header: write_consents(page, args.format, out, header=header),
            )
    _exported(args.format, summary, args.json)
    return 0
