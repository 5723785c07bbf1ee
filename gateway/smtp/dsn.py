"""The delivery status notification (RFC 3464) optgate sends, as an MTA does, to the
envelope sender of a message some of whose recipients the next hop refused for good."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from email.utils import format_datetime, localtime

from gateway.outbound import mime
from gateway.smtp.outcomes import enhanced_status

# the original's header is returned (RFC 3462's text/rfc822-headers), never its body
HEADER_LIMIT = 64 * 1024


@dataclass(frozen=True, slots=True)
class Failed:
    """One recipient the next hop refused: its address, and the reply it gave."""

    rcpt: str
    code: int
    text: str


def _line(value: str) -> str:
    """A header value on one line of printable ASCII."""
    return "".join(c if " " <= c <= "~" else "?" for c in " ".join(value.split()))[:900]


def build(
    *, mail_from: str, failed: Sequence[Failed], original: bytes, reporting_mta: str
) -> bytes:
    """The DSN for ``mail_from`` about the ``failed`` recipients of ``original``."""
    boundary = f"=_optgate-dsn-{secrets.token_hex(8)}"
    block = mime.split_headers(original, 0, len(original))
    raw = original[: min(block.end, HEADER_LIMIT)].rstrip(b"\r\n").decode("ascii", "replace")
    headers = raw.replace("\r\n", "\n").replace("\n", "\r\n").replace("\ufffd", "?")
    mta = _line(reporting_mta)
    lines = [
        f"From: Mail Delivery System <MAILER-DAEMON@{mta}>",
        f"To: <{_line(mail_from)}>",
        "Subject: Undelivered Mail Returned to Sender",
        f"Date: {format_datetime(localtime())}",
        f"Message-ID: <dsn.{secrets.token_hex(12)}@{mta}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        "",
        f"--{boundary}",
        "Content-Type: text/plain; charset=us-ascii",
        "",
        "The next hop refused your message for these recipients; the others were relayed.",
        "",
        *(f"<{_line(f.rcpt)}>: {_line(f'{f.code} {f.text}')}" for f in failed),
        "",
        f"--{boundary}",
        "Content-Type: message/delivery-status",
        "",
        f"Reporting-MTA: dns; {mta}",
        f"Arrival-Date: {format_datetime(localtime())}",
    ]
    for f in failed:
        lines += [
            "",
            f"Final-Recipient: rfc822; {_line(f.rcpt)}",
            "Action: failed",
            f"Status: {enhanced_status(f.code, f.text)}",
            f"Diagnostic-Code: smtp; {_line(f'{f.code} {f.text}')}",
        ]
    lines += [
        "",
        f"--{boundary}",
        "Content-Type: text/rfc822-headers",
        "",
        headers,
        "",
        f"--{boundary}--",
        "",
    ]
    return "\r\n".join(lines).encode("ascii")
