"""What the ESP webhook tests sign with and send: test keys, a stand-in SNS host, and the
vendors' documented sample payloads (each cites its page; addresses made the tests')."""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import hmac
import json
import socket
import ssl
import tempfile
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from gateway.config import Config, load
from gateway.esp.routes import Hooks
from gateway.esp.sns import SIGNED, SnsClient
from gateway.keys import load_keys
from gateway.runtime.metrics import Metrics
from gateway.runtime.service import minute_limiter
from gateway.runtime.stores import open_configured
from gateway.tokens import Claims, TokenSigner
from gateway.web.endpoint import WebSettings, make_app
from suppression.address import normalize
from suppression.model import Reason, Send, now
from suppression.store import Store
from tests.support.tokens import claimed

REGION_HOST = "sns.eu-west-1.amazonaws.com"
CHINA_HOST = "sns.cn-north-1.amazonaws.com.cn"  # the China regions' SNS hosts end in .cn
TOPIC = "arn:aws:sns:eu-west-1:123456789012:ses-feedback"
CERT_PATH = "/SimpleNotificationService-0000000000000000000000000000000.pem"


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _certificate(
    subject: str,
    key: rsa.RSAPrivateKey,
    issuer: tuple[str, rsa.RSAPrivateKey] | None = None,
    *,
    dns: tuple[str, ...] = (),
    ca: bool = False,
    valid: tuple[datetime, datetime] | None = None,
) -> x509.Certificate:
    start, end = valid or (
        datetime.now(UTC) - timedelta(days=1),
        datetime.now(UTC) + timedelta(days=30),
    )
    issuer_name, issuer_key = issuer or (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if dns:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(name) for name in dns]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


class Loopback(AbstractResolver):
    """Every name resolves to the stand-in host's port on 127.0.0.1 (tests only)."""

    def __init__(self, port: int) -> None:
        self.port = port

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            ResolveResult(
                hostname=host,
                host="127.0.0.1",
                port=self.port,
                family=socket.AF_INET,
                proto=0,
                flags=0,
            )
        ]

    async def close(self) -> None:
        return None


@dataclass
class SnsHost:
    """A local HTTPS server that answers for SNS hosts: certificate files and
    SubscribeURLs, under a test CA's certificate for sns.*.amazonaws.com(.cn)."""

    port: int
    ca_pem: bytes
    signing_key: rsa.RSAPrivateKey
    certificates: dict[str, bytes]  # path -> PEM
    requests: list[str] = field(default_factory=list)  # "host path?query" of each GET

    def client(self) -> SnsClient:
        """An SnsClient whose connections reach this server, trusting only the test CA."""
        context = ssl.create_default_context(cadata=self.ca_pem.decode())
        return SnsClient(lambda: aiohttp.TCPConnector(resolver=Loopback(self.port), ssl=context))

    def sign(
        self,
        fields: Mapping[str, Any],
        *,
        version: str = "1",
        cert_url: str = f"https://{REGION_HOST}{CERT_PATH}",
        key: rsa.RSAPrivateKey | None = None,
    ) -> dict[str, Any]:
        """The message with SignatureVersion, SigningCertURL and a valid Signature."""
        lines = "".join(
            f"{name}\n{fields[name]}\n" for name in SIGNED[fields["Type"]] if name in fields
        )
        # version 1 is SHA1withRSA, as SNS signs it
        digest = hashes.SHA1() if version == "1" else hashes.SHA256()  # noqa: S303
        signature = (key or self.signing_key).sign(lines.encode(), padding.PKCS1v15(), digest)
        return {
            **fields,
            "SignatureVersion": version,
            "Signature": base64.b64encode(signature).decode(),
            "SigningCertURL": cert_url,
        }


@dataclass(frozen=True)
class _Material:
    ca_key: rsa.RSAPrivateKey
    ca: x509.Certificate
    server_key: rsa.RSAPrivateKey
    server: x509.Certificate
    signing_key: rsa.RSAPrivateKey
    certificates: dict[str, bytes]


@functools.cache
def _material() -> _Material:
    """Keys and certificates, made once per test run (RSA key generation is slow)."""
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca = _certificate("optgate test CA", ca_key, ca=True)
    issuer = ("optgate test CA", ca_key)
    server_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    server = _certificate(
        "sns.amazonaws.com",
        server_key,
        issuer,
        dns=(REGION_HOST, "*.amazonaws.com", CHINA_HOST, "*.amazonaws.com.cn"),
    )
    signing_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    signing = _certificate("sns.amazonaws.com", signing_key, issuer)
    past = datetime.now(UTC) - timedelta(days=60)
    expired = _certificate(
        "sns.amazonaws.com", signing_key, issuer, valid=(past, past + timedelta(days=30))
    )
    certificates = {CERT_PATH: _pem(signing), "/expired.pem": _pem(expired)}
    return _Material(ca_key, ca, server_key, server, signing_key, certificates)


@contextlib.asynccontextmanager
async def sns_host() -> AsyncIterator[SnsHost]:
    """The stand-in SNS host on a free loopback port: a valid signing certificate at
    CERT_PATH, an expired one at /expired.pem, and SubscribeURLs answered 200."""
    material = _material()
    host = SnsHost(0, _pem(material.ca), material.signing_key, dict(material.certificates))

    async def answer(request: web.Request) -> web.Response:
        host.requests.append(f"{request.host} {request.path_qs}")
        if request.path in host.certificates:
            return web.Response(body=host.certificates[request.path])
        if request.query.get("Action") == "ConfirmSubscription":
            return web.Response(text="<ConfirmSubscriptionResponse/>", content_type="text/xml")
        return web.Response(status=404)

    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    with tempfile.TemporaryDirectory() as tmp:
        cert_file, key_file = Path(tmp) / "server.pem", Path(tmp) / "server.key"
        cert_file.write_bytes(_pem(material.server))
        key_file.write_bytes(
            material.server_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        context.load_cert_chain(cert_file, key_file)
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context).start()
    host.port = int(runner.addresses[0][1])
    try:
        yield host
    finally:
        await runner.cleanup()


def sns_notification(
    message: Mapping[str, Any], *, message_id: str, at: datetime
) -> dict[str, Any]:
    """An SNS Notification carrying an SES notification, unsigned
    (docs.aws.amazon.com/sns/latest/dg/http-notification-json.html)."""
    return {
        "Type": "Notification",
        "MessageId": message_id,
        "TopicArn": TOPIC,
        "Message": json.dumps(message),
        "Timestamp": at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z",
        "UnsubscribeURL": f"https://{REGION_HOST}/?Action=Unsubscribe&SubscriptionArn={TOPIC}:1",
    }


def sns_confirmation(*, message_id: str, at: datetime, host: str = REGION_HOST) -> dict[str, Any]:
    """An SNS SubscriptionConfirmation, unsigned
    (docs.aws.amazon.com/sns/latest/dg/http-subscription-confirmation-json.html)."""
    token = "2336412f37fb687f5d51e6e241d164b0533302ec696efc8f113cd2252ce8a925"  # noqa: S105
    return {
        "Type": "SubscriptionConfirmation",
        "MessageId": message_id,
        "Token": token,
        "TopicArn": TOPIC,
        "Message": f"You have chosen to subscribe to the topic {TOPIC}.\n"
        "To confirm the subscription, visit the SubscribeURL included in this message.",
        "SubscribeURL": f"https://{host}/?Action=ConfirmSubscription&TopicArn={TOPIC}&Token={token}",
        "Timestamp": at.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
    }


def ses_bounce(
    recipient: str, *, source: str = "john@example.com", headers: list[dict[str, str]] | None = None
) -> dict[str, Any]:
    """SES's "bounce notification with a DSN" example
    (docs.aws.amazon.com/ses/latest/dg/notification-examples.html)."""
    return {
        "notificationType": "Bounce",
        "bounce": {
            "bounceType": "Permanent",
            "reportingMTA": "dns; email.example.com",
            "bouncedRecipients": [
                {
                    "emailAddress": recipient,
                    "status": "5.1.1",
                    "action": "failed",
                    "diagnosticCode": f"smtp; 550 5.1.1 <{recipient}>... User",
                }
            ],
            "bounceSubType": "General",
            "timestamp": "2016-01-27T14:59:38.237Z",
            "feedbackId": "00000138111222aa-33322211-cccc-cccc-cccc-ddddaaaa068a-000000",
            "remoteMtaIp": "127.0.2.0",
        },
        "mail": {
            "timestamp": "2016-01-27T14:59:38.237Z",
            "source": source,
            "sourceArn": "arn:aws:ses:us-east-1:888888888888:identity/example.com",
            "sourceIp": "127.0.3.0",
            "sendingAccountId": "123456789012",
            "callerIdentity": "IAM_user_or_role_name",
            "messageId": "00000138111222aa-33322211-cccc-cccc-cccc-ddddaaaa0680-000000",
            "destination": [recipient],
            "headersTruncated": False,
            "headers": headers
            if headers is not None
            else [
                {"name": "From", "value": '"John Doe" <john@example.com>'},
                {"name": "To", "value": f"<{recipient}>"},
                {"name": "Message-ID", "value": "custom-message-ID"},
                {"name": "Subject", "value": "Hello"},
            ],
            "commonHeaders": {
                "from": ["John Doe <john@example.com>"],
                "date": "Wed, 27 Jan 2016 14:05:45 +0000",
                "to": [recipient],
                "messageId": "custom-message-ID",
                "subject": "Hello",
            },
        },
    }


def ses_complaint(recipient: str, feedback_type: str | None = "abuse") -> dict[str, Any]:
    """SES's "complaint notification with a feedback report" example (same page)."""
    complaint: dict[str, Any] = {
        "userAgent": "AnyCompany Feedback Loop (V0.01)",
        "complainedRecipients": [{"emailAddress": recipient}],
        "arrivalDate": "2016-01-27T14:59:38.237Z",
        "timestamp": "2016-01-27T14:59:38.237Z",
        "feedbackId": "000001378603177f-18c07c78-fa81-4a58-9dd1-fedc3cb8f49a-000000",
    }
    if feedback_type is not None:
        complaint["complaintFeedbackType"] = feedback_type
    return {
        "notificationType": "Complaint",
        "complaint": complaint,
        "mail": {
            "timestamp": "2016-01-27T14:59:38.237Z",
            "messageId": "000001378603177f-7a5433e7-8edb-42ae-af10-f0181f34d6ee-000000",
            "source": "john@example.com",
            "sourceArn": "arn:aws:ses:us-east-1:888888888888:identity/example.com",
            "sourceIp": "127.0.3.0",
            "sendingAccountId": "123456789012",
            "destination": [recipient],
        },
    }


# --- SendGrid ---------------------------------------------------------------------------


@dataclass
class SendGridKey:
    """A test key pair for the Signed Event Webhook."""

    private: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )

    @property
    def public_base64(self) -> str:
        """The verification key as SendGrid shows it: base64 DER."""
        der = self.private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return base64.b64encode(der).decode()

    def headers(self, body: bytes, timestamp: int) -> dict[str, str]:
        signature = self.private.sign(str(timestamp).encode() + body, ec.ECDSA(hashes.SHA256()))
        return {
            "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
            "X-Twilio-Email-Event-Webhook-Timestamp": str(timestamp),
            "Content-Type": "application/json",
        }


SG_MESSAGE = "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.000000000000000000000"


def sendgrid_events(recipient: str) -> list[dict[str, Any]]:
    """The Event Webhook Reference's example events
    (twilio.com/docs/sendgrid/for-developers/tracking-events/event), one of each kind."""
    base = {
        "email": recipient,
        "timestamp": 1513299569,
        "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-555>",
        "category": "cat facts",
    }
    return [
        {
            **base,
            "event": "processed",
            "sg_event_id": "rbtnWrG1DVDGGGFHFyun0A==",
            "sg_message_id": SG_MESSAGE,
        },
        {
            **base,
            "event": "deferred",
            "sg_event_id": "t7LEShmowp86DTdUW8M-GQ==",
            "sg_message_id": SG_MESSAGE,
            "response": "400 try again later",
            "attempt": "5",
        },
        {
            **base,
            "event": "delivered",
            "sg_event_id": "rWVYmVk90MjZJ9iohOBa3w==",
            "sg_message_id": SG_MESSAGE,
            "response": "250 OK",
        },
        {
            **base,
            "event": "open",
            "sg_event_id": "FOTFFO0ecsBE-zxFXfs6WA==",
            "sg_message_id": SG_MESSAGE,
            "useragent": "Mozilla/4.0",
            "ip": "255.255.255.255",
        },
    ]


def sendgrid_event(kind: str, recipient: str, number: int = 1, **extra: Any) -> dict[str, Any]:
    """One example event of the reference: bounce (with type bounce or blocked), dropped,
    spamreport, unsubscribe, group_unsubscribe."""
    event: dict[str, Any] = {
        "email": recipient,
        "timestamp": 1513299569,
        "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-555>",
        "event": kind,
        "category": "cat facts",
        "sg_event_id": f"6g4ZI7SA-xmRDv57GoPIPw{number}==",
        "sg_message_id": f"14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.{number}",
    }
    if kind == "bounce":
        event |= {"reason": "500 unknown recipient", "status": "5.0.0", "type": "bounce"}
    if kind == "dropped":
        event |= {"reason": "Bounced Address", "status": "5.0.0"}
    if kind == "group_unsubscribe":
        event |= {"useragent": "Mozilla/4.0", "ip": "255.255.255.255", "asm_group_id": 10}
    return event | extra


# --- Mailgun ----------------------------------------------------------------------------


def mailgun_body(key: bytes, event_data: Any, *, timestamp: int, token: str) -> dict[str, Any]:
    """A webhook body signed as documentation.mailgun.com/.../securing-webhooks says."""
    signature = hmac.new(key, f"{timestamp}{token}".encode(), hashlib.sha256).hexdigest()
    return {
        "signature": {"timestamp": str(timestamp), "token": token, "signature": signature},
        "event-data": event_data,
    }


def mailgun_failed(
    recipient: str, severity: str = "permanent", reason: str = "bounce", **delivery: Any
) -> dict[str, Any]:
    """The "failed" event of Mailgun's sample webhook payloads."""
    return {
        "event": "failed",
        "id": "G9Bn5sl1TC6nu79C8C0bwg",
        "timestamp": 1521233195.375624,
        "log-level": "error",
        "severity": severity,
        "reason": reason,
        "recipient": recipient,
        "recipient-domain": recipient.rpartition("@")[2],
        "envelope": {
            "sender": "bob@sandbox.mailgun.org",
            "transport": "smtp",
            "targets": recipient,
        },
        "message": {
            "headers": {
                "to": recipient,
                "message-id": "20130503182626.18666.16540@sandbox.mailgun.org",
                "from": "Bob <bob@sandbox.mailgun.org>",
                "subject": "Test permanent_fail webhook",
            },
            "attachments": [],
            "size": 111,
        },
        "delivery-status": {
            "attempt-no": 1,
            "message": "",
            "code": 605,
            "description": "Not delivering to previously bounced address",
            "session-seconds": 0.0,
        }
        | delivery,
        "flags": {
            "is-routed": False,
            "is-authenticated": True,
            "is-system-test": False,
            "is-test-mode": False,
        },
        "tags": ["my_tag_1", "my_tag_2"],
        "campaigns": [],
        "user-variables": {"my_var_1": "Mailgun Variable #1"},
    }


def mailgun_event(kind: str, recipient: str) -> dict[str, Any]:
    """The complained / unsubscribed / delivered events of the same samples."""
    return {
        "event": kind,
        "id": f"-Agny091SquKnsrW2NEKUA-{kind}",
        "timestamp": 1521233123.501324,
        "log-level": "warn" if kind == "complained" else "info",
        "recipient": recipient,
        "message": {"headers": {"message-id": "20130503192659.13651.20287@sandbox.mailgun.org"}},
        "tags": ["my_tag_1"],
    }


# --- Postmark ---------------------------------------------------------------------------


def postmark_bounce(
    recipient: str, type_name: str = "HardBounce", code: int = 1, **extra: Any
) -> dict[str, Any]:
    """The bounce webhook example (postmarkapp.com/developer/webhooks/bounce-webhook)."""
    return {
        "RecordType": "Bounce",
        "MessageStream": "outbound",
        "ID": 4323372036854775807,
        "Type": type_name,
        "TypeCode": code,
        "Name": "Hard bounce",
        "Tag": "Test",
        "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483",
        "Metadata": {"a_key": "a_value", "b_key": "b_value"},
        "ServerID": 23,
        "Description": "The server was unable to deliver your message "
        "(ex: unknown user, mailbox not found).",
        "Details": "Test bounce details",
        "Email": recipient,
        "From": "sender@example.com",
        "BouncedAt": "2019-11-05T16:33:54.9070259Z",
        "DumpAvailable": True,
        "Inactive": True,
        "CanActivate": True,
        "Subject": "Test subject",
        "Content": "Return-Path: <>\r\n...",
    } | extra


def postmark_subscription_change(
    recipient: str, reason: str, origin: str, suppress: bool = True
) -> dict[str, Any]:
    """The subscription change webhook example
    (postmarkapp.com/developer/webhooks/subscription-change-webhook)."""
    return {
        "RecordType": "SubscriptionChange",
        "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483",
        "ServerID": 123456,
        "MessageStream": "outbound",
        "ChangedAt": "2020-02-01T10:53:34.416071Z",
        "Recipient": recipient,
        "Origin": origin,
        "SuppressSending": suppress,
        "SuppressionReason": reason,
        "Tag": "my-tag",
        "Metadata": {"example": "value", "example_2": "value"},
    }


# --- the endpoint under test ------------------------------------------------------------


def esp_config(
    tmp_path: Path,
    *,
    store_url: str | None = None,
    other: Mapping[str, str] | None = None,
    **esp: str,
) -> Config:
    """A configuration with the given ``[esp]`` keys (as environment values), inbound
    domain in.example.com, soft bounces suppressing at 2; ``other``: SECTION_KEY values."""
    env = {
        "OPTGATE_STORE_URL": store_url or f"sqlite:///{tmp_path / 'optgate.db'}",
        "OPTGATE_STORE_AUDIT_KEY_FILE": str(tmp_path / "optgate-audit.key"),
        "OPTGATE_UNSUBSCRIBE_KEY_FILE": str(tmp_path / "optgate.key"),
        "OPTGATE_UNSUBSCRIBE_BASE_URL": "https://unsub.example.com",
        "OPTGATE_INBOUND_DOMAINS": "in.example.com",
        "OPTGATE_INBOUND_SOFT_BOUNCE_LIMIT": "2",
    }
    env |= {f"OPTGATE_ESP_{key.upper()}": value for key, value in esp.items()}
    env |= {f"OPTGATE_{key.upper()}": value for key, value in (other or {}).items()}
    return load(None, env)


@dataclass
class EspSite:
    """The running web endpoint with ESP hooks, its store, and a client."""

    url: str
    store: Store
    config: Config
    signer: TokenSigner
    metrics: Metrics
    http: aiohttp.ClientSession

    async def post(
        self, path: str, body: bytes | Mapping[str, Any] | list[Any], **headers: str
    ) -> tuple[int, dict[str, Any]]:
        """POST a body (JSON unless bytes); the status and the JSON answer."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        async with self.http.post(self.url + path, data=data, headers=headers) as response:
            text = await response.text()
            answer = json.loads(text) if response.content_type == "application/json" else {}
            return response.status, answer

    async def mailed(self, address: str, topic: str = "news") -> None:
        """Record that optgate sent marketing mail to the address (the send ledger)."""
        sha256 = normalize(address).sha256
        await self.store.record_sends(
            [Send(f"m-{topic}-{sha256[:8]}", sha256, topic, "marketing", now())]
        )

    async def scopes(self, address: str) -> dict[str, Reason]:
        holder = await self.store.holder(normalize(address).sha256)
        return {s.scope: s.reason for s in holder.suppressions}

    async def events(self) -> int:
        return (await self.store.verify_chain()).events

    def outcomes(self, vendor: str, outcome: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "optgate_esp_notifications_total", {"vendor": vendor, "outcome": outcome}
        )
        return value or 0.0

    def token(self, address: str, scope: str = "topic:news", *, short: bool = True) -> str:
        claims = Claims(normalize(address).sha256, claimed(scope), int(now().timestamp()))
        return self.signer.issue_short(claims) if short else self.signer.issue(claims)


@contextlib.asynccontextmanager
async def esp_site(
    config: Config, *, sns: SnsClient | None = None, store: Store | None = None
) -> AsyncIterator[EspSite]:
    """The web app as `optgate serve` runs it, with ``[esp]`` hooks, on a free port."""
    opened = store or await open_configured(config, create=True)
    signer = TokenSigner(load_keys(Path(config.unsubscribe.key_file), create=True))
    metrics = Metrics()
    hooks = Hooks.from_config(config, store=opened, signer=signer, metrics=metrics, sns=sns)
    app = make_app(
        store=opened,
        signer=signer,
        metrics=metrics,
        settings=WebSettings.from_config(config),
        hooks=hooks,
        limiter=minute_limiter(config, opened),
    )
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        async with aiohttp.ClientSession() as http:
            yield EspSite(url, opened, config, signer, metrics, http)
    finally:
        await runner.cleanup()
        if store is None:
            await opened.close()
