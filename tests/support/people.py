"""The recipients end-to-end tests send to, and the records that make them who they are."""

from __future__ import annotations

from gateway.config import Config
from gateway.runtime.stores import open_configured
from suppression.address import normalize
from suppression.model import Consent, ImportItem, Reason, now

SENDER = "news@sender.example"
FAN = "fan@example.com"  # consented to "marketing"
GONE = "gone@example.com"  # consented, then unsubscribed (global)
STRANGER = "stranger@example.com"  # no consent
BOUNCED = "bounced@example.com"  # hard bounce


async def seed(config: Config) -> None:
    """Consent for FAN and GONE; GONE unsubscribed; BOUNCED bounced."""
    store = await open_configured(config, create=True)
    try:
        records = [
            Consent(normalize(a).sha256, "marketing", True, "test", now())
            for a in (FAN, GONE, BOUNCED)
        ]
        await store.record_consents(records, actor="test")
        for address, reason in ((GONE, Reason.UNSUBSCRIBED), (BOUNCED, Reason.BOUNCED)):
            a = normalize(address)
            item = ImportItem(a.sha256, "sha256", a.normalized, reason)
            await store.suppress([item], scope="global", source="test", actor="test")
    finally:
        await store.close()
