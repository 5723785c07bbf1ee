"""The suppression exports of the ESPs optgate is measured against, read natively.

Each reader maps the vendor's own words to optgate's reasons and keeps its
times; bounce rows carry their SMTP status and text so that the importer can
leave policy blocks out. Column and key names are the vendors' documented ones:

* SendGrid, Suppressions > Export CSV: ``email,created`` (global and group
  unsubscribes), ``email,created,status,reason`` (bounces and blocks),
  ``email,created,ip`` (spam reports), ``email,created,reason`` (invalid
  emails); ``created`` in unix seconds (the API's BounceResponse schema) or as
  a date.
* Mailchimp audience export (Audience > Export): an ``Email Address`` column;
  the unsubscribed file adds ``UNSUB_TIME``, ``UNSUB_REASON``..., the cleaned
  file ``CLEAN_TIME``, ``CLEAN_CAMPAIGN_TITLE``...; the subscribed file has
  neither (``OPTIN_TIME``, ``CONFIRM_TIME``, ``LAST_CHANGED``): its rows are
  marked subscribed, and the importer refuses them.
* Amazon SES: the bulk-import CSV (``address,BOUNCE``), JSON lines
  (``{"emailAddress": ..., "reason": ...}``), and what ``aws sesv2
  list-suppressed-destinations`` prints: JSON ``{"SuppressedDestinationSummaries":
  [{"EmailAddress", "Reason", "LastUpdateTime"}], "NextToken"}``, or with
  ``--output text`` one line per summary, ``SUPPRESSEDDESTINATIONSUMMARIES``
  and the values in the sorted order of their keys (EmailAddress, LastUpdateTime,
  Reason; aws-cli's awscli/text.py), after a line with the bare NextToken.
* Mailgun (documentation.mailgun.com, Suppressions API): the CSV its bounces,
  unsubscribes and complaints lists take and give, ``address,code,error,created_at``,
  ``address,tags,created_at`` and ``address,created_at``, times in RFC 2822
  (``Fri, 21 Oct 2011 11:02:55 GMT``); the API's JSON ``{"items": [...],
  "paging": {...}}`` with the same keys per item. A tag-specific unsubscribe is
  imported globally: Mailgun tags are not optgate topics.
* Postmark (postmarkapp.com/developer/api/suppressions-api): the
  ``/message-streams/{stream}/suppressions/dump`` JSON ``{"Suppressions":
  [{"EmailAddress", "SuppressionReason", "Origin", "CreatedAt"}]}`` and a CSV
  with those fields as columns (with or without spaces). HardBounce is bounced,
  SpamComplaint complained, ManualSuppression unsubscribed when the recipient
  made it (Origin Recipient), else manual.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from functools import partial

from suppression.fields import Row, make_row, parse_time, reason_of, restored
from suppression.jsondoc import element_row, read_documents
from suppression.textio import Blocks, FormatError, Records, csv_records

# SendGrid's suppression downloads: columns -> what the list means. Auto-detection
# takes email,created,reason (invalid emails) only with unix times and a reason that
# is no reason word: a generic file with those columns is left to the csv reader.
SENDGRID_LAYOUTS = {
    frozenset({"email", "created"}): "unsubscribed",  # global and group unsubscribes
    frozenset({"email", "created", "status", "reason"}): "bounced",  # bounces, blocks
    frozenset({"email", "created", "ip"}): "complained",  # spam reports
    frozenset({"email", "created", "reason"}): "invalid",  # invalid emails
}
# Mailgun's lists by their columns; address,created_at alone (complaints) is taken
# by auto-detection only with an RFC 2822 time.
MAILGUN_LAYOUTS = {
    frozenset({"address", "code", "error", "created_at"}): "bounced",
    frozenset({"address", "tags", "created_at"}): "unsubscribed",
    frozenset({"address", "created_at"}): "complained",
}
POSTMARK_COLUMNS = frozenset({"emailaddress", "suppressionreason", "origin", "createdat"})
SES_TEXT = "SUPPRESSEDDESTINATIONSUMMARIES"
SES_SUMMARIES = "SuppressedDestinationSummaries"
_POSTMARK_REASONS = {"hardbounce": "bounced", "spamcomplaint": "complained"}


def _header(blocks: Blocks, source: str, wanted: str, vendor: str) -> tuple[list[str], Records]:
    """The lower-cased header of an export and its records; FormatError without ``wanted``."""
    records = csv_records(blocks, source)
    first = next(records, None)
    if first is None:
        return [], records
    names = [name.strip().lower() for name in first[1]]
    if wanted not in names:
        raise FormatError(source, first[0], f"not a {vendor} export: no {wanted!r} column")
    return names, records


def _named(records: Records, names: list[str]) -> Iterator[tuple[int, dict[str, object]]]:
    for line, fields in records:
        pairs = zip(names, fields, strict=False)
        yield line, {name: restored(value.strip()) for name, value in pairs}


def read_sendgrid(blocks: Blocks, source: str) -> Iterator[Row]:
    """A SendGrid suppression download; which list it is follows from its columns."""
    names, records = _header(blocks, source, "email", "SendGrid")
    reason = SENDGRID_LAYOUTS.get(frozenset(names))
    for line, record in _named(records, names):
        row = make_row(line, record, source)
        if row is None:
            continue
        if reason == "bounced":
            row = row._replace(diagnostic=str(record.get("reason") or ""))
        yield row._replace(reason=reason) if reason else row


def read_mailchimp(blocks: Blocks, source: str) -> Iterator[Row]:
    """A Mailchimp audience export: unsubscribed, cleaned (bounced) or subscribed members."""
    names, records = _header(blocks, source, "email address", "Mailchimp")
    status = None
    if any(name.startswith("clean_") for name in names):
        reason, time_key = "bounced", "clean_time"
    elif any(name.startswith("unsub_") for name in names):
        reason, time_key = "unsubscribed", "unsub_time"
    else:
        reason, time_key, status = None, "optin_time", "subscribed"
    for line, record in _named(records, names):
        row = make_row(line, record, source)
        if row is None:
            continue
        word = reason_of(row.extra.get("unsub_reason"))
        yield row._replace(
            reason="complained" if word == "complained" else reason,
            created=parse_time(record.get(time_key), source, line),
            status=status or row.status,
        )


def read_ses_csv(blocks: Blocks, source: str) -> Iterator[Row]:
    """The SES bulk-import CSV: ``address,BOUNCE|COMPLAINT``, header optional."""
    for line, fields in csv_records(blocks, source):
        if len(fields) > 2:
            raise FormatError(source, line, "not an SES list: expected address,reason")
        address = restored(fields[0].strip())
        if address.lower() in ("emailaddress", "email", "address"):
            continue
        reason = reason_of(fields[1]) if len(fields) == 2 else None
        if address:
            yield Row(line, address, "address", reason)


def read_ses_text(blocks: Blocks, source: str) -> Iterator[Row]:
    """``aws sesv2 list-suppressed-destinations --output text``: one summary a line."""
    for line, fields in csv_records(blocks, source, delimiter="\t"):
        if len(fields) == 1:  # the NextToken of a page
            continue
        if fields[0] != SES_TEXT or len(fields) != 4:
            raise FormatError(
                source, line, f"not SES text output: expected {SES_TEXT}, address, time, reason"
            )
        _, address, updated, reason = (field.strip() for field in fields)
        yield Row(line, address, "address", reason_of(reason), parse_time(updated, source, line))


def read_ses_json(blocks: Blocks, source: str) -> Iterator[Row]:
    """``aws sesv2 list-suppressed-destinations`` JSON, page after page."""
    return read_documents(blocks, source, SES_SUMMARIES, element_row(source))


def _mailgun_row(source: str, line: int, record: Mapping[str, object]) -> Row | None:
    """One Mailgun list entry: a bounce has code/error, an unsubscribe tags, a complaint
    neither."""
    row = make_row(line, record, source)
    if row is None:
        return None
    if "code" in record or "error" in record:
        code, error = (str(record.get(k) or "") for k in ("code", "error"))
        return row._replace(reason="bounced", status=code or None, diagnostic=error)
    return row._replace(reason="unsubscribed" if "tags" in record else "complained")


def read_mailgun(blocks: Blocks, source: str) -> Iterator[Row]:
    """A Mailgun bounces, unsubscribes or complaints CSV."""
    names, records = _header(blocks, source, "address", "Mailgun")
    if frozenset(names) not in MAILGUN_LAYOUTS:
        known = " or ".join(",".join(sorted(layout)) for layout in MAILGUN_LAYOUTS)
        raise FormatError(source, 1, f"not a Mailgun export: expected the columns {known}")
    for line, record in _named(records, names):
        row = _mailgun_row(source, line, record)
        if row:
            yield row


def read_mailgun_json(blocks: Blocks, source: str) -> Iterator[Row]:
    """Mailgun's API answers (``items`` and ``paging``), one page after another."""
    return read_documents(blocks, source, "items", partial(_mailgun_row, source))


def _postmark_row(source: str, line: int, record: Mapping[str, object]) -> Row | None:
    said = str(record.get("suppressionreason") or "").lower()
    origin = str(record.get("origin") or "").lower()
    row = make_row(line, record, source)
    if row is None:
        return None
    if said == "manualsuppression":
        return row._replace(reason="unsubscribed" if origin == "recipient" else "manual")
    return row._replace(reason=_POSTMARK_REASONS.get(said))


def read_postmark(blocks: Blocks, source: str) -> Iterator[Row]:
    """A Postmark suppressions CSV: the dump's fields as columns."""
    records = csv_records(blocks, source)
    first = next(records, None)
    if first is None:
        return
    names = [name.strip().lower().replace(" ", "") for name in first[1]]
    if "emailaddress" not in names or "suppressionreason" not in names:
        raise FormatError(source, first[0], "not a Postmark export: no EmailAddress column")
    for line, record in _named(records, names):
        row = _postmark_row(source, line, record)
        if row:
            yield row


def read_postmark_json(blocks: Blocks, source: str) -> Iterator[Row]:
    """Postmark's suppression dump (``{"Suppressions": [...]}``)."""
    return read_documents(blocks, source, "Suppressions", partial(_postmark_row, source))
