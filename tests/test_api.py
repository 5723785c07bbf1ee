"""The REST API (/api/v1) on the admin listener of a running gateway: keys and scopes,
every resource, the same answers as the command line, never on the public listener."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote

from gateway.config import Config
from gateway.runtime.service import Running, running
from gateway.runtime.stores import opened
from suppression.address import normalize
from suppression.model import Consent, Send, now
from tests.support.api import api_key, call, within_one_minute
from tests.support.smtp import Sink, gateway_config

A, B, C = "ann@example.com", "bob@example.org", "cyd@example.net"


async def test_the_public_listener_serves_no_api(gate: Running, config: Config) -> None:
    key = await api_key(config, "crm", "read", "write")
    for method, path in (
        ("GET", "/api/v1/openapi.json"),
        ("GET", "/api/v1/suppressions"),
        ("POST", "/api/v1/suppressions"),
    ):
        answer = await call(gate.web_port, method, path, key, {"addresses": [A]})
        assert answer.status in (404, 405), (method, path)
        assert "openapi" not in str(answer.body)
    async with opened(config) as store:
        assert (await store.subject(normalize(A))).suppressions == ()
    served = await call(gate.api_port, "GET", "/api/v1/openapi.json")
    assert served.status == 200
    assert served.body["openapi"] == "3.1.0"


async def test_a_key_is_needed_and_its_scopes_count(gate: Running, config: Config) -> None:
    port = gate.api_port
    reader = await api_key(config, "reader", "read")
    writer = await api_key(config, "writer", "write")
    missing = await call(port, "GET", "/api/v1/suppressions")
    assert missing.status == 401
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    assert "Authorization: Bearer" in missing.problem["detail"]
    assert (await call(port, "GET", "/api/v1/suppressions", reader[:-1] + "x")).status == 401
    assert (await call(port, "GET", "/api/v1/suppressions", "not-a-key")).status == 401
    assert (await call(port, "GET", "/api/v1/suppressions", reader)).status == 200
    denied = await call(port, "POST", "/api/v1/suppressions", reader, {"addresses": [A]})
    assert denied.status == 403
    assert "'write'" in denied.problem["detail"]
    assert (await call(port, "GET", "/api/v1/suppressions", writer)).status == 403
    added = await call(port, "POST", "/api/v1/suppressions", writer, {"addresses": [A]})
    assert added.status == 200
    address = quote(A)
    assert (await call(port, "DELETE", f"/api/v1/subjects/{address}", writer)).status == 403
    async with opened(config) as store:
        assert await store.revoke_api_key("writer", now(), actor="test")
    assert (
        await call(port, "POST", "/api/v1/suppressions", writer, {"addresses": [B]})
    ).status == 401


async def test_suppressions_added_listed_checked_and_lifted(gate: Running, config: Config) -> None:
    port = gate.api_port
    key = await api_key(config, "crm", "read", "write")
    added = await call(
        port,
        "POST",
        "/api/v1/suppressions",
        key,
        {"addresses": [A, B, "@spam.example"], "scope": "topic:news", "reason": "unsubscribed"},
    )
    assert added.body == {"added": 3, "already": 0, "scope": "topic:news"}
    again = await call(port, "POST", "/api/v1/suppressions", key, {"addresses": [A]})
    assert again.body == {"added": 1, "already": 0, "scope": "global"}
    pages, cursor = [], None
    while True:
        # (the gateway's seeded people have suppressions of source test)
        path = "/api/v1/suppressions?source=api&limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = (await call(port, "GET", path, key)).body
        pages.append(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [len(p) for p in pages] == [2, 2]
    items = [i for p in pages for i in p]
    assert {(i["address"], i["scope"]) for i in items} == {
        (A, "topic:news"),
        (B, "topic:news"),
        ("@spam.example", "topic:news"),
        (A, "global"),
    }
    assert {i["source"] for i in items} == {"api"}
    news = await call(port, "GET", "/api/v1/suppressions?scope=topic:news&reason=unsubscribed", key)
    assert len(news.body["items"]) == 3
    recent = await call(port, "GET", "/api/v1/suppressions?since=1h&source=api", key)
    assert len(recent.body["items"]) == 4

    checked = await call(
        port, "POST", "/api/v1/suppressions/check", key, {"addresses": [B, C], "topic": "news"}
    )
    b, c = checked.body["addresses"]
    assert (b["suppressed"], b["sent"], b["reason"]) == (True, False, "unsubscribed")
    assert b["suppressions"][0]["scope"] == "topic:news"
    assert (c["suppressed"], c["sent"]) == (False, False)  # no consent for news
    assert c["reason"] == "no-consent"
    assert "consent" in c["explanation"]

    lifted = await call(
        port, "POST", "/api/v1/suppressions/lift", key, {"addresses": [A, C], "scope": "topic:news"}
    )
    assert lifted.body == {"lifted": 1, "had_none": 1, "scope": "topic:news"}
    one = await call(
        port, "DELETE", f"/api/v1/suppressions/{quote('@spam.example')}?scope=topic:news", key
    )
    assert one.body == {"lifted": 1, "had_none": 0, "scope": "topic:news"}
    async with opened(config) as store:
        events = [e async for e in store.iter_events()]
        report = await store.verify_chain()
    changes = [e for e in events if e.action in ("suppress", "unsuppress") and e.actor != "test"]
    assert {e.actor for e in changes} == {"api:crm"}
    assert len(changes) == 4  # two adds, the lift of an address, that of the domain
    assert report.intact


async def test_consents_recorded_with_evidence_listed_and_revoked(
    gate: Running, config: Config
) -> None:
    port = gate.api_port
    key = await api_key(config, "signup", "read", "write")
    given = {
        "addresses": [A],
        "purpose": "news",
        "source": "signup-form",
        "ip": "203.0.113.7",
        "user_agent": "Mozilla/5.0",
        "text": "Yes, send me the newsletter.",
        "policy_version": "3",
    }
    recorded = await call(port, "POST", "/api/v1/consents", key, given)
    assert recorded.body == {"recorded": 1, "purpose": "news", "state": "granted"}
    checked = await call(
        port, "POST", "/api/v1/suppressions/check", key, {"addresses": [A], "topic": "news"}
    )
    assert checked.body["addresses"][0]["sent"] is True
    listed = await call(port, "GET", f"/api/v1/consents/{quote(A)}", key)
    [record] = listed.body["consents"]
    assert (record["state"], record["source"], record["policy_version"]) == (
        "granted",
        "signup-form",
        "3",
    )
    evidence = json.loads(record["evidence"])
    assert evidence["ip"] == "203.0.113.7"
    assert evidence["user_agent"] == "Mozilla/5.0"
    assert evidence["text"] == given["text"]
    assert len(evidence["text_sha256"]) == 64
    revoked = await call(
        port, "POST", "/api/v1/consents/revoke", key, {"addresses": [A], "purpose": "news"}
    )
    assert revoked.body["state"] == "revoked"
    states = [
        c["state"]
        for c in (await call(port, "GET", f"/api/v1/consents/{quote(A)}", key)).body["consents"]
    ]
    assert states == ["granted", "revoked"]


async def test_subjects_shown_audited_and_erased(gate: Running, config: Config) -> None:
    port = gate.api_port
    reader = await api_key(config, "dpo", "read")
    eraser = await api_key(config, "dpo-erase", "erase")
    address = normalize(A)
    async with opened(config) as store:
        await store.record_consents(
            [Consent(address.sha256, "news", True, "cli", now(), address=A)], actor="t"
        )
    shown = await call(port, "GET", f"/api/v1/subjects/{quote(A)}", reader)
    assert shown.status == 200
    assert (shown.body["address"], shown.body["sha256"]) == (A, address.sha256)
    assert [c["purpose"] for c in shown.body["consents"]] == ["news"]
    erased = await call(port, "DELETE", f"/api/v1/subjects/{quote(A)}", eraser)
    assert erased.body == {
        "sha256": address.sha256,
        "cleared": 1,
        "revoked": 1,
        "kept_messages_deleted": 0,
    }
    async with opened(config) as store:
        events = [(e.actor, e.action) for e in (await store.subject(address)).events]
    assert ("api:dpo", "subject-access") in events
    assert ("api:dpo-erase", "erase") in events
    bad = await call(port, "GET", "/api/v1/subjects/not-an-address", reader)
    assert bad.status == 400


async def test_reports_and_verify(gate: Running, config: Config) -> None:
    port = gate.api_port
    key = await api_key(config, "ops", "read")
    address = normalize(B)
    async with opened(config) as store:
        await store.record_sends([Send("m1", address.sha256, "news", "marketing", now(), "spring")])
    rates = await call(port, "GET", "/api/v1/reports/rates?since=7d", key)
    [news] = rates.body["topics"]
    assert (news["topic"], news["sent"], news["complaints"]) == ("news", 1, "ok")
    assert [c["campaign"] for c in news["campaigns"]] == ["spring"]
    assert rates.body["complaint_limit"] == 0.003
    compliance = await call(port, "GET", "/api/v1/reports/compliance", key)
    assert compliance.body["violations"] == []
    verified = await call(port, "GET", "/api/v1/store/verify", key)
    assert verified.body["intact"] is True
    head = verified.body["head"]
    held = await call(port, "GET", f"/api/v1/store/verify?expect={head}", key)
    assert held.body["intact"] is True
    unknown = await call(port, "GET", "/api/v1/partners/nobody/report", key)
    assert unknown.status == 404
    assert "nobody" in unknown.problem["detail"]
    assert (await call(port, "GET", "/api/v1/reports/rates?since=yesterday", key)).status == 400


async def test_each_key_has_its_own_rate_limit(tmp_path: Path, next_hop: Sink) -> None:
    config = gateway_config(tmp_path, next_hop.port, api_rate_limit="3")
    async with running(config) as gate:
        one, two = await api_key(config, "one", "read"), await api_key(config, "two", "read")
        await within_one_minute(5)
        statuses = [
            (await call(gate.api_port, "GET", "/api/v1/reports/compliance", one)).status
            for _ in range(3)
        ]
        limited = await call(gate.api_port, "GET", "/api/v1/reports/compliance", one)
        assert statuses == [200, 200, 200]
        assert limited.status == 429
        assert 1 <= int(limited.headers["Retry-After"]) <= 60
        assert limited.problem["title"] == "Too many requests"
        assert (await call(gate.api_port, "GET", "/api/v1/reports/compliance", two)).status == 200
