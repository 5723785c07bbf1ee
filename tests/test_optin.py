"""`optgate consent request`: a confirmation link mailed through the next hop."""

from __future__ import annotations

import asyncio
import email
import email.policy
import re
from pathlib import Path

import pytest

from gateway.cli.main import main
from gateway.keys import load_keys
from gateway.runtime.stores import open_configured
from gateway.tokens import Confirmation, TokenSigner
from suppression.address import normalize
from suppression.model import ImportItem, Reason
from tests.support.smtp import gateway_config, sink

pytestmark = pytest.mark.sockets


async def test_request_mails_a_signed_confirm_link_and_records_no_consent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async with sink() as hop:
        config = gateway_config(tmp_path, hop.port)
        for name, value in {
            "OPTGATE_RELAY_NEXT_HOP": str(config.relay.next_hop),
            "OPTGATE_STORE_URL": config.store.url,
            "OPTGATE_UNSUBSCRIBE_KEY_FILE": config.unsubscribe.key_file,
            "OPTGATE_STORE_AUDIT_KEY_FILE": config.store.audit_key_file,
            "OPTGATE_UNSUBSCRIBE_BASE_URL": "https://unsub.example.com",
        }.items():
            monkeypatch.setenv(name, value)
        assert await asyncio.to_thread(main, ["store", "migrate"]) == 0  # the store and key
        code = await asyncio.to_thread(
            main, ["consent", "request", "new@example.com", "--purpose", "news"]
        )
        assert code == 0
    assert "new@example.com\tconfirmation request sent" in capsys.readouterr().out
    [received] = hop.messages
    assert received.rcpt_tos == ["new@example.com"]
    body = email.message_from_bytes(received.data, policy=email.policy.default).get_body()
    assert body is not None
    match = re.search(r"https://unsub\.example\.com/c/([A-Za-z0-9_-]+)", body.get_content())
    assert match is not None
    claims = TokenSigner(load_keys(Path(config.unsubscribe.key_file))).verify(match.group(1))
    assert claims.scope == Confirmation("news")
    assert claims.recipient == normalize("new@example.com").sha256
    store = await open_configured(config, create=True)
    try:
        holder = await store.holder(claims.recipient)
        assert holder.consents == ()  # requested is not consented
        record = await store.subject(normalize("new@example.com"))
        assert [e.action for e in record.events] == ["consent-requested"]
    finally:
        await store.close()


async def test_no_request_to_an_address_that_bounced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with sink() as hop:
        config = gateway_config(tmp_path, hop.port)
        store = await open_configured(config, create=True)
        a = normalize("gone@example.com")
        await store.suppress(
            [ImportItem(a.sha256, "sha256", None, Reason.BOUNCED)],
            scope="global",
            source="bounce",
            actor="t",
        )
        await store.close()
        monkeypatch.setenv("OPTGATE_RELAY_NEXT_HOP", str(config.relay.next_hop))
        monkeypatch.setenv("OPTGATE_STORE_URL", config.store.url)
        monkeypatch.setenv("OPTGATE_UNSUBSCRIBE_KEY_FILE", config.unsubscribe.key_file)
        monkeypatch.setenv("OPTGATE_STORE_AUDIT_KEY_FILE", config.store.audit_key_file)
        code = await asyncio.to_thread(
            main, ["consent", "request", "gone@example.com", "--purpose", "news"]
        )
    assert code == 1
    assert hop.messages == []


async def test_web_api_requests_consent_for_key_holders_only(tmp_path: Path) -> None:
    import aiohttp

    from gateway.runtime.service import running

    async with sink() as hop:
        config = gateway_config(tmp_path, hop.port, web_api_keys="k-one, k-two")
        async with running(config, ["web"]) as gate, aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{gate.web_port}/api/consent-requests"
            body = {"address": "new@example.com", "purpose": "news"}
            refused = await http.post(url, json=body, headers={"Authorization": "Bearer nope"})
            assert refused.status == 401
            bad = await http.post(
                url,
                json={"address": "not an address", "purpose": "news"},
                headers={"Authorization": "Bearer k-two"},
            )
            assert bad.status == 400
            sent = await http.post(url, json=body, headers={"Authorization": "Bearer k-two"})
            assert sent.status == 202
            assert await sent.json() == {"status": "sent"}
    assert [m.rcpt_tos for m in hop.messages] == [["new@example.com"]]
    assert b"/c/" in hop.messages[0].data


async def test_web_api_is_off_without_keys(tmp_path: Path) -> None:
    import aiohttp

    from gateway.runtime.service import running

    async with sink() as hop:
        config = gateway_config(tmp_path, hop.port)
        async with running(config, ["web"]) as gate, aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{gate.web_port}/api/consent-requests"
            response = await http.post(
                url,
                json={"address": "a@example.com", "purpose": "news"},
                headers={"Authorization": "Bearer anything"},
            )
            assert response.status in (404, 405)
    assert hop.messages == []
