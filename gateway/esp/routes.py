"""The ESP webhook routes: POST {base_url path}/hooks/ses, /sendgrid, /mailgun, /postmark.

A vendor has a route only when ``[esp]`` configures it. A request is read up to
``[esp] max_body`` (413 beyond), authenticated by its vendor's scheme
(gateway/esp/<vendor>.py), its replay key claimed once in the store (shared by every
worker and node), and its events applied by gateway/inbound/apply.py exactly as
bounces and complaints that come by mail. The 200 comes after the store committed;
an event type optgate does not act on is ignored with a 200 (vendors retry anything
else). A refusal changes nothing: 400 / 401 / 403 / 413, one log line without an
address, and ``optgate_esp_notifications_total{vendor, outcome}``. A store failure
releases the replay key and is 503 (the errors middleware of gateway/web/endpoint.py), so the
vendor's retry is taken.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta

import structlog
from aiohttp import web

from gateway.config import Config
from gateway.errors import Refused, Replayed, TooLarge, Unauthenticated, http_answer
from gateway.esp.common import Notification, Vendor
from gateway.esp.mailgun import Mailgun
from gateway.esp.postmark import Postmark, credentials
from gateway.esp.sendgrid import SendGrid, group_topics, public_key
from gateway.esp.ses import Ses
from gateway.esp.sns import SnsClient
from gateway.inbound.apply import Applied, apply
from gateway.runtime.metrics import Metrics
from gateway.tokens import TokenSigner
from suppression.model import Source, now
from suppression.store import InboundApply

log = structlog.get_logger("optgate.esp")
CHUNK = 64 * 1024


class Hooks:
    """The configured vendors' routes, sharing the store, the signer and the metrics."""

    def __init__(
        self,
        vendors: Sequence[Vendor],
        *,
        store: InboundApply,
        config: Config,
        signer: TokenSigner,
        metrics: Metrics,
    ) -> None:
        self.vendors: Mapping[str, Vendor] = {vendor.name: vendor for vendor in vendors}
        self.store, self.config, self.signer, self.metrics = store, config, signer, metrics

    @classmethod
    def from_config(
        cls,
        config: Config,
        *,
        store: InboundApply,
        signer: TokenSigner,
        metrics: Metrics,
        sns: SnsClient | None = None,
    ) -> Hooks | None:
        """The hooks of the vendors ``[esp]`` configures; None if it configures none."""
        found = vendors(config, sns)
        if not found:
            return None
        return cls(found, store=store, config=config, signer=signer, metrics=metrics)

    def route(self, app: web.Application, prefix: str) -> set[str]:
        """Add the routes under ``prefix``; their paths (the web's rate limit spares them:
        an ESP posts many from few addresses, and each is authenticated)."""
        paths = set()
        for name in self.vendors:
            path = f"{prefix}/hooks/{name}"
            app.router.add_post(path, self.handle, name=f"esp-{name}")
            paths.add(path)
        app.on_cleanup.append(self._cleanup)
        return paths

    async def _cleanup(self, app: web.Application) -> None:
        for vendor in self.vendors.values():
            if isinstance(vendor, Ses):
                await vendor.client.close()

    async def handle(self, request: web.Request) -> web.Response:
        """One notification: read, authenticate, claim, apply; the answer."""
        route = request.match_info.route.name or ""
        vendor = self.vendors[route.removeprefix("esp-")]
        at = now()
        try:
            body = await _body(request, self.config.esp.max_body)
            notification = await vendor.read(request.headers, body, at)
            applied = await self._apply(vendor.name, notification, at)
        except Refused as exc:
            return self._refused(vendor.name, exc)
        counts = {name: count for name, count in applied.counts().items() if count}
        for name, count in counts.items():
            self.metrics.inbound.labels(name).inc(count)
        self.metrics.esp.labels(vendor.name, "accepted").inc()
        log.info(
            "esp_notification",
            vendor=vendor.name,
            events=len(notification.events),
            ignored_events=notification.ignored,
            note=notification.note or None,
            **counts,
        )
        return web.json_response({"status": "ok", **counts})

    async def _apply(self, vendor: str, notification: Notification, at: datetime) -> Applied:
        """Claim the replay key (a replay is refused), then apply every event; a failure
        releases the key, so that the vendor's retry is applied."""
        if not any(event.findings for event in notification.events):
            return Applied()
        key = notification.replay
        if key is not None:
            forget = at - timedelta(seconds=notification.window)
            if not await self.store.claim_esp_token(vendor, key, at=at, forget_before=forget):
                raise Replayed("this notification was accepted before")
        total = Applied()
        try:
            for event in notification.events:
                total += await apply(
                    event,
                    store=self.store,
                    config=self.config,
                    signer=self.signer,
                    channel=Source.ESP,
                )
        except BaseException:
            if key is not None:
                with contextlib.suppress(Exception):  # the store is failing already
                    await self.store.release_esp_token(vendor, key)
            raise
        return total

    def _refused(self, vendor: str, exc: Refused) -> web.Response:
        """A refusal's answer (its status and outcome from gateway/errors.py), log line
        and count."""
        answer = http_answer(exc)
        self.metrics.esp.labels(vendor, answer.kind).inc()
        log.warning("esp_refused", vendor=vendor, outcome=answer.kind, problem=str(exc))
        body = {"status": answer.kind, "problem": str(exc)}
        response = web.json_response(body, status=answer.status)
        if isinstance(exc, Unauthenticated) and vendor == "postmark":
            response.headers["WWW-Authenticate"] = 'Basic realm="optgate"'
        return response


def vendors(config: Config, sns: SnsClient | None = None) -> list[Vendor]:
    """The vendors ``[esp]`` configures, their keys checked (a bad one is a ConfigError).

    ``sns`` (tests only) reaches SNS hosts another way; the default verifies TLS
    against the system's CAs.
    """
    esp, found = config.esp, list[Vendor]()
    if esp.ses_topics:
        locals_ = (config.inbound.bounce_local, config.inbound.unsubscribe_local)
        found.append(Ses(frozenset(esp.ses_topics), sns or SnsClient(), locals_))
    if esp.sendgrid_public_key:
        key = public_key(esp.sendgrid_public_key)
        found.append(SendGrid(key, esp.max_age, group_topics(esp.sendgrid_groups)))
    if esp.mailgun_signing_keys:
        found.append(Mailgun(tuple(key.encode() for key in esp.mailgun_signing_keys), esp.max_age))
    if esp.postmark_credentials:
        found.append(Postmark(credentials(esp.postmark_credentials)))
    return found


async def _body(request: web.Request, limit: int) -> bytes:
    """The raw body, refused once it passes ``limit`` (read as it comes, never more)."""
    if request.content_length is not None and request.content_length > limit:
        raise TooLarge(f"the body is over {limit} bytes")
    body = bytearray()
    async for chunk in request.content.iter_chunked(CHUNK):
        body += chunk
        if len(body) > limit:
            raise TooLarge(f"the body is over {limit} bytes")
    return bytes(body)
