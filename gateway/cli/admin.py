"""What the administrative commands do: each opens the store, acts, prints."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

from yarl import URL

from gateway import actions, optouts
from gateway.cli.demo import run_demo
from gateway.config import Config
from gateway.doctor import failed, print_report, run_checks
from gateway.keygen import config_line, keygen
from gateway.keys import load_keys, load_log_key, make_key_file
from gateway.optouts import Recipient, SuppressionEvent
from gateway.outbound.policy import Rules
from gateway.runtime import logs
from gateway.runtime.stores import opened
from gateway.web.optin import request_consent
from suppression.address import normalize
from suppression.apikeys import check_scopes, new_key
from suppression.audit import parse_head
from suppression.errors import OptgateError
from suppression.model import Reason, Source, check_name, now
from suppression.outbox import PendingState, Webhook, check_events, new_secret
from suppression.partners import UnknownPartner
from suppression.rates import COUNTED, Counts
from suppression.scope import Scope
from suppression.store import Store


@contextlib.asynccontextmanager
async def opened_store(config: Config, *, create: bool = False) -> AsyncIterator[Store]:
    """The configured store, closed on the way out.

    A missing one is StoreMissing (naming where it looked), unless ``create``:
    only ``store migrate`` (and ``serve``) make a store.
    """
    async with opened(config, create=create) as store:
        yield store


async def checked_scope(config: Config, text: str) -> Scope:
    """A --scope, parsed: valid, and a partner's must name a partner the store knows."""
    scope = Scope.parse(text)
    if scope.kind == "partner":
        async with opened_store(config) as store:
            known = await store.partner(scope.name)
        if known is None:
            raise UnknownPartner(
                f"scope {scope}: no partner named {scope.name!r}: `optgate partner list` shows "
                f"the partners, `optgate partner add {scope.name}` adds one"
            )
    return scope


async def suppress_add(args: argparse.Namespace, config: Config) -> int:
    """optgate suppress add (``args.scope`` parsed by the CLI's checked_scope)."""
    scope, reason, keep = args.scope, Reason(args.reason), config.store.keep_addresses
    events = [
        SuppressionEvent(Recipient.parse(text, keep=keep), scope, reason, Source.CLI)
        for text in args.addresses  # every one parsed first: a bad one changes nothing
    ]
    async with opened_store(config) as store:
        result = await optouts.opt_out(store, events, actor=args.actor)
    print(f"suppressed {result.added} new, {result.present + result.duplicates} already ({scope})")
    return 0


async def suppress_remove(args: argparse.Namespace, config: Config) -> int:
    """optgate suppress remove."""
    scope = args.scope
    recipients = [Recipient.parse(text, keep=True) for text in args.addresses]
    async with opened_store(config) as store:
        lifted = await optouts.lift(store, recipients, scope=scope, actor=args.actor)
    removed = lifted.removed
    print(f"lifted {removed} suppression(s) in {scope}; {lifted.targets - removed} had none")
    return 0


async def suppress_check(args: argparse.Namespace, config: Config) -> int:
    """optgate suppress check: one line per address (or JSON); 1 if any is suppressed."""
    async with opened_store(config) as store:
        checked = await actions.check(
            store, args.addresses, topic=config.policy.default_topic, rules=_rules(config)
        )
    found = any(c.suppressions for c in checked)
    if args.json:
        print(json.dumps({"addresses": [c.state_json() for c in checked]}, indent=2))
        return 1 if found else 0
    for c in checked:
        for record in c.suppressions:
            via = "domain " if record.kind == "domain" else ""
            print(
                f"{c.given}\tsuppressed\t{via}{record.scope}\t{record.reason.value}"
                f"\tsince {_utc(record.created)}"
            )
        if not c.suppressions:
            print(f"{c.given}\tnot suppressed")
    return 1 if found else 0


def _rules(config: Config) -> Rules:
    return Rules(config.policy.require_consent, config.policy.consent_versions)


_utc = actions.utc


async def _consent(args: argparse.Namespace, config: Config, granted: bool) -> int:
    purpose = check_name(args.purpose, "purpose")
    addresses = [normalize(text) for text in args.addresses]
    async with opened_store(config) as store:
        count = await optouts.consent(
            store,
            addresses,
            purpose=purpose,
            granted=granted,
            source=args.source,
            policy_version=args.policy_version,
            actor=args.actor,
            keep_addresses=config.store.keep_addresses,
        )
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


async def subject_show(args: argparse.Namespace, config: Config) -> int:
    """optgate subject show: every record about an address, as JSON."""
    address = normalize(args.address)
    async with opened_store(config) as store:
        shown = await actions.subject_access(
            store, address, actor=args.actor, keep_raw=config.inbound.keep_raw
        )
    print(json.dumps(shown, indent=2, default=str))
    return 0


async def subject_erase(args: argparse.Namespace, config: Config) -> int:
    """optgate subject erase: the store's records, then the kept inbound messages."""
    address = normalize(args.address)
    async with opened_store(config) as store:
        erased = await optouts.erase(
            store, address, actor=args.actor, keep_raw=config.inbound.keep_raw
        )
    print(
        f"erased plaintext and evidence from {erased.cleared} record(s), revoked "
        f"{erased.revoked} consent(s), deleted {erased.files} kept inbound message(s); "
        f"a global suppression (erased) keyed by {address.sha256[:12]}… stays, so only "
        "a consent given from now on mails this address again"
    )
    return 0


async def explain(args: argparse.Namespace, config: Config) -> int:
    """optgate explain: the verdict for a marketing message and the reason, in words.

    0 if it would be sent, 1 if not; a bad address is a bad input (exit 2).
    """
    topic = check_name(args.topic or config.policy.default_topic, "topic")
    async with opened_store(config) as store:
        explained = await actions.explain(store, args.address, topic=topic, rules=_rules(config))
    decided = explained.verdict
    if args.json:
        print(json.dumps(explained.as_json(), indent=2))
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
    from gateway.runtime.workers import default_count  # forks and event loops: only here

    checks = await run_checks(config, workers=args.workers or default_count())
    print_report(checks)
    return 1 if failed(checks) else 0


async def store_verify(args: argparse.Namespace, config: Config) -> int:
    """optgate store verify: the chain, the state it vouches for, the anchored heads."""
    try:
        expect = [parse_head(args.expect)] if args.expect else []
    except ValueError as exc:
        raise OptgateError(f"--expect: {exc}") from None
    anchor = Path(config.store.audit_anchor_file)
    async with opened_store(config) as store:
        verified = await actions.verify(store, anchor, expect)
    report, anchored = verified.report, verified.anchored
    if verified.unrecorded is not None:
        print(
            f"optgate: cannot record the head in {anchor}: {verified.unrecorded}", file=sys.stderr
        )
    if args.json:
        print(json.dumps(verified.as_json()))
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
    async with opened_store(config) as store:
        report = await actions.compliance(store)
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
        return 1 if report.violations else 0
    for v in report.violations:
        print(
            f"VIOLATION {v['sha256'][:16]} {v['scope']} {v['reason']} "
            f"opted out {v['opted_out']} via {v['source']}: "
            f"{v['messages_after']} message(s) after, the last {v['delay_hours']} h later"
        )
    print(
        f"{report.opt_outs} opt-out(s), {len(report.violations)} with marketing mail relayed "
        f"after the opt-out; longest delay {actions.hours(report.longest)} h (Gmail allows "
        "48 h, Yahoo 2 days, CAN-SPAM 10 business days; optgate's own bar is zero)"
    )
    return 1 if report.violations else 0


async def log_id(args: argparse.Namespace, config: Config) -> int:
    """optgate log-id: what the log lines say for addresses (``rcpt``) or other values."""
    logs.use_key(load_log_key(Path(config.unsubscribe.key_file)))
    for value in args.values:
        if args.message_id:
            print(f"{logs.digest(value)}  {value}")
        else:
            print(f"{logs.recipient_id(normalize(value).sha256)}  {value}")
    return 0


async def api_key_add(args: argparse.Namespace, config: Config) -> int:
    """optgate api-key add: make a key, store its digest, print it (the only time)."""
    text, key = new_key(args.name, check_scopes(args.scopes))
    async with opened_store(config) as store:
        await store.add_api_key(key, actor=args.actor)
    print(f"API key {key.name} ({', '.join(key.scopes)}) added; it is shown only now:")
    print(f"  {text}")
    print(f"send it as 'Authorization: Bearer KEY' to the admin listener ({config.api.listen})")
    return 0


async def api_key_list(args: argparse.Namespace, config: Config) -> int:
    """optgate api-key list: one line per key (never the key itself)."""
    async with opened_store(config) as store:
        keys = await store.api_keys()
    for key in keys:
        state = f"revoked {_utc(key.revoked)}" if key.revoked else "active"
        print(f"{key.name}\t{','.join(key.scopes)}\tsince {_utc(key.created)}\t{state}")
    if not keys:
        print("no API keys: add one with optgate api-key add NAME --scope read")
    return 0


async def api_key_revoke(args: argparse.Namespace, config: Config) -> int:
    """optgate api-key revoke: the key of that name stops working at once, on every node."""
    name = check_name(args.name, "API key name")
    async with opened_store(config) as store:
        revoked = await store.revoke_api_key(name, now(), actor=args.actor)
    if not revoked:
        raise OptgateError(f"no live API key named {name!r}: optgate api-key list shows them")
    print(f"API key {name} revoked")
    return 0


async def webhooks_add(args: argparse.Namespace, config: Config) -> int:
    """optgate webhooks add: register an endpoint; print its signing secret (once)."""
    url = URL(args.url)
    if url.scheme not in ("http", "https") or not url.host:
        raise OptgateError(f"{args.url!r} is not an http:// or https:// URL")
    name = check_name(args.name or url.host.lower(), "webhook name")
    events = check_events(args.events)
    hook = Webhook(name, str(url), events, args.include_address, new_secret(), now())
    async with opened_store(config) as store:
        await store.add_webhook(hook, actor=args.actor)
    default = "addresses" if config.webhooks.include_address else "hashes only"
    shown = {True: "addresses", False: "hashes only", None: f"{default} ([webhooks])"}
    print(f"webhook {name} added: {url} gets {', '.join(events)}; {shown[hook.include_address]}")
    print(f"its signing secret (Standard Webhooks), shown only now:\n  {hook.secret}")
    return 0


async def webhooks_list(args: argparse.Namespace, config: Config) -> int:
    """optgate webhooks list: the endpoints and their backlog; --failed: the dead ones."""
    async with opened_store(config) as store:
        if args.failed:
            dead = await store.deliveries(PendingState.DEAD, args.limit)
            for d in dead:
                print(
                    f"{d.id}\t{d.webhook}\t{d.type}\t{d.uid}\tevent {_utc(d.created)}\t"
                    f"{d.attempts} attempt(s)\tlast: {d.status}"
                )
            if not dead:
                print("no failed deliveries")
            return 1 if dead else 0
        hooks, counts = await store.webhooks(), await store.outbox_counts()
    for hook in hooks:
        rotating = f"\trotating until {_utc(hook.previous_until)}" if hook.previous_until else ""
        address = {True: "addresses", False: "hashes", None: "default"}[hook.include_address]
        print(f"{hook.name}\t{hook.url}\t{','.join(hook.events)}\t{address}{rotating}")
    if not hooks:
        print("no webhooks: add one with optgate webhooks add URL --events all")
    states = (PendingState.PENDING, PendingState.DELIVERED, PendingState.DEAD)
    print("deliveries: " + ", ".join(f"{counts.get(s, 0)} {s}" for s in states))
    return 0


async def webhooks_remove(args: argparse.Namespace, config: Config) -> int:
    """optgate webhooks remove: the endpoint and its deliveries."""
    async with opened_store(config) as store:
        if not await store.remove_webhook(check_name(args.name, "webhook name"), actor=args.actor):
            raise OptgateError(f"no webhook named {args.name!r}: optgate webhooks list")
    print(f"webhook {args.name} removed, with its deliveries")
    return 0


async def webhooks_rotate(args: argparse.Namespace, config: Config) -> int:
    """optgate webhooks rotate: a new secret; the old one signs too for rotation_hours."""
    secret = new_secret()
    until = now() + timedelta(hours=config.webhooks.rotation_hours)
    async with opened_store(config) as store:
        name = check_name(args.name, "webhook name")
        if not await store.rotate_webhook(name, secret, until, actor=args.actor):
            raise OptgateError(f"no webhook named {args.name!r}: optgate webhooks list")
    print(f"webhook {name}: new signing secret, shown only now:\n  {secret}")
    print(f"deliveries carry both signatures until {_utc(until)}; then only the new one")
    return 0


async def webhooks_retry(args: argparse.Namespace, config: Config) -> int:
    """optgate webhooks retry: make failed (dead) deliveries due again."""
    if not args.ids and not args.all:
        raise OptgateError(
            "name the deliveries to retry (ids from webhooks list --failed) or --all"
        )
    async with opened_store(config) as store:
        count = await store.retry_deliveries(
            None if args.all else args.ids, now(), actor=args.actor
        )
    print(f"{count} failed deliver{'y' if count == 1 else 'ies'} due again")
    return 0


def _rate_line(row: Counts) -> str:
    def part(name: str) -> str:
        count = getattr(row, name)
        return f"{name} {count} ({row.rate(count):.2%})"

    flag = {"over": "  OVER Gmail's 0.3% complaint line", "above-target": "  above 0.1%"}
    counted = ", ".join(part(name) for name in COUNTED)
    return f"sent {row.sent}, {counted}{flag.get(row.flag, '')}"


async def report_rates(args: argparse.Namespace, config: Config) -> int:
    """optgate report rates: per topic and campaign; 1 if any is over Gmail's 0.3% line."""
    start = actions.since(args.since)
    async with opened_store(config) as store:
        report = await actions.rates(store, start)
    over = any(row.flag == "over" for row in report.rows) or any(
        total.flag == "over" for total, _ in report.topics()
    )
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
        return 1 if over else 0
    print(f"since {_utc(report.since)}: opt-outs count for the last marketing copy before them")
    for total, rows in report.topics():
        print(f"{total.topic}: {_rate_line(total)}")
        for row in rows:
            print(f"  campaign {row.campaign or '(none)'}: {_rate_line(row)}")
    if not report.rows:
        print("no marketing mail sent in this period")
    return 1 if over else 0
