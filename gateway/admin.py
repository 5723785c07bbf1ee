"""What the administrative commands do: each opens the store, acts, prints."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import asdict
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Any, BinaryIO, TextIO, TypeVar

from gateway import logs
from gateway.config import Config
from gateway.demo import run_demo
from gateway.doctor import failed, run_checks
from gateway.keygen import config_line, keygen
from gateway.keys import load_keys, load_log_key, make_key_file
from gateway.optin import request_consent
from gateway.pipeline import verdict
from gateway.policy import MessageClass, Rules
from gateway.stores import opened, read_anchor, write_anchor
from suppression.address import Address, identity, md5_identity, normalize, normalize_domain
from suppression.audit import parse_head
from suppression.errors import OptgateError
from suppression.formats import ExportRecord, read_rows, write_records
from suppression.importing import Summary, import_consents, import_suppressions
from suppression.model import Consent, ImportItem, Reason, Source, check_name, now, parse_scope
from suppression.partners import UnknownPartner
from suppression.statecheck import ChainReport
from suppression.store import Store

EXPORT_PAGE = 5000
T = TypeVar("T")


@contextlib.asynccontextmanager
async def opened_store(config: Config, *, create: bool = False) -> AsyncIterator[Store]:
    """The configured store, closed on the way out.

    A missing one is StoreMissing (naming where it looked), unless ``create``:
    only ``store migrate`` (and ``serve``) make a store.
    """
    async with opened(config, create=create) as store:
        yield store


async def checked_scope(config: Config, text: str) -> str:
    """A --scope: valid, and a partner's must name a partner the store knows."""
    scope = parse_scope(text)
    kind, _, name = scope.partition(":")
    if kind == "partner":
        async with opened_store(config) as store:
            known = await store.partner(name)
        if known is None:
            raise UnknownPartner(
                f"scope {scope}: no partner named {name!r}: `optgate partner list` shows "
                f"the partners, `optgate partner add {name}` adds one"
            )
    return scope


@contextlib.asynccontextmanager
async def _closing(rows: AsyncIterator[T]) -> AsyncIterator[AsyncIterator[T]]:
    """A store's stream, ended on the way out: a write that fails midway (a closed pipe)
    ends its query while the store is still open, not at the event loop's shutdown."""
    try:
        yield rows
    finally:
        close = getattr(rows, "aclose", None)
        if close is not None:
            await close()


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


def _target(text: str, keep: bool) -> ImportItem:
    """An address or @domain given on the command line, as a suppression item."""
    if text.strip().startswith("@"):
        domain = "@" + normalize_domain(text)
        return ImportItem(identity(domain), "domain", domain, Reason.MANUAL)
    address = normalize(text)
    return ImportItem(address.sha256, "sha256", address.normalized if keep else None, Reason.MANUAL)


def _progress(stream: IO[str]) -> Any:
    if not stream.isatty():
        return None

    def show(summary: Summary) -> None:
        stream.write(f"\r{summary.read:,} rows read, {summary.added:,} added")
        stream.flush()

    return show


async def suppress_add(args: argparse.Namespace, config: Config) -> int:
    """optgate suppress add."""
    scope = parse_scope(args.scope)
    reason = Reason(args.reason)
    keep = config.store.keep_addresses
    items = [
        ImportItem(t.key, t.kind, t.address, reason)
        for t in (_target(a, keep) for a in args.addresses)
    ]
    async with opened_store(config) as store:
        result = await store.suppress(items, scope=scope, source=Source.CLI, actor=args.actor)
    print(f"suppressed {result.added} new, {result.present + result.duplicates} already ({scope})")
    return 0


async def suppress_remove(args: argparse.Namespace, config: Config) -> int:
    """optgate suppress remove."""
    scope = parse_scope(args.scope)
    # an address may be suppressed by its SHA-256 and by an MD5 list entry: lift both
    targets = dict.fromkeys(
        (t.key,) if t.kind == "domain" else (t.key, md5_identity(t.address or ""))
        for t in (_target(a, True) for a in args.addresses)
    )
    removed = 0
    async with opened_store(config) as store:
        for keys in targets:
            removed += await store.unsuppress(keys, scope=scope, actor=args.actor) > 0
    print(f"lifted {removed} suppression(s) in {scope}; {len(targets) - removed} had none")
    return 0


async def suppress_check(args: argparse.Namespace, config: Config) -> int:
    """optgate suppress check: one line per address (or JSON); 1 if any is suppressed."""
    addresses = [normalize(a) for a in args.addresses]
    async with opened_store(config) as store:
        found = [(await store.subject(a)).suppressions for a in addresses]
    if args.json:
        checked = [
            {
                "address": given,
                "sha256": address.sha256,
                "suppressed": bool(records),
                "suppressions": [
                    {
                        "kind": r.kind,
                        "scope": r.scope,
                        "reason": r.reason.value,
                        "source": r.source,
                        "created": _utc(r.created),
                    }
                    for r in records
                ],
            }
            for given, address, records in zip(args.addresses, addresses, found, strict=True)
        ]
        print(json.dumps({"addresses": checked}, indent=2))
        return 1 if any(found) else 0
    for given, records in zip(args.addresses, found, strict=True):
        for record in records:
            via = "domain " if record.kind == "domain" else ""
            print(
                f"{given}\tsuppressed\t{via}{record.scope}\t{record.reason.value}"
                f"\tsince {_utc(record.created)}"
            )
        if not records:
            print(f"{given}\tnot suppressed")
    return 1 if any(found) else 0


def _utc(at: datetime) -> str:
    """A time as the command line prints it: UTC to the second."""
    return f"{at:%Y-%m-%dT%H:%M:%SZ}"


async def suppress_import(args: argparse.Namespace, config: Config) -> int:
    """optgate suppress import."""
    scope = parse_scope(args.scope)
    reason = Reason(args.reason) if args.reason else None
    name = "<stdin>" if args.file == "-" else args.file
    # the audit log is never erased: a file name that looks like an address stays out
    shown = Path(name).name
    note = {"file": "(withheld)" if "@" in shown else shown, "format": args.format}
    with _input(args.file) as handle:
        async with opened_store(config) as store:
            summary = await import_suppressions(
                store,
                read_rows(handle, args.format, name),
                scope=scope,
                reason=reason,
                actor=args.actor,
                note=note,
                keep_addresses=config.store.keep_addresses,
                progress=_progress(sys.stderr),
            )
    if sys.stderr.isatty():
        sys.stderr.write("\n")
    print(summary)
    return 0


async def suppress_export(args: argparse.Namespace, config: Config) -> int:
    """optgate suppress export (streams)."""
    scope = parse_scope(args.scope) if args.scope else None
    async with opened_store(config) as store:
        with output_file(args.output) as out:
            written, skipped = await _export_stream(store, scope, args.format, out)
    print(f"exported {written}, skipped {skipped}", file=sys.stderr)
    return 0


async def _export_stream(store: Store, scope: str | None, fmt: str, out: TextIO) -> tuple[int, int]:
    """Write suppressions page by page, so memory stays flat; (written, skipped)."""
    written = skipped = 0
    page: list[ExportRecord] = []

    def flush() -> None:
        nonlocal written, skipped
        result = write_records(page, fmt, out, header=written + skipped == 0)
        written, skipped = written + result.written, skipped + result.skipped
        page.clear()

    async with _closing(store.iter_suppressions(scope)) as rows:
        async for s in rows:
            page.append(
                ExportRecord(s.key, s.address, s.scope, s.reason.value, s.source, s.created, s.kind)
            )
            if len(page) == EXPORT_PAGE:
                flush()
    flush()
    return written, skipped


async def _consent(args: argparse.Namespace, config: Config, granted: bool) -> int:
    purpose = check_name(args.purpose, "purpose")
    keep = config.store.keep_addresses
    records = [
        Consent(
            sha256=a.sha256,
            purpose=purpose,
            granted=granted,
            source=args.source,
            created=now(),
            policy_version=args.policy_version,
            address=a.normalized if keep else None,
        )
        for a in (normalize(text) for text in args.addresses)
    ]
    async with opened_store(config) as store:
        count = await store.record_consents(records, actor=args.actor)
    print(f"recorded {count} {'consent' if granted else 'revocation'}(s) for {purpose}")
    return 0


async def consent_add(args: argparse.Namespace, config: Config) -> int:
    """optgate consent add."""
    return await _consent(args, config, True)


async def consent_revoke(args: argparse.Namespace, config: Config) -> int:
    """optgate consent revoke."""
    return await _consent(args, config, False)


async def consent_request(args: argparse.Namespace, config: Config) -> int:
    """optgate consent request: mail a double opt-in confirmation link."""
    purpose = check_name(args.purpose, "purpose")
    failed = 0
    async with opened_store(config) as store:
        for text in args.addresses:
            outcome = await request_consent(config, store, normalize(text), purpose, args.actor)
            failed += not outcome.delivered
            state = "sent" if outcome.delivered else f"NOT sent ({outcome.code} {outcome.message})"
            print(f"{text}\tconfirmation request {state}")
    return 1 if failed else 0


async def consent_import(args: argparse.Namespace, config: Config) -> int:
    """optgate consent import."""
    purpose = check_name(args.purpose, "purpose")
    name = "<stdin>" if args.file == "-" else args.file
    with _input(args.file) as handle:
        async with opened_store(config) as store:
            summary = await import_consents(
                store,
                read_rows(handle, args.format, name),
                purpose=purpose,
                source=args.source,
                version=args.policy_version,
                actor=args.actor,
                keep_addresses=config.store.keep_addresses,
            )
    print(summary)
    return 0


def _consent_row(c: Consent) -> dict[str, Any]:
    return {
        "email": c.address or "",
        "sha256": c.sha256,
        "purpose": c.purpose,
        "state": "granted" if c.granted else "revoked",
        "source": c.source,
        "policy_version": c.policy_version or "",
        "created": c.created.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "evidence": c.evidence or "",
    }


async def consent_export(args: argparse.Namespace, config: Config) -> int:
    """optgate consent export: every record, in order (csv or jsonl)."""
    import csv

    purpose = check_name(args.purpose, "purpose") if args.purpose else None
    async with opened_store(config) as store:
        with output_file(args.output) as out:
            writer: Any = None
            async with _closing(store.iter_consents(purpose)) as records:
                async for consent in records:
                    row = _consent_row(consent)
                    if args.format == "jsonl":
                        out.write(json.dumps(row) + "\n")
                        continue
                    if writer is None:
                        writer = csv.DictWriter(out, fieldnames=list(row), lineterminator="\n")
                        writer.writeheader()
                    writer.writerow(row)
    return 0


def _jsonable(record: Any) -> dict[str, Any]:
    data = asdict(record)
    return {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in data.items()}


async def subject_show(args: argparse.Namespace, config: Config) -> int:
    """optgate subject show: every record about an address, as JSON."""
    address = normalize(args.address)
    async with opened_store(config) as store:
        record = await store.subject(address)
        await store.audit(actor=args.actor, action="subject-access", subject=address.sha256)
    print(
        json.dumps(
            {
                "address": address.normalized,
                "sha256": address.sha256,
                "suppressions": [_jsonable(s) for s in record.suppressions],
                "consents": [_jsonable(c) for c in record.consents],
                "sends": [
                    {
                        "message": send.message,
                        "topic": send.topic,
                        "class": send.kind,
                        "at": send.at.isoformat(),
                    }
                    for send in record.sends
                ],
                "events": [
                    {"seq": e.seq, "at": e.at.isoformat(), **json.loads(e.body)}
                    for e in record.events
                ],
            },
            indent=2,
            default=str,
        )
    )
    return 0


async def subject_erase(args: argparse.Namespace, config: Config) -> int:
    """optgate subject erase: the store's records, then the kept inbound messages."""
    address = normalize(args.address)
    async with opened_store(config) as store:
        erased = await store.erase(address, actor=args.actor)
    kept = config.inbound.keep_raw
    files = await asyncio.to_thread(erase_kept, Path(kept), address) if kept else 0
    print(
        f"erased plaintext and evidence from {erased.cleared} record(s), revoked "
        f"{erased.revoked} consent(s), deleted {files} kept inbound message(s); "
        f"a global suppression (erased) keyed by {address.sha256[:12]}… stays, so only "
        "a consent given from now on mails this address again"
    )
    return 0


def erase_kept(folder: Path, address: Address) -> int:
    """Delete the kept inbound messages ([inbound] keep_raw) that hold the address."""
    needle = address.normalized.encode()
    deleted = 0
    for path in folder.glob("*.eml") if folder.is_dir() else ():
        if needle in path.read_bytes().lower():
            path.unlink()
            deleted += 1
    return deleted


async def explain(args: argparse.Namespace, config: Config) -> int:
    """optgate explain: the verdict for a marketing message and the reason, in words.

    0 if it would be sent, 1 if not; a bad address is a bad input (exit 2).
    """
    address = normalize(args.address)
    topic = check_name(args.topic or config.policy.default_topic, "topic")
    rules = Rules(config.policy.require_consent, config.policy.consent_versions)
    async with opened_store(config) as store:
        decided = await verdict(store, address, MessageClass.MARKETING, topic, rules)
    if args.json:
        shown = {
            "address": args.address,
            "sha256": address.sha256,
            "class": MessageClass.MARKETING.value,
            "topic": topic,
            "sent": decided.keep,
            "reason": decided.reason,
            "explanation": decided.explanation,
        }
        print(json.dumps(shown, indent=2))
    else:
        state = "would be sent" if decided.keep else "would NOT be sent"
        print(f"marketing mail on topic {topic!r} to {args.address} {state}: {decided.explanation}")
    return 0 if decided.keep else 1


async def demo(args: argparse.Namespace, config: Config) -> int:
    """optgate demo: a temporary store, a local sink, and a handful of messages."""
    await run_demo()
    return 0


async def dkim_keygen(args: argparse.Namespace, config: Config) -> int:
    """optgate dkim keygen: write the private key 0600, print the record and the config line."""
    out = Path(args.out) if args.out else None
    key = await asyncio.to_thread(
        keygen, args.domain, args.selector, args.algorithm, args.bits, out
    )
    print(f"wrote the private key to {key.path} (mode 0600)")
    print(f"\npublish this TXT record:\n{key.record}")
    print(f"\nand add the key to the configuration:\n[dkim]\n{config_line(key.entry)}")
    return 0


async def doctor(args: argparse.Namespace, config: Config) -> int:
    """optgate doctor: one line per check; 1 if any failed."""
    checks = await run_checks(config)
    for check in checks:
        print(check.line())
    return 1 if failed(checks) else 0


async def store_verify(args: argparse.Namespace, config: Config) -> int:
    """optgate store verify: the chain, the state it vouches for, the anchored heads."""
    try:
        expect = [parse_head(args.expect)] if args.expect else []
    except ValueError as exc:
        raise OptgateError(f"--expect: {exc}") from None
    anchor = Path(config.store.audit_anchor_file)
    anchored = read_anchor(anchor)
    async with opened_store(config) as store:
        report = await store.verify_chain([*expect, *([anchored] if anchored else [])])
    if report.intact:
        try:
            await asyncio.to_thread(write_anchor, anchor, report)
        except OSError as exc:
            print(f"optgate: cannot record the head in {anchor}: {exc.strerror}", file=sys.stderr)
    if args.json:
        print(json.dumps(_verify_json(report, anchored, anchor)))
    elif report.broken_at is not None:
        print(f"audit log BROKEN at event {report.broken_at}: {report.problem}")
    else:
        print(f"audit log intact: {report.events} events, head {report.head_text}")
        for mismatch in report.mismatches:
            print(f"state DIFFERS: {mismatch}")
        if not report.mismatches:
            tables = ", ".join(f"{table} ({rows} rows)" for table, rows in report.rows)
            print(f"state matches: the tables {tables} are what the audit log rebuilds")
        if anchored:
            print(f"anchored head {anchored[0]} (in {anchor}) is still in the chain")
    return 0 if report.intact else 1


def _verify_json(
    report: ChainReport, anchored: tuple[int, str] | None, anchor: Path
) -> dict[str, object]:
    return {
        "intact": report.intact,
        "events": report.events,
        "head": report.head_text,
        "broken_at": report.broken_at,
        "problem": report.problem,
        "rows": dict(report.rows),
        "mismatches": [
            {"table": m.table, "expected": m.expected, "found": m.found, "events": m.events}
            for m in report.mismatches
        ],
        "anchor": {"file": str(anchor), "head": f"{anchored[0]}:{anchored[1]}"}
        if anchored
        else None,
    }


async def store_migrate(args: argparse.Namespace, config: Config) -> int:
    """optgate store migrate: make the store (its directory 0700) and the token key file if
    missing, and bring the store to the current schema (opening it runs the migrations)."""
    from suppression.postgres import safe_url

    key_file = Path(config.unsubscribe.key_file)
    made = await asyncio.to_thread(make_key_file, key_file)
    await asyncio.to_thread(load_keys, key_file)  # made or not, it must be readable
    async with opened_store(config, create=True):
        pass
    print(f"store {safe_url(config.store.url)} is at the current schema")
    print(f"token keys: {'made ' if made else ''}{key_file}")
    return 0


async def report_compliance(args: argparse.Namespace, config: Config) -> int:
    """optgate report compliance: was marketing mail relayed to anyone after they opted out?"""
    total = 0
    worst = timedelta(0)
    violations: list[dict[str, Any]] = []
    async with opened_store(config) as store:
        async for check in store.compliance():
            total += 1
            if check.sends_after == 0 or check.last_send_after is None:
                continue
            delay = check.last_send_after - check.at
            worst = max(worst, delay)
            violations.append(
                {
                    "sha256": check.sha256,
                    "scope": check.scope,
                    "reason": check.reason.value,
                    "source": check.source,
                    "opted_out": _utc(check.at),
                    "messages_after": check.sends_after,
                    "last_message": _utc(check.last_send_after),
                    "delay_hours": _hours(delay),
                }
            )
            if not args.json:
                print(
                    f"VIOLATION {check.sha256[:16]} {check.scope} {check.reason.value} "
                    f"opted out {_utc(check.at)} via {check.source}: "
                    f"{check.sends_after} message(s) after, the last {_hours(delay)} h later"
                )
    if args.json:
        report = {"opt_outs": total, "longest_delay_hours": _hours(worst), "violations": violations}
        print(json.dumps(report, indent=2))
    else:
        print(
            f"{total} opt-out(s), {len(violations)} with marketing mail relayed after the "
            f"opt-out; longest delay {_hours(worst)} h (Gmail allows 48 h, Yahoo 2 days, "
            "CAN-SPAM 10 business days; optgate's own bar is zero)"
        )
    return 1 if violations else 0


def _hours(delay: timedelta) -> float:
    return round(delay.total_seconds() / 3600, 1)


async def log_id(args: argparse.Namespace, config: Config) -> int:
    """optgate log-id: what the log lines say for addresses (``rcpt``) or other values."""
    logs.use_key(load_log_key(Path(config.unsubscribe.key_file)))
    for value in args.values:
        if args.message_id:
            print(f"{logs.digest(value)}  {value}")
        else:
            print(f"{logs.recipient_id(normalize(value).sha256)}  {value}")
    return 0
