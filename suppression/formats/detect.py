"""Which reader a file needs: its layout guessed from the first two records (for ``auto``,
and for ``ses``, ``mailgun`` and ``postmark``, which each have several layouts)."""

from __future__ import annotations

import json
import re
from itertools import chain
from typing import NamedTuple

from suppression import vendors
from suppression.fields import ADDRESS_KEYS, DigestKind, reason_of
from suppression.textio import Block, Blocks, first_field, lines_of, significant, split_fields

_PEEK_LINES = 1000  # lines of a block auto-detection looks at for the first records
_PEEK_BLOCKS = 4  # blocks auto-detection reads at most
DIGESTS = {"sha256": re.compile(r"[0-9a-f]{64}"), "md5": re.compile(r"[0-9a-f]{32}")}
HEADER_WORD = re.compile(r"(?=.*[g-z_ .-])[a-z_][a-z0-9_ .-]*")  # not all hex: sha256, hash
_UNIX_TIME = re.compile(r"\d{9,10}(?:\.\d+)?")
_RFC2822 = re.compile(r"(?:mon|tue|wed|thu|fri|sat|sun), \d")
# the array key of each vendor's JSON answer, and the format it names
_DOCUMENT_KEYS = {
    vendors.SES_SUMMARIES: "ses",
    "items": "mailgun",
    "Suppressions": "postmark",
}
_DOCUMENT = re.compile(r'"(' + "|".join(_DOCUMENT_KEYS) + r')"\s*:\s*\[')


class Fit(NamedTuple):
    """The reader a file needs (a key of read.READERS), and the blocks already looked at."""

    reader: str
    blocks: Blocks


def variant(fmt: str, detected: str) -> str:
    """The layout of a vendor's format: the one detected if it is that vendor's."""
    own = {
        "ses": ("ses-csv", "ses-text", "ses-json", "jsonl", "json"),
        "mailgun": ("mailgun", "mailgun-json"),
        "postmark": ("postmark", "postmark-json"),
    }[fmt]
    if detected in own:
        return detected
    return {"ses": "ses-csv", "mailgun": "mailgun", "postmark": "postmark"}[fmt]


def detect(found: Blocks) -> Fit:
    """Guess the reader from the first two records; the blocks read are given back."""
    head: list[Block] = []
    records: list[str] = []
    for block in found:
        head.append(block)
        lines = lines_of(block)[:_PEEK_LINES]
        records += [text.strip() for text in lines if significant(text)]
        if len(records) >= 2 or len(head) >= _PEEK_BLOCKS:
            break
    text = head[0].text if head else ""
    return Fit(_guess(records[:2], text), chain(head, found))


def _guess(records: list[str], text: str) -> str:
    if not records:
        return "plain"
    first = records[0]
    second = records[1] if len(records) > 1 else ""
    if first.startswith(("{", "[")):
        return _guess_json(first, text)
    if isinstance(_json_or_none(first), str):
        return "jsonl"
    if first.startswith(vendors.SES_TEXT + "\t") or second.startswith(vendors.SES_TEXT + "\t"):
        return "ses-text"
    fields = split_fields(first)
    names = [name.strip().lower() for name in fields]
    return _guess_header(names, fields, second) or _guess_list(names, fields, second)


def _guess_header(names: list[str], fields: list[str], second: str) -> str | None:
    """A vendor's export, from its header (and its first record where that is needed)."""
    layout = frozenset(names)
    if _is_mailchimp(names):
        return "mailchimp"
    sendgrid = vendors.SENDGRID_LAYOUTS.get(layout)
    if sendgrid and (sendgrid != "invalid" or _sendgrid_invalid(names, second)):
        return "sendgrid"
    mailgun = vendors.MAILGUN_LAYOUTS.get(layout)
    if mailgun and (mailgun != "complained" or _rfc2822(names, second)):
        return "mailgun"
    if frozenset(n.replace(" ", "") for n in names) >= vendors.POSTMARK_COLUMNS:
        return "postmark"
    if _is_ses_csv(fields):
        return "ses-csv"
    return None


def _guess_list(names: list[str], fields: list[str], second: str) -> str:
    # a header naming a digest column beside others (sha256,scope,reason) is a CSV whose
    # rows are keyed by the digest: its other columns count
    if len(fields) > 1 and {"sha256", "md5"} & set(names):
        return "csv"
    digest = _digest_kind(names[0], second)
    if digest:
        return digest
    if any(name in ADDRESS_KEYS for name in names) or len(fields) > 1:
        return "csv"
    return "plain"


def _guess_json(first: str, text: str) -> str:
    """A JSON object per line, or one JSON document (an ESP's answer) over many lines."""
    value = _json_or_none(first)
    found = _DOCUMENT.search(text)
    if isinstance(value, dict):
        key = next((k for k in value if k in _DOCUMENT_KEYS), None)
        return f"{_DOCUMENT_KEYS[key]}-json" if key else "jsonl"
    if value is not None and not isinstance(value, list):
        return "jsonl"
    if first.startswith("{") and found:
        return f"{_DOCUMENT_KEYS[found.group(1)]}-json"
    return "jsonl" if first.endswith("}") else "json"


def _json_or_none(text: str) -> object:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def _record(names: list[str], second: str) -> dict[str, str]:
    return dict(zip(names, (value.strip() for value in split_fields(second)), strict=False))


def _sendgrid_invalid(names: list[str], second: str) -> bool:
    """SendGrid's invalid emails: unix times, and a reason that is none of our words."""
    record = _record(names, second)
    return bool(_UNIX_TIME.fullmatch(record.get("created", ""))) and not reason_of(
        record.get("reason")
    )


def _rfc2822(names: list[str], second: str) -> bool:
    return bool(_RFC2822.match(_record(names, second).get("created_at", "").lower()))


def _is_mailchimp(names: list[str]) -> bool:
    marks = ("unsub_", "clean_", "member_rating", "optin_time", "leid", "euid")
    return "email address" in names and any(name.startswith(marks) for name in names)


def _is_ses_csv(fields: list[str]) -> bool:
    """``emailAddress,reason`` or a first record like ``user@example.com,BOUNCE``."""
    names = [name.strip().lower() for name in fields]
    return names == ["emailaddress", "reason"] or (
        len(fields) == 2 and fields[1].strip() in ("BOUNCE", "COMPLAINT")
    )


def _digest_kind(first: str, second: str) -> str | None:
    """sha256 or md5 when the first record, or the one after a header word, is a digest."""
    kind = digest_of(first)
    if kind is None and HEADER_WORD.fullmatch(first):
        kind = digest_of(first_field(second).lower())
    return kind


def digest_of(value: str) -> DigestKind | None:
    if DIGESTS["sha256"].fullmatch(value):
        return "sha256"
    return "md5" if DIGESTS["md5"].fullmatch(value) else None
