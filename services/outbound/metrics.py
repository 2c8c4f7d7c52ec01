"""Prometheus metrics of the outbound service, behind one sensor class.

The outbound stage calls :class:`OutboundMetrics` hooks; nothing else in the
service touches prometheus-client. Durations are in seconds.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from messagehub.metrics import LATENCY_BUCKETS

MAILS = Counter(
    "messagehub_outbound_mails_total",
    "Outbound requests finished, by kind (agent, greeting, out_of_hours, csat) and result "
    "(sent, failed, suppressed).",
    ["kind", "result"])
FAILURES = Counter(
    "messagehub_outbound_failures_total",
    "Outbound requests that failed for good or were suppressed, by error class.",
    ["error_class"])
SEND_SECONDS = Histogram(
    "messagehub_outbound_send_seconds",
    "Time from handing a mail to SMTP until the server accepted it, retries included.",
    buckets=LATENCY_BUCKETS)
SENT_COPIES = Counter(
    "messagehub_outbound_sent_copies_total",
    "Copies saved to (or failed to save to) the inbox's IMAP Sent folder, by result.",
    ["result"])
RATE_LIMIT_WAIT_SECONDS = Counter(
    "messagehub_outbound_rate_limit_wait_seconds_total",
    "Time sends waited for the per-inbox rate limit.")


class OutboundMetrics:
    """The sensor of the outbound stage."""

    def on_sent(self, kind: str, seconds: float) -> None:
        MAILS.labels(kind, "sent").inc()
        SEND_SECONDS.observe(seconds)

    def on_failed(self, kind: str, error_class: str) -> None:
        result = "suppressed" if error_class == "suppressed" else "failed"
        MAILS.labels(kind, result).inc()
        FAILURES.labels(error_class).inc()

    def on_sent_copy(self, result: str) -> None:
        SENT_COPIES.labels(result).inc()

    def on_rate_limited(self, seconds: float) -> None:
        RATE_LIMIT_WAIT_SECONDS.inc(seconds)
