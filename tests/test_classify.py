"""The inbound classifier: scored on the shared corpus of real bounces and complaint reports,
unsubscribe mails written here, and broken input.

The corpus labels are upstream parsers' opinions (sisimai, Mail::DeliveryStatus::BounceParser,
MimeKit, Email::ARF, mail-auth). They are scored by coarse class: hard bounce, soft (any
bounce that is not hard: optgate answers SOFT_BOUNCE or, for a policy rejection, IGNORED
with a "dsn"/"bounce text" reason), complaint, unsubscribe (ARF opt-out), none (not a
bounce). Two bars are asserted: at least 95% of the hard bounces found as HARD_BOUNCE with
the right recipient, and not one non-bounce classified as anything optgate acts on.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.inbound import parsing
from gateway.inbound.classify import Classification, Finding, Kind, classify
from tests.support import corpus

pytestmark = pytest.mark.pure

ACTS = frozenset({Kind.UNSUBSCRIBE, Kind.HARD_BOUNCE, Kind.SOFT_BOUNCE, Kind.COMPLAINT})
NOT_ABOUT_THE_ADDRESS = (" policy", " message", " sender")
HARD_BAR = 0.95
NOTHING = (Kind.IGNORED, None, (), None, "")

# Files left out of the score, each with its reason: where optgate decides differently from
# the upstream label on purpose (the rule is stated in gateway/inbound/diagnosis.py or the
# classifier's docstring), or where the file cannot say what the label says.
EXCLUDED = {
    "sisimai-set-of-emails/maildir-bsd/lhost-sendmail-41.eml": "bounce of a bounce: a loop",
    "sisimai-set-of-emails/maildir-bsd/rhost-yahooinc-03.eml": "bounce of a bounce: a loop",
    "sisimai-set-of-emails/maildir-bsd/lhost-x5-01.eml": "a forwarded bounce: the returned "
    "message is itself a bounce, IGNORED as a loop",
    "sisimai-set-of-emails/maildir-bsd/rfc3464-26.eml": "returns a postmaster's 'Delivery "
    "Failure' notice: a bounce of a bounce, IGNORED",
    "sisimai-set-of-emails/maildir-bsd/lhost-postfix-05.eml": "450 4.1.1: class 4 is transient "
    "(RFC 3463), SOFT_BOUNCE by rule",
    "sisimai-set-of-emails/maildir-bsd/lhost-opensmtpd-12.eml": "Action delayed, 4.0.0: "
    "SOFT_BOUNCE by rule",
    "sisimai-set-of-emails/maildir-bsd/lhost-sendmail-57.eml": "5.7.27 is the sender domain's "
    "null MX (RFC 7505), not the recipient's",
    "sisimai-set-of-emails/maildir-bsd/lhost-exim-61.eml": "anonymised to the point that the "
    "failed recipient is the bounce's own addressee (xxxx@xxxx.net)",
    "mail-deliverystatus-bounceparser/corpus/warning-8.msg": "a delay warning (Action delayed): "
    "SOFT_BOUNCE by rule, upstream says not a bounce",
    "mail-deliverystatus-bounceparser/corpus/not-a-relay.msg": "5.7.1 relaying denied: the "
    "receiver's configuration, IGNORED by rule (sisimai: norelaying, not hard)",
    "mail-deliverystatus-bounceparser/corpus/rcpthosts.msg": "5.7.1 not in rcpthosts (qmail's "
    "relaying denied): IGNORED by rule",
    "sisimai-set-of-emails/maildir-bsd/lhost-amazonses-09.eml": "an Amazon SNS JSON "
    "notification, not a mail report: SES webhooks are another channel",
    "sisimai-set-of-emails/maildir-bsd/lhost-amazonses-10.eml": "an Amazon SNS JSON notification",
    "sisimai-set-of-emails/maildir-bsd/lhost-amazonses-11.eml": "an Amazon SNS JSON notification",
}


@dataclass(frozen=True)
class Case:
    """One labelled corpus file."""

    corpus: str
    path: str  # relative to the corpus root
    expected: tuple[str, ...]  # coarse classes, one per recipient ("none" for a non-bounce)
    recipients: tuple[str, ...] = ()  # the right recipients, where the label names them


def coarse(finding: Finding) -> str:
    """The coarse class of a finding: a bounce optgate ignores because it is about our
    mail, not the address (policy, message, sender), counts as soft."""
    if finding.kind is Kind.HARD_BOUNCE:
        return "hard"
    if finding.kind is Kind.SOFT_BOUNCE:
        return "soft"
    if finding.kind in (Kind.COMPLAINT, Kind.UNSUBSCRIBE):
        return finding.kind.value
    return "soft" if finding.reason.endswith(NOT_ABOUT_THE_ADDRESS) else "none"


def sisimai_class(label: dict[str, object]) -> str:
    if label["reason"] == "feedback":
        return {"abuse": "complaint", "opt-out": "unsubscribe"}.get(
            str(label["feedback_type"]), "none"
        )
    if label["hard_bounce"]:
        return "hard"
    return "none" if label["reason"] in ("vacation", "delivered") else "soft"


def bounceparser_class(test: dict[str, object]) -> str:
    if not test.get("is_bounce", True) or test.get("reports") == 0:
        return "none"
    reason = test.get("std_reason")
    if reason in ("user_unknown", "domain_error", "user_disabled"):
        return "hard"
    return "soft" if reason in ("over_quota", "spam") else "bounce"  # bounce: hard or soft


def cases() -> Iterator[Case]:
    sisimai = corpus.expected(corpus.SISIMAI)
    for name, entry in sorted(sisimai["files"].items()):
        if entry["expected"] is not None:
            classes = tuple(sisimai_class(label) for label in entry["expected"]) or ("none",)
            yield Case("sisimai", f"sisimai-set-of-emails/{name}", classes)
    bounceparser = corpus.expected(corpus.BOUNCEPARSER)
    for name, entry in sorted(bounceparser.items()):
        if entry["tests"]:
            test = entry["tests"][0]
            addresses = tuple(test.get("addresses", ()))
            expected = bounceparser_class(test)
            yield Case(
                "bounceparser",
                f"mail-deliverystatus-bounceparser/corpus/{name}",
                (expected,) * max(1, len(addresses)),
                addresses if expected == "hard" else (),
            )
    mimekit = corpus.expected(corpus.MIMEKIT)
    hard = {"delivery-status.txt", "delivery-status-no-blank-line.txt", "bounce.txt"}
    for path in corpus.files(corpus.MIMEKIT, "messages/*"):
        entry = mimekit.get(f"messages/{path.name}", {})
        if entry.get("kind") == "dsn":
            groups = [group for group in entry["dsn_groups"] if "Reporting-MTA" not in group]
            named = [
                group.get("Original-Recipient") or group["Final-Recipient"] for group in groups
            ]
            recipients = tuple(value.split(";")[1].strip() for value in named)
            expected = "hard" if path.name in hard else "bounce"
            yield Case("mimekit", f"mimekit/messages/{path.name}", (expected,), recipients)
        elif entry.get("kind") == "arf":
            recipient = entry["fields"]["Original-Rcpt-To"].strip("<>")
            yield Case("mimekit", f"mimekit/messages/{path.name}", ("complaint",), (recipient,))
        else:  # an MDN, or ordinary MIME
            yield Case("mimekit", f"mimekit/messages/{path.name}", ("none",))
    arf = corpus.expected(corpus.EMAIL_ARF)
    for name, entry in sorted(arf.items()):
        if name.startswith("messages/"):
            expected = {"abuse": "complaint", "opt-out": "unsubscribe"}[entry["feedback_type"]]
            yield Case("email-arf", f"email-arf/{name}", (expected,))
    for path in corpus.files(corpus.STALWART_AUTH, "arf/*.eml"):
        report = json.loads(path.with_suffix(".json").read_text())
        expected = "complaint" if report["feedback_type"] == "Abuse" else "none"
        rcpt = report["original_rcpt_to"]
        recipients = (rcpt.strip("<>"),) if rcpt else ()
        yield Case("stalwart-arf", f"stalwart-mail-auth/arf/{path.name}", (expected,), recipients)


def sender_side(raw: bytes) -> set[str]:
    """The addresses a bounce names that are surely not its failed recipient: the bounce's
    own From / To / Return-Path and the returned original's From / Return-Path."""
    message = parsing.parse(raw)
    names = [parsing.headers(message, name) for name in ("From", "To", "Return-Path")]
    original = parsing.returned(message)
    if original is not None:
        names += [parsing.headers(original, name) for name in ("From", "Return-Path")]
    return {address.lower() for address in parsing.addresses([v for n in names for v in n])}


def right_recipient(case: Case, finding: Finding, raw: bytes) -> bool:
    """The finding names the labelled recipient; where the label names none (sisimai), an
    address that the file holds and that is not on the sender's side."""
    recipient = (finding.recipient or "").lower()
    if case.recipients:
        return recipient in {address.lower() for address in case.recipients}
    return (
        bool(recipient) and recipient.encode() in raw.lower() and recipient not in sender_side(raw)
    )


@dataclass
class Tally:
    """Correct and total per (corpus, class), and what went wrong."""

    correct: Counter[tuple[str, str]]
    total: Counter[tuple[str, str]]
    misses: list[str]


def score() -> Tally:
    tally = Tally(Counter(), Counter(), [])
    for case in cases():
        if case.path in EXCLUDED:
            continue
        raw = corpus.read(case.path)
        findings = list(classify(raw).findings)
        for expected in case.expected:
            tally.total[case.corpus, expected] += 1
            if expected == "none":  # the bar: nothing optgate would act on
                match = None if any(f.kind in ACTS for f in findings) else Finding(*NOTHING)
            else:
                match = next((f for f in findings if _matches(case, expected, f, raw)), None)
            if match is not None:
                if match in findings:
                    findings.remove(match)
                tally.correct[case.corpus, expected] += 1
            else:
                said = [(f.kind.value, f.recipient, f.reason) for f in classify(raw).findings]
                tally.misses.append(f"{case.path}: expected {expected}, got {said}")
    return tally


def _matches(case: Case, expected: str, finding: Finding, raw: bytes) -> bool:
    got = coarse(finding)
    if expected == "bounce":
        return got in ("hard", "soft")
    if expected == "hard":
        return got == "hard" and right_recipient(case, finding, raw)
    if expected in ("complaint", "unsubscribe") and case.recipients:
        return got == expected and right_recipient(case, finding, raw)
    return got == expected


def share(tally: Tally, expected: str, corpus: str | None = None) -> tuple[int, int]:
    keys = [key for key in tally.total if key[1] == expected and corpus in (None, key[0])]
    return sum(tally.correct[key] for key in keys), sum(tally.total[key] for key in keys)


@pytest.mark.corpus
def test_corpus_scores() -> None:
    corpus.require()
    tally = score()
    classes = ("hard", "soft", "bounce", "complaint", "unsubscribe", "none")
    print("\nclassification scores (correct / labelled), excluded files:", len(EXCLUDED))
    for folder in sorted({key[0] for key in tally.total}):
        shares = [(name, *share(tally, name, folder)) for name in classes]
        print(f"  {folder:13}", "  ".join(f"{n} {c}/{t}" for n, c, t in shares if t))
    for name in classes:
        correct, total = share(tally, name)
        print(f"  all {name:11} {correct}/{total} = {correct / total:.1%}")
    hard_for_soft = sum("expected soft, got [('hard-bounce'" in miss for miss in tally.misses)
    print(f"  labelled soft (not hard), classified hard first: {hard_for_soft}")
    hard_correct, hard_total = share(tally, "hard")
    wrong_actions = [miss for miss in tally.misses if "expected none" in miss]
    hard_misses = [miss for miss in tally.misses if "expected hard" in miss]
    assert hard_correct >= HARD_BAR * hard_total, "\n".join(hard_misses)
    assert not wrong_actions, "\n".join(wrong_actions)


def test_excluded_files_exist_and_are_labelled() -> None:
    corpus.require()
    labelled = {case.path for case in cases()}
    assert set(EXCLUDED) <= labelled


# --- not bounces, whatever address they reach --------------------------------------------

NOT_BOUNCES = [
    *corpus.files(corpus.SISIMAI, "maildir-bsd/rfc3834-*.eml"),
    *corpus.files(corpus.SISIMAI, "not-bounce/*.eml"),
    *(
        corpus.path(corpus.BOUNCEPARSER) / "corpus" / name
        for name in (
            "aol-vacation.msg",
            "autoreply.msg",
            "bluebottle.msg",
            "boxbe-cr.msg",
            "boxbe-cr2.msg",
            "polish-autoreply.msg",
            "warning-6.msg",
            "whitelist.msg",
        )
    ),
]


# a person's mail to unsubscribe@ is an unsubscribe; an automatic one never is
PEOPLE = frozenset({"is-not-bounce-01.eml", "is-not-bounce-02.eml"})


@pytest.mark.parametrize("path", NOT_BOUNCES, ids=lambda path: path.name)
@pytest.mark.parametrize(
    "rcpt_to", [None, "bounce+T0ken_-1@example.com", "unsubscribe@example.com"], ids=str
)
def test_auto_replies_and_challenges_are_never_acted_on(path: Path, rcpt_to: str | None) -> None:
    if rcpt_to == "unsubscribe@example.com" and path.name in PEOPLE:
        assert classify(path.read_bytes(), rcpt_to=rcpt_to).findings[0].kind is Kind.UNSUBSCRIBE
        return
    corpus.require()
    findings = classify(path.read_bytes(), rcpt_to=rcpt_to).findings
    assert [f for f in findings if f.kind in ACTS] == []


ORDINARY = [
    path
    for path in corpus.messages()
    if corpus.relative(path).split("/")[0]
    in ("stalwart-mail-parser", "spamscope-mail-parser", "dkimpy", "stalwart-mail-auth")
    and "arf" not in path.parts
    and path.name != "mail_malformed_2.eml"  # a real DSN (4.2.2 mailbox full): a soft bounce
]


def test_ordinary_mail_is_no_bounce_even_at_the_bounce_address() -> None:
    corpus.require()
    assert len(ORDINARY) > 50
    acted = [
        (path.name, finding)
        for path in ORDINARY
        for rcpt_to in (None, "bounce+T0ken@example.com")
        for finding in classify(path.read_bytes(), rcpt_to=rcpt_to).findings
        if finding.kind in ACTS
    ]
    assert acted == []


# --- hand-written: unsubscribe mails, tokens, loops ----------------------------------------

TOKEN = "AQEjRWeJq83vABEiM0RVZneImaq7zN3u_-0"  # noqa: S105 -- shaped like a token, signs nothing


def mail(*headers: str, body: str = "please unsubscribe me\n") -> bytes:
    return ("\r\n".join([*headers, "", body])).encode()


def only(classification: Classification) -> Finding:
    assert len(classification.findings) == 1
    return classification.findings[0]


def test_a_plain_request_unsubscribes_its_author_never_the_envelope_sender() -> None:
    raw = mail("From: Ann <ann@example.org>", "To: unsubscribe@news.example.com", "Subject: stop")
    result = classify(
        raw, mail_from="ann+lists@example.org", rcpt_to="unsubscribe@news.example.com"
    )
    # the envelope sender is anyone's to write: it never counts (issue 14)
    assert result.findings == (
        Finding(Kind.UNSUBSCRIBE, "ann@example.org", (), None, "unsubscribe mail", True),
    )
    assert len(result.digest) == 64
    same = classify(raw, mail_from="ANN@example.org", rcpt_to="unsubscribe@news.example.com")
    assert only(same).recipient == "ann@example.org"


def test_a_forwarded_request_unsubscribes_the_writer_not_the_forwarder() -> None:
    raw = mail("From: Ann <ann@example.org>", "To: unsubscribe@news.example.com")
    srs = "SRS0=HHH=TT=example.org=ann@forwarder.example.net"
    result = classify(raw, mail_from=srs, rcpt_to="unsubscribe@news.example.com")
    assert [f.recipient for f in result.findings] == ["ann@example.org"]


def test_from_a_mailbox_the_from_names_the_author() -> None:
    raw = mail(
        "Return-Path: <ann@example.org>",
        "Delivered-To: unsubscribe@news.example.com",
        "From: Ann <other@example.org>",
        "To: news@example.com",
        "Message-ID: <m1@example.org>",
    )
    result = classify(raw)
    assert result.message_id == "<m1@example.org>"
    assert [f.recipient for f in result.findings] == ["other@example.org"]
    no_path = mail("From: Ann <ann@example.org>", "To: Unsubscribe@News.Example.com")
    assert only(classify(no_path)) == Finding(
        Kind.UNSUBSCRIBE, "ann@example.org", (), None, "unsubscribe mail", True
    )


def test_a_request_without_a_from_address_unsubscribes_nobody() -> None:
    raw = mail("From: undisclosed", "To: unsubscribe@news.example.com")
    finding = only(
        classify(raw, mail_from="ann@example.org", rcpt_to="unsubscribe@news.example.com")
    )
    assert (finding.kind, finding.recipient) == (Kind.IGNORED, None)


def test_a_token_in_the_address_is_a_candidate() -> None:
    raw = mail("From: ann@example.org", f"To: unsubscribe+{TOKEN}@news.example.com")
    assert only(classify(raw)).tokens == (TOKEN,)
    envelope = classify(raw, mail_from="ann@example.org", rcpt_to=f"unsubscribe+{TOKEN}@x.example")
    assert (only(envelope).kind, only(envelope).tokens) == (Kind.UNSUBSCRIBE, (TOKEN,))


def test_a_custom_local_part() -> None:
    raw = mail("From: ann@example.org", "To: optout+abc@news.example.com")
    assert only(classify(raw)).kind is Kind.IGNORED
    assert only(classify(raw, unsubscribe_local="optout")).tokens == ("abc",)


@pytest.mark.parametrize(
    "header",
    [
        "Auto-Submitted: auto-replied",
        "Auto-Submitted: auto-generated",
        "X-Autoreply: yes",
        "X-Autorespond: Out of office",
        "Precedence: bulk",
        "Precedence: auto_reply",
        "X-Auto-Response-Suppress: OOF, AutoReply",
        "Subject: Out of Office: your message",
        "Subject: Automatic reply: stop",
        "Subject: Abwesenheitsnotiz",
        "List-Id: <news.lists.example.org>",
        "List-Post: <mailto:news@lists.example.org>",
    ],
)
def test_automatic_mail_and_list_traffic_to_unsubscribe_is_ignored(header: str) -> None:
    raw = mail("From: ann@example.org", "To: unsubscribe@news.example.com", header)
    finding = only(
        classify(raw, mail_from="ann@example.org", rcpt_to="unsubscribe@news.example.com")
    )
    assert (finding.kind, finding.recipient) == (Kind.IGNORED, None)


def test_auto_submitted_no_is_a_person() -> None:
    raw = mail("From: ann@example.org", "To: unsubscribe@news.example.com", "Auto-Submitted: no")
    assert only(classify(raw)).kind is Kind.UNSUBSCRIBE


@pytest.mark.parametrize(
    "sender", ["", "<>", "MAILER-DAEMON@mx.example.org", "postmaster@mx.example.org"]
)
def test_null_and_daemon_senders_unsubscribe_nobody(sender: str) -> None:
    raw = mail(
        "From: Mail Delivery System <MAILER-DAEMON@mx.example.org>", "To: unsubscribe@x.example"
    )
    finding = only(classify(raw, mail_from=sender, rcpt_to="unsubscribe@x.example"))
    assert finding.kind is Kind.IGNORED


def test_an_apple_mail_unsubscribe_is_one_despite_auto_submitted() -> None:
    corpus.require()
    raw = corpus.read(f"{corpus.SISIMAI}/maildir-bsd/arf-26.eml")
    assert only(classify(raw)) == Finding(
        Kind.UNSUBSCRIBE, "example@icloud.com", (), None, "unsubscribe mail", True
    )


@pytest.mark.parametrize(
    "headers",
    [
        # a display name that looks like an address: the address counts
        (
            'From: "unsubscribe@news.example.com" <ann@example.org>',
            "To: unsubscribe@news.example.com",
        ),
        # several From addresses: the first
        ("From: ann@example.org, bob@example.org", "To: unsubscribe@news.example.com"),
        # an encoded display name that decodes to an address
        (
            "From: =?utf-8?q?unsubscribe=40news.example.com?= <ann@example.org>",
            "To: unsubscribe@x.example",
        ),
    ],
)
def test_odd_sender_headers(headers: tuple[str, str]) -> None:
    finding = only(classify(mail(*headers)))
    assert (finding.kind, finding.recipient) == (Kind.UNSUBSCRIBE, "ann@example.org")


def test_a_forged_token_is_passed_on_unverified() -> None:
    # the classifier never verifies: apply() does, so a forged token suppresses nobody there
    raw = mail("From: mallory@example.org", "To: unsubscribe+forged-token@news.example.com")
    finding = only(classify(raw))
    assert (finding.recipient, finding.tokens) == ("mallory@example.org", ("forged-token",))


def test_no_sender_no_unsubscribe() -> None:
    assert only(classify(mail("To: unsubscribe@news.example.com"))).kind is Kind.IGNORED


@pytest.mark.parametrize(
    "sender", [f"bounce+{TOKEN}@news.example.com", "unsubscribe@news.example.com"]
)
def test_mail_from_our_own_addresses_is_a_loop(sender: str) -> None:
    raw = mail(f"From: {sender}", "To: unsubscribe@news.example.com", "Subject: stop")
    finding = only(classify(raw, mail_from=sender, rcpt_to="unsubscribe@news.example.com"))
    assert (finding.kind, finding.reason) == (Kind.IGNORED, "loop: from an optgate address")


def test_a_daemon_named_bounce_is_no_loop() -> None:
    raw = dsn("failed", "5.1.1", "550 5.1.1 User unknown").replace(
        b"From: MAILER-DAEMON@mx.example.org", b"From: bounce@mx.example.org"
    )
    assert only(classify(raw, mail_from="")).kind is Kind.HARD_BOUNCE


def dsn(action: str, status: str, diagnostic: str, original: str = "") -> bytes:
    return mail(
        "From: MAILER-DAEMON@mx.example.org",
        f"To: bounce+{TOKEN}@news.example.com",
        "Subject: Undelivered Mail Returned to Sender",
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b"',
        body="\r\n".join(
            [
                "--b",
                "Content-Type: text/plain",
                "",
                "Your message could not be delivered.",
                "--b",
                "Content-Type: message/delivery-status",
                "",
                "Reporting-MTA: dns; mx.example.org",
                "",
                "Final-Recipient: rfc822; ann@example.org",
                f"Action: {action}",
                f"Status: {status}",
                f"Diagnostic-Code: smtp; {diagnostic}",
                "",
                "--b",
                "Content-Type: text/rfc822-headers",
                "",
                original
                or (
                    "From: news@news.example.com\r\nTo: ann@example.org\r\n"
                    f"List-Unsubscribe: <https://news.example.com/u/{TOKEN}>,"
                    f" <mailto:unsubscribe+{TOKEN}@news.example.com>"
                ),
                "--b--",
                "",
            ]
        ),
    )


@pytest.mark.parametrize(
    ("action", "status", "diagnostic", "kind"),
    [
        ("failed", "5.1.1", "550 5.1.1 <ann@example.org>: User unknown", Kind.HARD_BOUNCE),
        ("failed", "5.7.1", "550 5.7.1 Message rejected as spam", Kind.IGNORED),
        ("failed", "5.0.0", "554 Your IP is listed at zen.spamhaus.org", Kind.IGNORED),
        ("failed", "5.7.1", "550 5.7.1 No such user", Kind.HARD_BOUNCE),
        ("failed", "5.2.2", "552 5.2.2 Mailbox full", Kind.SOFT_BOUNCE),
        ("failed", "5.0.0", "552 quota exceeded", Kind.SOFT_BOUNCE),
        ("delayed", "4.4.1", "connection timed out", Kind.SOFT_BOUNCE),
        ("failed", "4.2.0", "451 try later", Kind.SOFT_BOUNCE),
        ("delivered", "2.0.0", "250 ok", Kind.IGNORED),
        ("failed", "5.3.4", "552 message too big", Kind.IGNORED),
    ],
)
def test_dsn_rules(action: str, status: str, diagnostic: str, kind: Kind) -> None:
    finding = only(classify(dsn(action, status, diagnostic)))
    assert (finding.kind, finding.recipient, finding.status) == (kind, "ann@example.org", status)
    assert finding.tokens == (TOKEN,)  # from the envelope To and the original's List-Unsubscribe


def test_a_bounce_of_a_bounce_is_a_loop() -> None:
    original = (
        "From: MAILER-DAEMON@news.example.com\r\nTo: someone@example.org\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="x"'
    )
    finding = only(classify(dsn("failed", "5.1.1", "550 User unknown", original)))
    assert (finding.kind, finding.reason) == (Kind.IGNORED, "loop: bounce of a bounce")


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        ("The mailbox does not exist.\n550 5.1.1 rejected\n", Kind.HARD_BOUNCE),
        ("The mailbox does not exist.\n", Kind.HARD_BOUNCE),
        ("Your mailbox quota was exceeded.\n", Kind.SOFT_BOUNCE),
        ("We will keep trying for 5 days.\n", Kind.IGNORED),
    ],
)
def test_a_verp_bounce_without_an_address_names_the_token(body: str, kind: Kind) -> None:
    raw = mail(
        "From: Mail Delivery Subsystem <MAILER-DAEMON@mx.example.org>",
        "Subject: Returned mail: see transcript",
        body=body,
    )
    finding = only(classify(raw, mail_from="", rcpt_to=f"bounce+{TOKEN}@news.example.com"))
    assert (finding.kind, finding.recipient, finding.tokens) == (kind, None, (TOKEN,))


def test_an_arf_report_with_a_redacted_recipient_names_the_token() -> None:
    raw = mail(
        "From: fbl@isp.example",
        'Content-Type: multipart/report; report-type=feedback-report; boundary="b"',
        body="\r\n".join(
            [
                "--b",
                "Content-Type: message/feedback-report",
                "",
                "Feedback-Type: abuse",
                "Original-Rcpt-To: <redacted@isp.example>",
                "",
                "--b",
                "Content-Type: message/rfc822",
                "",
                f"Return-Path: <bounce+{TOKEN}@news.example.com>",
                "To: redacted",
                "",
                "hello",
                "--b--",
            ]
        ),
    )
    assert only(classify(raw)) == Finding(Kind.COMPLAINT, None, (TOKEN,), None, "arf abuse")


# --- broken input ---------------------------------------------------------------------------


def fuzzed(raw: bytes, seed: int) -> Iterator[bytes]:
    rng = random.Random(seed)
    for cut in (1, 7, len(raw) // 3, len(raw) // 2, len(raw) - 1):
        yield raw[:cut]
    flipped = bytearray(raw)
    for _ in range(max(1, len(raw) // 50)):
        flipped[rng.randrange(len(raw))] = rng.randrange(256)
    yield bytes(flipped)
    yield raw.replace(b"\n", b"\r", 40)
    yield raw.replace(b"--", b"", 3)


@pytest.mark.corpus
def test_truncated_and_garbled_corpus_files_never_raise() -> None:
    corpus.require()
    paths = [case.path for case in cases()]
    unreadable = []
    for number, path in enumerate(paths):
        raw = corpus.read(path)
        for variant in fuzzed(raw, number):
            result = classify(variant)
            assert result.findings
            if any(finding.reason == "unreadable" for finding in result.findings):
                unreadable.append(path)
    assert unreadable == []


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x00\xff" * 1000,
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=x\n\n--x\n" * 500,
        b"From: MAILER-DAEMON@x\nSubject: Undelivered\nX-Failed-Recipients: "
        + b"a@b.c," * 5000
        + b"\n\n",
        b"Content-Type: message/rfc822\n\n" * 2000,
        b"Content-Type: multipart/mixed; boundary=a\n\n--a\n"
        b"Content-Type: multipart/mixed; boundary=a\n\n" * 300,
        b"Subject: =?utf-8?b?" + b"A" * 100_000 + b"?=\n\n",
        b"From: <>\nContent-Type: text/plain; charset=nonexistent-charset\n\n\xff\xfe unknown",
        # long runs without spaces: address and status scans must stay linear
        b"From: MAILER-DAEMON@x\nSubject: Undelivered\nTo: "
        + b"a" * 4000
        + b"\n\n"
        + b"a" * 60_000,
        b"From: MAILER-DAEMON@x\nSubject: Undelivered\n\nuser " + b"5." * 30_000 + b"-" * 60_000,
    ],
    ids=[
        "empty",
        "binary",
        "report-flood",
        "failed-flood",
        "rfc822-nest",
        "multipart-nest",
        "long-header",
        "charset",
        "long-word",
        "long-status",
    ],
)
def test_hostile_input_is_classified(raw: bytes) -> None:
    result = classify(raw)
    assert result.findings
    assert all(f.reason != "unreadable" for f in result.findings)
    assert all(f.kind is Kind.IGNORED or f.recipient for f in result.findings)


def test_a_huge_message_is_read_only_in_part() -> None:
    attachment = b"A" * (8 << 20)
    raw = dsn("failed", "5.1.1", "550 5.1.1 User unknown") + attachment
    assert only(classify(raw)).kind is Kind.HARD_BOUNCE
