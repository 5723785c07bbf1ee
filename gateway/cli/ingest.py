"""`optgate ingest SOURCE`: every unprocessed message of a mailbox -> classify -> apply -> mark.

One message at a time (a source never loads the mailbox whole): too big ->
a counted error, left unmarked; otherwise read, keep (``[inbound] keep_raw``,
as live inbound mail), classify (gateway/inbound/classify.py, on a thread: it
parses), apply to the store (gateway/inbound/apply.py), and only then mark it
processed, so a message whose application failed is tried again by the next
run. A failure on one message is counted and the run goes on; a source that
cannot be opened, or a connection lost, stops the run (exit 2). ``--dry-run``
reads and classifies, asks the store what it would change, and changes
nothing, neither the store nor the mailbox.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
from dataclasses import dataclass
from datetime import datetime
from email.parser import BytesHeaderParser
from email.utils import parsedate_to_datetime
from pathlib import Path

import structlog

from gateway.config import Config
from gateway.inbound.apply import Applied, apply
from gateway.inbound.authentication import Origin
from gateway.inbound.classify import classify
from gateway.inbound.imap import Imap, parse_url
from gateway.inbound.mailboxes import Mailboxes
from gateway.inbound.mailed_optouts import OptOuts
from gateway.inbound.receive import keep
from gateway.inbound.sources import MessageError, Pending, Source, SourceError, open_local
from gateway.keys import load_keys, load_log_key
from gateway.runtime import logs
from gateway.runtime.stores import open_configured
from gateway.tokens import TokenSigner
from suppression.errors import ConfigError, OptgateError
from suppression.model import now
from suppression.store import Mailbox

log = structlog.get_logger("optgate.ingest")

EXIT_OK, EXIT_FAILED_MESSAGES = 0, 1


@dataclass
class Summary:
    """What a run read and what came of it."""

    read: int = 0
    errors: int = 0
    applied: Applied = dataclasses.field(default_factory=Applied)
    stopped: str | None = None  # why the source failed mid-run

    def __str__(self) -> str:
        a = self.applied
        return (
            f"read {self.read}, unsubscribes {a.unsubscribes}, hard bounces {a.hard_bounces}, "
            f"soft bounces {a.soft_bounces}, complaints {a.complaints}, ignored {a.ignored}, "
            f"errors {self.errors} (new suppressions {a.suppressed}, held for a confirmation "
            f"link {a.held}, forged tokens {a.forged})"
        )


def _password(args: argparse.Namespace) -> str:
    """The IMAP password from --password-file or --password-env (never the command line)."""
    if args.password_file is not None:
        try:
            text = Path(args.password_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            detail = getattr(exc, "strerror", None) or "not UTF-8 text"
            raise SourceError(
                f"cannot read --password-file {args.password_file}: {detail}"
            ) from None
        password = text.split("\n", 1)[0].removesuffix("\r")
        where = f"--password-file {args.password_file}"
    elif args.password_env is not None:
        password = os.environ.get(args.password_env, "")
        where = f"--password-env {args.password_env}"
    else:
        raise SourceError("an IMAP source needs --password-file FILE or --password-env VAR")
    if not password:
        raise SourceError(f"{where} gives an empty password")
    return password


def open_source(args: argparse.Namespace) -> Source:
    """The mailbox SOURCE names, opened; SourceError saying what is wrong."""
    text: str = args.source
    if "://" in text:
        url = parse_url(text)
        return Imap(url, _password(args), args.move_to)
    for option, given in (
        ("--password-file", args.password_file),
        ("--password-env", args.password_env),
        ("--move-to", args.move_to),
    ):
        if given is not None:
            raise SourceError(f"{option} is for imap:// and imaps:// sources")
    return open_local(Path(text))


def arrived(raw: bytes) -> datetime:
    """When the message was sent (its Date), for soft-bounce windows; now if unknown or future."""
    try:
        date = BytesHeaderParser().parsebytes(raw).get("Date")
        when = parsedate_to_datetime(str(date)) if date else None
    except (TypeError, ValueError, IndexError):
        when = None
    if when is None or when.tzinfo is None:
        return now()
    return min(when, now())


@dataclass(frozen=True, slots=True)
class Ingest:
    """One run over a source: what every message shares."""

    source: Source
    store: Mailbox
    config: Config
    signer: TokenSigner
    dry_run: bool
    optouts: OptOuts

    async def run(self, limit: int | None) -> Summary:
        """Process the unprocessed messages (at most ``limit``); a lost source stops the run."""
        summary = Summary()
        waiting = iter(await asyncio.to_thread(self.source.pending))
        try:
            while limit is None or summary.read < limit:
                pending = await asyncio.to_thread(next, waiting, None)
                if pending is None:
                    break
                summary.read += 1
                applied = await self._guarded(pending)
                if applied is None:
                    summary.errors += 1
                else:
                    summary.applied += applied
        except SourceError as exc:
            summary.stopped = str(exc)
        return summary

    async def _guarded(self, pending: Pending) -> Applied | None:
        """One message, or None when it failed (logged; it stays unmarked); SourceError passes."""
        if pending.size > self.config.inbound.max_message_size:
            log.warning("ingest_too_big", key=pending.key, size=pending.size)
            return None
        try:
            return await self.message(pending)
        except SourceError:
            raise
        except MessageError as exc:
            log.warning("ingest_failed", key=pending.key, problem=str(exc))
        except Exception as exc:  # one message never stops the run
            # the type only: an exception's text may quote an address
            log.error("ingest_failed", key=pending.key, error=type(exc).__name__)
        return None

    async def message(self, pending: Pending) -> Applied:
        """Read, classify, apply and (unless a dry run) mark one message."""
        raw = await asyncio.to_thread(self.source.read, pending.key)
        inbound = self.config.inbound
        if inbound.keep_raw and not self.dry_run:
            await asyncio.to_thread(keep, Path(inbound.keep_raw), raw)
        found = await asyncio.to_thread(
            classify,
            raw,
            unsubscribe_local=inbound.unsubscribe_local,
            bounce_local=inbound.bounce_local,
        )
        applied = await apply(
            found,
            store=self.store,
            config=self.config,
            dry_run=self.dry_run,
            signer=self.signer,
            at=arrived(raw),
            origin=Origin(raw, None),  # the own MTAs' trace fields tell the sending client
            optouts=self.optouts,
        )
        if not self.dry_run:
            await asyncio.to_thread(self.source.mark, pending.key)
        log.info(
            "ingest_message",
            key=pending.key,
            digest=found.digest[:16],
            message_id=found.message_id,
            kinds=[f.kind.value for f in found.findings],
            marked=not self.dry_run,
            dry_run=self.dry_run,
        )
        return applied


async def run(args: argparse.Namespace, config: Config) -> int:
    """optgate ingest: exit 0, 1 when some messages failed (left unmarked), 2 on a bad SOURCE."""
    if args.limit is not None and args.limit < 1:
        raise OptgateError("--limit must be at least 1")
    logs.configure(cache=False)
    source = await asyncio.to_thread(open_source, args)
    try:
        store = await open_configured(config)  # a missing store first: the clearer error
        try:
            key_file = Path(config.unsubscribe.key_file)
            signer = TokenSigner(load_keys(key_file))
            with contextlib.suppress(ConfigError):  # no log key yet: digests stay unlinkable
                logs.use_key(load_log_key(key_file))
            optouts = OptOuts.from_config(config, store, Mailboxes.from_config(config.inbound))
            ingest = Ingest(source, store, config, signer, args.dry_run, optouts)
            summary = await ingest.run(args.limit)
        finally:
            await store.close()
    finally:
        await asyncio.to_thread(source.close)
    prefix = "dry run, nothing changed: " if args.dry_run else ""
    print(f"{source.description}: {prefix}{summary}")
    if summary.stopped:
        raise SourceError(f"stopped early: {summary.stopped}")
    return EXIT_FAILED_MESSAGES if summary.errors else EXIT_OK
