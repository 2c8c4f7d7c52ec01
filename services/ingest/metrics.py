"""Prometheus metrics of the ingest service, behind the sensor the receiver calls."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from messagehub.metrics import LATENCY_BUCKETS

MAILS_ACCEPTED = Counter(
    "messagehub_ingest_mails_accepted_total",
    "Mails stored and acknowledged by Kafka, by source (smtp, imap, http).",
    ["source"])
MAILS_REJECTED = Counter(
    "messagehub_ingest_mails_rejected_total",
    "Mails or recipients refused, by source and reason (unknown_recipient, temporary_failure).",
    ["source", "reason"])
ACCEPT_SECONDS = Histogram(
    "messagehub_ingest_accept_seconds",
    "Time from the end of DATA to the 250 reply: storing the mail and Kafka's acknowledgement.",
    ["source"], buckets=LATENCY_BUCKETS)


class IngestMetrics:
    def on_accepted(self, source: str, seconds: float) -> None:
        MAILS_ACCEPTED.labels(source).inc()
        ACCEPT_SECONDS.labels(source).observe(seconds)

    def on_rejected(self, source: str, reason: str) -> None:
        MAILS_REJECTED.labels(source, reason).inc()
