"""The REST API under ``/api/v1``: one route per documented operation, each a thin call
of gateway/actions.py (the command line's own operations).

Every route names its operation in openapi.json and the scope its key needs
(``read``, ``write``, ``erase``); the guard around each checks the key, counts it
against ``[api] rate_limit``, checks the query's names and the body against the
document, then calls the handler. Writes are audited with ``api:NAME`` as the actor.
Errors become problems (gateway/api/problems.py) in one middleware.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from gateway import actions, optouts
from gateway.api import schema
from gateway.api.problems import Problem, bad_request, forbidden, unauthorized
from gateway.config import Config
from gateway.errors import http_answer, http_status
from gateway.optouts import ApiConsent, Recipient, SuppressionEvent
from gateway.outbound.policy import Rules
from gateway.runtime.metrics import Metrics
from gateway.runtime.ratelimit import SharedLimiter
from gateway.web.optin import request_consent
from suppression.address import Address, normalize
from suppression.apikeys import ApiKey, split_key
from suppression.audit import parse_head
from suppression.errors import OptgateError
from suppression.formats.write import consent_object
from suppression.model import Reason, Source, Suppression, check_name
from suppression.scope import GLOBAL, Scope
from suppression.sql.integration import SuppressionFilter, decode_cursor, stored_cursor_of
from suppression.store import RestApi

log = structlog.get_logger("optgate.api")
OPERATION = web.RequestKey("operation", str)
KEY = web.RequestKey("key", ApiKey)
PREFIX = "/api/v1"
PAGE, MAX_PAGE = 100, 1000


@dataclass(frozen=True)
class Api:
    """What every route shares."""

    config: Config
    store: RestApi
    metrics: Metrics
    limiter: SharedLimiter | None  # a minute's window; None: [api] rate_limit = 0


@dataclass(frozen=True)
class Call:
    """One request as a handler sees it: checked key, query and body."""

    request: web.Request
    key: ApiKey | None
    query: Mapping[str, str]
    body: Any

    @property
    def actor(self) -> str:
        """Who the audit log names for this call's changes."""
        return f"api:{self.key.name}" if self.key else "api"

    def path(self, name: str) -> str:
        """A path parameter."""
        return self.request.match_info[name]


Handler = Callable[[Api, Call], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Route:
    """One operation: method, path under PREFIX (aiohttp's pattern), operationId, scope."""

    method: str
    path: str
    operation: str
    scope: str | None  # None: no key needed
    handler: Handler


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(
        status=status, body=json.dumps(data).encode(), content_type="application/json"
    )


# --- parsing the input ------------------------------------------------------------------


def _addresses(texts: Sequence[str], api: Api, field: str = "addresses") -> list[Address]:
    """Addresses of a body, all checked before anything is done; every bad one named."""
    if len(texts) > api.config.api.max_items:
        raise bad_request(f"{field}: at most {api.config.api.max_items} per request")
    parsed, errors = [], []
    for n, text in enumerate(texts):
        try:
            parsed.append(normalize(text))
        except OptgateError as exc:
            errors.append({"pointer": f"/{field}/{n}", "detail": str(exc)})
    if errors:
        raise bad_request(f"{len(errors)} invalid address(es); nothing was changed", errors)
    return parsed


def _targets(texts: Sequence[str], api: Api, *, keep: bool) -> list[Recipient]:
    """Addresses or @domains of a body, all parsed first (as ``suppress add`` takes them);
    every bad one named."""
    if len(texts) > api.config.api.max_items:
        raise bad_request(f"addresses: at most {api.config.api.max_items} per request")
    parsed, errors = [], []
    for n, text in enumerate(texts):
        try:
            parsed.append(Recipient.parse(text, keep=keep))
        except OptgateError as exc:
            errors.append({"pointer": f"/addresses/{n}", "detail": str(exc)})
    if errors:
        raise bad_request(f"{len(errors)} invalid address(es); nothing was changed", errors)
    return parsed


def _address(call: Call) -> Address:
    try:
        return normalize(call.path("address"))
    except OptgateError as exc:
        raise bad_request(str(exc)) from None


async def _scope(api: Api, text: str | None) -> Scope:
    """A body's or query's scope (default global); a partner's must name a partner the
    store knows."""
    scope = GLOBAL if text is None else Scope.parse(text)
    if scope.kind == "partner" and await api.store.partner(scope.name) is None:
        raise bad_request(f"scope {scope}: no partner named {scope.name!r}")
    return scope


def _limit(call: Call) -> int:
    text = call.query.get("limit", str(PAGE))
    if not text.isdigit() or not 1 <= int(text) <= MAX_PAGE:
        raise bad_request(f"limit: a whole number from 1 to {MAX_PAGE}, not {text!r}")
    return int(text)


def _rules(api: Api) -> Rules:
    return Rules(api.config.policy.require_consent, api.config.policy.consent_versions)


# --- handlers -----------------------------------------------------------------------------


async def openapi(api: Api, call: Call) -> web.Response:
    """GET /openapi.json: the document itself."""
    return web.Response(body=schema.raw(), content_type="application/json")


def _suppression(s: Suppression) -> dict[str, object]:
    return {**actions.suppression_json(s), "key": s.key, "address": s.address}


async def list_suppressions(api: Api, call: Call) -> web.Response:
    """GET /suppressions: a page in key order, filtered; ``next_cursor`` goes on."""
    q = call.query
    try:
        f = SuppressionFilter(
            scope=str(Scope.parse(q["scope"])) if "scope" in q else None,
            reason=Reason(q["reason"]).value if "reason" in q else None,
            source=q.get("source"),
            since=actions.since(q["since"]) if "since" in q else None,
            until=actions.since(q["until"]) if "until" in q else None,
            after=decode_cursor(q["cursor"]) if "cursor" in q else None,
        )
    except ValueError:
        raise bad_request(f"reason: one of {', '.join(r.value for r in Reason)}") from None
    limit = _limit(call)
    rows = await api.store.list_suppressions(f, limit + 1)
    page = rows[:limit]
    more = stored_cursor_of(page[-1]) if len(rows) > limit else None
    return _json({"items": [_suppression(s) for s in page], "next_cursor": more})


async def add_suppressions(api: Api, call: Call) -> web.Response:
    """POST /suppressions: suppress addresses and @domains in one scope."""
    body = call.body
    scope = await _scope(api, body.get("scope"))
    reason = Reason(body.get("reason", Reason.MANUAL.value))
    recipients = _targets(body["addresses"], api, keep=api.config.store.keep_addresses)
    events = [SuppressionEvent(r, scope, reason, Source.API) for r in recipients]
    result = await optouts.opt_out(api.store, events, actor=call.actor)
    already = result.present + result.duplicates
    return _json({"added": result.added, "already": already, "scope": str(scope)})


async def _lift(api: Api, call: Call, texts: Sequence[str], scope_text: str | None) -> web.Response:
    scope = await _scope(api, scope_text)
    recipients = _targets(texts, api, keep=True)
    lifted = await optouts.lift(api.store, recipients, scope=scope, actor=call.actor)
    had_none = lifted.targets - lifted.removed
    return _json({"lifted": lifted.removed, "had_none": had_none, "scope": str(scope)})


async def lift_suppressions(api: Api, call: Call) -> web.Response:
    """POST /suppressions/lift: lift the suppressions of many addresses in one scope."""
    return await _lift(api, call, call.body["addresses"], call.body.get("scope"))


async def remove_suppression(api: Api, call: Call) -> web.Response:
    """DELETE /suppressions/{address}: lift one address's (or @domain's) suppression."""
    return await _lift(api, call, [call.path("address")], call.query.get("scope"))


async def check_suppressions(api: Api, call: Call) -> web.Response:
    """POST /suppressions/check: suppressions and the marketing verdict of each address."""
    texts = call.body["addresses"]
    _addresses(texts, api)
    topic = check_name(call.body.get("topic", api.config.policy.default_topic), "topic")
    checked = await actions.check(api.store, texts, topic=topic, rules=_rules(api))
    return _json({"addresses": [c.as_json() for c in checked]})


def _evidence(body: Mapping[str, Any]) -> ApiConsent:
    """The consent's evidence: IP, user agent, the consent text's digest (and the text
    when given). Erased with the subject."""
    ip = None
    if "ip" in body:
        try:
            ip = str(ipaddress.ip_address(body["ip"]))
        except ValueError:
            raise bad_request(f"ip: {body['ip']!r} is not an IP address") from None
    text, digest = body.get("text"), body.get("text_sha256")
    if text is not None:
        digest = hashlib.sha256(text.encode()).hexdigest()
    elif digest is not None:
        digest = digest.lower()
    return ApiConsent(ip, body.get("user_agent"), text, digest)


async def _record(api: Api, call: Call, granted: bool) -> web.Response:
    body = call.body
    purpose = check_name(body["purpose"], "purpose")
    addresses = _addresses(body["addresses"], api)
    count = await optouts.consent(
        api.store,
        addresses,
        purpose=purpose,
        granted=granted,
        source=body.get("source", Source.API.value),
        policy_version=body.get("policy_version"),
        actor=call.actor,
        keep_addresses=api.config.store.keep_addresses,
        evidence=_evidence(body),
    )
    state = "granted" if granted else "revoked"
    return _json({"recorded": count, "purpose": purpose, "state": state})


async def record_consents(api: Api, call: Call) -> web.Response:
    """POST /consents: record consent with its evidence."""
    return await _record(api, call, True)


async def revoke_consents(api: Api, call: Call) -> web.Response:
    """POST /consents/revoke: record revocations."""
    return await _record(api, call, False)


async def list_consents(api: Api, call: Call) -> web.Response:
    """GET /consents/{address}: every consent record of an address, oldest first."""
    address = _address(call)
    records = (await api.store.subject(address)).consents
    return _json({"sha256": address.sha256, "consents": [consent_object(c) for c in records]})


async def consent_requests(api: Api, call: Call) -> web.Response:
    """POST /consent-requests: mail each address a double opt-in confirmation link."""
    purpose = check_name(call.body["purpose"], "purpose")
    results = []
    for given, address in zip(
        call.body["addresses"], _addresses(call.body["addresses"], api), strict=True
    ):
        outcome = await request_consent(api.config, api.store, address, purpose, call.actor)
        results.append(
            {
                "address": given,
                "sent": outcome.delivered,
                "detail": None if outcome.delivered else f"{outcome.code} {outcome.message}",
            }
        )
    return _json({"purpose": purpose, "results": results})


async def show_subject(api: Api, call: Call) -> web.Response:
    """GET /subjects/{address}: every record about an address (audited as an access)."""
    shown = await actions.subject_access(
        api.store, _address(call), actor=call.actor, keep_raw=api.config.inbound.keep_raw
    )
    return web.Response(
        body=json.dumps(shown, default=str).encode(), content_type="application/json"
    )


async def erase_subject(api: Api, call: Call) -> web.Response:
    """DELETE /subjects/{address}: erase, keeping only the hash's tombstone."""
    address = _address(call)
    erased = await optouts.erase(
        api.store, address, actor=call.actor, keep_raw=api.config.inbound.keep_raw
    )
    return _json(erased.as_json())


async def compliance_report(api: Api, call: Call) -> web.Response:
    """GET /reports/compliance: opt-outs marketing mail followed."""
    return _json((await actions.compliance(api.store)).as_json())


async def rates_report(api: Api, call: Call) -> web.Response:
    """GET /reports/rates: sent and opted out per topic and campaign."""
    start = actions.since(call.query.get("since", "7d"))
    return _json((await actions.rates(api.store, start)).as_json())


async def partner_report(api: Api, call: Call) -> web.Response:
    """GET /partners/{name}/report: a partner's offers, counts of at least k only."""
    k = api.config.partners.report_threshold
    return _json(await actions.partner_report(api.store, call.path("name"), k))


async def verify_store(api: Api, call: Call) -> web.Response:
    """GET /store/verify: the audit chain and the state it vouches for."""
    expect = call.query.get("expect")
    try:
        heads = [parse_head(expect)] if expect else []
    except ValueError as exc:
        raise bad_request(f"expect: {exc}") from None
    anchor = Path(api.config.store.audit_anchor_file)
    return _json((await actions.verify(api.store, anchor, heads)).as_json())


ROUTES: tuple[Route, ...] = (
    Route("GET", "/openapi.json", "getOpenApi", None, openapi),
    Route("GET", "/suppressions", "listSuppressions", "read", list_suppressions),
    Route("POST", "/suppressions", "addSuppressions", "write", add_suppressions),
    Route("POST", "/suppressions/check", "checkSuppressions", "read", check_suppressions),
    Route("POST", "/suppressions/lift", "liftSuppressions", "write", lift_suppressions),
    Route("DELETE", "/suppressions/{address}", "removeSuppression", "write", remove_suppression),
    Route("POST", "/consents", "recordConsents", "write", record_consents),
    Route("POST", "/consents/revoke", "revokeConsents", "write", revoke_consents),
    Route("GET", "/consents/{address}", "listConsents", "read", list_consents),
    Route("POST", "/consent-requests", "requestConsents", "write", consent_requests),
    Route("GET", "/subjects/{address}", "showSubject", "read", show_subject),
    Route("DELETE", "/subjects/{address}", "eraseSubject", "erase", erase_subject),
    Route("GET", "/reports/compliance", "complianceReport", "read", compliance_report),
    Route("GET", "/reports/rates", "ratesReport", "read", rates_report),
    Route("GET", "/partners/{name}/report", "partnerReport", "read", partner_report),
    Route("GET", "/store/verify", "verifyStore", "read", verify_store),
)


# --- the guard around every route -------------------------------------------------------


async def _key(api: Api, request: web.Request, scope: str) -> ApiKey:
    """The request's API key, checked for the scope and counted against the rate limit."""
    scheme, _, text = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not text.strip():
        raise unauthorized("send an API key as 'Authorization: Bearer KEY' (optgate api-key add)")
    parts = split_key(text)
    key = await api.store.api_key(parts[0]) if parts else None
    if parts is None or key is None or key.revoked is not None or not key.matches(parts[1]):
        raise unauthorized("the API key is not valid (unknown, mistyped or revoked)")
    if not key.allows(scope):
        raise forbidden(scope)
    limiter, limit = api.limiter, api.config.api.rate_limit
    if limiter is not None and not await limiter.take([("api-key", key.id, limit)]):
        raise Problem(
            429,
            "rate-limited",
            "Too many requests",
            f"this API key made {limit} requests this minute ([api] rate_limit)",
            headers={"Retry-After": str(limiter.retry_after())},
        )
    return key


async def _body(request: web.Request, operation: str) -> Any:
    """The JSON body, checked against the document (None for an operation without one)."""
    if schema.body_validator(operation) is None:
        return None
    if request.content_type != "application/json":
        raise Problem(
            415, "unsupported-media-type", "Unsupported media type", "send application/json"
        )
    raw = await request.read()  # beyond [api] max_body: aiohttp's 413, made a problem

    def no_constant(name: str) -> None:
        raise ValueError(f"{name} is not JSON")

    try:
        body = json.loads(raw, parse_constant=no_constant)
    except (ValueError, RecursionError) as exc:
        raise bad_request(f"the body is not JSON: {exc}") from None
    errors = schema.body_errors(operation, body)
    if errors:
        first = errors[0]
        raise bad_request(f"{first['pointer']}: {first['detail']}", errors)
    return body


def _query(request: web.Request, operation: str) -> dict[str, str]:
    allowed = schema.query_names(operation)
    unknown = sorted(set(request.query) - allowed)
    if unknown:
        raise bad_request(f"unknown query parameter(s): {', '.join(unknown)}")
    repeated = sorted(name for name in request.query if len(request.query.getall(name)) > 1)
    if repeated:
        raise bad_request(f"query parameter(s) given twice: {', '.join(repeated)}")
    return dict(request.query)


def _guarded(api: Api, route: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        request[OPERATION] = route.operation
        key = await _key(api, request, route.scope) if route.scope else None
        if key is not None:
            request[KEY] = key
        query = _query(request, route.operation)
        body = await _body(request, route.operation)
        return await route.handler(api, Call(request, key, query, body))

    return handle


# what the framework's own answers and the errors without a message to show say
_DETAILS = {
    404: "no API operation at {path}",
    405: "allowed: {allow}",
    413: "the body exceeds [api] max_body",
    503: "try again later",
    500: "the error is logged",
}


def _problem_of(request: web.Request, exc: BaseException) -> Problem:
    """An error as a problem, as gateway/errors.py answers it (a Problem is one already)."""
    if isinstance(exc, Problem):
        return exc
    headers = {}
    if isinstance(exc, web.HTTPException):
        answer = http_status(exc.status, exc.reason)
        detail = exc.text or exc.reason
        if "Allow" in exc.headers:
            headers["Allow"] = exc.headers["Allow"]
    else:
        answer, detail = http_answer(exc), str(exc)
    if not answer.detail:
        allow = headers.get("Allow", "")
        detail = _DETAILS.get(answer.status, detail).format(path=request.path, allow=allow)
    return Problem(answer.status, answer.kind, answer.title, detail, headers=headers)


def make_api(api: Api) -> web.Application:
    """The API as an aiohttp application, to mount at PREFIX."""

    @web.middleware
    async def problems(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        started = time.perf_counter()
        try:
            response = await handler(request)
        except Exception as exc:  # every error ends here: none shows a traceback or an IP
            problem = _problem_of(request, exc)
            if problem.status >= 500:
                log.error("api_error", error=type(exc).__name__, operation=request.get(OPERATION))
            response = problem.response()
        operation = request.get(OPERATION) or "unrouted"
        key = request.get(KEY)
        api.metrics.api_requests.labels(operation, str(response.status)).inc()
        log.info(
            "api_request",
            operation=operation,
            status=response.status,
            key=key.name if key else None,
            ms=round((time.perf_counter() - started) * 1000, 2),
        )
        return response

    app = web.Application(middlewares=[problems])
    for route in ROUTES:
        app.router.add_route(route.method, route.path, _guarded(api, route))
    return app


def registered(app: web.Application) -> set[tuple[str, str]]:
    """(method, path) of every route the API application serves, as the OpenAPI document
    writes paths (once mounted at PREFIX, its paths hold the prefix)."""
    return {
        (route.method, resource.canonical)
        for resource in app.router.resources()
        for route in resource
        if route.method != "HEAD"
    }
