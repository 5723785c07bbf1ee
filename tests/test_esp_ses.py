"""POST /hooks/ses over real HTTP: SNS signatures (v1, v2) whose certificates come over
HTTPS from a stand-in SNS host (a test CA, loopback), SES's sample notifications."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.esp.sns import sns_url
from suppression.address import normalize
from suppression.model import Reason
from tests.support.esp import (
    CERT_PATH,
    CHINA_HOST,
    REGION_HOST,
    TOPIC,
    EspSite,
    SnsHost,
    esp_config,
    esp_site,
    ses_bounce,
    ses_complaint,
    sns_confirmation,
    sns_host,
    sns_notification,
)
from tests.support.tiers import needs

pytestmark = pytest.mark.pure

JANE = "jane@example.com"  # mailed by optgate (the send ledger)
RICHARD = "richard@example.com"  # mailed too
STRANGER = "stranger@example.org"  # never mailed


@dataclass
class Rig:
    site: EspSite
    sns: SnsHost

    async def send(self, message: dict[str, Any], **signing: Any) -> tuple[int, dict[str, Any]]:
        return await self.site.post("/hooks/ses", self.sns.sign(message, **signing))

    def notification(
        self, ses: dict[str, Any], *, at: datetime | None = None, message_id: str | None = None
    ) -> dict[str, Any]:
        return sns_notification(
            ses, message_id=message_id or str(uuid.uuid4()), at=at or datetime.now(UTC)
        )

    def fetches(self) -> list[str]:
        return [r for r in self.sns.requests if r.endswith(".pem")]


@pytest.fixture
@needs("sockets")
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    config = esp_config(tmp_path, ses_topics=f'["{TOPIC}"]')
    async with sns_host() as sns, esp_site(config, sns=sns.client()) as site:
        await site.mailed(JANE)
        await site.mailed(RICHARD)
        yield Rig(site, sns)


async def test_a_subscription_is_confirmed_only_after_its_signature_verifies(rig: Rig) -> None:
    confirmation = sns_confirmation(message_id=str(uuid.uuid4()), at=datetime.now(UTC))
    forged = rig.sns.sign(confirmation) | {"Token": "another-token"}
    status, answer = await rig.site.post("/hooks/ses", forged)
    assert (status, answer["status"]) == (403, "forged")
    assert not [r for r in rig.sns.requests if "ConfirmSubscription" in r]

    status, _ = await rig.send(confirmation)
    assert status == 200
    [confirmed] = [r for r in rig.sns.requests if "ConfirmSubscription" in r]
    assert confirmed.startswith(f"{REGION_HOST} /?Action=ConfirmSubscription")
    assert rig.site.outcomes("ses", "accepted") == 1
    assert rig.site.outcomes("ses", "forged") == 1


async def test_a_subscribe_url_off_the_sns_hosts_is_never_visited(rig: Rig) -> None:
    for host in ("evil.example.com", f"{REGION_HOST}.evil.example.com", "sns.amazonaws.com"):
        confirmation = sns_confirmation(
            message_id=str(uuid.uuid4()), at=datetime.now(UTC), host=host
        )
        status, answer = await rig.send(confirmation)
        assert (status, answer["status"]) == (403, "forged"), host
    assert not [r for r in rig.sns.requests if "ConfirmSubscription" in r]


async def test_ses_sample_bounce_v1_and_complaint_v2_suppress_the_recipients(rig: Rig) -> None:
    status, answer = await rig.send(rig.notification(ses_bounce(JANE)), version="1")
    assert (status, answer) == (200, {"status": "ok", "hard_bounces": 1, "suppressed": 1})
    status, answer = await rig.send(rig.notification(ses_complaint(RICHARD)), version="2")
    assert (status, answer) == (200, {"status": "ok", "complaints": 1, "suppressed": 1})

    assert await rig.site.scopes(JANE) == {"global": Reason.BOUNCED}
    assert await rig.site.scopes(RICHARD) == {"global": Reason.COMPLAINED}
    record = await rig.site.store.subject(normalize(JANE))
    [row] = record.suppressions
    assert row.source == "esp"
    evidence = json.loads(row.evidence or "{}")
    assert (
        evidence["message_id"] == "ses:00000138111222aa-33322211-cccc-cccc-cccc-ddddaaaa0680-000000"
    )
    assert (evidence["status"], evidence["finding"]) == ("5.1.1", "ses bounce Permanent/General")
    assert [e.actor for e in record.events if e.seq == row.event] == ["esp"]
    assert (
        rig.site.metrics.registry.get_sample_value(
            "optgate_inbound_total", {"outcome": "hard_bounces"}
        )
        == 1
    )


async def test_a_bounce_of_an_address_optgate_never_mailed_changes_nothing(rig: Rig) -> None:
    events = await rig.site.events()
    status, answer = await rig.send(rig.notification(ses_bounce(STRANGER)))
    assert (status, answer) == (200, {"status": "ok", "ignored": 1})  # no one to act on
    assert await rig.site.scopes(STRANGER) == {}
    assert await rig.site.events() == events


async def test_the_verp_sender_ses_echoes_names_the_recipient_by_token(rig: Rig) -> None:
    token = rig.site.token(JANE)
    bounce = ses_bounce(STRANGER, source=f"bounce+{token}@in.example.com")
    status, _ = await rig.send(rig.notification(bounce))
    assert status == 200
    assert await rig.site.scopes(JANE) == {"global": Reason.BOUNCED}
    assert await rig.site.scopes(STRANGER) == {}


async def test_the_list_unsubscribe_header_ses_echoes_names_the_complainant(rig: Rig) -> None:
    long_token = rig.site.token(JANE, short=False)
    headers = [
        {"name": "List-Unsubscribe", "value": f"<https://unsub.example.com/u/{long_token}>"},
        {"name": "To", "value": STRANGER},
    ]
    complaint = ses_complaint(STRANGER)
    complaint["mail"]["headers"] = headers
    status, _ = await rig.send(rig.notification(complaint))
    assert status == 200
    assert await rig.site.scopes(JANE) == {"global": Reason.COMPLAINED}
    assert await rig.site.scopes(STRANGER) == {}


async def test_a_forged_token_in_a_genuine_notification_changes_nothing(rig: Rig) -> None:
    bounce = ses_bounce(
        JANE, source="bounce+aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa@in.example.com"
    )
    status, answer = await rig.send(rig.notification(bounce))
    assert (status, answer) == (200, {"status": "ok", "forged": 1})
    assert await rig.site.scopes(JANE) == {}


async def test_the_certificate_is_fetched_once_and_cached(rig: Rig) -> None:
    for who in (JANE, RICHARD):
        status, _ = await rig.send(rig.notification(ses_bounce(who)))
        assert status == 200
    assert rig.fetches() == [f"{REGION_HOST} {CERT_PATH}"]


async def test_a_certificate_of_a_china_region_is_fetched_from_its_cn_host(rig: Rig) -> None:
    cert_url = f"https://{CHINA_HOST}{CERT_PATH}"
    status, answer = await rig.send(rig.notification(ses_bounce(JANE)), cert_url=cert_url)
    assert (status, answer["suppressed"]) == (200, 1)
    assert rig.fetches() == [f"{CHINA_HOST} {CERT_PATH}"]


@pytest.mark.parametrize(
    "cert_url",
    [
        "https://evil.example.com/SimpleNotificationService-1.pem",
        f"https://{REGION_HOST}.evil.example.com{CERT_PATH}",
        f"http://{REGION_HOST}{CERT_PATH}",
        f"https://{REGION_HOST}:8443{CERT_PATH}",
        f"https://user@{REGION_HOST}{CERT_PATH}",
        f"https://{REGION_HOST}/SimpleNotificationService-1.txt",
        "https://sns.amazonaws.com/SimpleNotificationService-1.pem",
        "https://s3.amazonaws.com/sns.eu-west-1.amazonaws.com/cert.pem",
        f"https://{CHINA_HOST}.evil.example{CERT_PATH}",
        f"https://evilsns.us-east-1.amazonaws.com{CERT_PATH}",
    ],
)
async def test_a_certificate_off_the_sns_hosts_is_refused_unfetched(
    rig: Rig, cert_url: str
) -> None:
    # signed with the genuine key: only the URL is wrong, and it is never asked
    status, answer = await rig.send(rig.notification(ses_bounce(JANE)), cert_url=cert_url)
    assert (status, answer["status"]) == (403, "forged")
    assert rig.sns.requests == []
    assert await rig.site.scopes(JANE) == {}
    assert rig.site.outcomes("ses", "forged") == 1


def test_the_sns_host_rule() -> None:
    assert sns_url(f"https://{REGION_HOST}{CERT_PATH}") is not None
    assert sns_url("https://sns.us-gov-west-1.amazonaws.com/x.pem") is not None
    assert sns_url("https://SNS.EU-WEST-1.AMAZONAWS.COM/x.pem") is not None
    assert sns_url(f"https://{CHINA_HOST}/x.pem") is not None
    assert sns_url("https://sns.cn-northwest-1.amazonaws.com.cn/x.pem") is not None
    for bad in (
        f"https://{CHINA_HOST}.evil.example/x.pem",
        "https://sns.x.amazonaws.com.cn.evil.example/x.pem",
        "https://evilsns.us-east-1.amazonaws.com/x.pem",
        "https://sns.cn-north-1.amazonaws.cn/x.pem",
        "https://sns.cn-north-1.amazonaws.com.cnx/x.pem",
        "https://sns.eu-west-1.amazonaws.com.cn.evil/x",
        "ftp://sns.eu-west-1.amazonaws.com/x",
        "not a url",
        "https://sns..amazonaws.com/x",
    ):
        assert sns_url(bad) is None, bad


async def test_forged_stale_and_unknown_topic_notifications_change_nothing(rig: Rig) -> None:
    other_key = _other_key()
    events = await rig.site.events()
    cases = {
        "another key": rig.sns.sign(rig.notification(ses_bounce(JANE)), key=other_key),
        "altered message": rig.sns.sign(rig.notification(ses_bounce(RICHARD)))
        | {"Message": json.dumps(ses_bounce(JANE))},
        "another topic": rig.sns.sign(
            rig.notification(ses_bounce(JANE)) | {"TopicArn": TOPIC + "-other"}
        ),
        "expired certificate": rig.sns.sign(
            rig.notification(ses_bounce(JANE)), cert_url=f"https://{REGION_HOST}/expired.pem"
        ),
        "stale": rig.sns.sign(
            rig.notification(ses_bounce(JANE), at=datetime.now(UTC) - timedelta(hours=2))
        ),
    }
    outcomes = {}
    for name, body in cases.items():
        status, answer = await rig.site.post("/hooks/ses", body)
        outcomes[name] = (status, answer["status"])
    assert outcomes == {
        "another key": (403, "forged"),
        "altered message": (403, "forged"),
        "another topic": (403, "forged"),
        "expired certificate": (403, "forged"),
        "stale": (403, "stale"),
    }
    assert await rig.site.scopes(JANE) == {}
    assert await rig.site.scopes(RICHARD) == {}
    assert await rig.site.events() == events


async def test_unsigned_and_malformed_messages_are_refused(rig: Rig) -> None:
    unsigned = rig.notification(ses_bounce(JANE))
    assert (await rig.site.post("/hooks/ses", unsigned))[0] == 401
    version_3 = rig.sns.sign(rig.notification(ses_bounce(JANE))) | {"SignatureVersion": "3"}
    assert (await rig.site.post("/hooks/ses", version_3))[0] == 401
    assert (await rig.site.post("/hooks/ses", b"not json"))[0] == 400
    assert (await rig.site.post("/hooks/ses", [1, 2]))[0] == 400
    no_id = {k: v for k, v in rig.notification(ses_bounce(JANE)).items() if k != "MessageId"}
    assert (await rig.site.post("/hooks/ses", no_id))[0] == 400
    # genuinely signed, but what SNS carries is not an SES notification
    not_ses = rig.notification(ses_bounce(JANE)) | {"Message": "hello"}
    status, answer = await rig.send(not_ses)
    assert (status, answer["status"]) == (400, "malformed")
    assert await rig.site.scopes(JANE) == {}


async def test_a_replayed_notification_changes_nothing_even_after_a_lift(rig: Rig) -> None:
    body = rig.sns.sign(rig.notification(ses_bounce(JANE)))
    assert (await rig.site.post("/hooks/ses", body))[0] == 200
    await rig.site.store.unsuppress([normalize(JANE).sha256], scope="global", actor="operator")
    status, answer = await rig.site.post("/hooks/ses", body)
    assert (status, answer["status"]) == (403, "replayed")
    assert await rig.site.scopes(JANE) == {}
    assert rig.site.outcomes("ses", "replayed") == 1


async def test_transient_bounces_count_once_per_mail_until_the_limit(rig: Rig) -> None:
    def transient(mail: str, subtype: str = "MailboxFull") -> dict[str, Any]:
        bounce = ses_bounce(JANE)
        bounce["bounce"] |= {"bounceType": "Transient", "bounceSubType": subtype}
        bounce["bounce"]["bouncedRecipients"][0] |= {
            "status": "4.2.2",
            "diagnosticCode": "smtp; 452 4.2.2 Mailbox full",
        }
        bounce["mail"]["messageId"] = mail
        return bounce

    await rig.send(rig.notification(transient("mail-1")))
    await rig.send(rig.notification(transient("mail-1")))  # SES again about the same mail
    await rig.send(rig.notification(transient("mail-2", "MessageTooLarge")))
    assert await rig.site.scopes(JANE) == {}
    status, answer = await rig.send(rig.notification(transient("mail-3")))
    assert (status, answer) == (200, {"status": "ok", "soft_bounces": 1, "suppressed": 1})
    assert await rig.site.scopes(JANE) == {"global": Reason.BOUNCED}


async def test_policy_refusals_undetermined_and_not_spam_change_nothing(rig: Rig) -> None:
    blocked = ses_bounce(JANE)
    blocked["bounce"]["bouncedRecipients"][0] |= {
        "status": "5.7.1",
        "diagnosticCode": "smtp; 550 5.7.1 Message rejected: listed at spamhaus",
    }
    undetermined = ses_bounce(JANE)
    undetermined["bounce"] |= {"bounceType": "Undetermined", "bounceSubType": "Undetermined"}
    undetermined["bounce"]["bouncedRecipients"] = [{"emailAddress": JANE}]
    for ses in (blocked, undetermined, ses_complaint(JANE, "not-spam")):
        status, answer = await rig.send(rig.notification(ses))
        assert (status, answer) == (200, {"status": "ok", "ignored": 1})
    # a complaint without a feedback type is a complaint
    status, _ = await rig.send(rig.notification(ses_complaint(JANE, None)))
    assert await rig.site.scopes(JANE) == {"global": Reason.COMPLAINED}


async def test_deliveries_and_unknown_types_are_answered_200_and_ignored(rig: Rig) -> None:
    delivery = {"notificationType": "Delivery", "mail": {"messageId": "m"}, "delivery": {}}
    status, answer = await rig.send(rig.notification(delivery))
    assert (status, answer) == (200, {"status": "ok"})
    status, _ = await rig.send(rig.notification({"eventType": "Open", "mail": {}}))
    assert status == 200
    assert rig.site.outcomes("ses", "accepted") == 2


def _other_key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


async def test_forged_certificate_urls_cannot_make_optgate_a_crawler(rig: Rig) -> None:
    def forged(number: int) -> dict[str, Any]:
        url = f"https://{REGION_HOST}/SimpleNotificationService-forged-{number}.pem"
        return rig.sns.sign(rig.notification(ses_bounce(JANE)), cert_url=url)

    answers = [(await rig.site.post("/hooks/ses", forged(n)))[0] for n in range(12)]
    # each URL answered 404: refused; past 10 new URLs a minute optgate asks no more
    assert answers == [403] * 10 + [503] * 2
    assert len(rig.fetches()) == 10
    assert (await rig.site.post("/hooks/ses", forged(0)))[0] == 403  # remembered: not asked
    assert len(rig.fetches()) == 10
    assert await rig.site.scopes(JANE) == {}


async def test_an_unsubscribe_confirmation_is_answered_and_nothing_is_visited(rig: Rig) -> None:
    message = sns_confirmation(message_id=str(uuid.uuid4()), at=datetime.now(UTC))
    message["Type"] = "UnsubscribeConfirmation"
    status, answer = await rig.send(message)
    assert (status, answer) == (200, {"status": "ok"})
    assert not [r for r in rig.sns.requests if "Action=" in r]
