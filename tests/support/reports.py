"""Inbound mail as MTAs and people write it: RFC 3464 DSNs, RFC 5965 ARF reports, plain mail."""

from __future__ import annotations

import itertools

_COUNTER = itertools.count(1)


def _headers(returned: bytes) -> str:
    """The header block of a returned message."""
    return returned.replace(b"\r\n", b"\n").split(b"\n\n", 1)[0].decode("utf-8", "replace")


def _crlf(text: str) -> bytes:
    return text.replace("\r\n", "\n").replace("\n", "\r\n").encode()


def dsn(
    returned: bytes,
    *,
    to: str,
    recipient: str,
    status: str,
    diagnostic: str,
    action: str | None = None,
) -> bytes:
    """A Postfix-style delivery status notification about ``returned`` (headers only)."""
    number = next(_COUNTER)
    action = action or ("delayed" if status.startswith("4") else "failed")
    return _crlf(
        f"""From: MAILER-DAEMON@mx.example.org (Mail Delivery System)
To: {to}
Subject: Undelivered Mail Returned to Sender
Message-ID: <dsn{number}@mx.example.org>
Date: Sun, 29 Nov 2026 02:00:{number % 60:02d} +0000
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="B{number}"

--B{number}
Content-Type: text/plain; charset=us-ascii

This is the mail system at host mx.example.org.

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients.

<{recipient}>: host mx.example.org said: {diagnostic}

--B{number}
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.org
Arrival-Date: Sun, 29 Nov 2026 01:59:00 +0000

Final-Recipient: rfc822; {recipient}
Original-Recipient: rfc822;{recipient}
Action: {action}
Status: {status}
Remote-MTA: dns; mx.example.org
Diagnostic-Code: smtp; {diagnostic}

--B{number}
Content-Type: text/rfc822-headers

{_headers(returned)}

--B{number}--
"""
    )


def arf(returned: bytes, *, to: str, feedback_type: str = "abuse") -> bytes:
    """A feedback-loop report about ``returned`` with the recipient redacted, as most FBLs send."""
    number = next(_COUNTER)
    return _crlf(
        f"""From: fbl@isp.example
To: {to}
Subject: FW: complaint
Message-ID: <arf{number}@isp.example>
Date: Sun, 29 Nov 2026 02:00:00 +0000
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report; boundary="F{number}"

--F{number}
Content-Type: text/plain

This is an email abuse report for an email message received from IP 192.0.2.1.

--F{number}
Content-Type: message/feedback-report

Feedback-Type: {feedback_type}
User-Agent: ExampleFBL/1.0
Version: 1
Original-Mail-From: <redacted@sender.example>
Arrival-Date: Sun, 29 Nov 2026 01:59:00 +0000
Source-IP: 192.0.2.1

--F{number}
Content-Type: text/rfc822-headers

{_headers(returned)}

--F{number}--
"""
    )


def person(*, sender: str, to: str, body: str = "Please unsubscribe me.") -> bytes:
    """Mail a person writes."""
    number = next(_COUNTER)
    return _crlf(
        f"""From: A Person <{sender}>
To: {to}
Subject: unsubscribe
Message-ID: <person{number}@mail.example>
Date: Sun, 29 Nov 2026 02:00:00 +0000

{body}
"""
    )
