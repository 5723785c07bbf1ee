"""optgate dkim keygen: the key file (0600, never overwritten) and the record that verifies it."""

from __future__ import annotations

import base64
import re
import stat
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from gateway.cli import main as cli
from gateway.keygen import ZONE_STRING, keygen, public_key_bytes
from suppression.errors import OptgateError

pytestmark = pytest.mark.pure

DOMAIN, SELECTOR = "shop.test", "s1"
MESSAGE = (
    b"From: News <news@shop.test>\r\n"
    b"To: someone@example.com\r\n"
    b"Subject: Hello\r\n"
    b"Date: Fri, 01 Mar 2024 10:00:00 +0000\r\n"
    b"Message-ID: <m1@shop.test>\r\n"
    b"\r\n"
    b"Our news.\r\n"
)


def run_keygen(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(["dkim", "keygen", "--domain", DOMAIN, "--selector", SELECTOR, *args])
    out, err = capsys.readouterr()
    return code, out, err


def record_line(out: str) -> str:
    (line,) = [line for line in out.splitlines() if " IN TXT " in line]
    return line


def record_value(line: str) -> str:
    """The TXT value of a zone line: its character-strings joined."""
    strings = re.findall(r'"((?:[^"\\]|\\.)*)"', line.split(" IN TXT ", 1)[1])
    assert all(len(s) <= ZONE_STRING for s in strings)
    return "".join(strings)


def tags(value: str) -> dict[str, str]:
    return {k.strip(): v.strip() for k, _, v in (t.partition("=") for t in value.split(";"))}


def load(path: Path) -> rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey)
    return key


@pytest.mark.parametrize(
    ("algorithm", "kind"), [("rsa", rsa.RSAPrivateKey), ("ed25519", ed25519.Ed25519PrivateKey)]
)
def test_key_file_is_0600_and_the_record_carries_its_public_half(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    algorithm: str,
    kind: type,
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OPTGATE_CONFIG", raising=False)
    code, out, _ = run_keygen(capsys, "--algorithm", algorithm)
    assert code == 0
    path = tmp_path / f"{SELECTOR}._domainkey.{DOMAIN}.pem"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = load(path)
    assert isinstance(key, kind)
    line = record_line(out)
    assert line.startswith(f"{SELECTOR}._domainkey.{DOMAIN}. IN TXT ")
    record = tags(record_value(line))
    assert (record["v"], record["k"]) == ("DKIM1", algorithm)
    assert base64.b64decode(record["p"]) == public_key_bytes(key)
    assert f'keys = ["{DOMAIN}:{SELECTOR}:{algorithm}:{path}"]' in out.splitlines()


def test_rsa_defaults_to_2048_bits_in_255_character_strings(tmp_path: Path) -> None:
    new = keygen(DOMAIN, SELECTOR, "rsa", out=tmp_path / "k.pem")
    key = load(new.path)
    assert isinstance(key, rsa.RSAPrivateKey)
    assert key.key_size == 2048
    assert new.record.count('" "') == 1  # about 410 characters: two strings
    assert b"BEGIN RSA PRIVATE KEY" in new.path.read_bytes()


def test_ed25519_p_is_the_raw_32_byte_public_key(tmp_path: Path) -> None:
    new = keygen(DOMAIN, SELECTOR, "ed25519", out=tmp_path / "k.pem")
    p = base64.b64decode(tags(record_value(new.record))["p"])
    assert len(p) == 32  # RFC 8463: no ASN.1 wrapping


def test_never_overwrites_a_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "k.pem"
    assert run_keygen(capsys, "--out", str(out))[0] == 0
    before = out.read_bytes()
    code, _, err = run_keygen(capsys, "--out", str(out), "--algorithm", "ed25519")
    assert code == 2
    assert "refusing to overwrite" in err
    assert out.read_bytes() == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bits", "1024"], "RSA keys need 2048 bits or more, not 1024"),
        (["--algorithm", "ed25519", "--bits", "2048"], "--bits is for rsa keys"),
    ],
)
def test_refuses_weak_or_meaningless_sizes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    out = tmp_path / "k.pem"
    code, _, err = run_keygen(capsys, "--out", str(out), *args)
    assert code == 2
    assert message in err
    assert not out.exists()


def test_refuses_a_name_that_is_not_a_dns_name(tmp_path: Path) -> None:
    with pytest.raises(OptgateError, match="is not a DNS name"):
        keygen("shop .test", SELECTOR, "rsa", out=tmp_path / "k.pem")
    assert not (tmp_path / "k.pem").exists()


def dkimpy_private_key(path: Path) -> tuple[bytes, bytes]:
    """The key as dkimpy takes it, and its signature algorithm (a=)."""
    key = load(path)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        seed = key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        return base64.b64encode(seed), b"ed25519-sha256"
    return path.read_bytes(), b"rsa-sha256"


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
def test_dkimpy_signature_verifies_against_the_printed_record(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], algorithm: str
) -> None:
    out = tmp_path / "k.pem"
    code, printed, _ = run_keygen(capsys, "--out", str(out), "--algorithm", algorithm)
    assert code == 0
    published = record_value(record_line(printed)).encode()
    private, signature_algorithm = dkimpy_private_key(out)
    signed = (
        dkim.sign(
            MESSAGE,
            SELECTOR.encode(),
            DOMAIN.encode(),
            private,
            signature_algorithm=signature_algorithm,
        )
        + MESSAGE
    )
    asked: list[bytes] = []

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        asked.append(name)
        return published

    assert dkim.verify(signed, dnsfunc=dnsfunc)
    assert asked == [f"{SELECTOR}._domainkey.{DOMAIN}.".encode()]
    tampered = signed.replace(b"Our news.", b"Our offer.")
    assert not dkim.verify(tampered, dnsfunc=dnsfunc)
