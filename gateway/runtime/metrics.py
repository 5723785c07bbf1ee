"""Prometheus metrics: one registry that the SMTP side and the web side report into.

Labels carry verdicts, reasons and channels, never an address or its hash.
Under ``optgate serve --workers N`` each worker writes its values to files in
one directory (prometheus_client's multiprocess mode) and ``/metrics`` on any
worker reports the sum over all of them, workers that were replaced included.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    values,
)
from prometheus_client.multiprocess import MultiProcessCollector

_LATENCY = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    """The gateway's counters and histograms, in a registry of their own."""

    def __init__(self) -> None:
        self.shared_dir: str | None = None  # set by across_processes
        self.registry = CollectorRegistry()
        r = self.registry
        self.messages = Counter(
            "optgate_messages", "SMTP transactions by reply class", ["reply"], registry=r
        )
        self.recipients = Counter(
            "optgate_recipients", "Recipient decisions", ["verdict", "reason"], registry=r
        )
        self.unsubscribes = Counter(
            "optgate_unsubscribes", "Opt-outs recorded, by channel", ["channel"], registry=r
        )
        self.relay_errors = Counter(
            "optgate_relay_errors", "Copies the next hop did not accept", ["kind"], registry=r
        )
        self.already_delivered = Counter(
            "optgate_already_delivered",
            "Copies not sent again: the ledger has this message delivered to the recipient",
            registry=r,
        )
        self.uncertain_skipped = Counter(
            "optgate_uncertain_skipped",
            "Copies not sent again: the ledger has this message uncertain for the recipient",
            registry=r,
        )
        self.uncertain = Counter(
            "optgate_uncertain",
            "Copies sent whose reply after the final dot was lost (recorded as uncertain)",
            registry=r,
        )
        self.dsns = Counter(
            "optgate_dsns",
            "Delivery status notifications for refused copies",
            ["result"],
            registry=r,
        )
        self.inbound = Counter(
            "optgate_inbound",
            "Findings of mail to the inbound addresses, by what was done (suppressed: new)",
            ["outcome"],
            registry=r,
        )
        self.esp = Counter(
            "optgate_esp_notifications",
            "ESP webhook requests, by vendor and what became of them (accepted, forged, ...)",
            ["vendor", "outcome"],
            registry=r,
        )
        self.smtp_seconds = Histogram(
            "optgate_smtp_transaction_seconds",
            "Time from end of DATA to the reply",
            buckets=_LATENCY,
            registry=r,
        )
        # set by the one worker that verifies the audit log (gateway/runtime/auditwatch.py)
        self.audit_intact = Gauge(
            "optgate_audit_chain_intact",
            "1 if the audit log's chain and the state it rebuilds verified at the last check",
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.audit_events = Gauge(
            "optgate_audit_events",
            "Events in the audit log at the last check",
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.audit_verified = Gauge(
            "optgate_audit_verified_timestamp_seconds",
            "When the audit log was last checked (Unix time)",
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.api_requests = Counter(
            "optgate_api_requests",
            "REST API requests by operation and HTTP status",
            ["operation", "status"],
            registry=r,
        )
        self.webhook_deliveries = Counter(
            "optgate_webhook_deliveries",
            "Webhook delivery attempts: delivered, failed (retried later), dead (given up)",
            ["outcome"],
            registry=r,
        )
        self.webhook_backlog = Gauge(
            "optgate_webhook_backlog",
            "Webhook deliveries waiting (pending, or dead: given up), at the last look",
            ["state"],
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.lookup_seconds = Histogram(
            "optgate_store_lookup_seconds",
            "Time of one lookup_many (all recipients of a message)",
            buckets=_LATENCY,
            registry=r,
        )

    def exposition(self) -> bytes:
        """The registry in Prometheus text format (all workers' sum when shared)."""
        if self.shared_dir is None:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        MultiProcessCollector(merged, path=self.shared_dir)  # type: ignore[no-untyped-call]
        return generate_latest(merged)


def across_processes(directory: str) -> Metrics:
    """This worker process's metrics, kept in ``directory`` beside its siblings'.

    Call once in a fresh worker, before any other metric is made: values of
    metrics made after it live in per-process files there.
    """
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
    metrics = Metrics()
    metrics.shared_dir = directory
    return metrics
