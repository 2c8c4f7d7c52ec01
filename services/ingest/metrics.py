"""Prometheus metrics of the ingest service, behind the sensor the receiver calls."""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import Counter, Gauge, Histogram

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
IMAP_ERRORS = Counter(
    "messagehub_ingest_imap_errors_total",
    "IMAP sync attempts that failed, by error class (auth, tls, connect, timeout, protocol).",
    ["error_class"])
IMAP_INBOXES = Gauge(
    "messagehub_ingest_imap_inboxes",
    "Inboxes synced over IMAP, by sync state (idle, syncing, backoff, auth_failed).",
    ["state"])
IMAP_STATES = ("idle", "syncing", "backoff", "auth_failed")


class IngestMetrics:
    def on_accepted(self, source: str, seconds: float) -> None:
        MAILS_ACCEPTED.labels(source).inc()
        ACCEPT_SECONDS.labels(source).observe(seconds)

    def on_rejected(self, source: str, reason: str) -> None:
        MAILS_REJECTED.labels(source, reason).inc()

    # NOTE: the IMAP sync is to call these two hooks; until it does, the
    # IMAP metrics export no samples and their alert cannot fire.
    def on_imap_error(self, error_class: str) -> None:
        IMAP_ERRORS.labels(error_class).inc()

    def on_imap_states(self, inboxes_by_state: Mapping[str, int]) -> None:
        """Set how many inboxes are in each sync state; states not given count 0."""
        for state in (*IMAP_STATES, *inboxes_by_state):
            IMAP_INBOXES.labels(state).set(inboxes_by_state.get(state, 0))
