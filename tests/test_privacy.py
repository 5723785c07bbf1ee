"""A message's whole way through the real `optgate serve` (SMTP in, relay, a refused one, a
next-hop failure, the web one-click, a VERP bounce, mail to unsubscribe@, /metrics): the
captured output holds no address involved and no unkeyed hash of one; recipients appear as
the keyed digest `optgate log-id` prints, the same in every line."""

from __future__ import annotations

import email
import email.policy
import hashlib
import os
import re
import signal
import subprocess
from pathlib import Path

import aiohttp

from gateway.config import load
from tests.support.people import BOUNCED, FAN, GONE, SENDER, STRANGER, seed
from tests.support.reports import dsn, person
from tests.support.serving import OPTGATE, optgate_serve
from tests.support.smtp import Sink, gateway_env, message, send

DOMAIN = "in.example.com"
WRITER = "Writer.Person@example.org"  # writes to unsubscribe@
CONTROL = "ctl.value@example.net"  # sent as a control header's value
FORWARD = "fan.forwarded@elsewhere.example"  # the address a bounce names
EVERYONE = (SENDER, FAN, GONE, STRANGER, BOUNCED, WRITER, CONTROL, FORWARD)


def traces(address: str) -> set[str]:
    """What would give an address away: itself, and unkeyed hashes of it (or their prefixes)."""
    forms = {address, address.lower()}
    found = {address.lower()}
    for form in forms:
        for hashed in (hashlib.sha256(form.encode()), hashlib.md5(form.encode())):  # noqa: S324
            digest = hashed.hexdigest()
            found |= {digest, digest[:16], digest[:12], digest[-12:]}
    return found


def log_id(env: dict[str, str], value: str, *options: str) -> str:
    """What `optgate log-id` says the log lines carry for a value."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("OPTGATE_")}
    done = subprocess.run(  # noqa: S603
        [OPTGATE, "log-id", *options, value],
        env={**base, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.splitlines()[-1].split()[0]


async def test_the_whole_way_logs_no_address_and_no_unkeyed_hash(
    tmp_path: Path, next_hop: Sink
) -> None:
    env = gateway_env(
        tmp_path,
        next_hop.port,
        inbound_domains=DOMAIN,
        unsubscribe_mailto=f"unsubscribe@{DOMAIN}",
    )
    await seed(load(None, env))
    async with optgate_serve(env, "--workers", "2", ready=2) as served:
        _, port = served.address("smtp")
        _, web = served.address("web")
        _, api = served.address("api")
        everyone = [FAN, GONE, STRANGER, BOUNCED]
        data = message(message_id=f"<{FAN}>")  # a Message-ID that is an address
        assert (await send(port, SENDER, everyone, data)).code == 250
        [copy] = next_hop.to(FAN)
        refused = message(headers={"X-Optgate-Topic": CONTROL}, message_id="<r1@sender.example>")
        assert (await send(port, SENDER, [FAN], refused)).code == 550
        next_hop.fail_next.append("451 4.3.0 mailbox busy, later")
        again = message(message_id=f"<again.{FAN}>")
        assert (await send(port, SENDER, [FAN], again)).code == 451

        parsed = email.message_from_bytes(copy.data, policy=email.policy.default)
        link = re.search(
            r"<https://unsub\.example\.com(/u/[^>]+)>", str(parsed["List-Unsubscribe"])
        )
        assert link is not None
        async with aiohttp.ClientSession() as http:
            one_click = {"List-Unsubscribe": "One-Click"}
            async with http.post(f"http://127.0.0.1:{web}{link.group(1)}", data=one_click) as r:
                assert r.status == 200
            bounce = dsn(
                copy.data,
                to=copy.mail_from,
                recipient=FORWARD,
                status="5.1.1",
                diagnostic=f"550 5.1.1 <{FORWARD}>: no such user",
            )
            assert (await send(port, "", [copy.mail_from], bounce)).code == 250
            unsubscribe = person(sender=WRITER, to=f"unsubscribe@{DOMAIN}")
            assert (await send(port, WRITER, [f"unsubscribe@{DOMAIN}"], unsubscribe)).code == 250
            async with http.get(f"http://127.0.0.1:{api}/metrics") as r:
                metrics = await r.text()
        await served.wait_for("inbound_message", 2)
        served.process.send_signal(signal.SIGTERM)
        assert await served.exit_code() == 0

    output = "\n".join(
        [str(line) for line in served.lines] + [served.stderr.decode(errors="replace"), metrics]
    ).lower()
    for address in EVERYONE:
        for trace in traces(address):
            assert trace not in output, (address, trace)
    fan = log_id(env, FAN)
    seen = {line["event"] for line in served.lines if line.get("rcpt") == fan}
    assert {"recipient", "relay_failed", "web_unsubscribe", "inbound_finding"} <= seen
    assert served.events("message_refused")[0]["value"] == log_id(env, CONTROL, "--message-id")
