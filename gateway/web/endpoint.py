"""The web endpoint that the links in every marketing copy reach.

Link routes live under the path of ``[unsubscribe] base_url`` (as in the mail):

    POST /u/TOKEN   RFC 8058 one-click (``List-Unsubscribe=One-Click``) or the page's button
    GET  /u/TOKEN   a page with that button; changes nothing (scanners open every link)
    GET  /p/TOKEN   the preference page; POST acts, then 303 back to it
    GET  /c/TOKEN   confirm a double opt-in; POST records the consent
    GET  /r/SECRET  a held request's mailed link (gateway/web/held.py); POST carries it out
    GET  /lift      ask for a link that lifts an unverified bounce / complaint; POST mails it
    GET  /healthz   200 while the store answers
    POST /hooks/VENDOR  an ESP's bounces and complaints ([esp]; gateway/esp/routes.py)

/metrics is on the admin listener only (gateway/web/admin.py), and no answer
carries aiohttp's ``Server`` header with the Python and aiohttp versions.

The token is the only credential. Errors become pages in one place (the error
middleware); every answer carries the security headers. The client's IP is
evidence kept with the record it caused, never logged.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import structlog
from aiohttp import hdrs, web, web_response
from yarl import URL

from gateway import languages, optouts
from gateway.config import Config, Network, Networks
from gateway.errors import BadRequest, HttpAnswer, InvalidToken, http_answer, http_status
from gateway.esp.routes import Hooks
from gateway.optouts import LinkEvidence, PageConsent, Recipient, may_resubscribe
from gateway.outbound.footers import Footers
from gateway.runtime.metrics import Metrics
from gateway.runtime.ratelimit import SharedLimiter
from gateway.tokens import Claims, Confirmation, TokenSigner
from gateway.web import pages
from gateway.web.held import Held
from gateway.wording import LANGUAGES
from suppression.address import normalize
from suppression.errors import ConfigError, OptgateError, StoreError
from suppression.model import PARTNER_OFFERS, HeldRequest, Source, Suppression, check_name, now
from suppression.scope import GLOBAL, Scope
from suppression.store import Holder, OptOuts

log = structlog.get_logger("optgate.web")
CONFIRM_MAX_AGE = 7 * 24 * 3600  # seconds a double opt-in link stays valid

ACTOR = "web"
MAX_BODY = 64 * 1024  # a one-click or page form is a few dozen bytes
UNLIMITED = frozenset({"/healthz"})  # monitoring is not rate-limited
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}
_COLOR = re.compile(r"#[0-9a-fA-F]{3}(?:[0-9a-fA-F]{3})?")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class WebSettings:
    """What the web endpoint takes from the configuration."""

    base_url: str
    company: str
    accent_color: str
    rate_limit: int  # requests per minute per client IP; 0: no limit
    trusted_proxies: Networks
    consent_versions: Mapping[str, str]
    page_note: str = ""
    postal_address: str = ""
    default_language: str = "en"  # pages for a browser that asks for none optgate speaks
    topic_names: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not _COLOR.fullmatch(self.accent_color):
            raise ConfigError(f"[web] accent_color: {self.accent_color!r} is not #rgb or #rrggbb")

    @classmethod
    def from_config(cls, config: Config) -> WebSettings:
        """The web endpoint's part of the whole configuration."""
        return cls(
            base_url=config.unsubscribe.base_url,
            company=config.unsubscribe.company,
            accent_color=config.web.accent_color,
            rate_limit=config.web.rate_limit,
            trusted_proxies=config.web.trusted_proxies,
            consent_versions=dict(config.policy.consent_versions),
            page_note=config.web.page_note,
            postal_address=config.unsubscribe.postal_address,
            default_language=config.footer.default_language,
            topic_names=Footers.from_config(config).names(),
        )


def client_ip(peer: str | None, forwarded_for: str | None, proxies: Sequence[Network]) -> str:
    """The peer, or behind trusted proxies the nearest X-Forwarded-For hop that is not one."""
    client = peer or "unknown"
    hops = [hop.strip() for hop in (forwarded_for or "").split(",") if hop.strip()]
    while hops and _trusted(client, proxies):
        client = hops.pop()
    return client


def _trusted(host: str, proxies: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return any(ip in network for network in proxies)


def standing(holder: Holder, topic: str | None) -> pages.Standing:
    """What the pages tell a recipient: their lists, and whether everything is off."""
    stopped = {Scope.parse(s.scope): s for s in holder.suppressions}
    revoked = {c.purpose for c in holder.consents if not c.granted}
    names = set(holder.consented()) | {scope.name for scope in stopped if scope.kind == "topic"}
    if topic:
        names.add(topic)
    topics = tuple(
        pages.Topic(
            name,
            Scope.topic(name) not in stopped and name not in revoked,
            _own(stopped.get(Scope.topic(name))),
        )
        for name in sorted(names)
    )
    everything = stopped.get(GLOBAL)
    return pages.Standing(
        pages.mask(holder.address), topics, everything is not None, _own(everything)
    )


def _own(record: Suppression | None) -> bool:
    """A suppression the recipient may take back (gateway/optouts.py's rule)."""
    return record is not None and may_resubscribe(record)


def _text(form: Mapping[str, object], name: str) -> str:
    value = form.get(name)
    return value.strip() if isinstance(value, str) else ""


def _topic(text: str) -> Scope:
    try:
        return Scope.topic(text)
    except OptgateError:
        raise BadRequest("no valid list was chosen") from None


def _status(look: pages.Look, query: Mapping[str, str]) -> str | None:
    """The status line after a preference change: fixed words and a valid topic only."""
    what = query.get("done", "")
    if what.endswith("-all"):
        return pages.done(look, what, "")
    try:
        return pages.done(look, what, check_name(query.get("topic", ""), "topic"))
    except OptgateError:
        return None


def _html(look: pages.Look, text: str, status: int = 200) -> web.Response:
    response = web.Response(text=text, status=status, content_type="text/html", charset="utf-8")
    response.headers["Content-Language"] = look.language
    response.headers["Vary"] = "Accept-Language"
    return response


def _route(request: web.Request) -> str | None:
    return request.match_info.route.name


# the words of each problem type's page (gateway/wording.py)
_PAGES = {
    "bad-link": ("bad_link_title", "bad_link_text"),
    "bad-request": ("bad_request_title", "bad_request_detail"),
    "store-unavailable": ("unavailable_title", "unavailable_text"),
    "not-found": ("not_found_title", "not_found_text"),
    "internal": ("error_title", "error_text"),
}
# the problem types logged as warnings with their message: event and field
_SAID = {"bad-link": ("web_bad_token", "reason"), "bad-request": ("web_bad_request", "problem")}


class _Endpoint:
    """The handlers and middlewares, sharing the store, the signer and the settings."""

    def __init__(
        self,
        store: OptOuts,
        signer: TokenSigner,
        metrics: Metrics,
        settings: WebSettings,
        held: Held | None = None,
        limiter: SharedLimiter | None = None,
    ) -> None:
        self.store, self.signer, self.metrics, self.held = store, signer, metrics, held
        self.versions = settings.consent_versions
        self.look = pages.Look(
            settings.company,
            settings.accent_color,
            settings.page_note,
            settings.postal_address,
            languages.best(settings.default_language, LANGUAGES, "en"),
            settings.topic_names,
        )
        self.prefix = URL(settings.base_url).path.rstrip("/")
        self.proxies = settings.trusted_proxies
        self.rate_limit = settings.rate_limit
        self.limiter = limiter if settings.rate_limit else None
        self.unlimited = set(UNLIMITED)

    # --- tokens, addresses, evidence ---------------------------------------------------

    def link(self, request: web.Request) -> tuple[Claims, Scope]:
        """An opt-out link's claims and scope (it works for as long as the mail is read)."""
        claims = self.signer.verify(request.match_info["token"])
        if not isinstance(claims.scope, Scope):
            raise InvalidToken("a confirmation link used as an opt-out link")
        return claims, claims.scope

    def confirmation(self, request: web.Request) -> tuple[Claims, str]:
        """A double opt-in link's claims and purpose; only on /c, and not for ever."""
        claims = self.signer.verify(request.match_info["token"], max_age=CONFIRM_MAX_AGE)
        if not isinstance(claims.scope, Confirmation):
            raise InvalidToken("an opt-out link used to confirm")
        return claims, claims.scope.purpose

    def look_for(self, request: web.Request) -> pages.Look:
        """The pages' look in the language the browser prefers (Accept-Language)."""
        header = request.headers.get("Accept-Language")
        return self.look.speaking(languages.negotiate(header, LANGUAGES, self.look.language))

    def url(self, kind: str, request: web.Request) -> str:
        """The path of the /u, /p or /c page of this request's token."""
        return f"{self.prefix}/{kind}/{request.match_info['token']}"

    def ip(self, request: web.Request) -> str:
        """The client's IP (evidence only)."""
        return client_ip(request.remote, request.headers.get("X-Forwarded-For"), self.proxies)

    async def standing(self, claims: Claims, scope: Scope) -> pages.Standing:
        """The recipient's lists as the pages show them."""
        topic = scope.name if scope.kind == "topic" else None
        return standing(await self.store.holder(claims.recipient), topic)

    # --- /u: one-click and the unsubscribe page -----------------------------------------

    async def unsubscribe_page(self, request: web.Request) -> web.Response:
        """GET /u/TOKEN: the question and the button; changes nothing."""
        claims, scope = self.link(request)
        look = self.look_for(request)
        button = pages.Form(
            self.url("u", request), (("via", "page"),), look.say("unsubscribe_button")
        )
        wider = None
        if scope.kind == "partner":
            # an offer's link: no more from this partner (the button), or from any partner
            fields = (("action", "unsubscribe"), ("topic", PARTNER_OFFERS))
            wider = pages.Form(self.url("p", request), fields, look.say("no_partner_offers"))
        page = pages.unsubscribe(
            look,
            scope,
            await self.standing(claims, scope),
            button,
            self.url("p", request),
            wider,
        )
        return _html(look, page)

    async def unsubscribe(self, request: web.Request) -> web.Response:
        """POST /u/TOKEN: RFC 8058 one-click (text answer) or the page's button (a page)."""
        claims, scope = self.link(request)
        form = await request.post()
        by_page = _text(form, "via") == "page"
        if not by_page and _text(form, "List-Unsubscribe") != "One-Click":
            raise BadRequest("a one-click unsubscribe sends List-Unsubscribe=One-Click")
        await self.opt_out(request, claims, scope, Source.WEB if by_page else Source.ONE_CLICK)
        if not by_page:
            return web.Response(text="You are unsubscribed.\n")
        after, prefs = await self.standing(claims, scope), self.url("p", request)
        look = self.look_for(request)
        undo = self.undo(look, scope, after, prefs)
        return _html(look, pages.unsubscribed(look, scope, after, undo, prefs))

    @staticmethod
    def undo(
        look: pages.Look, scope: Scope, standing: pages.Standing, action: str
    ) -> pages.Form | None:
        """The resubscribe button for an unsubscribe the recipient may take back."""
        label = look.say("resubscribe_button")
        if scope.is_global and standing.can_resume_all:
            return pages.Form(action, (("action", "resubscribe-all"),), label, quiet=True)
        if scope.kind == "topic" and any(
            t.name == scope.name and t.can_resubscribe for t in standing.topics
        ):
            fields = (("action", "resubscribe"), ("topic", scope.name))
            return pages.Form(action, fields, label, quiet=True)
        return None

    async def opt_out(
        self, request: web.Request, claims: Claims, scope: Scope, channel: Source
    ) -> None:
        """Suppress the token's recipient in a scope; committed before the answer is sent."""
        evidence = LinkEvidence(channel, self.ip(request), claims.issued)
        event = optouts.unsubscribe(Recipient.hashed(claims.recipient), scope, evidence)
        result = await optouts.opt_out(self.store, [event], actor=ACTOR)
        if result.added:
            self.metrics.unsubscribes.labels(channel).inc()
        log.info(
            "web_unsubscribe",
            channel=channel,
            scope=str(scope),
            added=result.added,
            rcpt=claims.recipient[:16],
        )

    # --- /p: preferences ------------------------------------------------------------------

    async def preferences_page(self, request: web.Request) -> web.Response:
        """GET /p/TOKEN: the lists with a button each; changes nothing."""
        claims, scope = self.link(request)
        look = self.look_for(request)
        page = pages.preferences(
            look,
            await self.standing(claims, scope),
            self.url("p", request),
            _status(look, request.query),
        )
        return _html(look, page)

    async def preferences(self, request: web.Request) -> web.Response:
        """POST /p/TOKEN: act, then send the browser back to the page (POST/redirect/GET)."""
        claims, _ = self.link(request)
        form = await request.post()
        action, topic = _text(form, "action"), _text(form, "topic")
        match action:
            case "unsubscribe":
                await self.opt_out(request, claims, _topic(topic), Source.WEB)
            case "unsubscribe-all":
                await self.opt_out(request, claims, GLOBAL, Source.WEB)
            case "resubscribe":
                scope = _topic(topic)
                consent = optouts.page_consent(
                    claims.recipient,
                    scope.name,
                    PageConsent(self.ip(request)),
                    self.version(scope.name),
                )
                await optouts.resubscribe(
                    self.store, claims.recipient, scope, consent=consent, actor=ACTOR
                )
            case "resubscribe-all":
                await optouts.resubscribe(
                    self.store, claims.recipient, GLOBAL, consent=None, actor=ACTOR
                )
            case _:
                raise BadRequest("the form asked for no known change")
        done = action.replace("subscribe", "subscribed")
        query = {"done": done, "topic": topic} if topic else {"done": done}
        location = str(request.rel_url.with_query(query))
        return web.Response(status=303, headers={"Location": location})

    def version(self, purpose: str) -> str | None:
        """The policy version a consent to ``purpose`` is given under now."""
        return self.versions.get(purpose)

    # --- /c: double opt-in ----------------------------------------------------------------

    async def confirm_page(self, request: web.Request) -> web.Response:
        """GET /c/TOKEN: the question and the button; changes nothing."""
        claims, purpose = self.confirmation(request)
        holder = await self.store.holder(claims.recipient)
        answered = optouts.answered(holder, purpose, claims.issued)
        look = self.look_for(request)
        if answered is not None and not answered.granted:
            return _html(look, pages.confirmed(look, purpose, current=False))
        label = look.say("confirm_button", purpose=look.topic(purpose))
        button = pages.Form(self.url("c", request), (), label)
        page = pages.confirm(
            look, purpose, pages.mask(holder.address), None if answered else button
        )
        return _html(look, page)

    async def confirm(self, request: web.Request) -> web.Response:
        """POST /c/TOKEN: record the consent once; lift the same list's older unsubscribe."""
        claims, purpose = self.confirmation(request)
        holder = await self.store.holder(claims.recipient)
        evidence = PageConsent(self.ip(request), claims.issued, now())
        consent = optouts.page_consent(claims.recipient, purpose, evidence, self.version(purpose))
        answered = await optouts.confirm(self.store, holder, consent, claims.issued, actor=ACTOR)
        current = answered is None or answered.granted
        look = self.look_for(request)
        return _html(look, pages.confirmed(look, purpose, current=current))

    # --- /r: held requests; /lift: ask for a lift link (gateway/web/held.py) -------------------

    async def held_request(self, request: web.Request) -> tuple[Held, HeldRequest]:
        """The request a mailed link names; InvalidToken when unknown or expired."""
        assert self.held is not None  # routed only with it
        found = await self.held.find(request.match_info["secret"])
        if found is None:
            raise InvalidToken("a held request's link that is unknown or expired")
        return self.held, found

    async def held_page(self, request: web.Request) -> web.Response:
        """GET /r/SECRET: the question and the button; changes nothing."""
        _, found = await self.held_request(request)
        holder = await self.store.holder(found.sha256)
        label = "Unsubscribe me" if found.action == "unsubscribe" else "Send me your e-mail again"
        path = f"{self.prefix}/r/{request.match_info['secret']}"
        button = None if found.done else pages.Form(path, (), label)
        look = self.look_for(request)
        return _html(look, pages.held(look, found.action, pages.mask(holder.address), button))

    async def held_confirm(self, request: web.Request) -> web.Response:
        """POST /r/SECRET: carry the request out, once."""
        held, found = await self.held_request(request)
        await held.confirm(found, self.ip(request))
        look = self.look_for(request)
        return _html(look, pages.held_done(look, found.action))

    async def lift_page(self, request: web.Request) -> web.Response:
        """GET /lift: the form asking for the address."""
        look = self.look_for(request)
        return _html(look, pages.lift_form(look, f"{self.prefix}/lift"))

    async def lift_request(self, request: web.Request) -> web.Response:
        """POST /lift: mail a link if there is something to lift; the same answer either way."""
        assert self.held is not None  # routed only with it
        form = await request.post()
        try:
            address = normalize(_text(form, "address"))
        except OptgateError:
            raise BadRequest("that is not an e-mail address") from None
        mailed = await self.held.request_lift(address, self.ip(request))
        log.info("web_lift_requested", mailed=mailed, rcpt=address.sha256[:16])
        look = self.look_for(request)
        return _html(look, pages.lift_sent(look))

    # --- monitoring -----------------------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        """GET /healthz: 200 while the store answers a read, else 503."""
        return await store_health(self.store)

    # --- middlewares ----------------------------------------------------------------------

    @web.middleware
    async def errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Every error becomes a page here, and only here, as gateway/errors.py answers it."""
        look = self.look_for(request)
        try:
            return await handler(request)
        except web.HTTPException as exc:  # aiohttp's own: 404, 405, 413
            answer = replace(http_status(exc.status, exc.reason), title=exc.reason)
            response = self.page(look, answer, "")
            if "Allow" in exc.headers:
                response.headers["Allow"] = exc.headers["Allow"]
            return response
        except Exception as exc:  # aiohttp would log the client's IP with a bug
            answer = http_answer(exc)
            said = _SAID.get(answer.kind)
            if said is not None:  # the message of a bad link or form names no one
                log.warning(said[0], **{said[1]: str(exc)}, route=_route(request))
            else:  # the type only: a message may quote an address
                event = "web_store_error" if answer.kind == "store-unavailable" else "web_error"
                log.error(event, error=type(exc).__name__, route=_route(request))
            return self.page(look, answer, str(exc))

    @staticmethod
    def page(look: pages.Look, answer: HttpAnswer, detail: str) -> web.Response:
        """An answer as a page in the reader's language."""
        title, text = _PAGES.get(answer.kind, (answer.title, "bad_request_text"))
        shown = detail if answer.detail else ""
        return _html(look, pages.problem(look, title, text, detail=shown), answer.status)

    @web.middleware
    async def limit(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """429 and Retry-After once a client used up this minute's requests (counted in
        the store, so over every worker and node); genuine one-clicks pass uncounted."""
        limiter = self.limiter
        assert limiter is not None  # installed only with a limit
        if request.path in self.unlimited or self.genuine_one_click(request):
            return await handler(request)
        try:
            allowed = await limiter.take([("web", self.ip(request), self.rate_limit)])
        except StoreError:
            allowed = True  # the store's trouble is the handler's to report
        if not allowed:
            log.warning("web_rate_limited", route=_route(request))
            look = self.look_for(request)
            page = pages.problem(look, "too_many_title", "too_many_text")
            response = _html(look, page, 429)
            response.headers["Retry-After"] = str(limiter.retry_after())
            return response
        return await handler(request)

    def genuine_one_click(self, request: web.Request) -> bool:
        """A POST to /u with a genuine opt-out token: mail providers send many from few IPs."""
        if request.method != "POST" or _route(request) != "u":
            return False
        try:
            self.link(request)
        except InvalidToken:
            return False
        return True


async def store_health(store: OptOuts) -> web.Response:
    """200 while the store answers a read, else 503 (/healthz here and on the admin listener)."""
    try:
        await store.holder("0" * 64)
    except Exception as exc:  # whatever the failure, the store does not answer
        log.error("web_unhealthy", error=type(exc).__name__)
        return web.Response(status=503, text="store unavailable")
    return web.Response(text="ok")


async def _secure(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.update(SECURITY_HEADERS)
    response.headers.popall(hdrs.SERVER, None)


async def _unnamed(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.popall(hdrs.SERVER, None)


def anonymous(app: web.Application, *, secure: bool = False) -> None:
    """No ``Server`` header in the app's answers (aiohttp sends ``Python/3.x aiohttp/x.y``),
    with the security headers when ``secure``.

    aiohttp's own answers to requests it cannot parse reach no hook of the app:
    the constant they take the header from names optgate alone, without a version.
    """
    web_response.SERVER_SOFTWARE = "optgate"  # type: ignore[attr-defined]
    app.on_response_prepare.append(_secure if secure else _unnamed)


def make_app(
    *,
    store: OptOuts,
    signer: TokenSigner,
    metrics: Metrics,
    settings: WebSettings,
    held: Held | None = None,
    limiter: SharedLimiter | None = None,
    hooks: Hooks | None = None,
) -> web.Application:
    """The web endpoint as an aiohttp application; run it without an access log (IPs, tokens).

    With ``held``, the links of held requests (/r) and the lift form (/lift) are routed too;
    ``limiter`` (a minute's window) counts each client's requests when ``rate_limit`` is set;
    ``hooks``: the ESP webhooks of ``[esp]`` (gateway/esp/routes.py), under the same prefix.
    """
    if settings.rate_limit and limiter is None:
        raise ValueError("a rate limit needs a limiter")
    endpoint = _Endpoint(store, signer, metrics, settings, held, limiter)
    middlewares = [endpoint.limit, endpoint.errors] if endpoint.limiter else [endpoint.errors]
    app = web.Application(middlewares=middlewares, client_max_size=MAX_BODY)
    anonymous(app, secure=True)
    prefix = endpoint.prefix
    for name, page, act in (
        ("u", endpoint.unsubscribe_page, endpoint.unsubscribe),
        ("p", endpoint.preferences_page, endpoint.preferences),
        ("c", endpoint.confirm_page, endpoint.confirm),
    ):
        app.router.add_get(f"{prefix}/{name}/{{token}}", page, name=name)
        app.router.add_post(f"{prefix}/{name}/{{token}}", act, name=name)
    if held is not None:
        _route_held(app, endpoint)
    app.router.add_get("/healthz", endpoint.health)
    if hooks is not None:
        endpoint.unlimited |= hooks.route(app, prefix)
    return app


def _route_held(app: web.Application, endpoint: _Endpoint) -> None:
    """The held requests' links and the lift form, under the path of base_url."""
    prefix = endpoint.prefix
    app.router.add_get(f"{prefix}/r/{{secret}}", endpoint.held_page, name="r")
    app.router.add_post(f"{prefix}/r/{{secret}}", endpoint.held_confirm, name="r")
    app.router.add_get(f"{prefix}/lift", endpoint.lift_page, name="lift")
    app.router.add_post(f"{prefix}/lift", endpoint.lift_request, name="lift")
