"""The admin listener ([api] listen) serves /metrics and /healthz; the public web endpoint
serves no /metrics, and neither names its server software's version."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from gateway.runtime.service import Running, running
from tests.support.people import FAN, SENDER
from tests.support.smtp import Sink, gateway_config, message, send


async def get(port: int, path: str) -> tuple[int, str, dict[str, str]]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}{path}") as response,
    ):
        return response.status, await response.text(), dict(response.headers)


async def raw_answer(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        async with asyncio.timeout(10):
            return await reader.read()
    finally:
        writer.close()


async def test_metrics_and_health_are_on_the_admin_listener_only(
    gate: Running, next_hop: Sink
) -> None:
    assert gate.api_port != 0
    assert gate.api_port != gate.web_port
    assert (await send(gate.smtp_port, SENDER, [FAN], message())).code == 250
    status, text, headers = await get(gate.api_port, "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert 'optgate_messages_total{reply="2xx"} 1.0' in text
    assert "@" not in text
    assert (await get(gate.api_port, "/healthz"))[:2] == (200, "ok")
    public, page, _ = await get(gate.web_port, "/metrics")
    assert public == 404
    assert "optgate_" not in page
    assert (await get(gate.web_port, "/healthz"))[0] == 200  # load balancers in front of it


async def test_no_answer_names_python_or_aiohttp(gate: Running) -> None:
    for port in (gate.web_port, gate.api_port):
        for path in ("/healthz", "/nowhere", "/metrics"):
            assert "Server" not in (await get(port, path))[2], (port, path)
        for request in (b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n"):
            answer = await raw_answer(port, request)
            head = answer.partition(b"\r\n\r\n")[0]
            assert head.split(b"\r\n")[0].endswith(b" 400 Bad Request")
            assert b"aiohttp" not in answer.lower()
            assert b"python" not in answer.lower()


async def test_the_admin_listener_can_be_off(tmp_path: Path, next_hop: Sink) -> None:
    async with running(gateway_config(tmp_path, next_hop.port, api_listen="")) as gate:
        assert gate.api_port == 0
        assert gate.web_port
