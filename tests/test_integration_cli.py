"""`optgate api-key` and `optgate webhooks` as a user runs them: the console script in
subprocesses beside a running `optgate serve`, on both stores. A key added is printed
once and only its digest is kept; it works on the `[api] listen` of the server within its
scopes and stops at `api-key revoke`. A delivery that keeps failing is listed by
`webhooks list --failed`, sent again by `webhooks retry`, and signed with the old and the
new secret after `webhooks rotate`."""

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

import asyncpg
import pytest
from standardwebhooks.webhooks import Webhook as Verifier

from suppression.apikeys import split_key
from tests.support.api import call
from tests.support.backends import BACKENDS, postgres_database
from tests.support.receiver import Receiver
from tests.support.serving import OPTGATE, Served, optgate_serve
from tests.support.smtp import Sink, gateway_env

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
    """The OPTGATE_* variables of the server and of every command (webhooks give up at 2 s)."""
    return gateway_env(
        tmp_path, next_hop.port, 0, store_url=store_url, webhooks_give_up_after="2", **FAST
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
