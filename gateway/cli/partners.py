"""The ``optgate partner`` commands: manage partners and offers; reports with counts only."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from gateway import actions
from gateway.actions import known_partner
from gateway.cli.admin import opened_store
from gateway.cli.bulk import output_file
from gateway.config import Config
from suppression.formats.write import ExportRecord, write_records
from suppression.model import Reason, check_name, now
from suppression.partners import (
    Partner,
    hash_credential,
    new_credential,
)
from suppression.scope import Scope


async def partner_add(args: argparse.Namespace, config: Config) -> int:
    """Register a partner and print its credential, the only time it is shown."""
    name = check_name(args.name, "partner")
    secret = new_credential()
    credential = await asyncio.to_thread(hash_credential, secret)
    partner = Partner(name, credential, False, now(), args.rate, args.max_size)
    async with opened_store(config) as store:
        await store.add_partner(partner, actor=args.actor)
    print(f"partner {name} added; its credential is shown only now:")
    print(f"  user     {name}")
    print(f"  password {secret}")
    return 0


async def partner_list(args: argparse.Namespace, config: Config) -> int:
    """One line per partner."""
    async with opened_store(config) as store:
        partners = await store.partners()
    for p in partners:
        limits = (
            f"rate {p.rate_per_hour or config.partners.rate_per_hour}/h "
            f"size {p.max_size or config.partners.max_message_size}"
        )
        state = "disabled" if p.disabled else "active"
        print(f"{p.name}\t{state}\tsince {p.created:%Y-%m-%d}\t{limits}")
    if not partners:
        print("no partners: add one with optgate partner add NAME")
    return 0


async def partner_disable(args: argparse.Namespace, config: Config) -> int:
    """Refuse a partner's submissions from now on."""
    async with opened_store(config) as store:
        changed = await store.disable_partner(check_name(args.name, "partner"), actor=args.actor)
    print(f"partner {args.name} {'disabled' if changed else 'was disabled already'}")
    return 0


async def partner_report(args: argparse.Namespace, config: Config) -> int:
    """Per offer: counts only, each at least k or shown as <k."""
    k = config.partners.report_threshold
    async with opened_store(config) as store:
        report = await actions.partner_report(store, args.name, k)
    views = report["offers"]
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"partner {report['partner']}: {len(views)} offer(s); counts below {k} show as <{k}")
    for v in views:
        print(
            f"offer {v['offer']}\t{v['submitted']}\t{v['state']}\ttopic {v['topic'] or '-'}\t"
            f"audience {v['audience']}\tsent {v['sent']}\tsuppressed {v['suppressed']}\t"
            f"bounced {v['bounced']}\tunsubscribed {v['unsubscribed']}"
        )
    return 0


async def partner_export_optouts(args: argparse.Namespace, config: Config) -> int:
    """Hashes (md5 or sha256) of the people who opted out of this partner's offers."""
    async with opened_store(config) as store:
        partner = await known_partner(store, args.name)
        optouts = await store.partner_optouts(partner.name)
    at, scope = now(), str(Scope.partner(partner.name))
    records = (
        ExportRecord(sha, address, scope, Reason.UNSUBSCRIBED.value, "", at)
        for sha, address in optouts
    )
    with output_file(args.output) as out:
        summary = write_records(records, args.format, out)
    if summary.skipped:
        print(
            f"optgate: {summary.skipped} opt-out(s) without a kept address have no md5",
            file=sys.stderr,
        )
    return 0


async def partner_offers(args: argparse.Namespace, config: Config) -> int:
    """Offers (of one partner, or all) with exact counts: for the operator, not the partner."""
    async with opened_store(config) as store:
        if args.name:
            await known_partner(store, args.name)
        statuses = await store.offer_statuses(args.name)
    for s in statuses:
        print(
            f"{s.id}\t{s.partner}\t{s.state.value}\t{s.created:%Y-%m-%d %H:%M}\t"
            f"topic {s.topic or '-'}\taudience {s.audience}\tsent {s.sent}\t"
            f"suppressed {s.suppressed}\tfailed {s.bounced}\tpending {s.pending}"
        )
    if not statuses:
        print("no offers")
    return 0


async def offer_change(args: argparse.Namespace, config: Config) -> int:
    """pause, resume or cancel one offer."""
    async with opened_store(config) as store:
        state = await store.change_offer(args.id, args.change, actor=args.actor)
    print(f"offer {args.id} {state.value}")
    return 0
