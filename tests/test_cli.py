"""The optgate command line: suppress, consent, subject, explain, store; in-process and real."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import hashlib
import io
import itertools
import json
import os
import re
import secrets
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from gateway.cli import main as cli
from suppression import importing
from suppression.address import normalize
from suppression.model import HeldRequest, now
from suppression.opening import open_store
from tests.support.backends import BACKENDS, POSTGRES
from tests.support.digests import content_digests
from tests.support.keys import AUDIT_KEY

pytestmark = pytest.mark.pure

OPTGATE = Path(sys.prefix) / "bin" / "optgate"
BASH = shutil.which("bash") or "/bin/bash"
SINCE = re.compile(r"since (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)$")


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()


Run = Callable[..., Result]


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A new store (made by `optgate store migrate`) named by OPTGATE_STORE_URL, as a user
    would set it; the token key file in the test's state directory; cwd is tmp_path."""
    for name in list(os.environ):
        if name.startswith("OPTGATE_"):
            monkeypatch.delenv(name)
    path = tmp_path / "store" / "optgate.db"
    monkeypatch.setenv("OPTGATE_STORE_URL", f"sqlite:///{path}")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["store", "migrate"]) == 0
    return path


@pytest.fixture
def optgate(db: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Run:
    """Run ``optgate ARGS`` in-process: exit code, stdout, stderr."""

    def run(*argv: str, stdin: bytes | None = None) -> Result:
        if stdin is not None:
            monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
        try:
            code = cli.main(list(argv))
        except SystemExit as exc:  # argparse: usage errors, --help, --version
            code = int(exc.code or 0)
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    capsys.readouterr()
    return run


def console(
    db: Path, *argv: str, stdin: str | None = None, prefix: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """Run the real console script, the way a shell would."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPTGATE_")}
    env["OPTGATE_STORE_URL"] = f"sqlite:///{db}"
    return subprocess.run(  # noqa: S603 - our own console script
        [*prefix, str(OPTGATE), *argv],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def sql(db: Path, query: str, *params: object) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(db)) as conn:
        return conn.execute(query, params).fetchall()


def count(db: Path, table: str) -> int:
    if not db.exists():
        return 0
    return int(sql(db, f"SELECT count(*) FROM {table}")[0][0])


def one_line_error(err: str, *needles: str) -> None:
    assert err.count("\n") == 1, err
    assert err.startswith("optgate: "), err
    for needle in needles:
        assert needle in err, (needle, err)


def write(path: Path, data: str | bytes) -> str:
    if isinstance(data, str):
        data = data.encode()
    path.write_bytes(data)
    return str(path)


def exported(run: Run, *options: str) -> list[dict[str, str]]:
    result = run("suppress", "export", "--format", "jsonl", *options)
    assert result.code == 0, result
    return [json.loads(line) for line in result.lines]


def reasons(run: Run, *options: str) -> dict[str, str]:
    return {row["email"] or row["sha256"]: row["reason"] for row in exported(run, *options)}


# suppress add / check / remove ----------------------------------------------


def test_add_then_check_one_line_per_address_exit_1(optgate: Run) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    added = optgate("suppress", "add", "Jane@Example.com", "--reason", "complained")
    after = datetime.now(UTC)
    assert added.code == 0
    assert added.out == "suppressed 1 new, 0 already (global)\n"

    result = optgate("suppress", "check", "jane@example.com", "other@example.com")
    assert result.code == 1
    first, second = result.lines
    fields = first.split("\t")
    assert fields[:4] == ["jane@example.com", "suppressed", "global", "complained"]
    match = SINCE.fullmatch(fields[4])
    assert match is not None, fields[4]
    since = datetime.strptime(match[1], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert before <= since <= after
    assert second == "other@example.com\tnot suppressed"


def test_check_exits_0_when_none_is_suppressed(optgate: Run) -> None:
    optgate("suppress", "add", "someone@example.com")
    result = optgate("suppress", "check", "a@example.com", "b@example.org")
    assert result.code == 0
    assert result.lines == ["a@example.com\tnot suppressed", "b@example.org\tnot suppressed"]


def test_adding_twice_is_reported_as_already(optgate: Run, db: Path) -> None:
    optgate("suppress", "add", "a@example.com")
    again = optgate("suppress", "add", "A@EXAMPLE.COM", "b@example.com", "b@example.com")
    assert again.out == "suppressed 1 new, 2 already (global)\n"
    assert count(db, "suppression") == 2


def test_domain_suppression_covers_every_address_at_the_domain(optgate: Run) -> None:
    assert optgate("suppress", "add", "@Example.NET").code == 0
    result = optgate(
        "suppress", "check", "x@example.net", "Y@EXAMPLE.NET", "z@sub.example.net", "w@example.org"
    )
    assert result.code == 1
    x, y, sub, other = result.lines
    assert x.split("\t")[:4] == ["x@example.net", "suppressed", "domain global", "manual"]
    assert y.split("\t")[1:3] == ["suppressed", "domain global"]
    assert sub == "z@sub.example.net\tnot suppressed"  # a domain, not its subdomains
    assert other == "w@example.org\tnot suppressed"

    assert optgate("suppress", "remove", "@example.net").code == 0
    assert optgate("suppress", "check", "x@example.net").code == 0


def test_topic_scope(optgate: Run) -> None:
    optgate("suppress", "add", "t@example.com", "--scope", "topic:news", "--reason", "unsubscribed")
    optgate("consent", "add", "t@example.com", "--purpose", "news")
    optgate("consent", "add", "t@example.com", "--purpose", "deals")
    check = optgate("suppress", "check", "t@example.com")
    assert check.code == 1
    assert check.lines[0].split("\t")[1:4] == ["suppressed", "topic:news", "unsubscribed"]
    assert optgate("explain", "t@example.com", "--topic", "news").code == 1
    assert optgate("explain", "t@example.com", "--topic", "deals").code == 0


def test_remove_lifts_in_its_scope_only_and_is_audited(optgate: Run, db: Path) -> None:
    optgate("suppress", "add", "r@example.com")
    optgate("suppress", "add", "r@example.com", "--scope", "topic:news")
    removed = optgate("suppress", "remove", "r@example.com", "--scope", "topic:news")
    assert removed.out == "lifted 1 suppression(s) in topic:news; 0 had none\n"
    remaining = optgate("suppress", "check", "r@example.com")
    assert [line.split("\t")[2] for line in remaining.lines] == ["global"]

    removed = optgate("suppress", "remove", "r@example.com", "nobody@example.com")
    assert removed.out == "lifted 1 suppression(s) in global; 1 had none\n"
    assert optgate("suppress", "check", "r@example.com").code == 0
    key = hashlib.sha256(b"r@example.com").hexdigest()
    assert sql(db, "SELECT action FROM audit WHERE subject = ? ORDER BY seq", key) == [
        ("suppress",),
        ("suppress",),
        ("unsuppress",),
        ("unsuppress",),
    ]


def test_remove_lifts_an_md5_list_entry_too(optgate: Run, tmp_path: Path) -> None:
    md5 = hashlib.md5(b"m@example.org").hexdigest()  # noqa: S324 - the partners' format
    optgate("suppress", "import", write(tmp_path / "partner.md5", f"md5\n{md5}\n"))
    assert optgate("suppress", "check", "M@example.org").code == 1
    removed = optgate("suppress", "remove", "m@example.org")
    assert removed.out == "lifted 1 suppression(s) in global; 0 had none\n"
    assert optgate("suppress", "check", "m@example.org").code == 0


def test_an_invalid_address_is_an_error_and_nothing_is_stored(optgate: Run, db: Path) -> None:
    result = optgate("suppress", "add", "good@example.com", "not an address")
    assert result.code == 2
    assert result.out == ""
    one_line_error(result.err, "'not an address' is not a valid address")
    assert count(db, "suppression") == 0
    assert count(db, "audit") == 0
    for argv in (("check", "bad"), ("remove", "bad@"), ("add", "@not a domain")):
        result = optgate("suppress", *argv)
        assert result.code == 2
        one_line_error(result.err, "not a valid")


@pytest.mark.parametrize(
    "argv",
    [
        ("suppress", "add", "a@example.com", "--reason", "bored"),
        ("suppress", "add", "a@example.com", "--scope", "bogus"),
        ("suppress", "add", "a@example.com", "--scope", "topic:Bad Name"),
        ("consent", "add", "a@example.com", "--purpose", "Bad Name"),
        ("consent", "add", "a@example.com"),  # --purpose is required
        ("suppress", "import", "x.csv", "--format", "xml"),
        ("suppress",),
    ],
)
def test_bad_options_exit_2_and_store_nothing(
    optgate: Run, db: Path, argv: tuple[str, ...]
) -> None:
    result = optgate(*argv)
    assert result.code == 2
    assert result.err.strip()
    assert count(db, "suppression") == 0


# suppress import ------------------------------------------------------------

CSV_WITH_HEADER = (
    "Name,Email,Reason\n"
    "Jane,jane@example.com,unsubscribe\n"
    "Rick,rick@example.com,spam\n"
    "Nobody,not-an-address,\n"
    "Jane again,JANE@example.com,unsubscribed\n"
    "Ann,ann@example.com,\n"
)


def test_import_csv_with_header_summary(optgate: Run, tmp_path: Path) -> None:
    result = optgate("suppress", "import", write(tmp_path / "list.csv", CSV_WITH_HEADER))
    assert result.code == 0
    assert result.out == (
        "format csv: read 5, added 3, already present 0, invalid 1 (lines 4), duplicates 1\n"
    )
    assert reasons(optgate) == {
        "jane@example.com": "unsubscribed",
        "rick@example.com": "complained",
        "ann@example.com": "imported",
    }


def test_reimporting_the_same_file_changes_nothing(optgate: Run, db: Path, tmp_path: Path) -> None:
    path = write(tmp_path / "list.csv", CSV_WITH_HEADER)
    optgate("suppress", "import", path)
    rows = sql(db, "SELECT * FROM suppression ORDER BY key")
    events = count(db, "audit")
    again = optgate("suppress", "import", path)
    assert again.code == 0
    assert again.out == (
        "format csv: read 5, added 0, already present 3, invalid 1 (lines 4), duplicates 1\n"
    )
    assert sql(db, "SELECT * FROM suppression ORDER BY key") == rows
    assert count(db, "audit") == events
    assert optgate("store", "verify").code == 0


@pytest.mark.parametrize(
    ("name", "data", "expected"),
    [
        ("plain", "# unsubscribes\na@example.com\n\nB@example.com\n", {"a@example.com"}),
        ("jsonl", '{"email": "a@example.com"}\n"b@example.com"\n', {"a@example.com"}),
        ("csv", "email;name\na@example.com;A\nb@example.com;B\n", {"a@example.com"}),
        (
            "sha256",
            "sha256\n" + hashlib.sha256(b"a@example.com").hexdigest() + "\n"
            f"{hashlib.sha256(b'b@example.com').hexdigest()}\n",
            {hashlib.sha256(b"a@example.com").hexdigest()},
        ),
    ],
)
def test_import_detects_the_format(
    optgate: Run, tmp_path: Path, name: str, data: str, expected: set[str]
) -> None:
    result = optgate("suppress", "import", write(tmp_path / "list.txt", data))
    assert result.code == 0, result
    assert result.out.startswith(f"format {name}: read 2, added 2,")
    assert optgate("suppress", "check", "a@example.com", "b@example.com").code == 1
    assert expected <= set(reasons(optgate))


def test_import_reads_stdin(optgate: Run) -> None:
    result = optgate(
        "suppress",
        "import",
        "-",
        "--scope",
        "topic:news",
        stdin=b"s1@example.com\ns2@example.com\n",
    )
    assert result.code == 0, result
    assert result.out.startswith("format plain: read 2, added 2,")
    assert {r["scope"] for r in exported(optgate)} == {"topic:news"}


def test_reason_option_overrides_the_file(optgate: Run, tmp_path: Path) -> None:
    path = write(tmp_path / "list.csv", CSV_WITH_HEADER)
    assert optgate("suppress", "import", path, "--reason", "bounced").code == 0
    assert set(reasons(optgate).values()) == {"bounced"}


SENDGRID_BOUNCES = (
    "email,created,status,reason\n"
    'gone@example.com,1700000000,5.1.1,"550 5.1.1 The email account does not exist"\n'
)
SENDGRID_SPAM = "email,created,ip\nspam@example.com,2023-11-14 22:13:20,192.0.2.7\n"
SENDGRID_UNSUBSCRIBES = "email,created\nunsub@example.com,1700000000\n"
MAILCHIMP_HEAD = (
    '"Email Address","First Name","Last Name",MEMBER_RATING,OPTIN_TIME,OPTIN_IP,'
    "CONFIRM_TIME,CONFIRM_IP,LATITUDE,LONGITUDE,GMTOFF,DSTOFF,TIMEZONE,CC,REGION,"
)
MAILCHIMP_UNSUBSCRIBED = (
    MAILCHIMP_HEAD + "UNSUB_TIME,UNSUB_CAMPAIGN_TITLE,UNSUB_CAMPAIGN_ID,UNSUB_REASON,"
    "UNSUB_REASON_OTHER,LEID,EUID,NOTES,TAGS\r\n"
    'jane@example.com,Jane,Doe,2,,,,,,,,,,,,"2023-11-14 22:13:20","Sale",abc,NORMAL,,1,2,,\r\n'
    'rick@example.com,Rick,Roe,1,,,,,,,,,,,,"2023-11-14 22:13:20","Sale",abc,SPAM,,3,4,,\r\n'
)
MAILCHIMP_CLEANED = (
    MAILCHIMP_HEAD + "CLEAN_TIME,CLEAN_CAMPAIGN_TITLE,CLEAN_CAMPAIGN_ID,LEID,EUID,NOTES,TAGS\n"
    'cleaned@example.com,,,1,,,,,,,,,,,,"2023-11-14 22:13:20","Sale",abc,5,6,,\n'
)
SES_CSV = "bounce@example.com,BOUNCE\ncomplaint@example.com,COMPLAINT\n"
SES_CLI = json.dumps(
    {
        "SuppressedDestinationSummaries": [
            {"EmailAddress": "b2@example.com", "Reason": "BOUNCE", "LastUpdateTime": 1700000000},
            {"EmailAddress": "c2@example.com", "Reason": "COMPLAINT", "LastUpdateTime": 1700000000},
        ],
        "NextToken": "token",
    },
    indent=2,
)


@pytest.mark.parametrize("fmt", ["auto", "explicit"])
@pytest.mark.parametrize(
    ("esp", "data", "expected"),
    [
        ("sendgrid", SENDGRID_BOUNCES, {"gone@example.com": "bounced"}),
        ("sendgrid", SENDGRID_SPAM, {"spam@example.com": "complained"}),
        ("sendgrid", SENDGRID_UNSUBSCRIBES, {"unsub@example.com": "unsubscribed"}),
        (
            "mailchimp",
            MAILCHIMP_UNSUBSCRIBED,
            {"jane@example.com": "unsubscribed", "rick@example.com": "complained"},
        ),
        ("mailchimp", MAILCHIMP_CLEANED, {"cleaned@example.com": "bounced"}),
        (
            "ses",
            SES_CSV,
            {"bounce@example.com": "bounced", "complaint@example.com": "complained"},
        ),
        ("ses", SES_CLI, {"b2@example.com": "bounced", "c2@example.com": "complained"}),
    ],
)
def test_esp_exports_keep_their_meaning(
    optgate: Run, tmp_path: Path, fmt: str, esp: str, data: str, expected: dict[str, str]
) -> None:
    path = write(tmp_path / f"{esp}.export", data)
    result = optgate("suppress", "import", path, "--format", esp if fmt == "explicit" else "auto")
    assert result.code == 0, result
    assert reasons(optgate) == expected


def test_esp_times_are_kept(optgate: Run, tmp_path: Path) -> None:
    optgate("suppress", "import", write(tmp_path / "unsubs.csv", SENDGRID_UNSUBSCRIBES))
    (row,) = exported(optgate)
    assert row["created"] == "2023-11-14T22:13:20Z"


# bad input --------------------------------------------------------------------


def test_missing_file(optgate: Run, db: Path) -> None:
    result = optgate("suppress", "import", "nope.csv")
    assert result.code == 2
    one_line_error(result.err, "nope.csv", "No such file")
    assert count(db, "audit") == 0


def test_directory(optgate: Run, db: Path, tmp_path: Path) -> None:
    (tmp_path / "adir").mkdir()
    result = optgate("suppress", "import", "adir")
    assert result.code == 2
    one_line_error(result.err, "adir", "directory")
    assert count(db, "suppression") == 0


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x00\x01\x02\x03binary\xff\xfe" * 64, "junk.bin:1: "),
        (b"a@example.com\nb@example.com\n\x00\x00\x00\x00\n", "junk.bin:3: binary data"),
        ("a@example.com\n".encode("utf-16"), "junk.bin:1: UTF-16"),
        (b"a@example.com\nb@exam\xe9ple.com\n", "junk.bin:2: not valid UTF-8"),
    ],
)
def test_binary_junk(optgate: Run, db: Path, tmp_path: Path, data: bytes, message: str) -> None:
    result = optgate("suppress", "import", write(tmp_path / "junk.bin", data))
    assert result.code == 2
    one_line_error(result.err, message)
    assert count(db, "suppression") == 0


def test_truncated_quote_names_the_line(optgate: Run, db: Path, tmp_path: Path) -> None:
    data = 'email,name\na@example.com,"Ann"\nb@example.com,"Bo\n'
    result = optgate("suppress", "import", write(tmp_path / "cut.csv", data))
    assert result.code == 2
    one_line_error(result.err, "cut.csv:3: unterminated quoted field")
    assert count(db, "suppression") == 0


def test_a_file_that_breaks_after_many_batches_imports_nothing(
    optgate: Run, db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(importing, "BATCH", 2)
    optgate("suppress", "add", "before@example.com")
    before = sql(db, "SELECT * FROM suppression"), sql(db, "SELECT * FROM audit")
    data = "email\n" + "".join(f"u{i}@example.com\n" for i in range(5)) + '"u5@example.com\n'
    path = write(tmp_path / "cut.csv", data)
    result = optgate("suppress", "import", path)
    assert result.code == 2
    one_line_error(result.err, "cut.csv:7: unterminated quoted field; nothing was imported")
    assert (sql(db, "SELECT * FROM suppression"), sql(db, "SELECT * FROM audit")) == before
    assert optgate("store", "verify").code == 0

    # fixed and run again: all of it is added, in one audited run
    write(tmp_path / "cut.csv", data.replace('"u5', "u5"))
    again = optgate("suppress", "import", path)
    assert again.out.startswith("format csv: read 6, added 6, already present 0,")
    assert count(db, "audit") == len(before[1]) + 1


@pytest.mark.parametrize(
    ("fmt", "message"),
    [
        ("jsonl", "list.csv:1: not a JSON line"),
        ("sha256", "list.csv:2: not a sha256 digest"),
        ("md5", "list.csv:2: not a md5 digest"),
        ("plain", "list.csv:1: more than one field; use --format csv"),
        ("mailchimp", "list.csv:1: not a Mailchimp export"),
    ],
)
def test_wrong_format(optgate: Run, db: Path, tmp_path: Path, fmt: str, message: str) -> None:
    path = write(tmp_path / "list.csv", CSV_WITH_HEADER)
    result = optgate("suppress", "import", path, "--format", fmt)
    assert result.code == 2, result
    one_line_error(result.err, message)
    assert count(db, "suppression") == 0


def test_digests_given_as_csv_say_which_format(optgate: Run, tmp_path: Path) -> None:
    digest = hashlib.sha256(b"a@example.com").hexdigest()
    result = optgate(
        "suppress", "import", write(tmp_path / "h.csv", f"{digest}\n"), "--format", "csv"
    )
    assert result.code == 2
    one_line_error(result.err, "h.csv:1: looks like sha256 digests; use --format sha256")


def test_locked_database(optgate: Run, db: Path, tmp_path: Path) -> None:
    optgate("suppress", "add", "before@example.com")
    path = write(tmp_path / "list.txt", "locked1@example.com\nlocked2@example.com\n")
    with closing(sqlite3.connect(db, isolation_level=None)) as other:
        other.execute("BEGIN EXCLUSIVE")
        result = optgate("suppress", "import", path)  # waits for the busy timeout, then fails
        other.execute("ROLLBACK")
    assert result.code == 2
    one_line_error(result.err, str(db), "locked")
    assert {row["email"] for row in exported(optgate)} == {"before@example.com"}


def test_store_in_a_missing_directory(
    optgate: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "no" / "such" / "dir" / "x.db"
    monkeypatch.setenv("OPTGATE_STORE_URL", f"sqlite:///{missing}")
    result = optgate("suppress", "check", "a@example.com")
    assert result.code == 2
    one_line_error(result.err, f"no optgate store at {missing}: ")
    assert not missing.parent.exists()


def test_store_that_is_not_a_database(
    optgate: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = write(tmp_path / "notes.txt", "these are not the pages you are looking for\n" * 200)
    monkeypatch.setenv("OPTGATE_STORE_URL", f"sqlite:///{other}")
    result = optgate("suppress", "add", "a@example.com")
    assert result.code == 2
    one_line_error(result.err, other, "not a database")
    assert Path(other).read_text().startswith("these are not")


def test_unsupported_store_url(optgate: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPTGATE_STORE_URL", "mysql://db/optgate")
    result = optgate("suppress", "check", "a@example.com")
    assert result.code == 2
    one_line_error(result.err, "mysql://db/optgate")


# suppress export ----------------------------------------------------------------


def test_export_formats_to_stdout_and_file(optgate: Run, tmp_path: Path) -> None:
    optgate("suppress", "add", "Jane.Doe@Example.COM", "--reason", "unsubscribed")
    optgate("suppress", "add", "@blocked.example")
    addr = b"jane.doe@example.com"
    sha, md5 = hashlib.sha256(addr).hexdigest(), hashlib.md5(addr).hexdigest()  # noqa: S324

    text = optgate("suppress", "export")
    assert text.lines[0] == "email,sha256,scope,reason,source,created,evidence"
    rows = list(csv.DictReader(io.StringIO(text.out)))
    assert {r["email"]: (r["sha256"], r["reason"]) for r in rows} == {
        "jane.doe@example.com": (sha, "unsubscribed"),
        # a cell starting with @ is a formula to a spreadsheet: written with a ' first
        "'@blocked.example": (hashlib.sha256(b"@blocked.example").hexdigest(), "manual"),
    }
    assert text.err == "exported 2, skipped 0\n"

    sha_export = optgate("suppress", "export", "--format", "sha256")
    assert sha_export.lines == [sha]  # address hashes only: a domain is not an address
    assert sha_export.err == "exported 1, skipped 1\n"
    md5_export = optgate("suppress", "export", "--format", "md5")
    assert md5_export.lines == [md5]  # a domain has no MD5 form
    assert md5_export.err == "exported 1, skipped 1\n"

    out = tmp_path / "out.jsonl"
    to_file = optgate("suppress", "export", "--format", "jsonl", "-o", str(out))
    assert to_file.out == ""
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert {row["email"] for row in lines} == {"jane.doe@example.com", "@blocked.example"}
    assert set(lines[0]) == {"email", "sha256", "scope", "reason", "source", "created", "evidence"}


def test_export_to_an_unwritable_place(optgate: Run, tmp_path: Path) -> None:
    target = tmp_path / "missing" / "out.csv"
    result = optgate("suppress", "export", "-o", str(target))
    assert result.code == 2
    one_line_error(result.err, str(target))


def test_csv_export_has_one_header_past_a_page(optgate: Run, tmp_path: Path) -> None:
    total = 6001  # more than the 5,000 rows of one export page
    data = "".join(f"user{i}@example.com\n" for i in range(total))
    assert optgate("suppress", "import", write(tmp_path / "many.txt", data)).code == 0
    out = tmp_path / "out.csv"
    result = optgate("suppress", "export", "-o", str(out))
    assert result.err == f"exported {total}, skipped 0\n"
    lines = out.read_text().splitlines()
    assert lines.count("email,sha256,scope,reason,source,created,evidence") == 1
    assert lines[0] == "email,sha256,scope,reason,source,created,evidence"
    assert len(lines) == total + 1
    md5 = optgate("suppress", "export", "--format", "md5").lines
    assert len(md5) == total
    assert hashlib.md5(b"user77@example.com").hexdigest() in set(md5)  # noqa: S324


def test_exported_csv_reimports_to_the_same_set(
    optgate: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    optgate("suppress", "add", "a@example.com", "--reason", "unsubscribed")
    optgate("suppress", "add", "b@example.com", "--reason", "complained")
    optgate("suppress", "add", "@blocked.example", "--reason", "manual")
    md5 = hashlib.md5(b"partner@example.org").hexdigest()  # noqa: S324
    sha = hashlib.sha256(b"hashed@example.org").hexdigest()
    optgate("suppress", "import", write(tmp_path / "p.md5", f"{md5}\n"), "--format", "md5")
    optgate("suppress", "import", write(tmp_path / "p.sha", f"{sha}\n"), "--reason", "bounced")
    path = tmp_path / "export.csv"
    assert optgate("suppress", "export", "-o", str(path)).code == 0

    def comparable(rows: list[dict[str, str]]) -> set[tuple[str, ...]]:
        return {(r["email"], r["sha256"], r["scope"], r["reason"], r["created"]) for r in rows}

    original = comparable(exported(optgate))
    assert len(original) == 5
    monkeypatch.setenv("OPTGATE_STORE_URL", f"sqlite:///{tmp_path / 'fresh.db'}")
    assert optgate("store", "migrate").code == 0
    result = optgate("suppress", "import", str(path))
    assert result.out == "format csv: read 5, added 5, already present 0, invalid 0, duplicates 0\n"
    assert comparable(exported(optgate)) == original
    assert optgate("suppress", "check", "x@blocked.example", "partner@example.org").code == 1


# imports that refuse, skip and tell ------------------------------------------------------


def test_a_file_of_invalid_rows_only_exits_1_with_its_summary(optgate: Run, tmp_path: Path) -> None:
    result = optgate("suppress", "import", write(tmp_path / "bad.txt", "nope\nworse@\n"))
    assert result.code == 1
    assert result.out == (
        "format plain: read 2, added 0, already present 0, invalid 2 (lines 1, 2), duplicates 0\n"
    )
    consents = optgate(
        "consent", "import", write(tmp_path / "bad.csv", "email\nnope\n"), "--purpose", "news"
    )
    assert consents.code == 1


def test_json_summaries(optgate: Run, tmp_path: Path) -> None:
    path = write(tmp_path / "list.csv", CSV_WITH_HEADER)
    result = optgate("suppress", "import", path, "--json")
    assert result.code == 0
    assert json.loads(result.out) == {
        "format": "csv",
        "read": 5,
        "added": 3,
        "present": 0,
        "invalid": 1,
        "invalid_lines": [4],
        "unknown_partner_rows": 0,
        "unknown_partner_scopes": [],
        "duplicates": 1,
        "policy_blocks_skipped": 0,
    }
    exported_json = optgate("suppress", "export", "--format", "jsonl", "--json")
    assert len(exported_json.lines) == 3
    assert json.loads(exported_json.err) == {"format": "jsonl", "exported": 3, "skipped": 0}
    data = "email,purpose\njane@example.com,news\n"
    consent = optgate("consent", "import", write(tmp_path / "c.csv", data), "--json")
    assert json.loads(consent.out)["added"] == 1
    consent_out = optgate("consent", "export", "--json", "-o", str(tmp_path / "out.csv"))
    assert (consent_out.out, json.loads(consent_out.err)) == (
        "",
        {"format": "csv", "exported": 1, "skipped": 0},
    )
    assert optgate("consent", "export").err == "exported 1, skipped 0\n"


MAILCHIMP_SUBSCRIBED = (
    MAILCHIMP_HEAD + "LAST_CHANGED,LEID,EUID,NOTES,TAGS\n"
    'fan@example.com,Fan,,2,"2023-11-14 22:13:20",203.0.113.9,,,,,,,,,,'
    '"2023-11-14 22:13:20",7,8,,\n'
)


@pytest.mark.parametrize(
    "data",
    [
        MAILCHIMP_SUBSCRIBED,
        "email,status\nkeep@example.com,unsubscribed\nfan@example.com,subscribed\n",
        "Email,Status\nfan@example.com,Active\n",
    ],
)
def test_a_list_of_subscribers_is_refused_unless_allowed(
    optgate: Run, db: Path, tmp_path: Path, data: str
) -> None:
    optgate("store", "migrate")
    path = write(tmp_path / "members.csv", data)
    before = count(db, "audit")
    refused = optgate("suppress", "import", path)
    assert refused.code == 2
    one_line_error(refused.err, "list of subscribers", "--allow-subscribed", "nothing was imported")
    assert count(db, "suppression") == 0
    assert count(db, "audit") == before
    allowed = optgate("suppress", "import", path, "--allow-subscribed")
    assert allowed.code == 0
    assert "fan@example.com" in reasons(optgate)


SENDGRID_BOUNCES_AND_BLOCKS = (
    "email,created,status,reason\n"
    'gone@example.com,1700000000,5.1.1,"550 5.1.1 The email account does not exist"\n'
    'blocked@example.com,1700000000,5.7.1,"554 5.7.1 Service unavailable; Client host '
    '[192.0.2.1] blocked using zen.spamhaus.org"\n'
    'policy@example.com,1700000000,5.0.0,"550 Message rejected due to local policy"\n'
)


def test_policy_blocks_are_not_recorded_as_hard_bounces(optgate: Run, tmp_path: Path) -> None:
    result = optgate(
        "suppress", "import", write(tmp_path / "bounces.csv", SENDGRID_BOUNCES_AND_BLOCKS)
    )
    assert result.code == 0, result
    assert result.out == (
        "format sendgrid: read 3, added 1, already present 0, invalid 0, duplicates 0, "
        "policy blocks skipped 2\n"
    )
    assert reasons(optgate) == {"gone@example.com": "bounced"}


SES_TEXT = (
    "AAAAexampleNextToken\n"
    "SUPPRESSEDDESTINATIONSUMMARIES\tb3@example.com\t2023-11-14T22:13:20.123000+00:00\tBOUNCE\n"
    "SUPPRESSEDDESTINATIONSUMMARIES\tc3@example.com\t2023-11-14T22:13:20+00:00\tCOMPLAINT\n"
)
MAILGUN_JSON = json.dumps(
    {
        "items": [
            {
                "address": "mg@example.com",
                "code": "550",
                "error": "No such user",
                "created_at": "Tue, 14 Nov 2023 22:13:20 UTC",
            },
            {
                "address": "mu@example.com",
                "tags": ["*"],
                "created_at": "Tue, 14 Nov 2023 22:13:20 UTC",
            },
        ],
        "paging": {"next": "https://api.mailgun.net/v3/example.com/bounces?page=next"},
    },
    indent=2,
)
POSTMARK_DUMP = json.dumps(
    {
        "Suppressions": [
            {
                "EmailAddress": "pm@example.com",
                "SuppressionReason": "SpamComplaint",
                "Origin": "Recipient",
                "CreatedAt": "2023-11-14T17:13:20-05:00",
            },
        ]
    }
)


@pytest.mark.parametrize(
    ("data", "shown", "expected"),
    [
        (SES_TEXT, "ses (text)", {"b3@example.com": "bounced", "c3@example.com": "complained"}),
        (
            MAILGUN_JSON,
            "mailgun (json)",
            {"mg@example.com": "bounced", "mu@example.com": "unsubscribed"},
        ),
        (POSTMARK_DUMP, "postmark (json)", {"pm@example.com": "complained"}),
        (
            SENDGRID_INVALID
            := "email,created,reason\nnope@example.com,1700000000,Mail domain unknown\n",
            "sendgrid",
            {"nope@example.com": "invalid"},
        ),
    ],
)
def test_more_esp_exports_and_the_format_each_was_read_as(
    optgate: Run, tmp_path: Path, data: str, shown: str, expected: dict[str, str]
) -> None:
    result = optgate("suppress", "import", write(tmp_path / "export.txt", data))
    assert result.code == 0, result
    assert result.out.startswith(f"format {shown}: read {len(expected)}, added {len(expected)},")
    assert reasons(optgate) == expected
    assert {row["created"][:19] for row in exported(optgate)} == {"2023-11-14T22:13:20"}


def test_rows_keep_their_scope_and_a_conflicting_option_is_refused(
    optgate: Run, db: Path, tmp_path: Path
) -> None:
    data = "email,scope\na@example.com,topic:news\nb@example.com,\nc@example.com,partner:acme\n"
    path = write(tmp_path / "scoped.csv", data)
    refused = optgate("suppress", "import", path, "--scope", "topic:news")
    assert refused.code == 2
    one_line_error(
        refused.err, "scoped.csv:4: the row's scope partner:acme is not --scope topic:news"
    )
    assert count(db, "suppression") == 0
    assert optgate("partner", "add", "acme").code == 0
    assert optgate("suppress", "import", path).code == 0
    assert {(r["email"], r["scope"]) for r in exported(optgate)} == {
        ("a@example.com", "topic:news"),
        ("b@example.com", "global"),
        ("c@example.com", "partner:acme"),
    }


def test_consent_import_takes_each_rows_purpose(optgate: Run, tmp_path: Path) -> None:
    data = "email,purpose,state\na@example.com,news,granted\na@example.com,partner-offers,revoked\n"
    path = write(tmp_path / "c.csv", data)
    assert optgate("consent", "import", path).code == 0
    rows = list(csv.DictReader(io.StringIO(optgate("consent", "export").out)))
    assert [(r["purpose"], r["state"]) for r in rows] == [
        ("news", "granted"),
        ("partner-offers", "revoked"),
    ]
    conflict = optgate("consent", "import", path, "--purpose", "news")
    assert conflict.code == 2
    one_line_error(conflict.err, "c.csv:3: the row's purpose partner-offers is not --purpose news")
    missing = optgate("consent", "import", write(tmp_path / "n.csv", "email\nb@example.com\n"))
    assert missing.code == 2
    one_line_error(missing.err, "n.csv:2: no purpose: give --purpose or a purpose column")


# export, then import: the same state -------------------------------------------------------


@contextlib.contextmanager
def postgres_databases(count: int) -> Iterator[list[str]]:
    """Fresh PostgreSQL databases for the command line; dropped afterwards."""
    names = [f"optgate_test_{secrets.token_hex(6)}" for _ in range(count)]

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(POSTGRES, timeout=5)
        try:
            for name in names:
                await conn.execute(sql.format(name))
        finally:
            await conn.close()

    asyncio.run(admin('CREATE DATABASE "{}"'))
    try:
        yield [POSTGRES.rsplit("/", 1)[0] + "/" + name for name in names]
    finally:
        asyncio.run(admin('DROP DATABASE IF EXISTS "{}" WITH (FORCE)'))


@pytest.fixture(params=BACKENDS)
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[list[str]]:
    """The URLs of three new stores of one backend."""
    if request.param == "sqlite":
        yield [f"sqlite:///{tmp_path / f'store{n}.db'}" for n in range(3)]
        return
    with postgres_databases(3) as urls:
        yield urls


# rows no other command makes: every source, evidence, times with microseconds, a topic
# and a partner scope, a hash-only row in a topic, cells a spreadsheet would run
HISTORY = (
    "email,sha256,scope,reason,source,created,evidence\n"
    "oneclick@example.com,,global,unsubscribed,one-click,2024-02-03T04:05:06.789012Z,"
    '"{""channel"": ""one-click"", ""ip"": ""192.0.2.7"", ""token_issued"": 1700000000}"\n'
    "web@example.com,,topic:news,unsubscribed,web,2024-02-03T04:05:06Z,\n"
    "mailbox@example.com,,global,unsubscribed,mailbox,2024-02-03T04:05:07Z,\n"
    'bounce@example.com,,global,bounced,bounce,2024-02-03T04:05:08.5Z,"{""status"": ""5.1.1""}"\n'
    "complaint@example.com,,global,complained,complaint,2024-02-03T04:05:09Z,\n"
    "api@example.com,,partner:acme,unsubscribed,api,2024-02-03T04:05:10Z,\n"
    "invalid@example.com,,global,invalid,import,2024-02-03T04:05:11Z,\n"
    f",{hashlib.sha256(b'gone@example.com').hexdigest()},topic:deals,manual,cli,"
    "2020-01-01T00:00:00Z,\n"
    "=cmd@example.com,,global,manual,=web,2024-02-03T04:05:12Z,\n"
    "+plus@example.com,,global,manual,cli,2024-02-03T04:05:13Z,\n"
    "-minus@example.com,,global,manual,cli,2024-02-03T04:05:14Z,\n"
    "'quote@example.com,,global,manual,cli,2024-02-03T04:05:15Z,\n"
)
CONSENT_HISTORY = (
    "email,purpose,state,source,policy_version,created,evidence\n"
    'c1@example.com,news,granted,web,3,2024-01-01T10:00:00.123456Z,"{""ip"": ""198.51.100.1""}"\n'
    "c1@example.com,partner-offers,granted,import,,2024-01-02T10:00:00Z,\n"
    "c1@example.com,news,revoked,web,3,2024-03-01T10:00:00Z,\n"
    "c2@example.com,marketing,granted,=form,-1,2024-01-03T10:00:00Z,\n"
    "erased@example.com,news,granted,web,2,2024-01-04T10:00:00Z,\n"
)


def test_export_then_import_gives_the_same_state(
    optgate: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stores: list[str]
) -> None:
    """Every kind of entry, exported as csv and as jsonl, imported into an empty store:
    the tables' content (all but the columns naming audit events) has the same digest."""

    def use(number: int) -> str:
        monkeypatch.setenv("OPTGATE_STORE_URL", stores[number])
        monkeypatch.setenv("OPTGATE_STORE_AUDIT_ANCHOR_FILE", str(tmp_path / f"{number}.head"))
        assert optgate("store", "migrate").code == 0
        if optgate("partner", "list").out.startswith("no partners"):  # partner:acme rows
            assert optgate("partner", "add", "acme").code == 0
        return stores[number]

    source = use(0)
    optgate("suppress", "add", "Manual@Example.com", "@blocked.example", "--reason", "manual")
    optgate(
        "suppress", "add", "news@example.com", "--scope", "topic:news", "--reason", "complained"
    )
    md5 = hashlib.md5(b"partner@example.org").hexdigest()  # noqa: S324 - a partner's list
    assert optgate("suppress", "import", write(tmp_path / "p.md5", f"{md5}\n")).code == 0
    assert optgate("suppress", "import", write(tmp_path / "history.csv", HISTORY)).code == 0
    optgate("consent", "add", "ann@example.com", "--purpose", "news", "--policy-version", "4")
    optgate("consent", "revoke", "ann@example.com", "--purpose", "news")
    imported = optgate("consent", "import", write(tmp_path / "consents.csv", CONSENT_HISTORY))
    assert imported.code == 0, imported
    optgate("suppress", "add", "erased@example.com", "--scope", "topic:news")
    assert optgate("subject", "erase", "erased@example.com").code == 0  # tombstone, hash only
    original = asyncio.run(content_digests(source))
    counts = {table: rows for table, (rows, _) in original.items()}
    assert counts == {"suppression": 18, "consent": 8}

    for number, fmt in enumerate(("csv", "jsonl"), start=1):
        use(0)
        suppressions, consents = tmp_path / f"s.{fmt}", tmp_path / f"c.{fmt}"
        assert optgate("suppress", "export", "--format", fmt, "-o", str(suppressions)).code == 0
        assert optgate("consent", "export", "--format", fmt, "-o", str(consents)).code == 0
        target = use(number)
        first = optgate("suppress", "import", str(suppressions))
        rows = counts["suppression"]
        assert first.out.startswith(f"format {fmt}: read {rows}, added {rows}, "), first
        second = optgate("consent", "import", str(consents))
        rows = counts["consent"]
        assert second.out.startswith(f"format {fmt}: read {rows}, added {rows}, "), second
        assert asyncio.run(content_digests(target)) == original, fmt
        assert optgate("store", "verify").code == 0
    assert "\n'=cmd@example.com," in (tmp_path / "s.csv").read_text().replace("\r", "")


@pytest.mark.sockets
def test_a_rows_partner_scope_must_name_a_known_partner(stores: list[str], tmp_path: Path) -> None:
    """The known partners are read once; a row for another one is an invalid row (its
    line and scope in the summary), a file of nothing else exits 1."""
    env = _environment(stores[0], tmp_path)

    def optgate_run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(  # noqa: S603 - our own console script
            [str(OPTGATE), *argv], env=env, capture_output=True, text=True, check=False
        )

    assert optgate_run("store", "migrate").returncode == 0
    assert optgate_run("partner", "add", "acme").returncode == 0
    rows = (
        "email,scope\na@example.com,partner:acme\nb@example.com,partner:nobody\n"
        "c@example.com,global\nd@example.com,partner:nobody\ne@example.com,partner:ghost\n"
    )
    mixed = optgate_run("suppress", "import", write(tmp_path / "mixed.csv", rows))
    assert (mixed.returncode, mixed.stderr) == (0, "")
    assert mixed.stdout == (
        "format csv: read 5, added 2, already present 0, invalid 3 (lines 3, 5, 6; "
        "3 name no known partner: partner:nobody, partner:ghost), duplicates 0\n"
    )
    export = optgate_run("suppress", "export")
    assert {(r["email"], r["scope"]) for r in csv.DictReader(io.StringIO(export.stdout))} == {
        ("a@example.com", "partner:acme"),
        ("c@example.com", "global"),
    }

    nobody = write(tmp_path / "nobody.csv", "email,scope\nx@example.com,partner:nobody\n")
    only = optgate_run("suppress", "import", nobody, "--json")
    assert only.returncode == 1, only
    summary = json.loads(only.stdout)
    assert (summary["read"], summary["added"], summary["invalid_lines"]) == (1, 0, [2])
    assert summary["unknown_partner_rows"] == 1
    assert summary["unknown_partner_scopes"] == ["partner:nobody"]


# restoring an older backup, as deploy/README.md says -------------------------------------

DEPLOY_README = Path(__file__).resolve().parent.parent / "deploy" / "README.md"


def backup_blocks() -> list[str]:
    """The shell blocks (indented four spaces) of deploy/README.md's Backups section."""
    section = DEPLOY_README.read_text().split("## Backups", 1)[1].split("\n## ", 1)[0]
    blocks, block = [], []
    for line in [*section.splitlines(), ""]:
        if line.startswith("    ") and not line.startswith("    -"):
            block.append(line[4:])
        elif block and line.strip() == "":
            blocks.append("\n".join(block))
            block = []
    return blocks


def _copy_store(url: str, to: str) -> None:
    """``to`` made a copy of the store at ``url`` (SQLite's backup API; a PostgreSQL
    database made from the other as its template)."""
    if url.startswith("sqlite"):
        source, target = (Path(u.removeprefix("sqlite:///")) for u in (url, to))
        for stale in (target, target.with_name(target.name + "-wal")):
            stale.unlink(missing_ok=True)
        with closing(sqlite3.connect(source)) as a, closing(sqlite3.connect(target)) as b:
            a.backup(b)
        return

    async def admin() -> None:
        conn = await asyncpg.connect(POSTGRES, timeout=5)
        try:
            name, copy = (u.rsplit("/", 1)[1] for u in (url, to))
            await conn.execute(f'DROP DATABASE IF EXISTS "{copy}" WITH (FORCE)')
            await conn.execute(f'CREATE DATABASE "{copy}" TEMPLATE "{name}"')
        finally:
            await conn.close()

    asyncio.run(admin())


@pytest.mark.sockets
def test_restoring_an_older_backup_as_the_deploy_readme_says(
    stores: list[str], tmp_path: Path
) -> None:
    """The Backups section's own commands, run by bash: an older backup restored fails
    verify (the anchor is newer); re-anchored it passes; the erasures since the backup,
    kept as a list of hashes, are made again, and nobody erased is back."""
    live, saved = stores[0], stores[1]
    state, backup, bin_dir = tmp_path / "state", tmp_path / "backup", tmp_path / "bin"
    for folder in (state, backup, bin_dir):
        folder.mkdir()
    (bin_dir / "optgate").symlink_to(OPTGATE)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPTGATE_")}
    env |= {"OPTGATE_STORE_URL": live, "OPTGATE_STORE_STATE_DIR": str(state)}
    env["PATH"] = f"{bin_dir}:{env['PATH']}"

    def shell(script: str) -> subprocess.CompletedProcess[str]:
        script = script.replace("/var/lib/optgate", str(state)).replace("/backup", str(backup))
        return subprocess.run(  # noqa: S603 - bash running the README's commands
            [BASH, "-euo", "pipefail", "-c", script],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )

    def ok(script: str) -> str:
        done = shell(script)
        assert done.returncode == 0, (script, done.stdout, done.stderr)
        return done.stdout

    ok("optgate store migrate")
    ok("optgate suppress add ann@example.com bob@example.com")
    ok("optgate consent add cat@example.com --purpose news --policy-version 1")
    ok("optgate store verify")
    _copy_store(live, saved)  # the backup
    for person in ("bob", "cat"):
        ok(f"optgate subject erase {person}@example.com")
    ok("optgate suppress add dan@example.com && optgate subject erase dan@example.com")
    ok("optgate store verify")  # the anchor: the newer head
    [keep_list] = [b for b in backup_blocks() if "> /backup/erased-hashes.txt" in b]
    ok(keep_list)
    assert len((backup / "erased-hashes.txt").read_text().split()) == 3

    _copy_store(saved, live)  # the restore
    refused = shell("optgate store verify")
    assert refused.returncode == 1
    assert "before the head" in refused.stdout, refused.stdout
    assert "its newest events were removed" in refused.stdout
    [reanchor] = [b for b in backup_blocks() if b.startswith("mv ")]
    assert "audit log intact" in ok(reanchor)
    assert (state / "optgate-audit.head").exists()
    assert any(backup.glob("optgate-audit.head.before-restore-*"))
    [erase_again] = [b for b in backup_blocks() if "while read -r address" in b]
    ok(erase_again)

    exported = ok("optgate suppress export; optgate consent export")
    for person in ("bob", "cat", "dan"):
        assert f"{person}@example.com" not in exported, exported
        key = hashlib.sha256(f"{person}@example.com".encode()).hexdigest()
        assert f",{key},global,erased," in exported, (person, exported)
    assert "ann@example.com" in exported
    assert "audit log intact" in ok("optgate store verify")


# kills -------------------------------------------------------------------------------------


def _snapshot(url: str) -> tuple[object, ...]:
    """Every row of the tables an import writes, the audit log included."""

    async def read() -> tuple[object, ...]:
        if url.startswith("sqlite"):
            with closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as conn:
                return tuple(
                    conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()
                    for table in ("suppression", "consent", "audit")
                )
        conn = await asyncpg.connect(url)
        try:
            found = []
            for table in ("suppression", "consent", "audit"):
                rows = await conn.fetch(f"SELECT * FROM {table} ORDER BY 1, 2")
                found.append([tuple(row) for row in rows])
            return tuple(found)
        finally:
            await conn.close()

    return asyncio.run(read())


def _environment(url: str, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPTGATE_")}
    env["OPTGATE_STORE_URL"] = url
    env["OPTGATE_STORE_AUDIT_KEY_FILE"] = str(tmp_path / "audit.key")
    env["OPTGATE_STORE_AUDIT_ANCHOR_FILE"] = str(tmp_path / "audit.head")
    return env


def _prepared(url: str, tmp_path: Path) -> dict[str, str]:
    env = _environment(url, tmp_path)
    for argv in (("store", "migrate"), ("suppress", "add", "before@example.com")):
        subprocess.run([str(OPTGATE), *argv], env=env, check=True, capture_output=True)  # noqa: S603
    return env


@pytest.mark.parametrize("command", ["suppress", "consent"])
@pytest.mark.sockets
def test_an_import_killed_midway_keeps_nothing(
    stores: list[str], tmp_path: Path, command: str
) -> None:
    """60,001 rows read (6 batches staged, or appended inside the run's transaction),
    the file not at its end, then SIGKILL: the store is as it was."""
    env = _prepared(stores[0], tmp_path)
    before = _snapshot(stores[0])
    argv = [str(OPTGATE), command, "import", "-", *(["--purpose", "news"] * (command == "consent"))]
    process = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stderr=subprocess.PIPE)  # noqa: S603
    assert process.stdin is not None
    process.stdin.write(b"email\n" + b"".join(b"k%06d@example.com\n" % n for n in range(60_001)))
    process.stdin.flush()
    time.sleep(2)  # it reads what there is, then waits for more
    assert process.poll() is None, process.stderr.read() if process.stderr else ""
    process.kill()
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    assert _snapshot(stores[0]) == before
    verified = subprocess.run(  # noqa: S603
        [str(OPTGATE), "store", "verify"], env=env, capture_output=True, text=True, check=False
    )
    assert verified.returncode == 0, verified.stdout


@pytest.mark.sockets
def test_an_import_killed_in_its_merge_keeps_nothing(tmp_path: Path) -> None:
    """Killed once the merge writes pages to the WAL (staging writes none there): the
    transaction never committed, SQLite rolls it back, nothing of it stays."""
    path = tmp_path / "store.db"
    env = _prepared(f"sqlite:///{path}", tmp_path)
    before = _snapshot(f"sqlite:///{path}")
    source = tmp_path / "big.csv"
    with source.open("wb") as out:
        out.write(b"email\n" + b"".join(b"m%06d@example.com\n" % n for n in range(400_000)))
    process = subprocess.Popen(  # noqa: S603
        [str(OPTGATE), "suppress", "import", str(source)], env=env, stderr=subprocess.PIPE
    )
    wal = Path(f"{path}-wal")
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        if wal.exists() and wal.stat().st_size > 2 << 20:
            process.kill()
            break
        time.sleep(0.002)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL, "the import ended before its merge was seen"
    assert _snapshot(f"sqlite:///{path}") == before
    verified = subprocess.run(  # noqa: S603
        [str(OPTGATE), "store", "verify"], env=env, capture_output=True, text=True, check=False
    )
    assert verified.returncode == 0, verified.stdout


# consent and explain ---------------------------------------------------------------


def test_explain_says_why(optgate: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    optgate("consent", "add", "sup@example.com", "--purpose", "marketing", "--policy-version", "3")
    optgate("suppress", "add", "sup@example.com", "--reason", "unsubscribed")
    optgate("consent", "add", "revoked@example.com", "--purpose", "marketing")
    optgate("consent", "revoke", "revoked@example.com", "--purpose", "marketing")
    optgate("consent", "add", "old@example.com", "--purpose", "marketing", "--policy-version", "2")
    optgate("consent", "add", "ok@example.com", "--purpose", "marketing", "--policy-version", "3")
    optgate("consent", "add", "ten@example.com", "--purpose", "marketing", "--policy-version", "10")
    monkeypatch.setenv("OPTGATE_POLICY_CONSENT_VERSIONS", '{marketing="3"}')
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    head = "marketing mail on topic 'marketing' to"
    expected = {
        "sup@example.com": (
            1,
            "would NOT be sent: the address is suppressed (global, unsubscribed",
        ),
        "none@example.com": (1, "would NOT be sent: there is no consent for marketing on record"),
        "revoked@example.com": (
            1,
            f"would NOT be sent: consent for marketing was revoked on {today} via cli",
        ),
        "old@example.com": (
            1,
            "would NOT be sent: consent for marketing was given under policy version 2, "
            "but version 3 or later is required",
        ),
        "ok@example.com": (
            0,
            f"would be sent: consent for marketing given on {today} via cli under policy version 3",
        ),
        "ten@example.com": (0, "would be sent: consent for marketing given on"),
    }
    for address, (code, words) in expected.items():
        result = optgate("explain", address)
        assert result.code == code, result
        assert result.out.startswith(f"{head} {address} {words}"), result.out
        assert len(result.lines) == 1

    other = optgate("explain", "ok@example.com", "--topic", "news")
    assert other.code == 1
    assert "there is no consent for news on record" in other.out

    monkeypatch.setenv("OPTGATE_POLICY_REQUIRE_CONSENT", "false")
    open_policy = optgate("explain", "none@example.com")
    assert (open_policy.code, open_policy.out) == (
        0,
        f"{head} none@example.com would be sent: not suppressed, and consent is not required\n",
    )

    invalid = optgate("explain", "not-an-address")  # a bad input, as for every command
    assert (invalid.code, invalid.out) == (2, "")
    one_line_error(invalid.err, "'not-an-address' is not a valid address")


def test_explain_uses_the_default_topic(optgate: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    optgate("consent", "add", "a@example.com", "--purpose", "weekly")
    assert optgate("explain", "a@example.com").code == 1
    monkeypatch.setenv("OPTGATE_POLICY_DEFAULT_TOPIC", "weekly")
    result = optgate("explain", "a@example.com")
    assert result.code == 0
    assert result.out.startswith("marketing mail on topic 'weekly' to a@example.com would be sent")


def test_consent_import_and_export(optgate: Run, tmp_path: Path) -> None:
    data = (
        "email,policy_version,ip,created\n"
        "jane@example.com,3,192.0.2.1,2024-05-01T10:00:00Z\n"
        "not-an-address,,,\n"
        "rick@example.com,,,\n"
    )
    result = optgate(
        "consent",
        "import",
        write(tmp_path / "c.csv", data),
        "--purpose",
        "news",
        "--policy-version",
        "2",
    )
    assert result.code == 0
    assert result.out == (
        "format csv: read 3, added 2, already present 0, invalid 1 (lines 3), duplicates 0\n"
    )
    optgate("consent", "add", "other@example.com", "--purpose", "deals")

    exported_csv = optgate("consent", "export", "--purpose", "news")
    rows = list(csv.DictReader(io.StringIO(exported_csv.out)))
    assert [(r["email"], r["state"], r["policy_version"], r["source"]) for r in rows] == [
        ("jane@example.com", "granted", "3", "import"),
        ("rick@example.com", "granted", "2", "import"),
    ]
    assert rows[0]["created"] == "2024-05-01T10:00:00Z"
    assert json.loads(rows[0]["evidence"])["ip"] == "192.0.2.1"
    assert rows[1]["sha256"] == hashlib.sha256(b"rick@example.com").hexdigest()

    everything = optgate("consent", "export", "--format", "jsonl")
    assert [json.loads(line)["purpose"] for line in everything.lines] == ["news", "news", "deals"]
    explained = optgate("explain", "jane@example.com", "--topic", "news")
    assert "given on 2024-05-01 via import under policy version 3" in explained.out


def test_consent_export_reimports_with_its_revocations(
    optgate: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    optgate("consent", "add", "stays@example.com", "--purpose", "news", "--policy-version", "4")
    optgate("consent", "add", "left@example.com", "--purpose", "news")
    optgate("consent", "revoke", "left@example.com", "--purpose", "news")
    path = tmp_path / "consents.csv"
    assert optgate("consent", "export", "--purpose", "news", "-o", str(path)).code == 0

    monkeypatch.setenv("OPTGATE_STORE_URL", f"sqlite:///{tmp_path / 'fresh.db'}")
    assert optgate("store", "migrate").code == 0
    result = optgate("consent", "import", str(path))  # the file names each row's purpose
    assert result.out == "format csv: read 3, added 3, already present 0, invalid 0, duplicates 0\n"
    assert optgate("explain", "stays@example.com", "--topic", "news").code == 0
    left = optgate("explain", "left@example.com", "--topic", "news")
    assert left.code == 1
    assert "was revoked" in left.out


def test_consent_import_twice_changes_nothing(optgate: Run, db: Path, tmp_path: Path) -> None:
    data = (
        "email,created,state,source\n"
        "jane@example.com,2024-05-01T10:00:00Z,,\n"
        "rick@example.com,,,\n"
        "gone@example.com,2024-05-01T10:00:00Z,revoked,shop\n"
        "jane@example.com,2024-05-01T12:00:00+02:00,,\n"
        "not-an-address,,,\n"
    )
    path = write(tmp_path / "c.csv", data)
    first = optgate("consent", "import", path, "--purpose", "news")
    assert first.out == (
        "format csv: read 5, added 3, already present 0, invalid 1 (lines 6), duplicates 1\n"
    )
    records, events = sql(db, "SELECT * FROM consent"), sql(db, "SELECT * FROM audit")
    export = optgate("consent", "export").out

    second = optgate("consent", "import", path, "--purpose", "news")
    assert second.out == (
        "format csv: read 5, added 0, already present 3, invalid 1 (lines 6), duplicates 1\n"
    )
    assert sql(db, "SELECT * FROM consent") == records
    assert sql(db, "SELECT * FROM audit") == events
    assert optgate("consent", "export").out == export
    # the store's own export, imported back, is on record too
    assert optgate("consent", "export", "-o", "all.csv").code == 0
    back = optgate("consent", "import", "all.csv", "--purpose", "news")
    assert back.out == "format csv: read 3, added 0, already present 3, invalid 0, duplicates 0\n"
    assert len(sql(db, "SELECT * FROM audit")) == len(events)


# subject --------------------------------------------------------------------------


def test_subject_show_is_json_and_is_audited(optgate: Run, db: Path) -> None:
    optgate("suppress", "add", "Sam@Example.com", "--scope", "topic:news")
    optgate("suppress", "add", "@example.com", "--reason", "complained")
    optgate("consent", "add", "sam@example.com", "--purpose", "news", "--policy-version", "2")
    optgate("suppress", "add", "unrelated@example.org")

    first = optgate("subject", "show", "SAM@example.com")
    assert first.code == 0
    shown = json.loads(first.out)
    key = hashlib.sha256(b"sam@example.com").hexdigest()
    assert (shown["address"], shown["sha256"]) == ("sam@example.com", key)
    assert {(s["kind"], s["scope"], s["reason"]) for s in shown["suppressions"]} == {
        ("sha256", "topic:news", "manual"),
        ("domain", "global", "complained"),
    }
    (consent,) = shown["consents"]
    assert (consent["purpose"], consent["granted"], consent["policy_version"]) == (
        "news",
        True,
        "2",
    )
    assert [e["action"] for e in shown["events"]] == ["suppress", "suppress", "consent"]

    second = json.loads(optgate("subject", "show", "sam@example.com").out)
    assert [e["action"] for e in second["events"]][-1] == "subject-access"
    accesses = sql(db, "SELECT actor, subject FROM audit WHERE action = 'subject-access'")
    assert len(accesses) == 2
    assert {subject for _, subject in accesses} == {key}
    assert all(actor.startswith("cli:") for actor, _ in accesses)


def test_subject_erase_keeps_the_hash_and_forgets_the_rest(
    optgate: Run, db: Path, tmp_path: Path
) -> None:
    person = "zed.secret@example.com"
    data = f"email,ip,form\n{person},192.0.2.55,newsletter-footer\nann@example.com,192.0.2.2,x\n"
    optgate("consent", "import", write(tmp_path / "c.csv", data), "--purpose", "marketing")
    optgate("suppress", "import", write(tmp_path / "s.txt", f"{person}\nbob@example.com\n"))
    optgate("suppress", "add", person, "--scope", "topic:news")
    (tmp_path / "c.csv").unlink()
    (tmp_path / "s.txt").unlink()

    erased = optgate("subject", "erase", person.upper())
    assert erased.code == 0
    assert erased.out.startswith(
        "erased plaintext and evidence from 3 record(s), revoked 1 consent(s)"
    )

    check = optgate("suppress", "check", person)
    assert check.code == 1
    assert sorted(line.split("\t")[2:4] for line in check.lines) == [
        ["global", "erased"],
        ["topic:news", "manual"],
    ]
    explained = optgate("explain", person)
    assert explained.code == 1
    assert "the address is suppressed (global, erased" in explained.out

    for table in ("suppression", "consent", "audit"):
        for row in sql(db, f"SELECT * FROM {table}"):
            assert not any(person in str(value) for value in row), (table, row)
            assert not any("192.0.2.55" in str(value) for value in row), (table, row)
    assert person.encode() not in db.read_bytes(), "no copy in free pages either"
    others = sql(db, "SELECT address FROM suppression WHERE address IS NOT NULL")
    assert others == [("bob@example.com",)]

    shown = json.loads(optgate("subject", "show", person).out)
    assert all(s["address"] is None and s["evidence"] is None for s in shown["suppressions"])
    assert all(c["address"] is None and c["evidence"] is None for c in shown["consents"])
    assert "erase" in [e["action"] for e in shown["events"]]


def _seed_held_records(url: str, person: str) -> None:
    """What a running gateway would store about ``person``: a held opt-out by mail, a soft
    bounce, an offer of partner acme planned for its audience (``person`` consented)."""

    async def seed() -> None:
        store = await open_store(url, audit_key=AUDIT_KEY)
        try:
            key = normalize(person).sha256
            held = HeldRequest("5" * 64, key, "unsubscribe", "global", now(), '{"channel": "x"}')
            await store.hold_request(held, actor="test")
            await store.record_soft_bounce(key, "6" * 64, at=now(), actor="test", detail={})
            await store.add_offer("acme", None, b"Subject: offer\r\n\r\nhi\r\n", actor="t")
            assert await store.plan_offers() == 1
        finally:
            await store.close()

    asyncio.run(seed())


@pytest.mark.sockets
def test_subject_show_lists_everything_erase_clears(stores: list[str], tmp_path: Path) -> None:
    """show lists the held request, soft bounce, webhook event, offer copy and kept inbound
    message beside the rows; after erase no plaintext or kept message is left to list."""
    person = "held.person@example.com"
    env = _environment(stores[0], tmp_path)
    (tmp_path / "audit.key").write_text(AUDIT_KEY.hex() + "\n")
    kept = tmp_path / "kept"
    kept.mkdir()
    env["OPTGATE_INBOUND_KEEP_RAW"] = str(kept)
    (kept / "in-1.eml").write_bytes(f"From: <{person.upper()}>\r\n\r\nstop\r\n".encode())
    (kept / "in-2.eml").write_bytes(b"From: <other@example.com>\r\n\r\nstop\r\n")

    def run(*argv: str) -> str:
        done = subprocess.run(  # noqa: S603 - our own console script
            [str(OPTGATE), *argv], env=env, capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, done
        return done.stdout

    run("store", "migrate")
    run("partner", "add", "acme")
    run("consent", "add", person, "--purpose", "partner-offers", "--policy-version", "1")
    run("webhooks", "add", "http://127.0.0.1:9/hook", "--events", "all", "--include-address")
    run("suppress", "add", person, "--scope", "topic:news")
    _seed_held_records(stores[0], person)

    shown = json.loads(run("subject", "show", person))
    assert [h["action"] for h in shown["held_requests"]] == ["unsubscribe"]
    assert [b["message"] for b in shown["soft_bounces"]] == ["6" * 64]
    events = shown["webhook_events"]
    assert [e["type"] for e in events] == ["suppression.added"]
    assert {e["address"] for e in events} == {person}
    assert [(c["partner"], c["state"]) for c in shown["offer_copies"]] == [("acme", "todo")]
    assert shown["kept_messages"] == [str(kept / "in-1.eml")]

    run("subject", "erase", person)
    after = json.loads(run("subject", "show", person))
    del after["address"]  # the address asked about
    assert person not in json.dumps(after)
    assert after["kept_messages"] == []
    assert (kept / "in-2.eml").exists()
    assert all(e["address"] is None for e in after["webhook_events"])
    tombstones = [s for s in after["suppressions"] if s["scope"] == "global"]
    assert [(s["reason"], s["kind"]) for s in tombstones] == [("erased", "sha256")]


def test_no_plaintext_address_in_the_audit_log(optgate: Run, db: Path, tmp_path: Path) -> None:
    people = ["p1@example.com", "p2@example.com", "p3@example.com"]
    optgate("suppress", "add", people[0])
    optgate("suppress", "add", "@example.net")
    optgate("suppress", "import", write(tmp_path / "list.txt", "\n".join(people) + "\n"))
    optgate("suppress", "remove", people[0])
    optgate("consent", "add", *people, "--purpose", "news", "--policy-version", "1")
    optgate(
        "consent", "import", write(tmp_path / "c.csv", f"email\n{people[1]}\n"), "--purpose", "x"
    )
    optgate("consent", "revoke", people[2], "--purpose", "news")
    optgate("subject", "show", people[1])
    optgate("subject", "erase", people[2])
    bodies = sql(db, "SELECT actor, action, subject, body FROM audit")
    assert len(bodies) >= 9
    for row in bodies:
        text = "\t".join(str(value) for value in row)
        assert "@" not in text, row  # neither an address nor a domain


# store verify -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tamper", "at", "problem"),
    [
        (
            'UPDATE audit SET body = replace(body, \'"scope":"global"\', \'"scope":"x"\') '
            "WHERE seq = 2",
            2,
            "its content does not match its digest",
        ),
        ("DELETE FROM audit WHERE seq = 2", 3, "expected event 2, found 3"),
        ("UPDATE audit SET prev = digest WHERE seq = 2", 2, "its link to the previous event"),
    ],
)
def test_store_verify_finds_tampering(
    optgate: Run, db: Path, tamper: str, at: int, problem: str
) -> None:
    for address in ("v1@example.com", "v2@example.com", "v3@example.com"):
        optgate("suppress", "add", address)
    ok = optgate("store", "verify")
    assert ok.code == 0
    assert ok.out.startswith("audit log intact: 3 events, head ")
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.execute(tamper)
    broken = optgate("store", "verify")
    assert broken.code == 1
    assert broken.out.startswith(f"audit log BROKEN at event {at}: ")
    assert problem in broken.out


def test_store_verify_rebuilds_the_state_and_anchors_the_head(
    optgate: Run, db: Path, state_directory: Path
) -> None:
    for address in ("v1@example.com", "v2@example.com"):
        optgate("suppress", "add", address)
    ok = optgate("store", "verify")
    assert ok.code == 0
    head = re.search(r"head (\d+:[0-9a-f]{64})", ok.out)
    assert head is not None
    assert "state matches: the tables suppression (2 rows), consent (0 rows)" in ok.out
    assert (state_directory / "optgate-audit.head").read_text().strip() == head.group(1)
    assert optgate("store", "verify", "--expect", head.group(1)).code == 0

    # the newest event cut off with its row: the chain that is left holds, the anchor not
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("DELETE FROM audit WHERE seq = 2")
        conn.execute("DELETE FROM suppression WHERE address = 'v2@example.com'")
    cut = optgate("store", "verify")
    assert cut.code == 1
    assert "newest events were removed" in cut.out
    (state_directory / "optgate-audit.head").unlink()
    assert optgate("store", "verify").code == 0, "only the anchor can tell"
    forgotten = optgate("store", "verify", "--expect", head.group(1))
    assert forgotten.code == 1, "the head printed earlier is proof enough"

    # a person made mailable again behind optgate's back
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("DELETE FROM suppression WHERE address = 'v1@example.com'")
    report = json.loads(optgate("store", "verify", "--json").out)
    assert report["intact"] is False
    assert report["mismatches"] == [
        {"table": "suppression", "expected": 1, "found": 0, "events": [1]}
    ]
    assert optgate("store", "verify", "--expect", "nonsense").code == 2


def _behind_its_back(url: str, statement: str) -> list[tuple[Any, ...]]:
    """Run SQL on a store with no optgate in between; its rows."""

    async def run() -> list[tuple[Any, ...]]:
        if url.startswith("sqlite"):
            with closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as conn, conn:
                return conn.execute(statement).fetchall()
        conn = await asyncpg.connect(url)
        try:
            return [tuple(row) for row in await conn.fetch(statement)]
        finally:
            await conn.close()

    return asyncio.run(run())


def _head(url: str) -> str:
    """The store's chain head as ``SEQ:DIGEST``."""
    [(seq, digest)] = _behind_its_back(
        url, "SELECT seq, digest FROM audit ORDER BY seq DESC LIMIT 1"
    )
    return f"{seq}:{digest}"


def _run(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    """The console script, as a shell runs it."""
    return subprocess.run(  # noqa: S603 - our own console script
        [str(OPTGATE), *argv], env=env, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.sockets
def test_an_opt_out_cut_with_its_event_before_any_verify_is_caught(
    stores: list[str], tmp_path: Path
) -> None:
    """The review's case: an opt-out added, then its row and its audit event deleted with
    SQL before anything verified; the head its command anchored tells."""
    url, env = stores[0], _environment(stores[0], tmp_path)
    assert _run(env, "store", "migrate").returncode == 0
    for address in ("kept@example.com", "cut@example.com"):
        assert _run(env, "suppress", "add", address).returncode == 0
    head = _head(url)
    assert (tmp_path / "audit.head").read_text() == head + "\n"
    seq = int(head.split(":")[0])
    _behind_its_back(url, f"DELETE FROM audit WHERE seq = {seq}")
    _behind_its_back(url, "DELETE FROM suppression WHERE address = 'cut@example.com'")
    cut = _run(env, "store", "verify")
    assert cut.returncode == 1, cut.stdout
    assert cut.stdout == (
        f"audit log BROKEN at event {seq}: the log ends at event {seq - 1}, before the head "
        f"{seq} anchored before: its newest events were removed\n"
    )


@pytest.mark.sockets
def test_every_command_that_audits_anchors_its_head_as_it_commits(
    stores: list[str], tmp_path: Path
) -> None:
    """No verify in between: after each write the anchor is the store's head, one event
    further (an import is one transaction); a command that changes nothing leaves it."""
    url, env = stores[0], _environment(stores[0], tmp_path)
    anchor = tmp_path / "audit.head"
    assert _run(env, "store", "migrate").returncode == 0
    rows = write(tmp_path / "rows.csv", "email\ni1@example.com\ni2@example.com\ni3@example.com\n")
    writes = [
        ("suppress", "add", "a@example.com"),
        ("consent", "add", "c@example.com", "--purpose", "news"),
        ("suppress", "remove", "a@example.com"),
        ("suppress", "import", rows),
        ("consent", "import", rows, "--purpose", "news"),
    ]
    seen = 0
    for argv in writes:
        assert _run(env, *argv).returncode == 0, argv
        head = anchor.read_text().strip()
        assert head == _head(url), argv
        assert int(head.split(":")[0]) == seen + 1, argv
        seen += 1
    assert _run(env, "suppress", "import", rows).returncode == 0  # every row already there
    assert anchor.read_text().strip() == _head(url)
    assert int(anchor.read_text().split(":")[0]) == seen


@pytest.mark.sockets
def test_concurrent_writers_leave_the_highest_head_anchored(
    stores: list[str], tmp_path: Path
) -> None:
    """Eight commands at once, each anchoring as it commits: the anchor ends at the head
    the last of them committed, never a lower one written after it."""
    url, env = stores[0], _environment(stores[0], tmp_path)
    assert _run(env, "store", "migrate").returncode == 0
    writers = [
        subprocess.Popen(  # noqa: S603 - our own console script
            [str(OPTGATE), "suppress", "add", f"w{n}@example.com"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for n in range(8)
    ]
    for writer in writers:
        assert writer.wait(timeout=60) == 0, writer.stderr.read() if writer.stderr else ""
    assert (tmp_path / "audit.head").read_text().strip() == _head(url)
    assert _head(url).startswith("8:")
    assert _run(env, "store", "verify").returncode == 0


def test_a_failing_anchor_write_warns_and_keeps_the_change(
    optgate: Run, db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The change is committed before its head is anchored: an anchor that cannot be
    written is a warning (no address in it), not a failed command."""
    (tmp_path / "not-a-directory").write_text("")
    monkeypatch.setenv("OPTGATE_STORE_AUDIT_ANCHOR_FILE", str(tmp_path / "not-a-directory/head"))
    added = optgate("suppress", "add", "kept@example.com")
    assert added.code == 0, added.err
    [warning] = [line for line in added.out.splitlines() if "audit_unanchored" in line]
    assert "Not a directory" in warning
    assert "@" not in warning
    assert count(db, "suppression") == 1


def test_store_migrate_makes_the_store_its_directory_and_the_key_files(
    optgate: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, state_directory: Path
) -> None:
    path = tmp_path / "new" / "dir" / "optgate.db"
    key = tmp_path / "keys" / "optgate.key"
    monkeypatch.setenv("OPTGATE_STORE_URL", f"sqlite:///{path}")
    monkeypatch.setenv("OPTGATE_UNSUBSCRIBE_KEY_FILE", str(key))
    result = optgate("store", "migrate")
    assert result.code == 0, result
    assert result.lines == [
        f"store sqlite:///{path} is at the current schema",
        f"token keys: made {key}",
    ]
    assert sql(path, "PRAGMA user_version")[0][0] >= 1
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    audit_key = state_directory / "optgate-audit.key"  # the audit chain's, derived
    assert stat.S_IMODE(audit_key.stat().st_mode) == 0o600
    first = key.read_bytes()
    again = optgate("store", "migrate")  # twice: the same store, the same key
    assert again.lines[-1] == f"token keys: {key}"
    assert key.read_bytes() == first
    assert list(key.parent.iterdir()) == [key]  # no temporary file left behind


# version, help, actor -------------------------------------------------------------------


def test_version(optgate: Run) -> None:
    from importlib.metadata import version

    result = optgate("--version")
    assert (result.code, result.out) == (0, f"optgate {version('optgate')}\n")


def command_paths(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[Any]:
    paths: list[tuple[str, ...]] = [prefix]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                paths += command_paths(sub, (*prefix, name))
    return paths


PATHS = command_paths(cli.build_parser())


def test_the_command_tree_is_the_public_contract() -> None:
    for path in [
        ("suppress", "add"),
        ("suppress", "remove"),
        ("suppress", "check"),
        ("suppress", "import"),
        ("suppress", "export"),
        ("consent", "add"),
        ("consent", "revoke"),
        ("consent", "import"),
        ("consent", "export"),
        ("subject", "show"),
        ("subject", "erase"),
        ("explain",),
        ("store", "verify"),
        ("serve",),
    ]:
        assert path in PATHS


@pytest.mark.parametrize("path", PATHS, ids=lambda p: " ".join(p) or "optgate")
def test_help_on_every_command(optgate: Run, path: tuple[str, ...]) -> None:
    result = optgate(*path, "--help")
    assert result.code == 0
    assert result.out.startswith(f"usage: {' '.join(('optgate', *path))}")
    assert result.err == ""


def test_actor_without_a_passwd_entry(
    optgate: Run, db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_user() -> str:  # what getpass does for a uid unknown to /etc/passwd (containers)
        raise KeyError(f"getpwuid(): uid not found: {os.getuid()}")

    monkeypatch.setattr("getpass.getuser", no_user)
    assert optgate("suppress", "add", "a@example.com").code == 0
    assert sql(db, "SELECT actor FROM audit") == [(f"cli:uid-{os.getuid()}",)]


# the real console script ---------------------------------------------------------------


@pytest.mark.sockets
def test_console_script_exit_codes(db: Path) -> None:
    version = console(db, "--version")
    assert version.returncode == 0
    assert version.stdout.startswith("optgate ")
    assert console(db, "suppress", "add", "c@example.com").returncode == 0
    assert console(db, "suppress", "check", "c@example.com").returncode == 1
    assert console(db, "suppress", "check", "d@example.com").returncode == 0
    bad = console(db, "suppress", "check", "nope")
    assert bad.returncode == 2
    one_line_error(bad.stderr, "'nope' is not a valid address")
    usage = console(db, "suppress", "import", "x.csv", "--format", "xml")
    assert usage.returncode == 2
    assert "invalid choice: 'xml'" in usage.stderr


@pytest.mark.sockets
def test_console_script_import_from_stdin_and_bad_files(db: Path, tmp_path: Path) -> None:
    piped = console(db, "suppress", "import", "-", stdin="p1@example.com\nbad\np2@example.com\n")
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout == (
        "format plain: read 3, added 2, already present 0, invalid 1 (lines 2), duplicates 0\n"
    )
    assert piped.stderr == ""  # no progress bar in a pipe

    missing = console(db, "suppress", "import", str(tmp_path / "missing.csv"))
    assert missing.returncode == 2
    one_line_error(missing.stderr, "missing.csv")
    cut = write(tmp_path / "cut.csv", 'email\na@example.com\n"b@example.com\n')
    truncated = console(db, "suppress", "import", cut)
    assert truncated.returncode == 2
    one_line_error(truncated.stderr, "cut.csv:3: unterminated quoted field")
    assert count(db, "suppression") == 2


def _redraws(argv: list[str], env: dict[str, str]) -> tuple[int, list[tuple[float, str]]]:
    """Run a command with stderr on a terminal (a pty): its exit code, and each line it
    drew there with the time it came."""
    leader, follower = os.openpty()
    started = time.monotonic()
    process = subprocess.Popen(  # noqa: S603 - our own console script
        argv, env=env, stdout=subprocess.DEVNULL, stderr=follower
    )
    os.close(follower)
    drawn: list[tuple[float, str]] = []
    with contextlib.suppress(OSError):  # EIO: the process closed the terminal
        while data := os.read(leader, 4096):
            at = time.monotonic() - started
            drawn += [(at, part) for part in data.decode().split("\r\x1b[K") if part.strip()]
    os.close(leader)
    return process.wait(timeout=60), drawn


@pytest.mark.sockets
def test_the_progress_line_shows_the_write_and_is_never_silent_for_long(
    stores: list[str], tmp_path: Path
) -> None:
    """500,000 rows: the line counts the rows read, then says the store is being written
    and redraws while it is (the merge is a good part of the time), twice a second; 2 s
    of slack for a loaded machine."""
    env = _environment(stores[0], tmp_path)
    subprocess.run([str(OPTGATE), "store", "migrate"], env=env, check=True, capture_output=True)  # noqa: S603
    rows = tmp_path / "rows.csv"
    rows.write_text("email\n" + "".join(f"w{n:07d}@example.com\n" for n in range(500_000)))
    code, drawn = _redraws([str(OPTGATE), "suppress", "import", str(rows)], env)
    assert code == 0, drawn
    lines = [line.strip() for _, line in drawn]
    assert any(
        re.fullmatch(
            r"[\d,]+ rows, [\d,]+ rows/s, \d+% read, about \d+ s left to read, then the write", line
        )
        for line in lines
    ), lines
    writing = [line for line in lines if "writing to the store" in line]
    assert len(writing) >= 2, lines  # drawn while it wrote, and once at the end
    assert re.fullmatch(
        r"500,000 rows read; writing to the store: \d+ s so far \(\d+ s in all\)", writing[0]
    )
    times = [at for at, _ in drawn]
    assert max(b - a for a, b in itertools.pairwise(times)) < 2.0, drawn


@pytest.mark.sockets
def test_console_script_bad_configuration(db: Path, tmp_path: Path) -> None:
    config = write(tmp_path / "optgate.toml", '[policy]\naction = "bounce"\n')
    result = console(db, "--config", config, "suppress", "check", "a@example.com")
    assert result.returncode == 2
    one_line_error(result.stderr, "[policy] action", "'bounce'")


def read_only_prefix() -> tuple[str, ...]:
    """Root ignores file modes: drop the capabilities that let it, where setpriv exists."""
    if os.geteuid() != 0:
        return ()
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: a read-only file cannot be simulated")
    caps = "-dac_override,-dac_read_search,-fowner"
    prefix = (setpriv, f"--inh-caps={caps}", f"--bounding-set={caps}")
    probe = subprocess.run([*prefix, "true"], capture_output=True, check=False)  # noqa: S603
    if probe.returncode != 0:
        pytest.skip(f"setpriv cannot drop capabilities here: {probe.stderr!r}")
    return prefix


@pytest.mark.sockets
def test_console_script_read_only_database(db: Path, tmp_path: Path) -> None:
    prefix = read_only_prefix()
    assert console(db, "suppress", "add", "before@example.com").returncode == 0
    db.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    path = write(tmp_path / "list.txt", "ro1@example.com\nro2@example.com\n")
    try:
        result = console(db, "suppress", "import", path, prefix=prefix)
        check = console(db, "suppress", "check", "before@example.com", prefix=prefix)
    finally:
        db.chmod(stat.S_IRUSR | stat.S_IWUSR)
    assert result.returncode != 0
    assert result.stdout == ""
    assert "readonly" in result.stderr or "read-only" in result.stderr
    # TODO(report): the error is a traceback, not one line naming the store (sqlite.py)
    assert check.returncode == 1, "the store still reads"
    assert sql(db, "SELECT address FROM suppression") == [("before@example.com",)]


# no silent new store ------------------------------------------------------------------


def mbox(tmp_path: Path) -> str:
    return write(tmp_path / "inbox.mbox", "From x@y Thu Jan  1 00:00:00 2024\nSubject: hi\n\nhi\n")


NEEDS_A_STORE = [
    ("suppress", "add", "a@example.com"),
    ("suppress", "add", "a@example.com", "--scope", "partner:acme"),
    ("suppress", "remove", "a@example.com"),
    ("suppress", "check", "a@example.com"),
    ("suppress", "import", "{list}"),
    ("suppress", "export"),
    ("consent", "add", "a@example.com", "--purpose", "news"),
    ("consent", "revoke", "a@example.com", "--purpose", "news"),
    ("consent", "request", "a@example.com", "--purpose", "news"),
    ("consent", "import", "{list}", "--purpose", "news"),
    ("consent", "export"),
    ("subject", "show", "a@example.com"),
    ("subject", "erase", "a@example.com"),
    ("explain", "a@example.com"),
    ("report", "compliance"),
    ("store", "verify"),
    ("partner", "add", "acme"),
    ("partner", "list"),
    ("partner", "report", "acme"),
    ("partner", "offers"),
    ("ingest", "{mbox}"),
]


@pytest.mark.parametrize("argv", NEEDS_A_STORE, ids=" ".join)
def test_a_missing_store_is_refused_and_none_is_made(
    optgate: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, argv: tuple[str, ...]
) -> None:
    missing = tmp_path / "elsewhere" / "optgate.db"
    monkeypatch.setenv("OPTGATE_STORE_URL", f"sqlite:///{missing}")
    files = {"list": write(tmp_path / "list.txt", "a@example.com\n"), "mbox": mbox(tmp_path)}
    result = optgate(*(word.format(**files) for word in argv))
    assert result.code == 2, result
    assert result.out == ""
    one_line_error(result.err, f"no optgate store at {missing}:", "optgate store migrate")
    assert not missing.parent.exists()


def test_a_file_without_the_schema_is_missing_too(
    optgate: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, make in (("empty.db", b""), ("other.db", None)):
        path = tmp_path / name
        if make is None:
            with closing(sqlite3.connect(path)) as conn:
                conn.execute("CREATE TABLE notes (text TEXT)")
        else:
            path.write_bytes(make)
        before = path.read_bytes()
        monkeypatch.setenv("OPTGATE_STORE_URL", f"sqlite:///{path}")
        result = optgate("suppress", "add", "a@example.com")
        assert result.code == 2
        one_line_error(result.err, f"no optgate store at {path}", "no optgate schema")
        assert path.read_bytes() == before
        assert sorted(p.name for p in tmp_path.glob(f"{name}*")) == [name], "no WAL made"


@pytest.mark.postgres
@pytest.mark.sockets
async def test_a_postgresql_database_without_the_schema_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    import asyncpg

    from tests.support.backends import postgres_database

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return console_with(env, *argv)

    async with postgres_database() as url:
        env = {"OPTGATE_STORE_URL": url}
        refused = await asyncio.to_thread(run, "suppress", "add", "a@example.com")
        assert refused.returncode == 2
        one_line_error(refused.stderr, f"no optgate store at {url}", "no optgate schema")
        conn = await asyncpg.connect(url)
        try:
            tables = "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
            assert await conn.fetchval(tables) == 0, "nothing was made"
            assert (await asyncio.to_thread(run, "store", "migrate")).returncode == 0
            added = await asyncio.to_thread(run, "suppress", "add", "a@example.com")
            assert added.returncode == 0, added.stderr
        finally:
            await conn.close()
        gone = url.rsplit("/", 1)[0] + "/optgate_no_such_database"
        absent = await asyncio.to_thread(
            console_with, {"OPTGATE_STORE_URL": gone}, "store", "verify"
        )
        assert absent.returncode == 2
        one_line_error(absent.stderr, "no optgate store at", "optgate_no_such_database")


def console_with(
    env: dict[str, str], *argv: str, cwd: Path | None = None, prefix: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """Run the real console script with these variables over the caller's (no OPTGATE_*)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("OPTGATE_")}
    return subprocess.run(  # noqa: S603 - our own console script
        [*prefix, str(OPTGATE), *argv],
        env=base | env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    "argv",
    [
        ("consent", "request", "a@example.com", "--purpose", "news"),
        ("ingest", "{mbox}"),
    ],
    ids=" ".join,
)
def test_a_missing_token_key_file_is_refused_and_none_is_made(
    optgate: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, argv: tuple[str, ...]
) -> None:
    missing = tmp_path / "keys" / "optgate.key"
    monkeypatch.setenv("OPTGATE_UNSUBSCRIBE_KEY_FILE", str(missing))
    result = optgate(*(word.format(mbox=mbox(tmp_path)) for word in argv))
    assert result.code == 2, result
    one_line_error(result.err, f"key_file {missing} does not exist", "optgate store migrate")
    assert not missing.parent.exists()


@dataclass(frozen=True)
class Machine:
    """A fresh machine for the real console script: nothing of optgate's exists yet."""

    env: dict[str, str]  # HOME and XDG_STATE_HOME in tmp dirs; no OPTGATE_*, no $STATE_DIRECTORY
    prefix: tuple[str, ...]  # as root: a mount namespace whose /var/lib is a tmp dir
    state: Path  # where the state directory must appear, as the test sees it
    seen: Path  # the same directory as optgate sees it

    def run(self, *argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
        return console_with(self.env, *argv, cwd=cwd, prefix=self.prefix)


@pytest.fixture
def machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Machine:
    """Non-root: the state directory is $XDG_STATE_HOME/optgate. Root: /var/lib/optgate,
    which the test reaches through a private mount namespace binding a tmp dir there."""
    monkeypatch.delenv("STATE_DIRECTORY")
    env = {"HOME": str(tmp_path / "home"), "XDG_STATE_HOME": str(tmp_path / "xdg")}
    if os.geteuid() != 0:
        state = tmp_path / "xdg" / "optgate"
        return Machine(env, (), state, state)
    varlib = tmp_path / "varlib"
    varlib.mkdir()
    prefix = (
        shutil.which("unshare") or "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        'mount --bind "$0" /var/lib && exec "$@"',
        str(varlib),
    )
    return Machine(env, prefix, varlib / "optgate", Path("/var/lib/optgate"))


@pytest.mark.sockets
def test_every_command_from_any_directory_uses_the_one_state_directory(
    machine: Machine, tmp_path: Path
) -> None:
    here, there = tmp_path / "here", tmp_path / "there"
    here.mkdir()
    there.mkdir()
    refused = machine.run("suppress", "add", "gone@example.com", cwd=here)
    assert refused.returncode == 2
    one_line_error(refused.stderr, f"no optgate store at {machine.seen / 'optgate.db'}")
    assert not machine.state.exists()

    made = machine.run("store", "migrate", cwd=here)
    assert made.returncode == 0, made.stderr
    assert stat.S_IMODE(machine.state.stat().st_mode) == 0o700
    made_files = {p.name for p in machine.state.iterdir()}
    assert {"optgate.db", "optgate.key", "optgate-audit.key"} <= made_files

    assert machine.run("suppress", "add", "gone@example.com", cwd=there).returncode == 0
    assert machine.run("suppress", "check", "gone@example.com", cwd=here).returncode == 1
    assert list(here.iterdir()) == list(there.iterdir()) == []  # no second store, no key
    shown = json.loads(machine.run("config", "show", "--json", cwd=there).stdout)
    assert shown["state_dir"]["path"] == str(machine.seen)
    assert shown["store"] == {
        "url": f"sqlite:///{machine.seen / 'optgate.db'}",
        "from": "derived from the state directory",
        "path": str(machine.seen / "optgate.db"),
        "exists": True,
    }
    assert shown["key_file"]["path"] == str(machine.seen / "optgate.key")
    assert shown["audit_key_file"] == {
        "path": str(machine.seen / "optgate-audit.key"),
        "from": "derived from the state directory",
        "exists": True,
    }
    expected = "XDG_STATE_HOME" if os.geteuid() else "root"
    assert expected in shown["state_dir"]["from"]


@pytest.mark.sockets
async def test_serve_on_a_fresh_machine_makes_the_state_directory(
    machine: Machine, tmp_path: Path
) -> None:
    """The README's first command, as this user (root or not), from some directory."""
    import asyncio
    import signal

    from tests.support.serving import optgate_serve

    here = tmp_path / "here"
    here.mkdir()
    ports = {"OPTGATE_SMTP_LISTEN": "127.0.0.1:0", "OPTGATE_WEB_LISTEN": "127.0.0.1:0"}
    env = machine.env | ports
    async with optgate_serve(
        env, "--workers", "1", ready=1, prefix=machine.prefix, cwd=here
    ) as served:
        assert (machine.state / "optgate.db").exists()
        assert stat.S_IMODE((machine.state / "optgate.key").stat().st_mode) == 0o600
        added = await asyncio.to_thread(
            console_with,
            machine.env,
            "suppress",
            "add",
            "gone@example.com",
            cwd=tmp_path,
            prefix=machine.prefix,
        )
        assert added.returncode == 0, added.stderr
        served.process.send_signal(signal.SIGTERM)
        assert await served.exit_code() == 0
    assert stat.S_IMODE(machine.state.stat().st_mode) == 0o700
    assert list(here.iterdir()) == []


# config show / config example ------------------------------------------------------------


def test_config_show_says_where_each_value_came_from(
    optgate: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db: Path
) -> None:
    chosen = write(
        tmp_path / "optgate.toml",
        '[relay]\nnext_hop = "mx.internal:25"\n[web]\napi_keys = ["s3cret-key"]\n'
        '[unsubscribe]\nkey_file = "keys/optgate.key"\n',
    )
    monkeypatch.setenv("OPTGATE_RELAY_POOL_SIZE", "7")
    result = optgate("--config", chosen, "config", "show")
    assert result.code == 0, result
    assert f"# config file: {chosen}" in result.lines
    assert 'next_hop = "mx.internal:25"  # file ' + chosen in result.lines
    assert "pool_size = 7  # env OPTGATE_RELAY_POOL_SIZE" in result.lines
    assert 'listen = "127.0.0.1:10025"  # default' in result.lines
    assert f'url = "sqlite:///{db}"  # env OPTGATE_STORE_URL' in result.lines
    assert f'key_file = "{tmp_path / "keys" / "optgate.key"}"  # file {chosen}' in result.lines
    assert f"# store: sqlite:///{db} (env OPTGATE_STORE_URL): exists" in result.lines
    assert "s3cret-key" not in result.out
    assert 'api_keys = ["<hidden>"]  # file ' + chosen in result.lines

    shown = json.loads(optgate("--config", chosen, "config", "show", "--json").out)
    assert shown["config_file"] == chosen
    assert shown["settings"]["relay"]["pool_size"] == {
        "value": 7,
        "from": "env OPTGATE_RELAY_POOL_SIZE",
    }
    assert shown["key_file"] == {
        "path": str(tmp_path / "keys" / "optgate.key"),
        "from": f"file {chosen}",
        "exists": False,
    }
    assert shown["settings"]["web"]["api_keys"]["value"] == ["<hidden>"]


def test_config_show_hides_a_database_password(
    optgate: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPTGATE_STORE_URL", "postgresql://optgate:hunter2@db.internal/optgate")
    result = optgate("config", "show")
    assert result.code == 0
    assert "hunter2" not in result.out
    assert 'url = "postgresql://optgate@db.internal/optgate"  # env OPTGATE_STORE_URL' in result.out


@pytest.mark.sockets
def test_config_example_fed_back_loads_to_the_defaults(tmp_path: Path) -> None:
    example = console_with({}, "config", "example")
    assert example.returncode == 0, example.stderr
    assert example.stdout.startswith("# optgate configuration")
    path = write(tmp_path / "example.toml", example.stdout)
    with_file = json.loads(console_with({}, "--config", path, "config", "show", "--json").stdout)
    without = json.loads(console_with({}, "config", "show", "--json").stdout)
    for section, values in without["settings"].items():
        for key, shown in values.items():
            assert with_file["settings"][section][key]["value"] == shown["value"], (section, key)
            if shown["from"] == "default":
                assert with_file["settings"][section][key]["from"] == f"file {path}"


# scripts and pipes --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["suppress", "consent"])
@pytest.mark.sockets
def test_export_into_a_closed_pipe_ends_quietly(db: Path, tmp_path: Path, kind: str) -> None:
    rows = "".join(f"user{i}@example.com\n" for i in range(30_000))  # far beyond a pipe's 64 KiB
    many = write(tmp_path / "many.txt", rows)
    purpose = ("--purpose", "news") if kind == "consent" else ()
    assert console(db, kind, "import", many, *purpose).returncode == 0
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPTGATE_")}
    env["OPTGATE_STORE_URL"] = f"sqlite:///{db}"
    shell = f'{OPTGATE} {kind} export | head -n 2; echo "status ${{PIPESTATUS[0]}}"'
    done = subprocess.run(  # noqa: S603 - bash for PIPESTATUS
        [BASH, "-c", shell], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    lines = done.stdout.splitlines()
    assert lines[0].startswith("email,")
    assert lines[-1] == "status 141", done.stdout
    assert done.stderr == "", "no BrokenPipeError traceback"


@pytest.mark.sockets
def test_a_reader_gone_before_the_first_line_ends_quietly(db: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPTGATE_")}
    env["OPTGATE_STORE_URL"] = f"sqlite:///{db}"
    shell = f"{OPTGATE} suppress check a@example.com b@example.com | true; echo ${{PIPESTATUS[0]}}"
    done = subprocess.run(  # noqa: S603 - bash for PIPESTATUS
        [BASH, "-c", shell], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.stderr == ""
    assert done.stdout.strip() in ("0", "141")  # 0: written before `true` closed the pipe


def test_suppress_check_json(optgate: Run) -> None:
    optgate("suppress", "add", "Jane@Example.com", "--reason", "complained")
    optgate("suppress", "add", "@example.org")
    result = optgate(
        "suppress", "check", "jane@example.com", "x@example.org", "n@example.net", "--json"
    )
    assert result.code == 1
    checked = json.loads(result.out)["addresses"]
    assert [(c["address"], c["suppressed"]) for c in checked] == [
        ("jane@example.com", True),
        ("x@example.org", True),
        ("n@example.net", False),
    ]
    assert checked[0]["sha256"] == hashlib.sha256(b"jane@example.com").hexdigest()
    (jane,) = checked[0]["suppressions"]
    assert (jane["kind"], jane["scope"], jane["reason"], jane["source"]) == (
        "sha256",
        "global",
        "complained",
        "cli",
    )
    assert SINCE.fullmatch(f"since {jane['created']}")
    assert [s["kind"] for s in checked[1]["suppressions"]] == ["domain"]
    assert checked[2]["suppressions"] == []
    none = optgate("suppress", "check", "n@example.net", "--json")
    assert none.code == 0


def test_explain_json_and_a_bad_address_is_exit_2(optgate: Run) -> None:
    optgate("consent", "add", "fan@example.com", "--purpose", "news")
    sent = optgate("explain", "fan@example.com", "--topic", "news", "--json")
    assert sent.code == 0
    shown = json.loads(sent.out)
    assert (shown["address"], shown["topic"], shown["class"], shown["sent"]) == (
        "fan@example.com",
        "news",
        "marketing",
        True,
    )
    assert shown["reason"]
    assert "given on" in shown["explanation"]
    dropped = json.loads(optgate("explain", "stranger@example.com", "--json").out)
    assert dropped["sent"] is False
    assert dropped["topic"] == "marketing"

    bad = optgate("explain", "not an address")
    assert (bad.code, bad.out) == (2, "")
    one_line_error(bad.err, "'not an address' is not a valid address")


def test_report_compliance_json(optgate: Run, db: Path) -> None:
    import asyncio
    from datetime import timedelta

    from gateway.config import load
    from gateway.runtime.stores import open_configured
    from suppression.address import normalize
    from suppression.model import ImportItem, Reason, Send, now

    clean = json.loads(optgate("report", "compliance", "--json").out)
    assert clean == {"opt_outs": 0, "longest_delay_hours": 0.0, "violations": []}

    fan = normalize("fan@example.com")

    async def late_mail() -> None:
        store = await open_configured(load())  # the one db's migrate made
        try:
            hour_ago = now() - timedelta(hours=2)
            item = ImportItem(fan.sha256, "sha256", None, Reason.UNSUBSCRIBED, hour_ago)
            await store.suppress([item], scope="global", source="one-click", actor="test")
            await store.record_sends([Send("m1", fan.sha256, "news", "marketing", now())])
        finally:
            await store.close()

    asyncio.run(late_mail())
    result = optgate("report", "compliance", "--json")
    assert result.code == 1
    report = json.loads(result.out)
    assert report["opt_outs"] == 1
    (violation,) = report["violations"]
    assert violation["sha256"] == fan.sha256
    assert (violation["scope"], violation["reason"], violation["messages_after"]) == (
        "global",
        "unsubscribed",
        1,
    )
    assert 1.9 <= violation["delay_hours"] == report["longest_delay_hours"] <= 2.1
    assert "fan@example.com" not in result.out


@pytest.mark.parametrize(
    "argv",
    [
        ("suppress", "add", "a@example.com"),
        ("suppress", "remove", "a@example.com"),
        ("suppress", "import", "{list}"),
        ("suppress", "export"),
    ],
    ids=" ".join,
)
def test_a_partner_scope_must_name_a_known_partner(
    optgate: Run, db: Path, tmp_path: Path, argv: tuple[str, ...]
) -> None:
    path = write(tmp_path / "list.txt", "a@example.com\n")
    command = [word.format(list=path) for word in argv]
    unknown = optgate(*command, "--scope", "partner:ghost")
    assert unknown.code == 2
    assert unknown.out == ""
    one_line_error(unknown.err, "partner:ghost", "no partner named 'ghost'", "optgate partner list")
    assert count(db, "suppression") == 0
    events = count(db, "audit")
    bad = optgate(*command, "--scope", "topic:Not Valid")
    assert bad.code == 2
    one_line_error(bad.err, "topic 'Not Valid' is not valid")

    assert optgate("partner", "add", "ghost").code == 0
    assert optgate(*command, "--scope", "partner:ghost").code == 0
    assert count(db, "audit") > events


# start-up ---------------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["suppress", "--help"]])
@pytest.mark.sockets
def test_version_and_help_import_none_of_the_heavy_modules(argv: list[str]) -> None:
    probe = (
        "import sys\n"
        "from gateway.cli.main import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = {'aiosmtpd', 'asyncpg', 'aiohttp', 'aiosqlite', 'uvloop', 'dkim', 'dns',\n"
        "         'gateway.cli.admin', 'gateway.runtime.service', 'cryptography', 'structlog'}\n"
        "print(sorted(heavy & {m.split('.')[0] for m in sys.modules} |\n"
        "             heavy & set(sys.modules)), file=sys.stderr)\n"
    )
    done = subprocess.run(  # noqa: S603 - our own interpreter
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.stderr.strip() == "[]", done.stderr
    assert done.stdout.startswith("optgate " if argv == ["--version"] else "usage: optgate")
