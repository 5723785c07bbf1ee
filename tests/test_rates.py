"""The rates people watch, end to end: a campaign named by X-Optgate-Campaign goes into the
copy's Feedback-ID and the send ledger; `optgate report rates` counts what was sent and
the opt-outs after it, per topic and campaign, against Gmail's 0.3% complaint line."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import os
from pathlib import Path

from gateway.config import Config
from gateway.runtime.service import Running
from gateway.runtime.stores import opened
from suppression.address import normalize
from suppression.model import ImportItem, Reason, Send, now
from tests.support.people import FAN, SENDER
from tests.support.serving import OPTGATE
from tests.support.smtp import Sink, gateway_env, message, send


async def report(tmp_path: Path, next_hop: Sink, *args: str) -> tuple[int, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("OPTGATE_")}
    env = {**base, **gateway_env(tmp_path, next_hop.port)}
    cli = await asyncio.create_subprocess_exec(
        OPTGATE, "report", "rates", *args, env=env, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await cli.communicate()
    assert cli.returncode is not None
    return cli.returncode, out.decode()


async def test_a_campaign_is_in_the_feedback_id_and_counted(
    gate: Running, next_hop: Sink, config: Config, tmp_path: Path
) -> None:
    campaign = {"X-Optgate-Campaign": "Spring-Sale"}
    reply = await send(gate.smtp_port, SENDER, [FAN], message(headers=campaign))
    assert reply.code == 250
    [copy] = next_hop.to(FAN)
    relayed = email.message_from_bytes(copy.data, policy=email.policy.default)
    assert relayed["Feedback-ID"] == "spring-sale:marketing:marketing:optgate"
    assert relayed["X-Optgate-Campaign"] is None  # a control header: removed
    plain = await send(gate.smtp_port, SENDER, [FAN], message(message_id="<m2@sender.example>"))
    assert plain.code == 250
    assert email.message_from_bytes(next_hop.to(FAN)[1].data)["Feedback-ID"] == (
        "marketing:marketing:optgate"
    )

    fan = normalize(FAN)
    async with opened(config) as store:
        sends = (await store.subject(fan)).sends
        assert len(sends) == 2
        # 400 more copies of the campaign to others, and a complaint about FAN's
        await store.record_sends(
            [
                Send(
                    f"m{n}",
                    normalize(f"p{n}@example.com").sha256,
                    "marketing",
                    "marketing",
                    now(),
                    "spring-sale",
                )
                for n in range(400)
            ]
        )
        await store.suppress(
            [ImportItem(fan.sha256, "sha256", None, Reason.COMPLAINED)],
            scope="global",
            source="complaint",
            actor="inbound",
        )
    status, text = await report(tmp_path, next_hop, "--json")
    assert status == 1  # a campaign row is over the line
    shown = json.loads(text)
    [topic] = shown["topics"]
    by_campaign = {c["campaign"]: c for c in topic["campaigns"]}
    assert set(by_campaign) == {None, "spring-sale"}
    assert (topic["sent"], topic["complained"]) == (402, 1)
    # FAN's complaint counts for the last copy FAN got before it: the one without a campaign
    assert by_campaign[None]["complained"] == 1
    assert (by_campaign[None]["sent"], by_campaign[None]["complained_rate"]) == (1, 1.0)
    assert by_campaign[None]["complaints"] == "over"
    assert by_campaign["spring-sale"]["sent"] == 401
    assert by_campaign["spring-sale"]["complained"] == 0
    assert topic["complaints"] == "above-target"  # 1 of 402 = 0.25%: under 0.3%, over 0.1%
    status, lines = await report(tmp_path, next_hop)
    assert status == 1
    assert (
        "marketing: sent 402, unsubscribed 0 (0.00%), bounced 0 (0.00%), complained 1 (0.25%)"
        in lines
    )
    assert "campaign (none): sent 1, unsubscribed 0 (0.00%)" in lines
    assert "OVER Gmail's 0.3% complaint line" in lines
    assert (await report(tmp_path, next_hop, "--since", "tomorrow"))[0] == 2


async def test_a_campaign_that_is_not_a_name_is_refused(gate: Running, next_hop: Sink) -> None:
    bad = message(headers={"X-Optgate-Campaign": "spring sale: 50%"})
    reply = await send(gate.smtp_port, SENDER, [FAN], bad)
    assert reply.code == 550
    assert "X-Optgate-Campaign" in reply.reply
    assert next_hop.to(FAN) == []
