"""The doctor's DNS checks per sending domain: SPF, the DKIM key records, DMARC, and MX for
the [unsubscribe] mailto domain. The only traffic goes to the resolver.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import Awaitable, Sequence
from typing import cast

import dns.asyncresolver
import dns.exception
import dns.resolver
from dns.rdtypes.ANY.MX import MX
from dns.rdtypes.ANY.TXT import TXT

from gateway.config import Config
from gateway.doctor.local import DkimKey
from gateway.doctor.report import Check, Found, Status
from gateway.inbound.alignment import organisational
from gateway.keygen import public_key_bytes, zone_line

DNS_SECONDS = 5.0  # one DNS lookup, retries included


def system_resolver() -> dns.asyncresolver.Resolver:
    """The system's resolver (/etc/resolv.conf) with a short lifetime per lookup."""
    resolver = dns.asyncresolver.Resolver()
    resolver.lifetime = DNS_SECONDS
    return resolver


class DnsFailure(Exception):
    """A lookup that got no answer at all (timeout, SERVFAIL): nothing can be said."""


async def _records(resolver: dns.asyncresolver.Resolver, name: str, rdtype: str) -> list[object]:
    """The records of a type at a name; [] for NXDOMAIN or no data."""
    try:
        answer = await resolver.resolve(name, rdtype, search=False, raise_on_no_answer=False)
    except dns.resolver.NXDOMAIN:
        return []
    except dns.exception.DNSException as exc:
        raise DnsFailure(f"cannot look up {rdtype} {name}: {exc}") from None
    return list(answer.rrset or ())


async def _texts(resolver: dns.asyncresolver.Resolver, name: str) -> list[str]:
    """The TXT records at a name, each one's strings joined (RFC 6376 3.6.2.2, RFC 7208 3.3)."""
    return [
        b"".join(cast(TXT, r).strings).decode("utf-8", "replace")
        for r in await _records(resolver, name, "TXT")
    ]


def _tags(text: str) -> dict[str, str]:
    """tag=value; pairs (DKIM key records, DMARC)."""
    pairs = (part.partition("=") for part in text.split(";"))
    return {k.strip(): v.strip() for k, sep, v in pairs if sep}


async def _guard(name: str, work: Awaitable[Found]) -> Check:
    """A DNS check as a Check; a failed lookup fails it."""
    try:
        status, detail = await work
    except DnsFailure as exc:
        return Check(Status.FAIL, name, f"{exc}: check the resolver")
    return Check(status, name, detail)


def _domain_of(address: str) -> str:
    return address.rpartition("@")[2].strip().lower().rstrip(".")


def _sending_domains(config: Config, keys: Sequence[DkimKey]) -> list[str]:
    """The domains of the DKIM keys and of [unsubscribe] mailto, in that order, once each."""
    return list(dict.fromkeys([k.domain for k in keys] + [_domain_of(config.unsubscribe.mailto)]))


async def dns_checks(
    config: Config, keys: Sequence[DkimKey], resolver: dns.asyncresolver.Resolver | None
) -> list[Check]:
    """SPF, DKIM and DMARC per sending domain; MX for the mailto domain."""
    if resolver is None:
        try:
            resolver = system_resolver()
        except dns.exception.DNSException as exc:
            return [Check(Status.FAIL, "dns", f"no resolver to ask ({exc}): fix /etc/resolv.conf")]
    mailto = config.unsubscribe.mailto
    work: list[Awaitable[Check]] = []
    for domain in _sending_domains(config, keys):
        work.append(_guard(f"spf {domain}", _spf(resolver, domain)))
        for key in (k for k in keys if k.domain == domain):
            name = f"dkim record {key.selector}._domainkey.{domain}"
            work.append(_guard(name, _dkim_record(resolver, key)))
        work.append(_guard(f"dmarc {domain}", _dmarc(resolver, domain)))
        if domain == _domain_of(mailto):
            work.append(_guard(f"mx {domain}", _mx(resolver, domain, mailto)))
    return list(await asyncio.gather(*work))


def _is_spf(text: str) -> bool:
    return text.lower() == "v=spf1" or text.lower().startswith("v=spf1 ")


async def _spf(resolver: dns.asyncresolver.Resolver, domain: str) -> Found:
    """One SPF record that names some sender and does not end in +all or ?all."""
    records = [t for t in await _texts(resolver, domain) if _is_spf(t)]
    if not records:
        return Status.FAIL, (
            f'no SPF record: publish TXT "v=spf1 mx -all" at {domain}, or one naming the '
            "servers that send for it (ip4:, ip6:, include:)"
        )
    if len(records) > 1:
        return Status.FAIL, f"{len(records)} SPF records (an error, RFC 7208): merge them into one"
    return _judge_spf(records[0])


def _judge_spf(record: str) -> Found:
    terms = [t.lower() for t in record.split()[1:]]
    alls = [t[0] if t[0] in "+-~?" else "+" for t in terms if t.lstrip("+-~?") == "all"]
    senders = [t for t in terms if t.lstrip("+-~?") != "all" and not t.startswith("exp=")]
    if not senders:
        return Status.FAIL, f"{record!r} names no server: add ip4:, ip6:, mx or include:"
    if not alls and not any(t.startswith("redirect=") for t in senders):
        return Status.WARN, f"{record!r} has no all term (other servers are neutral): end with -all"
    if alls and alls[0] in "+?":
        what = "lets any server send" if alls[0] == "+" else "says nothing of other servers"
        return Status.WARN, f"{record!r}: {alls[0]}all {what}: end with -all or ~all"
    return Status.PASS, record


async def _dkim_record(resolver: dns.asyncresolver.Resolver, key: DkimKey) -> Found:
    """The selector's record carries the public half of the configured key."""
    name = f"{key.selector}._domainkey.{key.domain}"
    publish = f"publish {zone_line(key.domain, key.selector, key.private_key)}"
    found = [_tags(t) for t in await _texts(resolver, name)]
    records = [t for t in found if t.get("v", "DKIM1") == "DKIM1" and "p" in t]
    if not records:
        return Status.FAIL, f"no DKIM key record: {publish}"
    if len(records) > 1:
        return Status.FAIL, f"{len(records)} DKIM key records: keep one; {publish}"
    tags = records[0]
    if tags.get("k", "rsa") != key.algorithm:
        return Status.FAIL, f"k={tags.get('k', 'rsa')} but the key is {key.algorithm}: {publish}"
    p = "".join(tags["p"].split())
    if not p:
        return Status.FAIL, f"empty p= (the key is revoked): {publish}"
    if _b64(p) != public_key_bytes(key.private_key):
        return Status.FAIL, f"p= is not the public half of {key.path}: {publish}"
    return Status.PASS, f"matches the {key.algorithm} key in {key.path}"


def _b64(text: str) -> bytes | None:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


async def _dmarc_at(resolver: dns.asyncresolver.Resolver, domain: str) -> list[dict[str, str]]:
    texts = await _texts(resolver, f"_dmarc.{domain}")
    return [_tags(t) for t in texts if t.replace(" ", "").upper().startswith("V=DMARC1")]


async def _dmarc(resolver: dns.asyncresolver.Resolver, domain: str) -> Found:
    """A DMARC record with a policy, at the domain or (sp=, else p=) its organizational domain."""
    where, records, policy_tag = domain, await _dmarc_at(resolver, domain), "p"
    organizational = organisational(domain)  # by the public suffix list
    if not records and organizational != domain:
        where, records = organizational, await _dmarc_at(resolver, organizational)
        policy_tag = "sp" if records and "sp" in records[0] else "p"
    if not records:
        return Status.FAIL, (
            f'no DMARC record: publish TXT "v=DMARC1; p=none; rua=mailto:dmarc@{domain}" at '
            f"_dmarc.{domain} (Gmail and Yahoo require one), then move to quarantine or reject"
        )
    if len(records) > 1:
        return Status.FAIL, f"{len(records)} DMARC records at _dmarc.{where}: keep one"
    policy = records[0].get(policy_tag, "").lower()
    shown = f"_dmarc.{where} {policy_tag}={policy}"
    if policy not in ("none", "quarantine", "reject"):
        return Status.FAIL, f"_dmarc.{where} has no valid p= (none, quarantine or reject)"
    if policy == "none":
        return Status.WARN, (
            f"{shown} only monitors: move to p=quarantine or p=reject once the reports "
            "show your mail aligned"
        )
    return Status.PASS, shown


async def _mx(resolver: dns.asyncresolver.Resolver, domain: str, mailto: str) -> Found:
    """Mail to [unsubscribe] mailto (unsubscribes, bounces, complaints) can arrive."""
    hosts = sorted(
        (mx.preference, mx.exchange.to_text())
        for mx in (cast(MX, r) for r in await _records(resolver, domain, "MX"))
    )
    lost = f"mail to {mailto} (unsubscribes, bounces) cannot arrive"
    if not hosts:
        return Status.FAIL, f"no MX record: {lost}: publish one"
    if hosts == [(0, ".")]:
        return Status.FAIL, f"null MX (the domain takes no mail): {lost}"
    return Status.PASS, ", ".join(f"{preference} {host}" for preference, host in hosts)
