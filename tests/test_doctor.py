"""optgate doctor: a healthy setup passes; each broken thing, one at a time, is named.

Everything is local: a key from keygen, a store in tmp_path, a recording sink
as the next hop, and an authoritative DNS server on a loopback port.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.cli import main as cli
from gateway.config import Config, load
from gateway.doctor import Check, Status, failed, run_checks
from gateway.doctor import dns as doctor_dns
from gateway.keygen import NewKey, generate, keygen, private_pem, record_value, zone_strings
from gateway.keys import load_keys
from gateway.runtime.service import running
from gateway.smtp.server import advertised_size
from suppression.opening import open_store
from suppression.sql.tables import MIGRATIONS
from tests.support.backends import postgres_database
from tests.support.dns import DnsServer, dns_server
from tests.support.keys import AUDIT_KEY
from tests.support.smtp import sink
from tests.support.tiers import needs
from tests.support.tls import PrivateCA

pytestmark = pytest.mark.sockets

DOMAIN = "shop.test"
SPF = ("shop.test", "TXT")
DMARC = ("_dmarc.shop.test", "TXT")
MX = ("shop.test", "MX")
S1 = ("s1._domainkey.shop.test", "TXT")
HEALTHY = [
    "dkim key shop.test:s1",
    "dkim key shop.test:s2",
    "token keys",
    "audit key",
    "smtp listen",
    "web listen",
    "store",
    "next hop",
    "base_url",
    "inbound",
    "spf shop.test",
    "dkim record s1._domainkey.shop.test",
    "dkim record s2._domainkey.shop.test",
    "dmarc shop.test",
    "mx shop.test",
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def rdata(key: NewKey) -> str:
    return key.record.split(" IN TXT ", 1)[1]


@dataclass
class Setup:
    """A deployment that passes every check; tests break one thing at a time."""

    tmp: Path
    dns: DnsServer
    s1: NewKey  # the RSA key of selector s1
    settings: dict[str, dict[str, str | list[str]]]
    held: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def write(self) -> Path:
        """The settings as a TOML file (a JSON string or list of strings is valid TOML)."""
        path = self.tmp / "optgate.toml"
        path.write_text(
            "".join(
                f"[{section}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in table.items())
                for section, table in self.settings.items()
            )
        )
        return path

    def config(self) -> Config:
        return load(str(self.write()), {})

    async def checks(self) -> list[Check]:
        return await run_checks(self.config(), resolver=self.dns.resolver())


@pytest.fixture
@needs("sockets")
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    rsa_key = keygen(DOMAIN, "s1", "rsa", out=tmp_path / "s1.pem")
    ed_key = keygen(DOMAIN, "s2", "ed25519", out=tmp_path / "s2.pem")
    load_keys(tmp_path / "optgate.key", create=True)
    store_url = f"sqlite:///{tmp_path / 'optgate.db'}"
    audit_key = tmp_path / "optgate-audit.key"
    audit_key.write_text(AUDIT_KEY.hex())
    audit_key.chmod(0o600)
    await (await open_store(store_url, audit_key=AUDIT_KEY)).close()
    records = {
        SPF: ['"v=spf1 ip4:192.0.2.10 include:_spf.mailer.test -all"', '"site-verification=x"'],
        MX: ["10 mx1.shop.test.", "20 mx2.shop.test."],
        DMARC: ['"v=DMARC1; p=reject; rua=mailto:dmarc@shop.test"'],
        S1: [rdata(rsa_key)],
        ("s2._domainkey.shop.test", "TXT"): [rdata(ed_key)],
    }
    async with dns_server(records) as dns, sink() as hop:
        settings: dict[str, dict[str, str | list[str]]] = {
            "smtp": {"listen": f"127.0.0.1:{free_port()}"},
            "web": {"listen": f"127.0.0.1:{free_port()}"},
            "relay": {"next_hop": f"127.0.0.1:{hop.port}"},
            "store": {"url": store_url, "audit_key_file": str(audit_key)},
            "unsubscribe": {
                "key_file": str(tmp_path / "optgate.key"),
                "base_url": "https://unsub.shop.test",
                "mailto": "unsubscribe@shop.test",
            },
            "dkim": {"keys": [rsa_key.entry, ed_key.entry]},
            "inbound": {"domains": ["shop.test"]},
        }
        with contextlib.ExitStack() as held:
            yield Setup(tmp_path, dns, rsa_key, settings, held)


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


def report(checks: list[Check]) -> str:
    return "\n".join(c.line() for c in checks)


async def test_a_healthy_setup_passes_every_check(setup: Setup) -> None:
    checks = await setup.checks()
    assert [c.name for c in checks] == HEALTHY
    assert all(c.status is Status.PASS for c in checks), report(checks)
    assert not failed(checks)
    found = by_name(checks)
    assert found["mx shop.test"].detail == "10 mx1.shop.test., 20 mx2.shop.test."
    assert found["dmarc shop.test"].detail == "_dmarc.shop.test p=reject"
    assert "answers EHLO (sink.test)" in found["next hop"].detail


# --- one broken thing at a time ---------------------------------------------------------------


def wrong_dkim_key(s: Setup) -> None:
    s.dns.records[S1] = [zone_strings(record_value(generate("rsa")))]


def no_spf(s: Setup) -> None:
    s.dns.records[SPF] = ['"site-verification=x"']


def spf_plus_all(s: Setup) -> None:
    s.dns.records[SPF] = ['"v=spf1 ip4:192.0.2.10 +all"']


def dmarc_none(s: Setup) -> None:
    s.dns.records[DMARC] = ['"v=DMARC1; p=none"']


def no_dmarc(s: Setup) -> None:
    del s.dns.records[DMARC]


def no_mx(s: Setup) -> None:
    del s.dns.records[MX]


def base_url(url: str) -> Callable[[Setup], None]:
    def change(s: Setup) -> None:
        s.settings["unsubscribe"]["base_url"] = url

    return change


def no_inbound(s: Setup) -> None:
    del s.settings["inbound"]


def mailto_elsewhere(s: Setup) -> None:
    s.settings["unsubscribe"]["mailto"] = "optout@shop.test"


def mailto_too_long(s: Setup) -> None:
    s.settings["unsubscribe"]["mailto"] = "please-unsubscribe-me-now@shop.test"


def inbound_bad_local(s: Setup) -> None:
    s.settings["inbound"]["bounce_local"] = "bounce+x"


def unreadable_dkim_key(s: Setup) -> None:
    s.s1.path.unlink()
    s.s1.path.mkdir()  # unreadable even for root, which chmod 000 is not


def weak_dkim_key(s: Setup) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - on purpose
    s.s1.path.write_bytes(private_pem(weak))


def dkim_key_readable_by_others(s: Setup) -> None:
    s.s1.path.chmod(0o644)


def unreadable_token_keys(s: Setup) -> None:
    path = s.tmp / "optgate.key"
    path.unlink()
    path.mkdir()


def no_token_keys_yet(s: Setup) -> None:
    (s.tmp / "optgate.key").unlink()


def no_dkim_keys(s: Setup) -> None:
    s.settings["dkim"]["keys"] = []


def next_hop_down(s: Setup) -> None:
    s.settings["relay"]["next_hop"] = f"127.0.0.1:{free_port()}"


def store_schema(version: int) -> Callable[[Setup], None]:
    def change(s: Setup) -> None:
        with contextlib.closing(sqlite3.connect(s.tmp / "optgate.db")) as db:
            db.execute(f"PRAGMA user_version = {version}")

    return change


def no_store_yet(s: Setup) -> None:
    s.settings["store"]["url"] = f"sqlite:///{s.tmp / 'new.db'}"


def port_taken(section: str) -> Callable[[Setup], None]:
    """The listen port of a section taken by another process: the sink (an SMTP server)."""

    def change(s: Setup) -> None:
        s.settings[section]["listen"] = s.settings["relay"]["next_hop"]

    return change


def port_taken_by_a_silent_process(s: Setup) -> None:
    other = s.held.enter_context(socket.socket())
    other.bind(("127.0.0.1", 0))
    other.listen()
    s.settings["web"]["listen"] = f"127.0.0.1:{other.getsockname()[1]}"


BROKEN = [
    (wrong_dkim_key, "FAIL", "dkim record s1._domainkey.shop.test", "is not the public half"),
    (no_spf, "FAIL", "spf shop.test", "no SPF record"),
    (spf_plus_all, "WARN", "spf shop.test", "+all lets any server send"),
    (dmarc_none, "WARN", "dmarc shop.test", "p=none only monitors"),
    (no_dmarc, "FAIL", "dmarc shop.test", "no DMARC record"),
    (no_mx, "FAIL", "mx shop.test", "no MX record: mail to unsubscribe@shop.test"),
    (base_url("http://unsub.shop.test"), "FAIL", "base_url", "needs https"),
    (base_url("http://127.0.0.1:8080"), "WARN", "base_url", "http on a loopback host"),
    (no_inbound, "WARN", "inbound", "run optgate ingest"),
    (mailto_elsewhere, "WARN", "inbound", "mailto unsubscribes do not reach optgate"),
    (mailto_too_long, "FAIL", "inbound", "exceeds 64 characters (RFC 5321)"),
    (inbound_bad_local, "FAIL", "inbound", "[inbound] bounce_local"),
    (unreadable_dkim_key, "FAIL", "dkim key shop.test:s1", "cannot read"),
    (weak_dkim_key, "FAIL", "dkim key shop.test:s1", "1024 bits"),
    (dkim_key_readable_by_others, "WARN", "dkim key shop.test:s1", "chmod 600"),
    (unreadable_token_keys, "FAIL", "token keys", "Is a directory"),
    (no_dkim_keys, "WARN", "dkim", "make a key with optgate dkim keygen"),
    (next_hop_down, "FAIL", "next hop", "does not answer"),
    (store_schema(len(MIGRATIONS) + 1), "FAIL", "store", "newer than this optgate"),
    (store_schema(1), "WARN", "store", "run optgate store migrate"),
    (port_taken("smtp"), "FAIL", "smtp listen", "in use by another process"),
    (port_taken("web"), "FAIL", "web listen", "in use by another process"),
    (port_taken_by_a_silent_process, "FAIL", "web listen", "in use by another process"),
]


@pytest.mark.parametrize(
    ("breakage", "status", "name", "detail"),
    BROKEN,
    ids=[f"{b[0].__qualname__.split('.')[0]}-{b[2]}-{b[1]}" for b in BROKEN],
)
async def test_one_broken_thing_is_named(
    setup: Setup, breakage: Callable[[Setup], None], status: str, name: str, detail: str
) -> None:
    breakage(setup)
    checks = await setup.checks()
    found = by_name(checks)
    assert found[name].status == status, report(checks)
    assert detail in found[name].detail
    others = [c for c in checks if c.name != name]
    assert all(c.status is Status.PASS for c in others), report(checks)
    assert failed(checks) == (status == "FAIL")


@pytest.mark.postgres
async def test_a_new_postgresql_database_without_a_key_yet_is_not_a_failure(
    setup: Setup,
) -> None:
    (setup.tmp / "optgate-audit.key").unlink()
    async with postgres_database() as url:
        setup.settings["store"]["url"] = url
        checks = by_name(await setup.checks())
    assert checks["store"].status is Status.WARN, checks["store"]
    assert "store migrate" in checks["store"].detail


async def test_a_store_without_its_audit_key_fails(setup: Setup) -> None:
    (setup.tmp / "optgate-audit.key").unlink()
    checks = by_name(await setup.checks())
    assert checks["store"].status is Status.FAIL
    assert "restore the key from a backup" in checks["store"].detail
    assert not (setup.tmp / "optgate-audit.key").exists()  # the doctor creates nothing


async def test_missing_files_made_on_first_start_pass(setup: Setup) -> None:
    no_token_keys_yet(setup)
    no_store_yet(setup)
    checks = await setup.checks()
    assert all(c.status is Status.PASS for c in checks), report(checks)
    assert "created (0600) on first start" in by_name(checks)["token keys"].detail
    assert not (setup.tmp / "optgate.key").exists()
    assert not (setup.tmp / "new.db").exists()  # the doctor creates nothing


async def test_optgate_already_running_is_a_warning(setup: Setup) -> None:
    config = setup.config()
    async with running(config):
        checks = await setup.checks()
        setup.settings["relay"]["next_hop"] = setup.settings["smtp"]["listen"]
        looped = by_name(await setup.checks())["next hop"]
    found = by_name(checks)
    for name in ("smtp listen", "web listen"):
        assert found[name].status is Status.WARN, report(checks)
        assert "taken by optgate itself" in found[name].detail
    assert not failed(checks)
    assert looped.status is Status.FAIL
    assert looped.detail.endswith("is optgate itself: mail would loop")


async def test_dmarc_of_a_subdomain_comes_from_the_organizational_domain(setup: Setup) -> None:
    setup.settings["unsubscribe"]["mailto"] = "unsubscribe@news.shop.test"
    setup.settings["inbound"]["domains"] = ["news.shop.test"]
    setup.dns.records[("news.shop.test", "TXT")] = ['"v=spf1 include:shop.test -all"']
    setup.dns.records[("news.shop.test", "MX")] = ["10 mx1.shop.test."]
    setup.dns.records[DMARC] = ['"v=DMARC1; p=reject; sp=quarantine"']
    checks = await setup.checks()
    assert all(c.status is Status.PASS for c in checks), report(checks)
    assert by_name(checks)["dmarc news.shop.test"].detail == "_dmarc.shop.test sp=quarantine"


async def test_the_organizational_domain_comes_from_the_public_suffix_list(
    setup: Setup,
) -> None:
    """news.shop.co.uk's organisational domain is shop.co.uk, not co.uk (the last two labels)."""
    setup.settings["unsubscribe"]["mailto"] = "unsubscribe@news.shop.co.uk"
    setup.settings["inbound"]["domains"] = ["news.shop.co.uk"]
    setup.dns.records[("news.shop.co.uk", "TXT")] = ['"v=spf1 include:shop.test -all"']
    setup.dns.records[("news.shop.co.uk", "MX")] = ["10 mx1.shop.test."]
    setup.dns.records[("_dmarc.shop.co.uk", "TXT")] = ['"v=DMARC1; p=reject"']
    setup.dns.records[("_dmarc.co.uk", "TXT")] = ['"v=DMARC1; p=none"']
    checks = by_name(await setup.checks())
    assert checks["dmarc news.shop.co.uk"].detail == "_dmarc.shop.co.uk p=reject"


async def test_a_silent_resolver_fails_the_dns_checks(setup: Setup) -> None:
    silent = DnsServer(port=free_port()).resolver()
    silent.timeout = silent.lifetime = 0.3
    checks = await run_checks(setup.config(), resolver=silent)
    dns_checks = [c for c in checks if c.name.split()[0] in ("spf", "dmarc", "mx")]
    assert dns_checks
    assert all(c.status is Status.FAIL and "cannot look up" in c.detail for c in dns_checks)


# --- through the command line -----------------------------------------------------------------


@pytest.mark.parametrize(("breakage", "code"), [(None, 0), (next_hop_down, 1)])
async def test_cli_prints_one_line_per_check_and_exits_1_on_a_fail(
    setup: Setup,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    breakage: Callable[[Setup], None] | None,
    code: int,
) -> None:
    for name in [n for n in os.environ if n.startswith("OPTGATE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setattr(doctor_dns, "system_resolver", setup.dns.resolver)
    if breakage:
        breakage(setup)
    path = setup.write()
    # the command runs its own event loop: in a thread, while this loop serves DNS and the sink
    assert await asyncio.to_thread(cli.main, ["doctor", "--config", str(path)]) == code
    lines = capsys.readouterr().out.splitlines()
    assert [line[len("PASS  ") :].split(": ", 1)[0] for line in lines] == HEALTHY
    fails = [line for line in lines if line.startswith("FAIL  ")]
    assert [line.startswith("PASS  ") for line in lines].count(False) == len(fails) == code
    if code:
        assert fails[0].startswith("FAIL  next hop: 127.0.0.1:")


async def test_a_next_hop_whose_size_is_smaller_than_ours_is_reported(setup: Setup) -> None:
    async with sink(size=10_240_000) as postfix_like:  # Postfix's message_size_limit
        setup.settings["relay"]["next_hop"] = f"127.0.0.1:{postfix_like.port}"
        found = by_name(await setup.checks())["next hop"]
    assert found.status is Status.WARN
    assert "takes at most 10240000 bytes (SIZE)" in found.detail
    assert "max_message_size is 26214400" in found.detail
    assert f"set [smtp] max_message_size = {advertised_size(26214400, 10240000)}" in found.detail


async def test_a_next_hop_certificate_that_does_not_verify_fails(setup: Setup) -> None:
    ca = PrivateCA.make(setup.tmp / "ca")
    async with sink(tls=ca.server_context("127.0.0.1")) as secure:
        setup.settings["relay"] = {"next_hop": f"127.0.0.1:{secure.port}", "tls_verify": "always"}
        unknown = by_name(await setup.checks())["next hop"]
        setup.settings["relay"]["tls_ca_file"] = str(ca.cert_file)
        known = by_name(await setup.checks())["next hop"]
    assert unknown.status is Status.FAIL
    assert "certificate does not verify" in unknown.detail
    assert known.status is Status.PASS, known.detail


@contextlib.asynccontextmanager
async def limited_hop(sessions: int) -> AsyncIterator[int]:
    """A next hop that serves ``sessions`` connections at once and answers 421 beyond."""
    open_now = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal open_now
        open_now += 1
        try:
            if open_now > sessions:
                writer.write(b"421 4.7.0 hop.test too many connections\r\n")
                return
            writer.write(b"220 hop.test ESMTP\r\n")
            while line := await reader.readline():
                if line.upper().startswith(b"QUIT"):
                    writer.write(b"221 bye\r\n")
                    return
                writer.write(b"250 hop.test\r\n")
        finally:
            open_now -= 1
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def test_a_next_hop_serving_fewer_sessions_than_the_pools_hold_fails(setup: Setup) -> None:
    async with limited_hop(3) as port:
        setup.settings["relay"]["next_hop"] = f"127.0.0.1:{port}"
        checks = await run_checks(setup.config(), resolver=setup.dns.resolver(), workers=2)
    found = by_name(checks)["next hop"]
    assert found.status is Status.FAIL, report(checks)
    assert "served 3 of 20 sessions at once (2 worker(s) x pool_size 10)" in found.detail
    assert "maxproc" in found.detail


async def test_the_next_hop_check_opens_the_workers_share_of_next_hop_sessions(
    setup: Setup,
) -> None:
    async with limited_hop(6) as port:
        setup.settings["relay"]["next_hop"] = f"127.0.0.1:{port}"
        setup.settings["relay"]["next_hop_sessions"] = 6  # type: ignore[assignment]
        checks = await run_checks(setup.config(), resolver=setup.dns.resolver(), workers=4)
    found = by_name(checks)["next hop"]
    assert found.status is Status.PASS, report(checks)
    assert "serves 4 sessions at once (4 worker(s) x pool_size 1)" in found.detail


async def test_pools_set_larger_than_next_hop_sessions_are_a_warning(setup: Setup) -> None:
    setup.settings["relay"]["pool_size"] = 10  # type: ignore[assignment]
    checks = await run_checks(setup.config(), resolver=setup.dns.resolver(), workers=3)
    found = by_name(checks)["next hop"]
    assert found.status is Status.WARN, report(checks)
    assert "= 30 connections, more than [relay] next_hop_sessions = 20" in found.detail
