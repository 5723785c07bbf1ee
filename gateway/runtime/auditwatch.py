"""optgate serve's watch on the audit log: verified on a schedule, the result exported.

One worker runs it. Each check opens a store of its own on a thread of its own
(the walk reads every row), checks the chain against the head anchored last,
records the new head outside the store and sets the ``optgate_audit_*`` gauges;
the log line carries the head, so the logs anchor it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import structlog

from gateway.config import Config
from gateway.runtime.metrics import Metrics
from gateway.runtime.stores import opened, read_anchor, write_anchor
from suppression.errors import OptgateError
from suppression.statecheck import ChainReport

log = structlog.get_logger("optgate.audit")


async def _verify(config: Config) -> ChainReport:
    anchor = Path(config.store.audit_anchor_file)
    anchored = read_anchor(anchor)
    async with opened(config) as store:
        report = await store.verify_chain([anchored] if anchored else [])
    if report.intact:
        write_anchor(anchor, (report.events, report.head))
    return report


async def check(config: Config, metrics: Metrics) -> ChainReport | None:
    """Verify once; None (and the gauge at 0) when the store cannot be read."""
    try:
        report = await asyncio.to_thread(asyncio.run, _verify(config))
    except (OptgateError, OSError) as exc:
        metrics.audit_intact.set(0)
        log.error("audit_unverified", problem=str(exc))
        return None
    metrics.audit_intact.set(int(report.intact))
    metrics.audit_events.set(report.events)
    metrics.audit_verified.set(time.time())
    problems = [str(m) for m in report.mismatches]
    if report.problem:
        problems.insert(0, f"broken at event {report.broken_at}: {report.problem}")
    if report.intact:
        log.info("audit_verified", events=report.events, head=report.head_text)
    else:
        log.error("audit_broken", events=report.events, head=report.head_text, problems=problems)
    return report


async def watch(config: Config, metrics: Metrics, stop: asyncio.Event) -> None:
    """Check at start and every ``[store] verify_minutes`` until ``stop``."""
    while not stop.is_set():
        await check(config, metrics)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), config.store.verify_minutes * 60)
