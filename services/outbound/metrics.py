"""Prometheus metrics of the outbound service, behind the sensor SMTP delivery calls."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from messagehub.metrics import LATENCY_BUCKETS

SMTP_RESULTS = Counter(
    "messagehub_outbound_smtp_results_total",
    "SMTP send attempts by result (sent, retry, failed) and error class (empty when sent; "
    "rejected, auth, tls, connect, timeout, config).",
    ["result", "error_class"])
SMTP_ATTEMPT_SECONDS = Histogram(
    "messagehub_outbound_smtp_attempt_seconds",
    "Time of one SMTP send attempt, from connecting (or reusing a connection) to the reply to DATA.",
    buckets=LATENCY_BUCKETS)


class OutboundMetrics:
    """The sensor of SMTP delivery.

    NOTE: SMTP delivery is to call :meth:`on_smtp_attempt` once per attempt.
    Until it does, these metrics export no samples, so only the alert on
    ``mail.failed`` covers SMTP failures.
    """

    def on_smtp_attempt(self, result: str, error_class: str, seconds: float) -> None:
        """Count one attempt: result "sent", "retry" (temporary) or "failed" (permanent)."""
        SMTP_RESULTS.labels(result, error_class).inc()
        SMTP_ATTEMPT_SECONDS.observe(seconds)
