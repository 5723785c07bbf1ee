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

from gateway.api.legacy import add_consent_api
from gateway.api.routes import Api
from gateway.config import Config, HostPort
from gateway.esp.routes import Hooks
from gateway.inbound.mailboxes import Mailboxes, Role
from gateway.inbound.receive import Receiver
from gateway.keys import load_keys, load_log_key
from gateway.outbound.footers import Footers
from gateway.outbound.pipeline import Pipeline
from gateway.outbound.policy import ClassRules, Rules
from gateway.outbound.signing import Signer
from gateway.outbound.steps import Branding, NextHop, Verp
from gateway.partners.fanout import FanOut
from gateway.partners.listener import listening
from gateway.runtime import auditwatch, logs
from gateway.runtime.metrics import Metrics
from gateway.runtime.ratelimit import MINUTE, SharedLimiter
from gateway.runtime.stores import open_configured
from gateway.runtime.webhooks import delivering
from gateway.smtp.relay import Relay
from gateway.smtp.server import (
    ANYONE,
    Admission,
    GateLMTP,
    GateSMTP,
    Handler,
    InboundHandler,
    Sessions,
    SizeLimit,
)
from gateway.smtp.tls import client_context
from gateway.tokens import TokenSigner
from gateway.web.admin import make_admin_app
from gateway.web.endpoint import WebSettings, make_app
from gateway.web.held import Held
from gateway.web.optin import request_consent
from suppression.errors import ConfigError
from suppression.store import Mailbox, RateLimits, Store

log = structlog.get_logger("optgate.service")
DRAIN_SECONDS = 30.0


def build_pipeline(
    config: Config, store: Store, relay: NextHop, signer: TokenSigner, metrics: Metrics
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
            Footers.from_config(config),
        ),
        default_topic=config.policy.default_topic,
        sender_topics=config.policy.sender_topics,
        classes=ClassRules(
            frozenset(config.policy.transactional_senders),
            frozenset(config.policy.transactional_domains),
            config.policy.transactional_networks,
            frozenset(config.policy.marketing_senders),
        ),
        ledger_window=timedelta(hours=config.relay.ledger_hours),
        resend_uncertain=config.relay.uncertain == "resend",
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
    api_port: int = 0  # the admin listener ([api] listen), with the web part


@contextlib.asynccontextmanager
async def running(
    config: Config,
    parts: Collection[str] = PARTS,
    *,
    reuse_port: bool = False,
    metrics: Metrics | None = None,
    sessions: Callable[[str], Sessions] | None = None,
    audit_watch: bool = False,
) -> AsyncIterator[Running]:
    """Start the SMTP gateway and the web endpoint; on exit drain and shut down.

    ``reuse_port``: listen with SO_REUSEPORT beside the other workers of
    ``optgate serve --workers`` (the kernel spreads connections over them);
    ``sessions``: each listener's session count by name (``smtp``, ``inbound``,
    ``partners``), shared by the workers; by default this process's own.
    ``audit_watch``: verify the audit log every ``[store] verify_minutes`` (one worker).
    """
    count = sessions or (lambda _: Sessions())
    metrics = metrics or Metrics()
    # serve (and store migrate) make the key files and the store; other commands refuse
    key_file = Path(config.unsubscribe.key_file)
    signer = TokenSigner(load_keys(key_file, create=True))
    logs.use_key(load_log_key(key_file, create=True))
    async with contextlib.AsyncExitStack() as stack:
        store = await open_configured(config, create=True)
        stack.push_async_callback(store.close)
        smtp_port = web_port = inbound_port = 0
        receiver = _receiver(config, store, signer, metrics)
        relay: Relay | None = None
        if "smtp" in parts:
            # one pool per process: the SMTP listener and the partner fan-out share its
            # share of the next hop's sessions; closed after both drained
            relay = _relay(config, config.smtp.hostname or socket.getfqdn())
            stack.push_async_callback(relay.close)
            # the [smtp] listener takes inbound mail too (Postfix's content filter hands it
            # over there); [inbound] listen adds a listener for inbound mail only
            smtp_port = await stack.enter_async_context(
                _smtp(config, store, signer, metrics, receiver, reuse_port, count("smtp"), relay)
            )
            if receiver is not None and config.inbound.listen:
                inbound_port = await stack.enter_async_context(
                    _inbound(config, receiver, reuse_port, count("inbound"))
                )
        api_port = 0
        if "web" in parts:
            web_port = await stack.enter_async_context(
                _web(config, store, signer, metrics, reuse_port)
            )
            if config.api.listen:
                api = Api(
                    config,
                    store,
                    metrics,
                    minute_limiter(config, store) if config.api.rate_limit else None,
                )
                admin = make_admin_app(store=store, metrics=metrics, api=api)
                api_port = await stack.enter_async_context(
                    _http(admin, config.api.listen, "[api] listen", reuse_port)
                )
        if audit_watch and config.store.verify_minutes > 0:
            await stack.enter_async_context(_audit_watch(config, metrics))
        # every worker of every node delivers a share of the webhook outbox
        await stack.enter_async_context(delivering(store, config.webhooks, metrics))
        partners_port = 0
        if relay is not None and config.partners.listen:
            partners_port = await stack.enter_async_context(
                _partners(config, store, signer, metrics, reuse_port, count("partners"), relay)
            )
        yield Running(
            smtp_port, web_port, asyncio.Event(), metrics, inbound_port, partners_port, api_port
        )
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
    config: Config, store: Mailbox, signer: TokenSigner, metrics: Metrics
) -> Receiver | None:
    """The inbound receiver, when [inbound] domains are configured."""
    mailboxes = Mailboxes.from_config(config.inbound)
    if mailboxes is None:
        return None
    return Receiver(store=store, config=config, signer=signer, mailboxes=mailboxes, metrics=metrics)


async def _listen(
    protocol: Callable[[], SMTP], listen: HostPort, name: str, reuse_port: bool
) -> Server:
    """Bind a listener; a bind error is a configuration error naming the key."""
    host, port = listen
    try:
        return await asyncio.get_running_loop().create_server(
            protocol, host, port, reuse_address=True, reuse_port=reuse_port
        )
    except OSError as exc:
        raise ConfigError(f"{name} {listen}: {exc.strerror}") from None


@contextlib.asynccontextmanager
async def _inbound(
    config: Config, receiver: Receiver, reuse_port: bool, sessions: Sessions
) -> AsyncIterator[int]:
    """The own inbound listener ([inbound] listen, SMTP or LMTP); yields the bound port."""
    inbound = config.inbound
    assert inbound.listen is not None  # started only when [inbound] listen is set
    handler = InboundHandler(receiver, max_recipients=config.smtp.max_recipients, lmtp=inbound.lmtp)
    admission = Admission(inbound.allowed_clients, config.smtp.max_sessions, sessions)
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
    sessions: Sessions,
    relay: Relay,
) -> AsyncIterator[int]:
    """The SMTP listener, relaying through ``relay``; yields the bound port."""
    host = config.smtp.listen.host
    hostname = config.smtp.hostname or socket.getfqdn()
    pipeline = build_pipeline(config, store, relay, signer, metrics)
    handler = Handler(
        pipeline,
        max_recipients=config.smtp.max_recipients,
        reject=config.policy.action == "reject",
        receiver=receiver,
        lmtp=config.smtp.lmtp,
    )
    kind = GateLMTP if config.smtp.lmtp else GateSMTP
    admission = Admission(config.smtp.allowed_clients, config.smtp.max_sessions, sessions)
    size = SizeLimit(config.smtp.max_message_size, relay)
    server = await _listen(
        lambda: kind(
            handler,
            admission,
            size=size,
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
    log.info("smtp_listening", host=host, port=bound, next_hop=str(config.relay.next_hop))
    try:
        yield bound
    finally:
        server.close()
        if handler.in_flight:
            log.info("draining", messages=len(handler.in_flight))
            await asyncio.wait(handler.in_flight, timeout=DRAIN_SECONDS)
        pipeline.close()


def _relay(config: Config, hostname: str) -> Relay:
    """A connection pool to the next hop: ``[relay] pool_size``, or with 0 all of
    ``next_hop_sessions`` (``optgate serve --workers`` sets each worker's share)."""
    settings = config.relay
    next_host, next_port = settings.next_hop
    return Relay(
        next_host,
        next_port,
        size=settings.per_worker(1),
        timeout=settings.timeout,
        starttls=settings.starttls,
        local_hostname=hostname,
        idle_seconds=settings.idle_seconds,
        busy_seconds=settings.busy_seconds,
        tls=client_context(settings),
    )


@contextlib.asynccontextmanager
async def _partners(
    config: Config,
    store: Store,
    signer: TokenSigner,
    metrics: Metrics,
    reuse_port: bool,
    sessions: Sessions,
    relay: Relay,
) -> AsyncIterator[int]:
    """The partner submission listener and this node's fan-out worker, relaying through
    ``relay``; yields the port."""
    hostname = config.smtp.hostname or socket.getfqdn()
    pipeline = build_pipeline(config, store, relay, signer, metrics)
    u = config.unsubscribe
    worker = FanOut(
        pipeline=pipeline,
        settings=config.partners,
        company=u.company,
        postal_address=u.postal_address,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        # partners connect from anywhere and authenticate; the session limit still holds
        admission = Admission(ANYONE, config.smtp.max_sessions, sessions)
        idle = config.smtp.timeout
        limiter = minute_limiter(config, store)
        async with listening(
            config.partners, store, hostname, idle, worker.wake, reuse_port, admission, limiter
        ) as port:
            yield port
    finally:
        stop.set()
        try:
            await asyncio.wait_for(task, DRAIN_SECONDS)
        finally:
            pipeline.close()


@contextlib.asynccontextmanager
async def _web(
    config: Config, store: Store, signer: TokenSigner, metrics: Metrics, reuse_port: bool
) -> AsyncIterator[int]:
    """The web endpoint (one-click, pages, /healthz, ESP hooks); yields the bound port."""
    hooks = Hooks.from_config(config, store=store, signer=signer, metrics=metrics)
    app = make_app(
        store=store,
        signer=signer,
        metrics=metrics,
        settings=WebSettings.from_config(config),
        held=Held.from_config(config, store),
        limiter=minute_limiter(config, store),
        hooks=hooks,
    )
    if config.web.api_keys:
        requester = functools.partial(request_consent, config, store, actor="api")
        add_consent_api(app, requester, config.web.api_keys)
    async with _http(app, config.web.listen, "[web] listen", reuse_port) as bound:
        yield bound


def minute_limiter(config: Config, store: RateLimits) -> SharedLimiter:
    """Per-minute limits counted in the store, sources keyed with the token key."""
    key = load_keys(Path(config.unsubscribe.key_file))[0]
    return SharedLimiter(store, key, window=MINUTE)


@contextlib.asynccontextmanager
async def _http(
    app: web.Application, listen: HostPort, name: str, reuse_port: bool
) -> AsyncIterator[int]:
    """Serve an aiohttp app on a listen address; yields the bound port."""
    host, port = listen
    runner = web.AppRunner(app, access_log=None)  # an access log would hold IPs and tokens
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, reuse_address=True, reuse_port=reuse_port)
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(f"{name} {listen}: {exc.strerror}") from None
    bound = int(runner.addresses[0][1])
    log.info("http_listening", listener=name, host=host, port=bound)
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
    sessions: Callable[[str], Sessions] | None = None,
    audit_watch: bool = False,
) -> None:
    """Run until SIGTERM or SIGINT; ``ready`` is called once every part listens."""
    async with running(
        config,
        parts,
        reuse_port=reuse_port,
        metrics=metrics,
        sessions=sessions,
        audit_watch=audit_watch,
    ) as gate:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, gate.stop.set)
        if ready is not None:
            ready()
        await gate.stop.wait()
