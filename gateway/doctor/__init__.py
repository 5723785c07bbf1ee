"""optgate doctor: is this configuration ready to run, and is the sending domains' DNS?

Each check is a small function giving one :class:`Check`: the local ones (configuration,
files, listeners, store, next hop) in :mod:`gateway.doctor.local`, the DNS ones (SPF, DKIM,
DMARC, MX) in :mod:`gateway.doctor.dns`. Nothing is changed.
"""

from __future__ import annotations

from dns.asyncresolver import Resolver

from gateway.config import Config
from gateway.doctor.dns import dns_checks
from gateway.doctor.local import local_checks
from gateway.doctor.report import Check, Status, failed, print_report

__all__ = ["Check", "Status", "failed", "print_report", "run_checks"]


async def run_checks(
    config: Config, *, resolver: Resolver | None = None, workers: int = 1
) -> list[Check]:
    """Every check, in report order: configuration first, then DNS per sending domain
    (``resolver``: the system's, :func:`gateway.doctor.dns.system_resolver`, if None;
    ``workers``: the ``optgate serve --workers`` count the pools are sized for)."""
    local, keys = await local_checks(config, workers)
    return [*local, *await dns_checks(config, keys, resolver)]
