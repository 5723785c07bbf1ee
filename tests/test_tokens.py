"""Unsubscribe tokens: round trip, rotation and every way a token can be wrong."""

from __future__ import annotations

import base64
import hashlib
import re

import pytest

from gateway.tokens import Claims, InvalidToken, TokenSigner, is_short

OLD_KEY = b"old-key-0123456789abcdef"
NEW_KEY = b"new-key-fedcba9876543210"
ADDRESS = b"jane.doe@example.com"
RECIPIENT = hashlib.sha256(ADDRESS).hexdigest()
CLAIMS = Claims(RECIPIENT, "topic:newsletter", 1_700_000_000)


def _raw(token: str) -> bytes:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


def _text(payload: bytes) -> str:
    return base64.urlsafe_b64encode(payload).rstrip(b"=").decode("ascii")


@pytest.mark.parametrize(
    "scope", ["global", "topic:newsletter", "partner:acme", "topic:Ünïcode news"]
)
def test_round_trip(scope: str) -> None:
    signer = TokenSigner([NEW_KEY])
    claims = Claims(RECIPIENT, scope, 1_700_000_000)
    assert signer.verify(signer.issue(claims)) == claims


def test_token_is_url_and_local_part_safe_and_short() -> None:
    token = TokenSigner([NEW_KEY]).issue(CLAIMS)
    assert re.fullmatch(r"[A-Za-z0-9_-]+", token)
    assert len(token) < 100


def test_token_does_not_contain_the_address() -> None:
    token = TokenSigner([NEW_KEY]).issue(CLAIMS)
    payload = _raw(token)
    assert ADDRESS not in payload
    assert b"jane" not in payload
    assert b"jane" not in token.encode()


def test_rotation_old_tokens_verify_and_new_tokens_use_the_first_key() -> None:
    old_token = TokenSigner([OLD_KEY]).issue(CLAIMS)
    rotated = TokenSigner([NEW_KEY, OLD_KEY])
    assert rotated.verify(old_token) == CLAIMS
    new_token = rotated.issue(CLAIMS)
    assert TokenSigner([NEW_KEY]).verify(new_token) == CLAIMS
    with pytest.raises(InvalidToken, match="unknown"):
        TokenSigner([OLD_KEY]).verify(new_token)


def test_retired_key_is_unknown() -> None:
    token = TokenSigner([OLD_KEY]).issue(CLAIMS)
    with pytest.raises(InvalidToken, match="unknown") as info:
        TokenSigner([NEW_KEY]).verify(token)
    assert OLD_KEY.decode() not in str(info.value)
    assert NEW_KEY.decode() not in str(info.value)


def test_every_single_byte_alteration_is_rejected() -> None:
    signer = TokenSigner([NEW_KEY])
    payload = _raw(signer.issue(CLAIMS))
    for position in range(len(payload)):
        for flip in (0x01, 0x80, 0xFF):
            altered = bytearray(payload)
            altered[position] ^= flip
            with pytest.raises(InvalidToken):
                signer.verify(_text(bytes(altered)))


def test_every_single_character_alteration_is_rejected() -> None:
    signer = TokenSigner([NEW_KEY])
    token = signer.issue(CLAIMS)
    alphabet = "AZaz09-_"
    for position, char in enumerate(token):
        for other in alphabet:
            if other != char:
                with pytest.raises(InvalidToken):
                    signer.verify(token[:position] + other + token[position + 1 :])


def test_truncated_and_extended_tokens_are_rejected() -> None:
    signer = TokenSigner([NEW_KEY])
    payload = _raw(signer.issue(CLAIMS))
    for length in range(len(payload)):
        with pytest.raises(InvalidToken):
            signer.verify(_text(payload[:length]))
    for extra in (b"\x00", b"x" * 16):
        with pytest.raises(InvalidToken):
            signer.verify(_text(payload + extra))


@pytest.mark.parametrize(
    "token",
    ["", "=", "abc=", "a", "not a token", "AAAA" * 200, "ÄÖÜ", "abc/def+ghi", "A" * 101 + "\n"],
)
def test_garbage_is_rejected(token: str) -> None:
    with pytest.raises(InvalidToken):
        TokenSigner([NEW_KEY]).verify(token)


def test_wrong_version_is_rejected_even_when_signed() -> None:
    signer = TokenSigner([NEW_KEY])
    payload = bytearray(_raw(signer.issue(CLAIMS)))
    payload[0] = 2
    with pytest.raises(InvalidToken, match="version"):
        signer.verify(_text(bytes(payload)))


def test_max_age() -> None:
    signer = TokenSigner([NEW_KEY])
    token = signer.issue(CLAIMS)
    issued = CLAIMS.issued
    assert signer.verify(token, max_age=3600, now=issued + 3600) == CLAIMS
    with pytest.raises(InvalidToken, match="expired"):
        signer.verify(token, max_age=3600, now=issued + 3601)
    assert signer.verify(token) == CLAIMS  # no max_age: never expires


@pytest.mark.parametrize(
    "claims",
    [
        Claims(RECIPIENT.upper(), "global", 1),
        Claims(RECIPIENT[:-1], "global", 1),
        Claims("jane.doe@example.com", "global", 1),
        Claims(RECIPIENT, "everything", 1),
        Claims(RECIPIENT, "topic:", 1),
        Claims(RECIPIENT, "list:news", 1),
        Claims(RECIPIENT, "global", -1),
        Claims(RECIPIENT, "global", 2**32),
    ],
)
def test_issue_rejects_bad_claims(claims: Claims) -> None:
    with pytest.raises(ValueError, match=r"recipient|scope|issued"):
        TokenSigner([NEW_KEY]).issue(claims)


@pytest.mark.parametrize("keys", [[], [b"short"], [NEW_KEY, b"x" * 15]])
def test_keys_must_exist_and_be_long_enough(keys: list[bytes]) -> None:
    with pytest.raises(ValueError, match="key"):
        TokenSigner(keys)


# --- short tokens (local parts: unsubscribe+T@, bounce+T@) ---------------------------


def _b32(payload: bytes) -> str:
    return base64.b32encode(payload).decode("ascii").lower()


def test_short_token_fits_a_local_part_in_any_letter_case() -> None:
    signer = TokenSigner([NEW_KEY])
    token = signer.issue_short(CLAIMS)
    assert re.fullmatch(r"[a-z2-7]{40}", token)
    assert is_short(token)
    assert len(f"unsubscribe+{token}") <= 64  # RFC 5321 4.5.3.1.1
    claims = signer.verify_short(token.upper())
    assert claims == signer.verify_short(token)
    assert claims.prefix == RECIPIENT[:16]
    assert claims.issued == CLAIMS.issued - CLAIMS.issued % 86400
    assert claims.scope_for("newsletter") == "topic:newsletter"
    assert claims.scope_for("deals") is None


def test_short_global_token_matches_a_copy_of_any_topic() -> None:
    signer = TokenSigner([NEW_KEY])
    claims = signer.verify_short(signer.issue_short(Claims(RECIPIENT, "global", 1)))
    assert claims.kind == "global"
    assert claims.scope_for("anything") == "global"


def test_short_token_rotation_and_retired_keys() -> None:
    old = TokenSigner([OLD_KEY]).issue_short(CLAIMS)
    assert TokenSigner([NEW_KEY, OLD_KEY]).verify_short(old).prefix == RECIPIENT[:16]
    with pytest.raises(InvalidToken, match="unknown"):
        TokenSigner([NEW_KEY]).verify_short(old)


def test_short_token_with_a_wrong_tag_is_rejected() -> None:
    signer = TokenSigner([NEW_KEY])
    payload = bytearray(base64.b32decode(signer.issue_short(CLAIMS).upper()))
    payload[-1] ^= 1
    with pytest.raises(InvalidToken, match="signature"):
        signer.verify_short(_b32(bytes(payload)))


def test_every_single_bit_of_a_short_token_matters() -> None:
    signer = TokenSigner([NEW_KEY])
    payload = base64.b32decode(signer.issue_short(CLAIMS).upper())
    for position in range(len(payload)):
        for bit in range(8):
            altered = bytearray(payload)
            altered[position] ^= 1 << bit
            with pytest.raises(InvalidToken):
                signer.verify_short(_b32(bytes(altered)))


@pytest.mark.parametrize(
    "token", ["", "a" * 39, "a" * 41, "0" * 40, "1" * 40, "a" * 39 + "=", "ä" * 40, "a-" * 20]
)
def test_short_garbage_is_rejected(token: str) -> None:
    with pytest.raises(InvalidToken, match="malformed"):
        TokenSigner([NEW_KEY]).verify_short(token)
    assert not is_short(token)


def test_a_long_token_is_not_short_and_a_short_one_is_not_long() -> None:
    signer = TokenSigner([NEW_KEY])
    assert not is_short(signer.issue(CLAIMS))
    with pytest.raises(InvalidToken):
        signer.verify(signer.issue_short(CLAIMS).upper())


def test_a_short_partner_token_is_honoured_globally_by_mail() -> None:
    signer = TokenSigner([NEW_KEY])
    claims = signer.verify_short(signer.issue_short(Claims(RECIPIENT, "partner:acme", 1)))
    assert claims.kind == "partner"
    assert claims.scope_for("partner-offers") == "global"


@pytest.mark.parametrize("scope", ["confirm:news", "everything", "topic:", "global:x"])
def test_a_confirmation_is_no_short_token(scope: str) -> None:
    with pytest.raises(ValueError, match="scope"):
        TokenSigner([NEW_KEY]).issue_short(Claims(RECIPIENT, scope, 1))
