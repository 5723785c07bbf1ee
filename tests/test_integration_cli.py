"""`optgate api-key` and `optgate webhooks` as a user runs them: the console script in
subprocesses beside a running `optgate serve`, on both stores. A key added is printed
once and only its digest is kept; it works on the `[api] listen` of the server within its
scopes and stops at `api-key revoke`. A delivery that keeps failing is listed by
`webhooks list --failed`, sent again by `webhooks retry`, and signed with the old and the
new secret after `webhooks rotate`. The opt-out channels tests/test_webhooks.py leaves
out (a mail to unsubscribe@, an ARF complaint, the unsubscribe page's button, `optgate
suppress add`, and a bounce by mail) each deliver their suppression.added event to a real
endpoint."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from standardwebhooks.webhooks import Webhook as Verifier

from suppression.address import normalize
from suppression.apikeys import split_key
from tests.support.api import call
from tests.support.backends import BACKENDS, postgres_database
from tests.support.people import SENDER
from tests.support.receiver import Receiver
from tests.support.reports import arf, dsn, person
from tests.support.serving import OPTGATE, Served, optgate_serve
from tests.support.smtp import Sink, gateway_env, message, send
from tests.test_inbound_live import DOMAIN, FBL, UNSUBSCRIBE, authentic
from tests.test_unsubscribe_e2e import links

pytestmark = pytest.mark.sockets

FAST = {"webhooks_retry_seconds": "1", "webhooks_timeout": "1", "webhooks_lease": "2"}
KEY = re.compile(r"^  (ogk_\S+)$", re.MULTILINE)
SECRET = re.compile(r"^  (whsec_\S+)$", re.MULTILINE)


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str


@pytest.fixture(params=BACKENDS)
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "postgres":
        async with postgres_database() as url:
            yield url
        return
    yield f"sqlite:///{tmp_path / 'optgate.db'}"


@pytest.fixture
def env(tmp_path: Path, next_hop: Sink, store_url: str) -> dict[str, str]:
    """The OPTGATE_* variables of the server and of every command (webhooks give up at 2 s;
    mail to DOMAIN is inbound, its MTA's Authentication-Results trusted)."""
    return gateway_env(
        tmp_path,
        next_hop.port,
        0,
        store_url=store_url,
        webhooks_give_up_after="2",
        inbound_domains=DOMAIN,
        inbound_authserv_ids=f"mx.{DOMAIN}",
        **FAST,
    )


async def optgate(env: dict[str, str], *argv: str) -> Result:
    """Run the console script, as a shell would, with these variables."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("OPTGATE_")}
    process = await asyncio.create_subprocess_exec(
        OPTGATE,
        *argv,
        env=base | env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode is not None
    return Result(process.returncode, out.decode(), err.decode())


@contextlib.asynccontextmanager
async def serving(env: dict[str, str]) -> AsyncIterator[Served]:
    """`optgate store migrate`, then `optgate serve` with one worker ready."""
    migrated = await optgate(env, "store", "migrate")
    assert migrated.code == 0, migrated.err
    async with optgate_serve(env, ready=1) as served:
        yield served


async def table(url: str, name: str) -> list[tuple[Any, ...]]:
    """Every row of one table, read behind the store's back."""
    if url.startswith("postgresql"):
        conn = await asyncpg.connect(url)
        try:
            return [tuple(row) for row in await conn.fetch(f"SELECT * FROM {name}")]
        finally:
            await conn.close()
    with contextlib.closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as db:
        return db.execute(f"SELECT * FROM {name}").fetchall()


async def test_api_keys_added_used_within_their_scopes_listed_and_revoked(
    env: dict[str, str], store_url: str
) -> None:
    async with serving(env) as served:
        _, api = served.address("api")
        added = await optgate(env, "api-key", "add", "crm", "--scope", "read")
        assert added.code == 0, added.err
        [reader] = KEY.findall(added.out)
        assert added.out.count(reader) == 1  # shown once, only now
        assert "API key crm (read) added" in added.out
        writer_added = await optgate(env, "api-key", "add", "sync", "--scope", "read,write")
        [writer] = KEY.findall(writer_added.out)

        # the store keeps a salted digest: neither the key nor its secret is in any row
        parts = split_key(reader)
        assert parts is not None
        key_id, secret = parts
        rows = await table(store_url, "api_key")
        assert len(rows) == 2
        assert not [row for row in rows if secret in repr(row) or reader in repr(row)]
        assert [row for row in rows if key_id in row]
        audit = await table(store_url, "audit")
        assert not [row for row in audit if secret in repr(row)]

        body = {"addresses": ["api-cli@example.com"]}
        assert (await call(api, "GET", "/api/v1/suppressions", reader)).status == 200
        denied = await call(api, "POST", "/api/v1/suppressions", reader, body)
        assert denied.status == 403  # a read-only key writes nothing
        assert (await call(api, "POST", "/api/v1/suppressions", writer, body)).status == 200

        listed = await optgate(env, "api-key", "list")
        assert listed.code == 0
        lines = sorted(line.split("\t") for line in listed.out.splitlines())
        assert [(f[0], f[1], f[3]) for f in lines] == [
            ("crm", "read", "active"),
            ("sync", "read,write", "active"),
        ]
        assert "ogk_" not in listed.out  # never the keys themselves

        revoked = await optgate(env, "api-key", "revoke", "crm")
        assert (revoked.code, revoked.out) == (0, "API key crm revoked\n")
        assert (await call(api, "GET", "/api/v1/suppressions", reader)).status == 401
        assert (await call(api, "GET", "/api/v1/suppressions", writer)).status == 200
        again = await optgate(env, "api-key", "revoke", "crm")
        assert again.code != 0
        assert "no live API key named 'crm'" in again.err
        after = await optgate(env, "api-key", "list")
        states = {f[0]: f[3] for f in (line.split("\t") for line in after.out.splitlines())}
        assert states["crm"].startswith("revoked ")
        assert states["sync"] == "active"


async def failed_listing(env: dict[str, str]) -> Result:
    """`webhooks list --failed` once it lists a delivery (bounded)."""
    for _ in range(100):
        listing = await optgate(env, "webhooks", "list", "--failed")
        if listing.code == 1:
            return listing
        assert listing.out == "no failed deliveries\n"
        await asyncio.sleep(0.2)
    raise AssertionError("no delivery was given up on")


async def test_a_failed_delivery_is_listed_retried_and_signed_with_both_secrets(
    env: dict[str, str],
) -> None:
    receiver = Receiver(statuses=[500] * 10)
    await receiver.start()
    try:
        async with serving(env):
            events = ("--events", "suppression.added")
            added = await optgate(env, "webhooks", "add", receiver.url, *events, "--name", "crm")
            assert added.code == 0, added.err
            [old] = SECRET.findall(added.out)
            assert (await optgate(env, "suppress", "add", "hook-cli@example.com")).code == 0

            listing = await failed_listing(env)
            [line] = listing.out.splitlines()
            ident, hook, kind, uid, *rest = line.split("\t")
            assert (hook, kind) == ("crm", "suppression.added")
            assert rest[-1] == "last: HTTP 500"
            assert receiver.ids() == {uid}

            rotated = await optgate(env, "webhooks", "rotate", "crm")
            assert rotated.code == 0, rotated.err
            [new] = SECRET.findall(rotated.out)
            assert new != old
            assert "deliveries carry both signatures until" in rotated.out
            [shown] = (await optgate(env, "webhooks", "list")).out.splitlines()[:1]
            assert shown.startswith(f"crm\t{receiver.url}\tsuppression.added\t")
            assert "\trotating until " in shown

            nothing = await optgate(env, "webhooks", "retry")
            assert nothing.code != 0
            assert "or --all" in nothing.err
            tried = len(receiver.got)
            receiver.statuses.clear()
            retried = await optgate(env, "webhooks", "retry", ident)
            assert (retried.code, retried.out) == (0, "1 failed delivery due again\n")
            got = await receiver.wait(lambda got: len(got) > tried)
            for secret in (old, new):  # a receiver holding either secret accepts it
                Verifier(secret).verify(got[-1].body, got[-1].headers())
            assert got[-1].id == uid  # the same event id on every attempt

            for _ in range(100):
                listed = await optgate(env, "webhooks", "list")
                if "deliveries: 0 pending, 1 delivered, 0 dead" in listed.out:
                    break
                await asyncio.sleep(0.2)
            else:
                raise AssertionError(listed.out)
            done = await optgate(env, "webhooks", "list", "--failed")
            assert (done.code, done.out) == (0, "no failed deliveries\n")
            none_left = await optgate(env, "webhooks", "retry", "--all")
            assert none_left.out == "0 failed deliveries due again\n"
    finally:
        await receiver.stop()


WRITER, COMPLAINER, READER, BOUNCER, TYPED = (
    f"{who}@example.com" for who in ("writer", "complainer", "reader", "bouncer", "typed")
)


async def test_each_opt_out_channel_delivers_its_suppression_added_event(
    env: dict[str, str], next_hop: Sink
) -> None:
    receiver = Receiver()
    await receiver.start()
    try:
        async with serving(env) as served:
            _, smtp = served.address("smtp")
            _, web = served.address("web")
            for who in (WRITER, COMPLAINER, READER, BOUNCER):
                consented = await optgate(env, "consent", "add", who, "--purpose", "marketing")
                assert consented.code == 0, consented.err
            added = await optgate(
                env, "webhooks", "add", receiver.url, "--events", "suppression.added"
            )
            [secret] = SECRET.findall(added.out)
            sent = await send(smtp, SENDER, [COMPLAINER, READER, BOUNCER], message())
            assert sent.code == 250
            [complained], [read] = next_hop.to(COMPLAINER), next_hop.to(READER)
            [bounced] = next_hop.to(BOUNCER)

            # an authenticated mail to unsubscribe@, an ARF complaint about a copy
            written = authentic(person(sender=WRITER, to=UNSUBSCRIBE))
            assert (await send(smtp, WRITER, [UNSUBSCRIBE], written)).code == 250
            report = arf(complained.data, to=FBL)
            assert (await send(smtp, "fbl@isp.example", [FBL], report)).code == 250
            # a hard bounce to a copy's VERP sender
            verp = bounced.mail_from
            bounce = dsn(bounced.data, to=verp, recipient=BOUNCER, status="5.1.1", diagnostic="550")
            assert (await send(smtp, "", [verp], bounce)).code == 250
            # the unsubscribe page of a copy's footer link, then its button
            _, footer = links(read.data)
            page = re.sub(r"^https://[^/]+", f"http://127.0.0.1:{web}", footer)
            async with aiohttp.ClientSession() as http:
                async with http.get(page) as shown:
                    assert shown.status == 200
                async with http.post(page, data={"via": "page"}) as pressed:
                    assert pressed.status == 200
            # and the command line
            assert (await optgate(env, "suppress", "add", TYPED)).code == 0

            got = await receiver.wait(lambda got: len({g.id for g in got}) >= 5)
    finally:
        await receiver.stop()
    events: dict[str, tuple[str, str]] = {}
    for delivery in got:
        Verifier(secret).verify(delivery.body, delivery.headers())
        event = delivery.event
        assert event["type"] == "suppression.added"
        events[event["data"]["key"]] = (event["data"]["source"], event["data"]["reason"])
    assert events == {
        normalize(WRITER).sha256: ("mailbox", "unsubscribed"),
        normalize(COMPLAINER).sha256: ("complaint", "complained"),
        normalize(READER).sha256: ("web", "unsubscribed"),
        normalize(BOUNCER).sha256: ("bounce", "bounced"),
        normalize(TYPED).sha256: ("cli", "manual"),
    }
