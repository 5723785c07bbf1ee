"""The fan-out survives SIGKILL: each recipient gets exactly one copy, on one node or two.

The next hop is Postfix's smtp-sink: like a real MTA it keeps a message whose
final "." arrived even if the sender dies right after, and nothing of one cut
off before it.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from pathlib import Path

from gateway.config import load
from tests.support.partners import (
    DumpSink,
    ServeProcess,
    add_partner,
    consenting,
    free_port,
    submit,
    until_done,
)
from tests.support.smtp import gateway_env, message
from tests.test_store import postgres_database

AUDIENCE = [f"reader.{i:04d}@example.net" for i in range(2000)]


def node_env(
    tmp_path: Path, next_hop: DumpSink, partners_port: int, **settings: str
) -> dict[str, str]:
    return gateway_env(
        tmp_path,
        next_hop.port,
        free_port(),
        partners_listen=f"127.0.0.1:{partners_port}",
        partners_audience_domain="partners.example.com",
        partners_lease="2",  # a killed node's claims are free again after 2 s
        partners_batch="50",
        relay_starttls="never",
        **settings,
    )


async def midway(next_hop: DumpSink, count: int) -> None:
    """Past ``count`` copies, then a random moment: a kill that knows nothing of batches."""
    await next_hop.wait_for(count)
    await asyncio.sleep(random.uniform(0, 0.1))


def exactly_once(next_hop: DumpSink) -> None:
    copies = Counter(next_hop.recipients())
    assert set(copies) == set(AUDIENCE)
    assert max(copies.values()) == 1


def sent_by(log: str) -> int:
    """Copies a node's log says it sent."""
    return sum(
        json.loads(line).get("sent", 0)
        for line in log.splitlines()
        if line.startswith("{") and '"fanout_batch"' in line
    )


async def test_sigkill_mid_fanout_and_a_restart_deliver_each_recipient_once(
    tmp_path: Path,
) -> None:
    with DumpSink(tmp_path / "sink") as next_hop:
        port = free_port()
        env = node_env(tmp_path, next_hop, port)
        config = load(None, env)
        secret = await add_partner(config)
        await consenting(config, AUDIENCE)
        node = ServeProcess(env, tmp_path / "serve.log")
        await node.start(port)
        try:
            assert (await submit(port, "acme", secret, message())).code == 250
            await midway(next_hop, 400)
            node.kill()
            assert len(next_hop.recipients()) < len(AUDIENCE)  # killed in the middle
            await node.start(port)
            [status] = await until_done(config, seconds=120)
        finally:
            node.kill()
        assert (status.audience, status.sent) == (2000, 2000)
        exactly_once(next_hop)


async def test_two_nodes_share_a_job_and_one_killed_loses_nothing(tmp_path: Path) -> None:
    async with postgres_database() as url:
        with DumpSink(tmp_path / "sink") as next_hop:
            key = str(tmp_path / "shared.key")
            ports = free_port(), free_port()
            envs = [
                node_env(tmp_path, next_hop, p, store_url=url, unsubscribe_key_file=key)
                for p in ports
            ]
            config = load(None, envs[0])
            secret = await add_partner(config)
            await consenting(config, AUDIENCE)
            nodes = [ServeProcess(env, tmp_path / f"node{i}.log") for i, env in enumerate(envs)]
            for node, port in zip(nodes, ports, strict=True):
                await node.start(port)
            try:
                assert (await submit(ports[0], "acme", secret, message())).code == 250
                await midway(next_hop, 600)
                nodes[0].kill()
                [status] = await until_done(config, seconds=120)
            finally:
                for node in nodes:
                    node.kill()
            assert (status.audience, status.sent) == (2000, 2000)
            exactly_once(next_hop)
    # both nodes worked the one job
    assert sent_by(nodes[0].log()) > 0
    assert sent_by(nodes[1].log()) > 0
