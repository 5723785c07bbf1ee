"""Several optgate nodes on one PostgreSQL database: an opt-out through one node
takes effect on the other at once (issue 8's bar: the very next message)."""

from __future__ import annotations

import email
import email.policy
import re
from pathlib import Path

import aiohttp
import pytest

from gateway.runtime.service import running
from tests.support.backends import postgres_database
from tests.support.people import FAN, SENDER, seed
from tests.support.smtp import gateway_config, message, send, sink

pytestmark = [pytest.mark.postgres, pytest.mark.sockets]


async def test_one_click_on_node_a_stops_the_next_message_through_node_b(tmp_path: Path) -> None:
    async with postgres_database() as url, sink() as next_hop:
        key = str(tmp_path / "shared.key")  # tokens from one node must verify on the other
        node_a = gateway_config(tmp_path, next_hop.port, store_url=url, unsubscribe_key_file=key)
        node_b = gateway_config(tmp_path, next_hop.port, store_url=url, unsubscribe_key_file=key)
        await seed(node_a)
        async with running(node_a) as a, running(node_b) as b:
            sent = await send(b.smtp_port, SENDER, [FAN], message(message_id="<1@sender.example>"))
            assert sent.code == 250
            copy = email.message_from_bytes(next_hop.to(FAN)[0].data, policy=email.policy.default)
            link = re.search(r"<https://[^/]+(/u/[^>]+)>", str(copy["List-Unsubscribe"]))
            assert link is not None
            async with aiohttp.ClientSession() as http:
                response = await http.post(
                    f"http://127.0.0.1:{a.web_port}{link.group(1)}",
                    data={"List-Unsubscribe": "One-Click"},
                )
                assert response.status == 200
            again = await send(b.smtp_port, SENDER, [FAN], message(message_id="<2@sender.example>"))
            assert again.code == 250
    assert len(next_hop.to(FAN)) == 1  # node B dropped the second message
