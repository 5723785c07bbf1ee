"""Webhooks out: every worker of every node delivers the outbox (suppression/outbox.py).

    loop (each worker, woken every second):
      -> anything due? (a read; no write lock while the outbox is idle)
      -> claim a batch with a lease ([webhooks] lease; PostgreSQL skips rows another node
         locked): a node killed now leaves its batch to whoever claims it after the lease
      -> POST each (concurrently, [webhooks] timeout each), signed per Standard Webhooks:
         webhook-id (the event's, the same on every attempt), webhook-timestamp (this
         attempt's), webhook-signature "v1,<base64 HMAC-SHA256 of id.timestamp.body>", one
         per valid secret (two during a rotation)
      -> 2xx: delivered (the address dropped); otherwise retried after [webhooks]
         retry_seconds, doubling, at most an hour apart, until give_up_after from the event:
         then dead, listed by `optgate webhooks list --failed` and retried on request

At least once: a delivery is marked only after its endpoint answered, so a node that
dies in between sends it again (same webhook-id); a change that rolled back never wrote
its events.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import os
import random
import secrets
import socket
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta

import aiohttp
import structlog

from gateway.config import Webhooks as Settings
from gateway.runtime.metrics import Metrics
from suppression.errors import ConfigError, OptgateError
from suppression.model import now
from suppression.outbox import SECRET_PREFIX, Delivery, PendingState, Webhook
from suppression.store import Webhooks

log = structlog.get_logger("optgate.webhooks")
POLL_SECONDS = 1.0
LOOK_SECONDS = 30.0  # how often the backlog gauge is refreshed and old deliveries pruned
MAX_WAIT = 3600.0  # seconds: retries are never further apart
READ_LIMIT = 64 * 1024  # of an endpoint's answer, read and dropped
JITTER = 0.1  # of each retry's wait, either way: endpoints that come back are not met by
# every retry at once


def signature(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """One Standard Webhooks signature: ``v1,`` and base64 of HMAC-SHA256 over
    ``id.timestamp.body`` keyed with the secret's bytes (the base64 after ``whsec_``)."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def signed_headers(hook: Webhook, delivery: Delivery, body: bytes, at: datetime) -> dict[str, str]:
    """The request's headers: the event's id, this attempt's time, every valid signature."""
    timestamp = int(at.timestamp())
    signatures = " ".join(
        signature(secret, delivery.uid, timestamp, body) for secret in hook.secrets_at(at)
    )
    return {
        "webhook-id": delivery.uid,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signatures,
        "Content-Type": "application/json",
        "User-Agent": "optgate",
    }


def backoff(settings: Settings, attempts: int) -> float:
    """Seconds before the next attempt after ``attempts`` failed ones (before jitter):
    retry_seconds, doubling, at most MAX_WAIT."""
    return min(settings.retry_seconds * 2.0 ** max(attempts - 1, 0), MAX_WAIT)


def retry_at(
    settings: Settings, created: datetime, failed: datetime, attempts: int, jitter: float
) -> datetime | None:
    """When a delivery of an event made at ``created`` is tried again after its
    ``attempts``-th attempt failed at ``failed`` (the wait times ``jitter``); None once
    that is past give_up_after from the event: dead."""
    due = failed + timedelta(seconds=backoff(settings, attempts) * jitter)
    return None if due > created + timedelta(seconds=settings.give_up_after) else due


def check(settings: Settings) -> None:
    """Settings the loop cannot work with are errors naming the key."""
    for name in ("timeout", "lease", "batch", "retry_seconds"):
        if getattr(settings, name) < 1:
            raise ConfigError(f"[webhooks] {name}: at least 1")
    if settings.lease <= settings.timeout:
        raise ConfigError(
            "[webhooks] lease must be longer than timeout: a delivery still being sent "
            "would be taken over by another node"
        )


class Deliverer:
    """This worker's share of the outbox."""

    def __init__(
        self,
        store: Webhooks,
        settings: Settings,
        metrics: Metrics,
        clock: Callable[[], datetime] = now,
    ) -> None:
        check(settings)
        self._store, self._settings, self._metrics, self._clock = store, settings, metrics, clock
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._looked = 0.0

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop`` is set; a store or network failure waits and tries again."""
        timeout = aiohttp.ClientTimeout(total=self._settings.timeout)
        async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as http:
            while not stop.is_set():
                try:
                    sent = await self.round(http)
                    await self._look()
                except OptgateError as exc:
                    log.warning("webhook_round_failed", error=type(exc).__name__)
                    sent = 0
                if not sent:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), POLL_SECONDS)

    async def round(self, http: aiohttp.ClientSession) -> int:
        """Claim what is due and send it; how many deliveries were attempted."""
        at = self._clock()
        if not await self._store.deliveries_due(at):
            return 0
        lease = timedelta(seconds=self._settings.lease)
        claimed = await self._store.claim_deliveries(
            self.owner, self._settings.batch, at=at, until=at + lease
        )
        if not claimed:
            return 0
        hooks = {hook.name: hook for hook in await self._store.webhooks()}
        # (an endpoint removed since took its deliveries with it)
        await asyncio.gather(
            *(self._deliver(http, hooks[d.webhook], d) for d in claimed if d.webhook in hooks)
        )
        return len(claimed)

    async def _deliver(
        self, http: aiohttp.ClientSession, hook: Webhook, delivery: Delivery
    ) -> None:
        include = (
            hook.include_address
            if hook.include_address is not None
            else self._settings.include_address
        )
        body = delivery.payload(include)
        at = self._clock()
        try:
            async with http.post(
                hook.url,
                data=body,
                headers=signed_headers(hook, delivery, body, at),
                allow_redirects=False,
            ) as answer:
                await answer.content.read(READ_LIMIT)
                status, ok = f"HTTP {answer.status}", 200 <= answer.status < 300
        except TimeoutError:
            status, ok = "timeout", False
        except aiohttp.ClientError as exc:
            status, ok = f"connection failed ({type(exc).__name__})", False
        if ok:
            await self._store.delivered(self.owner, delivery.id, status, self._clock())
            self._metrics.webhook_deliveries.labels("delivered").inc()
            log.info("webhook_delivered", webhook=hook.name, webhook_id=delivery.uid, status=status)
            return
        await self._failed(hook, delivery, status)

    async def _failed(self, hook: Webhook, delivery: Delivery, status: str) -> None:
        attempts = delivery.attempts + 1
        jitter = random.uniform(1 - JITTER, 1 + JITTER)
        due = retry_at(self._settings, delivery.created, self._clock(), attempts, jitter)
        await self._store.undelivered(self.owner, delivery.id, status, due)
        outcome = "dead" if due is None else "failed"
        self._metrics.webhook_deliveries.labels(outcome).inc()
        log.warning(
            "webhook_failed",
            webhook=hook.name,
            webhook_id=delivery.uid,
            status=status,
            attempts=attempts,
            outcome=outcome,
        )

    async def _look(self) -> None:
        """Now and then: the backlog gauge, and delivered events past keep_days forgotten."""
        loop = asyncio.get_running_loop()
        if loop.time() - self._looked < LOOK_SECONDS and self._looked:
            return
        self._looked = loop.time()
        counts = await self._store.outbox_counts()
        for state in (PendingState.PENDING, PendingState.DEAD):
            self._metrics.webhook_backlog.labels(state).set(counts.get(state, 0))
        kept = timedelta(days=self._settings.keep_days)
        await self._store.prune_deliveries(self._clock() - kept)


@contextlib.asynccontextmanager
async def delivering(
    store: Webhooks, settings: Settings, metrics: Metrics
) -> AsyncIterator[Deliverer]:
    """Run this worker's deliverer while the gateway runs; on exit let the attempts in
    flight finish (up to the timeout: a delivery cut short is sent again)."""
    deliverer = Deliverer(store, settings, metrics)
    stop = asyncio.Event()
    task = asyncio.create_task(deliverer.run(stop))
    try:
        yield deliverer
    finally:
        stop.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(task, settings.timeout + 1)
