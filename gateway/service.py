"""One server object: start up, serve until asked to stop, drain, shut down."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
import socket
from asyncio import Server
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import structlog
from aiohttp import web
from aiosmtpd.smtp import SMTP

from gateway import auditwatch
from gateway.api import add_consent_api
from gateway.config import Config, host_port
from gateway.esp.routes import Hooks
from gateway.fanout import FanOut
from gateway.inbound.mailboxes import Mailboxes, Role
from gateway.inbound.receive import Receiver
from gateway.keys import load_keys
from gateway.metrics import Metrics
from gateway.optin import request_consent
from gateway.pipeline import Branding, Pipeline, Verp
from gateway.policy import Rules
from gateway.relay import Relay
from gateway.server import Admission, GateLMTP, GateSMTP, Handler, InboundHandler
from gateway.signing import Signer
from gateway.stores import open_configured
from gateway.submission import listening
from gateway.tokens import TokenSigner
from gateway.web import WebSettings, make_app
from suppression.errors import ConfigError
from suppression.store import Store

log = structlog.get_logger("optgate.service")
DRAIN_SECONDS = 30.0


def build_pipeline(
    config: Config, store: Store, relay: Relay, signer: TokenSigner, metrics: Metrics
) -> Pipeline:
    """Wire the pipeline from the configuration."""
    u = config.unsubscribe
    mailboxes = Mailboxes.from_config(config.inbound)
    return Pipeline(
        store=store,
        relay=relay,
        signer=signer,
        rules=Rules(config.policy.require_consent, config.policy.consent_versions),
        branding=Branding(
            u.base_url,
            u.mailto,
            u.list_domain,
            u.feedback_id,
            u.footer_text,
            u.footer_html,
            u.postal_address,
        ),
        default_topic=config.policy.default_topic,
        sender_topics=config.policy.sender_topics,
        ledger_window=timedelta(hours=config.relay.ledger_hours),
        metrics=metrics,
        dkim=Signer.from_config(config.dkim),
        verp=Verp(
            mailboxes.local(Role.BOUNCE), mailboxes.domains[0], config.inbound.verp_transactional
        )
        if mailboxes
        else None,
    )


PARTS = ("smtp", "web")


@dataclass
class Running:
    """A started gateway: where it listens (0: that part is not running), how to stop it."""

    smtp_port: int
    web_port: int
    stop: asyncio.Event
    metrics: Metrics
    inbound_port: int = 0  # the own inbound listener ([inbound] listen), with the smtp part
    partners_port: int = 0


@contextlib.asynccontextmanager
async def running(
    config: Config,
    parts: Collection[str] = PARTS,
    *,
    reuse_port: bool = False,
    metrics: Metrics | None = None,
    audit_watch: bool = False,
) -> AsyncIterator[Running]:
    """Start the SMTP gateway and the web endpoint; on exit drain and shut down.

    ``reuse_port``: listen with SO_REUSEPORT beside the other workers of
    ``optgate serve --workers`` (the kernel spreads connections over them).
    ``audit_watch``: verify the audit log every ``[store] verify_minutes`` (one worker).
    """
    metrics = metrics or Metrics()
    # serve (and store migrate) make the key files and the store; other commands refuse
    signer = TokenSigner(load_keys(Path(config.unsubscribe.key_file), create=True))
    async with contextlib.AsyncExitStack() as stack:
        store = await open_configured(config, create=True)
        stack.push_async_callback(store.close)
        smtp_port = web_port = inbound_port = 0
        receiver = _receiver(config, store, signer, metrics)
        if "smtp" in parts:
            # the [smtp] listener takes inbound mail too (Postfix's content filter hands it
            # over there); [inbound] listen adds a listener for inbound mail only
            smtp_port = await stack.enter_async_context(
                _smtp(config, store, signer, metrics, receiver, reuse_port)
            )
            if receiver is not None and config.inbound.listen:
                inbound_port = await stack.enter_async_context(
                    _inbound(config, receiver, reuse_port)
                )
        if "web" in parts:
            web_port = await stack.enter_async_context(
                _web(config, store, signer, metrics, reuse_port)
            )
        if audit_watch and config.store.verify_minutes > 0:
            await stack.enter_async_context(_audit_watch(config, metrics))
        partners_port = 0
        if "smtp" in parts and config.partners.listen:
            partners_port = await stack.enter_async_context(
                _partners(config, store, signer, metrics, reuse_port)
            )
        yield Running(smtp_port, web_port, asyncio.Event(), metrics, inbound_port, partners_port)
    log.info("stopped")


@contextlib.asynccontextmanager
async def _audit_watch(config: Config, metrics: Metrics) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(auditwatch.watch(config, metrics, stop))
    try:
        yield
    finally:
        stop.set()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _receiver(
    config: Config, store: Store, signer: TokenSigner, metrics: Metrics
) -> Receiver | None:
    """The inbound receiver, when [inbound] domains are configured."""
    mailboxes = Mailboxes.from_config(config.inbound)
    if mailboxes is None:
        return None
    return Receiver(store=store, config=config, signer=signer, mailboxes=mailboxes, metrics=metrics)


async def _listen(protocol: Callable[[], SMTP], listen: str, name: str, reuse_port: bool) -> Server:
    """Bind a listener; a bind error is a configuration error naming the key."""
    host, port = host_port(listen, name)
    try:
        return await asyncio.get_running_loop().create_server(
            protocol, host, port, reuse_address=True, reuse_port=reuse_port
        )
    except OSError as exc:
        raise ConfigError(f"{name} {listen}: {exc.strerror}") from None


@contextlib.asynccontextmanager
async def _inbound(config: Config, receiver: Receiver, reuse_port: bool) -> AsyncIterator[int]:
    """The own inbound listener ([inbound] listen, SMTP or LMTP); yields the bound port."""
    inbound = config.inbound
    handler = InboundHandler(receiver, max_recipients=config.smtp.max_recipients, lmtp=inbound.lmtp)
    admission = Admission(inbound.allowed_clients, config.smtp.max_sessions)
    kind = GateLMTP if inbound.lmtp else GateSMTP
    server = await _listen(
        lambda: kind(
            handler,
            admission,
            hostname=config.smtp.hostname or socket.getfqdn(),
            ident="optgate",
            data_size_limit=inbound.max_message_size,
            enable_SMTPUTF8=True,
            timeout=config.smtp.timeout,
        ),
        inbound.listen,
        "[inbound] listen",
        reuse_port,
    )
    bound = server.sockets[0].getsockname()[1]
    log.info("inbound_listening", port=bound, lmtp=inbound.lmtp)
    try:
        yield bound
    finally:
        server.close()


@contextlib.asynccontextmanager
async def _smtp(
    config: Config,
    store: Store,
    signer: TokenSigner,
    metrics: Metrics,
    receiver: Receiver | None,
    reuse_port: bool,
) -> AsyncIterator[int]:
    """The SMTP listener and its relay pool; yields the bound port."""
    host, _ = host_port(config.smtp.listen, "[smtp] listen")
    hostname = config.smtp.hostname or socket.getfqdn()
    relay = _relay(config, hostname)
    pipeline = build_pipeline(config, store, relay, signer, metrics)
    handler = Handler(
        pipeline,
        max_recipients=config.smtp.max_recipients,
        reject=config.policy.action == "reject",
        receiver=receiver,
    )
    admission = Admission(config.smtp.allowed_clients, config.smtp.max_sessions)
    server = await _listen(
        lambda: GateSMTP(
            handler,
            admission,
            hostname=hostname,
            ident="optgate",
            data_size_limit=config.smtp.max_message_size,
            enable_SMTPUTF8=True,
            timeout=config.smtp.timeout,
        ),
        config.smtp.listen,
        "[smtp] listen",
        reuse_port,
    )
    bound = server.sockets[0].getsockname()[1]
    log.info("smtp_listening", host=host, port=bound, next_hop=config.relay.next_hop)
    try:
        yield bound
    finally:
        server.close()
        if handler.in_flight:
            log.info("draining", messages=len(handler.in_flight))
            await asyncio.wait(handler.in_flight, timeout=DRAIN_SECONDS)
        await relay.close()
        pipeline.close()


def _relay(config: Config, hostname: str) -> Relay:
    """A connection pool to the next hop."""
    next_host, next_port = host_port(config.relay.next_hop, "[relay] next_hop")
    return Relay(
        next_host,
        next_port,
        size=config.relay.pool_size,
        timeout=config.relay.timeout,
        starttls=config.relay.starttls,
        local_hostname=hostname,
    )


@contextlib.asynccontextmanager
async def _partners(
    config: Config, store: Store, signer: TokenSigner, metrics: Metrics, reuse_port: bool
) -> AsyncIterator[int]:
    """The partner submission listener and this node's fan-out worker; yields the port."""
    hostname = config.smtp.hostname or socket.getfqdn()
    relay = _relay(config, hostname)
    pipeline = build_pipeline(config, store, relay, signer, metrics)
    u = config.unsubscribe
    worker = FanOut(
        store=store,
        relay=relay,
        pipeline=pipeline,
        settings=config.partners,
        company=u.company,
        postal_address=u.postal_address,
        list_domain=u.list_domain,
        feedback_id=u.feedback_id,
        metrics=metrics,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        async with listening(
            config.partners, store, hostname, config.smtp.timeout, worker.wake, reuse_port
        ) as port:
            yield port
    finally:
        stop.set()
        try:
            await asyncio.wait_for(task, DRAIN_SECONDS)
        finally:
            await relay.close()
            pipeline.close()


@contextlib.asynccontextmanager
async def _web(
    config: Config, store: Store, signer: TokenSigner, metrics: Metrics, reuse_port: bool
) -> AsyncIterator[int]:
    """The web endpoint (one-click, pages, /healthz, /metrics); yields the bound port."""
    host, port = host_port(config.web.listen, "[web] listen")
    hooks = Hooks.from_config(config, store=store, signer=signer, metrics=metrics)
    app = make_app(
        store=store,
        signer=signer,
        metrics=metrics,
        settings=WebSettings.from_config(config),
        hooks=hooks,
    )
    if config.web.api_keys:
        requester = functools.partial(request_consent, config, store, actor="api")
        add_consent_api(app, requester, config.web.api_keys)
    runner = web.AppRunner(app, access_log=None)  # an access log would hold IPs and tokens
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, reuse_address=True, reuse_port=reuse_port)
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(f"[web] listen {config.web.listen}: {exc.strerror}") from None
    bound = int(runner.addresses[0][1])
    log.info("web_listening", host=host, port=bound)
    try:
        yield bound
    finally:
        await runner.cleanup()


async def serve(
    config: Config,
    parts: Collection[str] = PARTS,
    *,
    reuse_port: bool = False,
    metrics: Metrics | None = None,
    ready: Callable[[], None] | None = None,
    audit_watch: bool = False,
) -> None:
    """Run until SIGTERM or SIGINT; ``ready`` is called once every part listens."""
    async with running(
        config, parts, reuse_port=reuse_port, metrics=metrics, audit_watch=audit_watch
    ) as gate:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, gate.stop.set)
        if ready is not None:
            ready()
        await gate.stop.wait()
