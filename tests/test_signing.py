"""DKIM signing: byte-identical to dkimpy, verified by dkimpy and OpenDKIM.

The corpus tests rewrite each message of the shared corpus as the relay does,
sign it, and verify it. OpenDKIM's ``opendkim-testmsg`` looks its keys up in
DNS only (libopendkim's resolver, /etc/resolv.conf, port 53); it runs here in
a private mount and network namespace (``unshare``) whose resolv.conf names a
small DNS server on that namespace's loopback.
"""

from __future__ import annotations

import base64
import concurrent.futures
import fcntl
import functools
import json
import os
import random
import re
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import dkim
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from gateway.config import Dkim
from gateway.outbound.rewrite import prepare
from gateway.outbound.signing import Algorithm, DkimKey, Signer, parse_key_entry, sender_domain
from suppression.errors import ConfigError
from tests.support import corpus
from tests.test_rewrite import FEEDBACK_ID, FOOTER, LINKS, LIST_ID

pytestmark = pytest.mark.pure

CANONS = ("relaxed/relaxed", "simple/simple")
FROZEN = 1_700_000_000
STANDARD = (  # the list, written out again here rather than imported
    "from",
    "to",
    "subject",
    "date",
    "message-id",
    "mime-version",
    "content-type",
    "list-unsubscribe",
    "list-unsubscribe-post",
)
OVERSIGNED = (b"from", b"list-unsubscribe", b"list-unsubscribe-post")
DATA = corpus.path(corpus.DKIMPY) / "data"
VECTORS = corpus.path(corpus.STALWART_AUTH) / "dkim"  # DNS records, a blank line, a message
# every message, and the vectors: signed mail, List-Unsubscribe
MESSAGES = corpus.messages() + corpus.files(corpus.STALWART_AUTH, "dkim/*.txt")
VECTOR_CLOCK = 1667843664  # 005.txt's signature expires soon after
SAMPLES = (  # byte-identity: short and long, LF and CRLF, with and without earlier signatures
    "dkimpy/data/rfc6376.msg",
    "mimekit/dkim/gmail.msg",
    "mimekit/messages/japanese.txt",
    "spamscope-mail-parser/mails/mail_test_3.eml",
    "sisimai-set-of-emails/maildir-dos/lhost-powermta-01.eml",
)
NO_FROM_DOMAIN = b"From: corpus@corpus.example\r\n"
ADDED_DATE = b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
OPENDKIM = "opendkim-testmsg"
OPENDKIM_MAX_FIELD = 65536  # libopendkim hashes no more of one header field


# --- keys and verification -----------------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    """A signing key and the TXT record of its public half."""

    key: DkimKey
    record: bytes


def pem(private: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@functools.cache
def generated_rsa(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


@functools.cache
def generated_ed25519() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def rsa_pair(domain: str = "example.com", selector: str = "rsa") -> Pair:
    private = generated_rsa()
    der = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(der)
    return Pair(DkimKey(domain, selector, "rsa", pem(private)), record)


def ed25519_pair(domain: str = "example.com", selector: str = "ed") -> Pair:
    private = generated_ed25519()
    raw = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    record = b"v=DKIM1; k=ed25519; p=" + base64.b64encode(raw)
    return Pair(DkimKey(domain, selector, "ed25519", pem(private)), record)


@functools.cache
def vector_file(name: str) -> bytes:
    return (DATA / name).read_bytes()


def corpus_rsa(domain: str) -> Pair:
    """dkimpy's public RSA-2048 test key (PKCS#1 PEM) for any domain, selector rsa."""
    key = DkimKey(domain, "rsa", "rsa", vector_file("2048_testkey.key"))
    return Pair(key, vector_file("2048_testkey_wo_markers.pub.txt").strip())


def corpus_ed25519(domain: str) -> Pair:
    """dkimpy's public Ed25519 test key (base64 seed) for any domain, selector ed25519."""
    key = DkimKey(domain, "ed25519", "ed25519", vector_file("ed25519test.key"))
    return Pair(key, vector_file("ed25519test.dns").strip())


DnsFunc = Callable[..., bytes | None]


def dns_for(*pairs: Pair) -> DnsFunc:
    """A dkimpy dnsfunc answering for the pairs' selectors, whatever the domain."""
    records = {pair.key.selector.encode(): pair.record for pair in pairs}

    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        return records.get(name.split(b".")[0])

    return lookup


def verifies(message: bytes, dnsfunc: DnsFunc, index: int = 0) -> bool:
    """dkimpy's verdict on the index-th DKIM-Signature from the top."""
    return bool(dkim.DKIM(message).verify(idx=index, dnsfunc=dnsfunc))


def signatures(message: bytes, first: int | None = None) -> list[dict[bytes, bytes]]:
    """The tags of the message's DKIM-Signature fields (of the first ones only, if given)."""
    headers, _ = dkim.rfc822_parse(message)
    values = [value for name, value in headers if name.lower() == b"dkim-signature"]
    return [dkim.util.parse_tag_value(value) for value in values[:first]]


def signature_count(message: bytes) -> int:
    headers, _ = dkim.rfc822_parse(message)
    return sum(name.lower() == b"dkim-signature" for name, _ in headers)


def signed_list(signature: dict[bytes, bytes]) -> list[bytes]:
    return [name.strip() for name in signature[b"h"].split(b":")]


def wire(message: bytes) -> bytes:
    """What an SMTP client sends: CRLF line ends, CRLF at the end."""
    crlf = re.sub(rb"\r\n|\n|\r", b"\r\n", message)
    return crlf if crlf.endswith(b"\r\n") else crlf + b"\r\n"


def expected_h(message: bytes) -> list[bytes]:
    """h= as the issue asks: the standard fields present in order, then the over-signed."""
    headers, _ = dkim.rfc822_parse(wire(message))
    present = [name.lower() for name, _ in headers if name.lower().decode() in STANDARD]
    return present + list(OVERSIGNED)


def vector(path: Path) -> tuple[dict[bytes, bytes], bytes]:
    """A stalwart-mail-auth DKIM vector: its DNS records ("NAME VALUE" lines), its message."""
    records, _, message = path.read_bytes().partition(b"\n\n")
    lines = (line.partition(b" ") for line in records.splitlines())
    return {name.rstrip(b".").lower(): value for name, _, value in lines}, message


def source(path: Path) -> bytes:
    return vector(path)[1] if path.parent == VECTORS else path.read_bytes()


def rewritten(path: Path) -> bytes:
    prepared = prepare(source(path), footer=FOOTER, list_id=LIST_ID, feedback_id=FEEDBACK_ID)
    return prepared.render(LINKS)


def signable(path: Path) -> tuple[bytes, str]:
    """A corpus message after the rewrite; one without a From domain gets a From field."""
    message = rewritten(path)
    domain = sender_domain(message)
    if domain is None:
        unrelated = Signer([rsa_pair("corpus.example").key])
        assert unrelated.sign(message) is message  # nothing to choose a key by: unchanged
        head, *rest = re.split(rb"(\r?\n\r?\n)", message, maxsplit=1)
        head = re.sub(rb"(?im)^from:", b"X-Was-From:", head)  # "From: <>" and the like
        return NO_FROM_DOMAIN + head + b"".join(rest), "corpus.example"
    return message, domain


def parses(message: bytes) -> bool:
    try:
        dkim.rfc822_parse(message)
    except dkim.MessageFormatError:
        return False
    return True


MESSAGE = b"""\
From: Example News <news@example.com>
To: reader@example.net
Subject: This week
Date: Mon, 01 Jan 2024 10:00:00 +0000
Message-ID: <1@example.com>
MIME-Version: 1.0
Content-Type: text/plain; charset=utf-8
X-Mailer: campaign-tool
List-Unsubscribe: <https://optgate.example.com/u/TOKEN>, <mailto:unsubscribe+TOKEN@example.com>
List-Unsubscribe-Post: List-Unsubscribe=One-Click

Hello,   reader.\t
Unsubscribe: https://optgate.example.com/u/TOKEN

"""


def with_header(message: bytes, field: bytes, *, bottom: bool = False) -> bytes:
    """The message with a header field added at the top (after our signatures) or bottom."""
    head, _, body = message.partition(b"\r\n\r\n")
    if bottom:
        return head + b"\r\n" + field + b"\r\n\r\n" + body
    lines = head.split(b"\r\n")
    at = next(i for i, line in enumerate(lines) if line.startswith(b"From:"))
    return b"\r\n".join([*lines[:at], field, *lines[at:]]) + b"\r\n\r\n" + body


# --- byte identity with dkimpy ---------------------------------------------------------------


def dkimpy_sign(message: bytes, pair: Pair, canon: str) -> bytes:
    algorithm = b"rsa-sha256" if pair.key.algorithm == "rsa" else b"ed25519-sha256"
    private = pair.key.private_key
    if pair.key.algorithm == "ed25519":  # dkimpy reads Ed25519 keys as a base64 seed only
        loaded = serialization.load_pem_private_key(private, None)
        assert isinstance(loaded, ed25519.Ed25519PrivateKey)
        seed = loaded.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        private = base64.b64encode(seed)
    return bytes(
        dkim.sign(
            wire(message),
            pair.key.selector.encode(),
            pair.key.domain.encode(),
            private,
            canonicalize=tuple(canon.encode().split(b"/")),
            signature_algorithm=algorithm,
            include_headers=expected_h(message),
        )
    )


@pytest.fixture
def frozen_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """t= is the current time in both signers: the same second for both."""
    monkeypatch.setattr(time, "time", lambda: float(FROZEN))


@pytest.mark.usefixtures("frozen_time")
@pytest.mark.parametrize("canon", CANONS)
@pytest.mark.parametrize("name", SAMPLES)
def test_rsa_2048_signature_is_byte_identical_to_dkimpy(name: str, canon: str) -> None:
    message = rewritten(corpus.require() / name)
    domain = sender_domain(message)
    assert domain is not None
    pair = corpus_rsa(domain)
    expected = dkimpy_sign(message, pair, canon) + wire(message)
    assert Signer([pair.key], canonicalization=canon).sign(message) == expected
    assert signatures(expected)[0][b"t"] == str(FROZEN).encode()


@pytest.mark.usefixtures("frozen_time")
@pytest.mark.parametrize("canon", CANONS)
def test_ed25519_and_dual_signatures_are_byte_identical_to_dkimpy(canon: str) -> None:
    message = MESSAGE.replace(b"\n", b"\r\n")
    rsa_key, ed_key = rsa_pair(), ed25519_pair()
    expected_rsa, expected_ed = (dkimpy_sign(message, p, canon) for p in (rsa_key, ed_key))
    assert Signer([ed_key.key], canonicalization=canon).sign(message) == expected_ed + message
    dual = Signer([rsa_key.key, ed_key.key], canonicalization=canon).sign(message)
    assert dual == expected_rsa + expected_ed + message


@pytest.mark.usefixtures("frozen_time")
@pytest.mark.parametrize("canon", ["simple/relaxed", "relaxed/simple"])
def test_odd_whitespace_bodies_are_byte_identical_to_dkimpy(canon: str) -> None:
    rng = random.Random(6376)
    pieces = [b" ", b"  ", b"\t", b" \t ", b"\r\n", b"\r\n\r\n", b"x", b"y z", b"\r"]
    pair = ed25519_pair()
    signer = Signer([pair.key], canonicalization=canon)
    for _ in range(300):
        body = b"".join(rng.choice(pieces) for _ in range(rng.randrange(12)))
        message = MESSAGE.replace(b"\n", b"\r\n").split(b"\r\n\r\n")[0] + b"\r\n\r\n" + body
        assert signer.sign(message) == dkimpy_sign(message, pair, canon) + wire(message), body


# --- the whole corpus, verified by dkimpy ----------------------------------------------------


def test_corpus_is_there() -> None:
    corpus.require()
    assert (DATA / "2048_testkey.key").is_file()


@pytest.mark.parametrize("path", corpus.sweep(MESSAGES))
def test_corpus_message_dual_signed_verifies(path: Path) -> None:
    message, domain = signable(path)
    pairs = (corpus_rsa(domain), corpus_ed25519(domain))
    dnsfunc = dns_for(*pairs)
    before = signature_count(message) if parses(message) else 0
    for canon in CANONS:
        signed = Signer([p.key for p in pairs], canonicalization=canon).sign(message)
        if not parses(message):  # a header block dkimpy cannot read: sent unsigned
            assert signed is message
            continue
        assert signature_count(signed) == before + 2
        found = signatures(signed, first=2)
        assert [s[b"a"] for s in found[:2]] == [b"rsa-sha256", b"ed25519-sha256"]
        assert {s[b"c"] for s in found[:2]} == {canon.encode()}
        assert signed_list(found[0]) == expected_h(message)
        assert verifies(signed, dnsfunc, 0), "RSA signature"
        assert verifies(signed, dnsfunc, 1), "Ed25519 signature"


def test_corpus_messages_left_unsigned_are_the_unreadable_ones() -> None:
    corpus.require()
    unreadable = {corpus.relative(p) for p in MESSAGES if not parses(signable(p)[0])}
    # a line without a colon inside the header block
    assert unreadable == {"mimekit/messages/issue358.txt"}


@pytest.mark.parametrize(
    "path", corpus.files(corpus.STALWART_AUTH, "dkim/*.txt"), ids=lambda p: p.name
)
def test_an_unchanged_copy_keeps_the_senders_signatures_valid(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(time, "time", lambda: float(VECTOR_CLOCK))
    records, message = vector(path)
    domain = sender_domain(message)
    assert domain is not None
    ours = (corpus_rsa(domain), corpus_ed25519(domain))
    mine = dns_for(*ours)

    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        return records.get(name.rstrip(b".").lower()) or mine(name)

    theirs = signature_count(message)
    signed = Signer([p.key for p in ours]).sign(message)
    assert signature_count(signed) == theirs + 2
    assert all(verifies(signed, lookup, index) for index in range(theirs + 2))


# --- the whole corpus, verified by OpenDKIM --------------------------------------------------


def opendkim_copies(path: Path, message: bytes, domain: str) -> Iterator[tuple[str, bytes]]:
    """Each (name, message) OpenDKIM gets for a corpus file: one key and one c= at a time."""
    if not parses(message):
        return
    headers, _ = dkim.rfc822_parse(message)
    if max(len(name) + len(value) for name, value in headers) > OPENDKIM_MAX_FIELD:
        return  # mimekit/messages/stack-overflow.txt: a 138 KB To field
    has_date = any(name.lower() == b"date" for name, _ in headers)
    stem = corpus.relative(path).replace("/", "__")
    for canon in CANONS:
        for pair in (corpus_rsa(domain), corpus_ed25519(domain)):
            signed = Signer([pair.key], canonicalization=canon).sign(message)
            # libopendkim calls a message without Date a syntax error; Postfix adds one
            # (not signed, as it was absent) before such a message leaves
            yield (
                f"{stem}.{pair.key.algorithm}.{canon[0]}",
                signed if has_date else (ADDED_DATE + signed),
            )


@pytest.mark.sockets
def test_opendkim_verifies_every_corpus_message(tmp_path: Path) -> None:
    corpus.require()
    assert shutil.which(OPENDKIM), "opendkim-testmsg missing: apt-get install opendkim-tools"
    copies: dict[str, bytes] = {}
    records: dict[str, str] = {}
    for path in MESSAGES:
        message, domain = signable(path)
        copies.update(opendkim_copies(path, message, domain))
        for pair in (corpus_rsa(domain), corpus_ed25519(domain)):
            records[f"{pair.key.selector}._domainkey.{domain}"] = pair.record.decode()
    results = run_opendkim(tmp_path, copies, records)
    failed = {name: error for name, error in results.items() if error}
    refused = {name for name, error in failed.items() if "dkim_chunk(): Syntax error" in error}
    assert not set(failed) - refused, {n: failed[n] for n in set(failed) - refused}
    # what OpenDKIM refuses to read, it refuses unsigned too (a broken DKIM-Signature of
    # the sender, two Message-ID fields, a field name with a ";"): not about our signature
    unsigned = {name: strip_first_signature(copies[name]) for name in refused}
    again = run_opendkim(tmp_path / "unsigned", unsigned, records) if unsigned else {}
    assert all("dkim_chunk(): Syntax error" in error for error in again.values())
    assert len(results) - len(refused) >= 3400


def strip_first_signature(message: bytes) -> bytes:
    """The message without our DKIM-Signature (the first one, after an added Date)."""
    start = message.index(b"DKIM-Signature:")
    end = re.compile(rb"\r\n(?![ \t])").search(message, start)
    assert end is not None
    return message[:start] + message[end.end() :]


def run_opendkim(
    workdir: Path, messages: dict[str, bytes], records: dict[str, str]
) -> dict[str, str]:
    """opendkim-testmsg on each message, in a namespace with its own DNS: name -> error text."""
    (workdir / "messages").mkdir(parents=True)
    for name, message in messages.items():
        (workdir / "messages" / name).write_bytes(message)
    (workdir / "records.json").write_text(json.dumps(records))
    command = ["unshare", "--mount", "--net"]
    if os.geteuid() != 0:
        command.append("--map-root-user")
    code = "import sys; from tests.test_signing import in_namespace; in_namespace(sys.argv[1])"
    done = subprocess.run(  # noqa: S603 - unshare and this interpreter, our own arguments
        [*command, sys.executable, "-c", code, str(workdir)],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    results: dict[str, str] = json.loads(done.stdout)
    assert set(results) == set(messages)
    return results


def in_namespace(workdir: str) -> None:
    """Inside ``unshare``: loopback up, our resolv.conf, a DNS server, opendkim-testmsg."""
    root = Path(workdir)
    records: dict[str, str] = json.loads((root / "records.json").read_text())
    loopback_up()
    resolv = root / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\noptions timeout:2 attempts:3\n")
    mount = ["mount", "--bind", str(resolv), "/etc/resolv.conf"]
    subprocess.run(mount, check=True)  # noqa: S603 - util-linux, as unshare is
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 53))
    threading.Thread(target=serve_dns, args=(server, records), daemon=True).start()
    paths = sorted((root / "messages").iterdir())
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        errors = list(pool.map(functools.partial(opendkim_verify, root), paths))
    print(json.dumps({path.name: error for path, error in zip(paths, errors, strict=True)}))


def loopback_up() -> None:
    """``ip link set lo up`` without iproute2: SIOCGIFFLAGS, then SIOCSIFFLAGS with IFF_UP."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(sock, 0x8913, request))[1]
        fcntl.ioctl(sock, 0x8914, struct.pack("16sH14x", b"lo", flags | 0x1))


def serve_dns(server: socket.socket, records: dict[str, str]) -> None:
    """Answer TXT queries from ``records``; NXDOMAIN for anything else."""
    while True:
        data, client = server.recvfrom(4096)
        query = dns.message.from_wire(data)
        response = dns.message.make_response(query)
        question = query.question[0]
        text = records.get(question.name.to_text().rstrip(".").lower())
        if text is not None and question.rdtype == dns.rdatatype.TXT:
            strings = " ".join(f'"{text[i : i + 255]}"' for i in range(0, len(text), 255))
            response.answer.append(dns.rrset.from_text(question.name, 60, "IN", "TXT", strings))
        else:
            response.set_rcode(dns.rcode.NXDOMAIN)
        server.sendto(response.to_wire(), client)


def opendkim_verify(root: Path, path: Path) -> str:
    """'' when opendkim-testmsg verifies the message, else its complaint."""
    with path.open("rb") as message:
        done = subprocess.run(  # noqa: S603 - opendkim-testmsg, our own arguments
            [OPENDKIM, "-t", str(root)], stdin=message, capture_output=True, check=False
        )
    return "" if done.returncode == 0 else done.stderr.decode(errors="replace").strip() or "?"


# --- over-signing ----------------------------------------------------------------------------


@pytest.fixture(params=CANONS)
def signed(request: pytest.FixtureRequest) -> bytes:
    out = Signer([rsa_pair().key], canonicalization=request.param).sign(MESSAGE)
    assert verifies(out, dns_for(rsa_pair()))
    return out


@pytest.mark.parametrize("bottom", [False, True], ids=["top", "bottom"])
@pytest.mark.parametrize(
    "field",
    [
        b"From: Someone Else <else@example.org>",
        b"List-Unsubscribe: <https://evil.example/u/x>",
        b"List-Unsubscribe-Post: List-Unsubscribe=One-Click",
    ],
)
def test_adding_an_over_signed_field_breaks_the_signature(
    signed: bytes, field: bytes, bottom: bool
) -> None:
    assert not verifies(with_header(signed, field, bottom=bottom), dns_for(rsa_pair()))


def test_changing_list_unsubscribe_breaks_the_signature(signed: bytes) -> None:
    changed = signed.replace(b"/u/TOKEN>", b"/u/OTHER>")
    assert changed != signed
    assert not verifies(changed, dns_for(rsa_pair()))


def test_adding_an_unsigned_field_keeps_the_signature(signed: bytes) -> None:
    assert verifies(with_header(signed, b"Received: from relay.example.net"), dns_for(rsa_pair()))


def test_absent_list_fields_are_listed_once_so_they_cannot_be_added() -> None:
    message = MESSAGE.replace(b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\n", b"")
    out = Signer([rsa_pair().key]).sign(message)
    assert signed_list(signatures(out)[0]).count(b"list-unsubscribe-post") == 1
    added = with_header(out, b"List-Unsubscribe-Post: List-Unsubscribe=One-Click", bottom=True)
    assert not verifies(added, dns_for(rsa_pair()))


def test_signed_headers_are_the_standard_set_present_plus_the_extra() -> None:
    message = MESSAGE.replace(b"X-Mailer:", b"Reply-To: desk@example.com\nX-Mailer:")
    out = Signer([rsa_pair().key], extra_headers=["Reply-To", "X-Absent"]).sign(message)
    assert signed_list(signatures(out)[0]) == [
        b"from",
        b"to",
        b"subject",
        b"date",
        b"message-id",
        b"mime-version",
        b"content-type",
        b"reply-to",
        b"list-unsubscribe",
        b"list-unsubscribe-post",
        *OVERSIGNED,
    ]


# --- keys ------------------------------------------------------------------------------------


def write_key(tmp_path: Path, data: bytes, name: str = "key.pem") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_parse_key_entry_reads_rsa_and_ed25519_in_every_form(tmp_path: Path) -> None:
    seed = generated_ed25519().private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    forms: dict[Algorithm, list[bytes]] = {
        "rsa": [pem(generated_rsa()), (DATA / "2048_testkey.key").read_bytes()],
        "ed25519": [pem(generated_ed25519()), base64.b64encode(seed) + b"\n", seed],
    }
    if not DATA.is_dir():
        forms["rsa"].pop()
    for algorithm, datas in forms.items():
        for n, data in enumerate(datas):
            path = write_key(tmp_path, data, f"{algorithm}{n}")
            key = parse_key_entry(f" Mail.Example.COM. : s2024 : {algorithm} : {path} ")
            assert key == DkimKey("mail.example.com", "s2024", algorithm, data)


def test_parse_key_entry_idna_domain(tmp_path: Path) -> None:
    path = write_key(tmp_path, pem(generated_ed25519()))
    assert parse_key_entry(f"bücher.example:s:ed25519:{path}").domain == "xn--bcher-kva.example"


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ("example.com:sel:rsa", "is not DOMAIN:SELECTOR:ALGORITHM:KEYFILE"),
        ("example.com::rsa:KEY", "is not DOMAIN:SELECTOR:ALGORITHM:KEYFILE"),
        ("example.com:sel:dsa:KEY", "algorithm must be rsa or ed25519"),
        ("exa mple.com:sel:rsa:KEY", "is not a domain name"),
        ("example.com:s/el:rsa:KEY", "is not dot-separated labels"),
        ("example.com:sel:rsa:MISSING", "cannot read"),
        ("example.com:sel:rsa:GARBAGE", "not an unencrypted PEM private key"),
        ("example.com:sel:rsa:SMALL", "RSA key of 1024 bits; at least 2048 needed"),
        ("example.com:sel:rsa:ED", "not an RSA key"),
        ("example.com:sel:ed25519:KEY", "not an Ed25519 key"),
        ("example.com:sel:ed25519:GARBAGE", "not an unencrypted PEM private key"),
        ("example.com:sel:ed25519:JUNK", "not an Ed25519 key (PEM, or the 32-byte seed"),
    ],
)
def test_parse_key_entry_errors_name_the_entry(tmp_path: Path, entry: str, says: str) -> None:
    files = {
        "KEY": pem(generated_rsa()),
        "GARBAGE": b"-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n",
        "SMALL": pem(generated_rsa(1024)),
        "ED": pem(generated_ed25519()),
        "JUNK": b"junk\n",
    }
    for name, data in files.items():
        entry = entry.replace(f":{name}", f":{write_key(tmp_path, data, name)}")
    entry = entry.replace(":MISSING", f":{tmp_path / 'missing.pem'}")
    with pytest.raises(ConfigError) as raised:
        parse_key_entry(entry)
    assert repr(entry) in str(raised.value)
    assert says in str(raised.value)


def test_dkimpy_1024_bit_test_key_is_refused() -> None:
    corpus.require()
    entry = f"example.com:test:rsa:{DATA / 'test.private'}"
    with pytest.raises(ConfigError, match="1024 bits"):
        parse_key_entry(entry)


def test_signer_refuses_a_bad_key_canonicalization_or_extra_header() -> None:
    with pytest.raises(ConfigError, match="not an unencrypted PEM"):
        Signer([DkimKey("example.com", "s", "rsa", b"junk")])
    with pytest.raises(ConfigError, match="canonicalization"):
        Signer([rsa_pair().key], canonicalization="relaxed/loose")
    with pytest.raises(ConfigError, match="Received must not be signed"):
        Signer([rsa_pair().key], extra_headers=["Received"])
    with pytest.raises(ConfigError, match="is not a header field name"):
        Signer([rsa_pair().key], extra_headers=["Reply To"])


def test_from_config(tmp_path: Path) -> None:
    assert Signer.from_config(Dkim()) is None
    path = write_key(tmp_path, pem(generated_rsa()))
    config = Dkim(
        keys=[f"example.com:rsa:rsa:{path}"],
        canonicalization="simple/simple",
        extra_headers=["Reply-To"],
    )
    signer = Signer.from_config(config)
    assert signer is not None
    out = signer.sign(MESSAGE.replace(b"X-Mailer:", b"Reply-To: desk@example.com\nX-Mailer:"))
    found = signatures(out)[0]
    assert found[b"c"] == b"simple/simple"
    assert b"reply-to" in signed_list(found)
    assert verifies(out, dns_for(rsa_pair()))
    with pytest.raises(ConfigError, match="cannot read"):
        Signer.from_config(Dkim(keys=[f"example.com:rsa:rsa:{tmp_path / 'nope'}"]))


# --- which keys sign -------------------------------------------------------------------------


def from_line(value: str) -> bytes:
    return MESSAGE.replace(b"From: Example News <news@example.com>", f"From: {value}".encode())


@pytest.mark.parametrize(
    ("sender", "domains"),
    [
        ("news@example.com", [b"example.com", b"example.com"]),
        ("News <news@Mail.Example.COM>", [b"example.com", b"example.com", b"mail.example.com"]),
        ('"x@other.org" <news@example.com>', [b"example.com", b"example.com"]),
        ("a@example.com, b@example.com", [b"example.com", b"example.com"]),
        ("news@example.org", [b"example.org"]),
        ("news@badexample.com", []),
        ("news@example.com.evil.org", []),
        ("a@example.com, b@example.org", []),
        ("Postmaster", []),
        ("<>", []),
    ],
)
def test_keys_are_chosen_by_the_from_domain(sender: str, domains: list[bytes]) -> None:
    signer = Signer(
        [
            rsa_pair("example.com").key,
            ed25519_pair("example.com").key,
            rsa_pair("example.org").key,
            rsa_pair("mail.example.com", "sub").key,
        ]
    )
    message = from_line(sender)
    out = signer.sign(message)
    assert [s[b"d"] for s in signatures(out)] == domains
    assert (out is message) == (not domains)
    dnsfunc = dns_for(rsa_pair(), ed25519_pair(), rsa_pair(selector="sub"))
    assert all(verifies(out, dnsfunc, i) for i in range(len(domains)))


def test_a_second_from_field_or_none_leaves_the_message_unsigned() -> None:
    signer = Signer([rsa_pair().key])
    twice = MESSAGE.replace(b"To:", b"From: other@example.com\nTo:")
    assert signer.sign(twice) is twice
    none = MESSAGE.replace(b"From: Example News <news@example.com>\n", b"")
    assert signer.sign(none) is none
    assert sender_domain(twice) is None
    assert sender_domain(MESSAGE) == "example.com"


@pytest.mark.parametrize(
    "odd",
    [
        b"",
        b"\n\n",
        b"\x00\xff\xfe garbage",
        b" continued first\nFrom: a@example.com\n\nbody",
        b"From: a@example.com\nno colon here\n\nbody",
        b"From: =?utf-8?q?=FF?= <a@\xff\xfe.example.com>\n\nbody",
        b"From: a@" + b"x" * 300 + b".com\n\nbody",
    ],
)
def test_sign_never_raises(odd: bytes) -> None:
    assert Signer([rsa_pair().key]).sign(odd) is odd


# --- what stays and what changes -------------------------------------------------------------


def test_earlier_signatures_stay_below_ours() -> None:
    pair = rsa_pair()
    first = Signer([pair.key]).sign(MESSAGE)
    second = Signer([ed25519_pair().key]).sign(first)
    assert second.endswith(first)
    assert [s[b"a"] for s in signatures(second)] == [b"ed25519-sha256", b"rsa-sha256"]
    assert verifies(second, dns_for(pair, ed25519_pair()), 0)
    assert verifies(second, dns_for(pair, ed25519_pair()), 1)  # the copy was not changed


@pytest.mark.parametrize(
    "ending",
    [b"\n", b"\r\n", b"\r"],
    ids=["lf", "crlf", "cr"],
)
def test_line_ends_become_crlf_as_on_the_wire(ending: bytes) -> None:
    message = MESSAGE.replace(b"\n", ending).rstrip(ending)  # no line end after the last line
    out = Signer([rsa_pair().key]).sign(message)
    assert out.endswith(wire(message))
    assert b"\r\n" in out
    assert not re.search(rb"\r(?!\n)|(?<!\r)\n", out)
    assert verifies(out, dns_for(rsa_pair()))


def test_lone_carriage_return_is_signed_as_sent() -> None:
    message = MESSAGE.replace(b"Hello,", b"Hello,\rcarriage")
    out = Signer([rsa_pair().key], canonicalization="simple/simple").sign(message)
    assert b"Hello,\r\ncarriage" in out
    assert verifies(out, dns_for(rsa_pair()))


def test_t_is_now() -> None:
    before = int(time.time())
    stamp = int(signatures(Signer([rsa_pair().key]).sign(MESSAGE))[0][b"t"])
    assert before <= stamp <= int(time.time())
