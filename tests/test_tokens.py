"""Unsubscribe tokens: round trip, rotation, sealing, tokens already mailed, and every way a
token can be wrong."""

from __future__ import annotations

import base64
import hashlib
import random
import re

import pytest

from gateway import tokens
from gateway.errors import InvalidToken
from gateway.tokens import Claims, Confirmation, TokenSigner, is_short, key_id
from suppression.scope import GLOBAL, Scope
from tests.support.tokens import claimed

pytestmark = pytest.mark.pure

OLD_KEY = b"old-key-0123456789abcdef"
NEW_KEY = b"new-key-fedcba9876543210"
ADDRESS = b"jane.doe@example.com"
RECIPIENT = hashlib.sha256(ADDRESS).hexdigest()
CLAIMS = Claims(RECIPIENT, Scope.topic("newsletter"), 1_700_000_000)


def _raw(token: str) -> bytes:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


def _text(payload: bytes) -> str:
    return base64.urlsafe_b64encode(payload).rstrip(b"=").decode("ascii")


@pytest.mark.parametrize(
    "scope", ["global", "topic:newsletter", "partner:acme", "topic:a.long_name-2", "confirm:news"]
)
def test_round_trip(scope: str) -> None:
    signer = TokenSigner([NEW_KEY])
    claims = Claims(RECIPIENT, claimed(scope), 1_700_000_000)
    assert signer.verify(signer.issue(claims)) == claims


@pytest.mark.parametrize(("kind", "name"), [(1, "Ünïcode news"), (2, "two words"), (3, "")])
def test_a_genuine_token_with_a_name_optgate_never_issues_is_refused(kind: int, name: str) -> None:
    """The key holder's own token, sealed with a topic, partner or purpose name that is
    not valid (no valid Scope or Confirmation holds one): nothing honours it."""
    signer = TokenSigner([NEW_KEY])
    key = signer._signing  # the only way to seal what issue() refuses
    head = bytes([tokens.VERSION]) + key.full_id
    plain = tokens._SEALED.pack(kind, bytes.fromhex(RECIPIENT), 1) + name.encode()
    token = base64.urlsafe_b64encode(head + key.seal(head, plain, tokens.TAG_BYTES))
    with pytest.raises(InvalidToken, match="malformed token"):
        signer.verify(token.rstrip(b"=").decode())


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
    payload[0] = 3
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
        Claims(RECIPIENT.upper(), GLOBAL, 1),
        Claims(RECIPIENT[:-1], GLOBAL, 1),
        Claims("jane.doe@example.com", GLOBAL, 1),
        Claims(RECIPIENT, GLOBAL, -1),
        Claims(RECIPIENT, GLOBAL, 2**32),
    ],
)
def test_issue_rejects_bad_claims(claims: Claims) -> None:
    with pytest.raises(ValueError, match=r"recipient|issued"):
        TokenSigner([NEW_KEY]).issue(claims)


@pytest.mark.parametrize("keys", [[], [b"short"], [NEW_KEY, b"x" * 15]])
def test_keys_must_exist_and_be_long_enough(keys: list[bytes]) -> None:
    with pytest.raises(ValueError, match="key"):
        TokenSigner(keys)


def _windows(data: bytes, size: int) -> set[bytes]:
    return {data[i : i + size] for i in range(len(data) - size + 1)}


@pytest.mark.parametrize("scope", ["global", "topic:newsletter", "partner:acme", "confirm:news"])
def test_a_token_shows_neither_the_hash_nor_the_scope_without_the_key(scope: str) -> None:
    signer = TokenSigner([NEW_KEY])
    payload = _raw(signer.issue(Claims(RECIPIENT, claimed(scope), 1_700_000_000)))
    hashed = bytes.fromhex(RECIPIENT)
    assert not _windows(payload, 4) & _windows(hashed, 4)  # no 4 bytes of it, anywhere
    name = scope.partition(":")[2].encode()
    assert not name or name not in payload
    assert payload[1:5] == key_id(NEW_KEY)  # only the key's public name is in the clear


def test_the_same_claims_for_two_recipients_share_nothing_but_the_header() -> None:
    signer = TokenSigner([NEW_KEY])
    other = hashlib.sha256(b"john@example.com").hexdigest()
    one, two = (_raw(signer.issue(Claims(r, Scope.topic("news"), 1))) for r in (RECIPIENT, other))
    assert one[:5] == two[:5]
    assert sum(a == b for a, b in zip(one[5:], two[5:], strict=True)) < 8  # chance: ~0.2


# Tokens issued before sealing (version 1 long, 0x20 short), with NEW_KEY, for RECIPIENT at
# 1_700_000_000: links and addresses already mailed, which must keep working.
MAILED = {
    "global": "AYJE5KCG4LnlbBfMTRI4fhlJuFBT--c7w85aEYhxOp0wDMYTPWVT8QAAFvNALDqNWVgCFV9JU3pCZA",
    "topic:newsletter": "AYJE5KCG4LnlbBfMTRI4fhlJuFBT--c7w85aEYhxOp0wDMYTPWVT8QABbmV3c2xldH"
    "Rlci-ay3LzmlBmHrwrXW6HovQ",
    "partner:acme": "AYJE5KCG4LnlbBfMTRI4fhlJuFBT--c7w85aEYhxOp0wDMYTPWVT8QACYWNtZcPYsK2-bW4S"
    "ELr-jJjyBj0",
    "confirm:newsletter": "AYJE5KCG4LnlbBfMTRI4fhlJuFBT--c7w85aEYhxOp0wDMYTPWVT8QADbmV3c2xl"
    "dHRlcvAi7BO3-qnpK8nJeu3iKAE",
}
MAILED_SHORT = {
    "global": "ecbejbxaxhswyf6mjwaadqtujtnsybpvy7zpxbf5",
    "topic:newsletter": "egbejbxaxhswyf6mju2j4de2jtnuvnu6mbimrfja",
    "partner:acme": "ekbejbxaxhswyf6mjwu46uczjtn5prl354m43d76",
}


@pytest.mark.parametrize(("scope", "token"), MAILED.items())
def test_tokens_mailed_before_sealing_keep_working(scope: str, token: str) -> None:
    signer = TokenSigner([b"a-newer-key-0123456789", NEW_KEY])  # rotated since, too
    assert signer.verify(token) == Claims(RECIPIENT, claimed(scope), 1_700_000_000)
    assert signer.issue(Claims(RECIPIENT, claimed(scope), 1_700_000_000)) != token  # not again
    altered = token[:-2] + ("AA" if token[-2:] != "AA" else "BA")
    with pytest.raises(InvalidToken, match=r"signature|non-canonical"):
        signer.verify(altered)


@pytest.mark.parametrize(("scope", "token"), MAILED_SHORT.items())
def test_short_tokens_mailed_before_sealing_keep_working(scope: str, token: str) -> None:
    signer = TokenSigner([NEW_KEY])
    claims = signer.verify_short(token.upper())
    assert (claims.prefix, claims.issued) == (RECIPIENT[:16], 1_700_000_000 // 86400 * 86400)
    assert claims.kind == scope.partition(":")[0]
    assert signer.issue_short(Claims(RECIPIENT, claimed(scope), 1_700_000_000)) != token
    payload = bytearray(base64.b32decode(token.upper()))
    payload[5] ^= 1  # inside the recipient prefix
    with pytest.raises(InvalidToken, match="signature"):
        signer.verify_short(_b32(bytes(payload)))


FORGERIES = 10_000  # scripts/forge_tokens.py runs 10^6


def test_ten_thousand_forged_tokens_are_accepted_zero_times() -> None:
    """Forgeries that get past every cheap check (right version, length and key id) to the
    siv: random bytes, genuine tokens with bits flipped, and the sealed part of one
    recipient's token spliced onto another's."""
    signer = TokenSigner([NEW_KEY])
    rng = random.Random(14)
    kid = key_id(NEW_KEY)
    genuine = _raw(signer.issue(CLAIMS))
    other = _raw(signer.issue(Claims(hashlib.sha256(b"x@example.com").hexdigest(), GLOBAL, 1)))
    accepted = 0
    for n in range(FORGERIES):
        if n % 3 == 0:
            forged = bytes([2]) + kid + rng.randbytes(len(genuine) - 5)
        elif n % 3 == 1:
            flipped = bytearray(genuine)
            for _ in range(rng.randint(1, 4)):
                flipped[rng.randrange(5, len(flipped))] ^= 1 << rng.randrange(8)
            forged = bytes(flipped)
        else:
            cut = rng.randrange(6, len(other))
            forged = genuine[:cut] + other[cut:]
        if forged in (genuine, other):  # a splice that happens to be one of the two
            continue
        try:
            signer.verify(_text(forged))
        except InvalidToken:
            continue
        accepted += 1
    assert accepted == 0


def test_ten_thousand_forged_short_tokens_are_accepted_zero_times() -> None:
    signer = TokenSigner([NEW_KEY])
    rng = random.Random(15)
    genuine = base64.b32decode(signer.issue_short(CLAIMS).upper())
    accepted = 0
    for _ in range(FORGERIES):
        forged = genuine[:3] + rng.randbytes(len(genuine) - 3)
        try:
            signer.verify_short(_b32(forged))
        except InvalidToken:
            continue
        accepted += 1
    assert accepted == 0


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
    assert claims.scope_for("newsletter") == Scope.topic("newsletter")
    assert claims.scope_for("deals") is None
    assert claims.scope_for("Not A Topic") is None
    payload = base64.b32decode(token.upper())
    assert not _windows(payload, 3) & _windows(bytes.fromhex(RECIPIENT[:16]), 3)


def test_short_global_token_matches_a_copy_of_any_topic() -> None:
    signer = TokenSigner([NEW_KEY])
    claims = signer.verify_short(signer.issue_short(Claims(RECIPIENT, GLOBAL, 1)))
    assert claims.kind == "global"
    assert claims.scope_for("anything") == GLOBAL


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
    claims = signer.verify_short(signer.issue_short(Claims(RECIPIENT, Scope.partner("acme"), 1)))
    assert claims.kind == "partner"
    assert claims.scope_for("partner-offers") == GLOBAL


def test_a_confirmation_is_no_short_token() -> None:
    with pytest.raises(ValueError, match="scope"):
        TokenSigner([NEW_KEY]).issue_short(Claims(RECIPIENT, Confirmation("news"), 1))
