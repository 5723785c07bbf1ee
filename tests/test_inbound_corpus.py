"""Real bounces, complaints and auto-replies from the shared corpus, through `optgate serve`.

Every message goes over SMTP from the null sender to the bounce (or feedback-loop)
address, as a remote MTA would send it. The suppression list the socket path builds
must be exactly what classify() + apply() build when called directly, and the
labelled anchors must hold: auto-replies and non-bounces suppress nobody, and the
bounced addresses of the labelled user-unknown bounces end up suppressed.
"""

from __future__ import annotations

import asyncio
import contextlib
import smtplib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from gateway.config import Config
from gateway.inbound.apply import apply
from gateway.inbound.classify import classify
from gateway.inbound.model import Kind
from gateway.keys import load_keys
from gateway.runtime.service import running
from gateway.runtime.stores import open_configured
from gateway.tokens import TokenSigner
from suppression.address import normalize
from suppression.errors import InvalidAddress
from suppression.model import Reason, Send, now
from suppression.opening import open_store
from suppression.store import Store
from tests.support import corpus
from tests.support.keys import AUDIT_KEY
from tests.support.smtp import Sink, gateway_config

pytestmark = corpus.needed
DOMAIN = "in.example.com"
BOUNCE, FBL = f"bounce@{DOMAIN}", f"fbl@{DOMAIN}"


@dataclass(frozen=True)
class Sample:
    name: str
    raw: bytes  # CRLF line ends, as SMTP carries it
    quiet: bool  # labelled an auto-reply or not a bounce: must suppress nobody
    bounced: tuple[str, ...] = ()  # labelled user-unknown: these addresses must be suppressed

    @property
    def rcpt(self) -> str:
        return FBL if b"feedback-report" in self.raw else BOUNCE


def _crlf(path: Path) -> bytes:
    """The message as an MTA sends it: CRLF line ends, lines over 998 octets broken with
    CRLF SPACE (Postfix's smtp_line_length_limit)."""
    lines = path.read_bytes().replace(b"\r\n", b"\n").split(b"\n")
    return b"\r\n".join(
        b"\r\n ".join(line[i : i + 998] for i in range(0, len(line), 998)) for line in lines
    )


def samples() -> Iterator[Sample]:
    sisimai = corpus.path(corpus.SISIMAI)
    for name, label in corpus.expected(corpus.SISIMAI)["files"].items():
        expected = label.get("expected")
        if name.startswith("maildir-dos") or expected is None:
            continue  # the CRLF twins repeat maildir-bsd
        quiet = expected == [] or all(e["reason"] == "vacation" for e in expected)
        yield Sample(name, _crlf(sisimai / name), quiet)
    parser = corpus.path(corpus.BOUNCEPARSER)
    for name, label in corpus.expected(corpus.BOUNCEPARSER).items():
        if not label["tests"]:
            continue
        test = label["tests"][0]
        unknown = test.get("std_reason") == "user_unknown"
        bounced = tuple(test.get("addresses") or ()) if unknown else ()
        yield Sample(name, _crlf(parser / "corpus" / name), False, bounced)


SAMPLES = list(samples()) if corpus.ROOT is not None else []


async def suppressed(store: Store) -> set[tuple[str, str, Reason]]:
    return {(s.key, s.scope, s.reason) async for s in store.iter_suppressions(None)}


async def mailed_everyone(url: str) -> None:
    """A send ledger holding every recipient the samples are about: a report without a
    token counts only for an address optgate has mailed."""
    found: set[str] = set()
    for sample in SAMPLES:
        for finding in classify(sample.raw, mail_from="", rcpt_to=sample.rcpt).findings:
            with contextlib.suppress(InvalidAddress):
                found.add(normalize(finding.recipient or "").sha256)
    store = await open_store(url, audit_key=AUDIT_KEY)
    try:
        await store.record_sends([Send("m", sha, "news", "marketing", now()) for sha in found])
    finally:
        await store.close()


def config_in(directory: Path, next_hop: Sink) -> Config:
    directory.mkdir()
    return gateway_config(directory, next_hop.port, 0, inbound_domains=DOMAIN)


async def test_corpus_through_the_socket_matches_the_direct_path_and_the_labels(
    tmp_path: Path, next_hop: Sink
) -> None:
    live_config = config_in(tmp_path / "live", next_hop)
    direct_config = config_in(tmp_path / "direct", next_hop)
    for config in (live_config, direct_config):
        await mailed_everyone(config.store.url)
    direct = await open_configured(direct_config, create=True)
    signer = TokenSigner(load_keys(Path(direct_config.unsubscribe.key_file), create=True))
    quiet_broken: list[str] = []
    found = total = 0
    async with running(live_config, ("smtp",)) as gate:
        live = await open_configured(live_config, create=True)
        client = await asyncio.to_thread(smtplib.SMTP, "127.0.0.1", gate.smtp_port, timeout=30)
        try:
            for sample in SAMPLES:
                before = await suppressed(live)
                refused = await asyncio.to_thread(client.sendmail, "", [sample.rcpt], sample.raw)
                assert refused == {}, sample.name
                after = await suppressed(live)
                if sample.quiet and after != before:
                    quiet_broken.append(sample.name)
                if sample.bounced:
                    total += 1
                    keys = {(normalize(a).sha256, "global", Reason.BOUNCED) for a in sample.bounced}
                    found += keys <= after
                classification = classify(sample.raw, mail_from="", rcpt_to=sample.rcpt)
                await apply(classification, store=direct, config=direct_config, signer=signer)
        finally:
            await asyncio.to_thread(client.quit)
        through_socket = await suppressed(live)
        await live.close()
    by_library = await suppressed(direct)
    await direct.close()
    assert len(SAMPLES) > 700
    assert through_socket == by_library
    assert len(through_socket) > 150  # many corpus bounces name the same few addresses
    assert quiet_broken == []
    assert total > 20
    assert found / total >= 0.95, f"{found} of {total} user-unknown bounces suppressed"
    # nothing inbound is ever relayed: the only mail is the confirmation link of a held
    # opt-out (an ARF opt-out report naming a mailed address), to that address
    links = [m for m in next_hop.messages if m.mail_from == live_config.unsubscribe.confirm_from]
    assert links == next_hop.messages
    opted_out = {
        normalize(f.recipient).normalized
        for sample in SAMPLES
        for f in classify(sample.raw, mail_from="", rcpt_to=sample.rcpt).findings
        if f.kind is Kind.UNSUBSCRIBE and f.recipient
    }
    assert {m.rcpt_tos[0] for m in links} <= opted_out
