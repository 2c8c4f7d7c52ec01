"""Prometheus metrics of the ingest service, behind the sensor its parts call.

The forwarding receiver and the HTTP upload call :meth:`IngestMetrics.on_accepted`
and :meth:`IngestMetrics.on_rejected`. The IMAP syncs call the ``on_imap_*``
hooks, and the service reports the syncs' states every few seconds.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import Counter, Gauge, Histogram

from messagehub.metrics import LATENCY_BUCKETS

MAILS_ACCEPTED = Counter(
    "messagehub_ingest_mails_accepted_total",
    "Mails stored and acknowledged by Kafka, by source (smtp, http, imap, import).",
    ["source"])
MAILS_REJECTED = Counter(
    "messagehub_ingest_mails_rejected_total",
    "Mails or recipients refused, by source and reason (unknown_recipient, temporary_failure).",
    ["source", "reason"])
ACCEPT_SECONDS = Histogram(
    "messagehub_ingest_accept_seconds",
    "Time to store a mail and get Kafka's acknowledgement: for smtp from the end of DATA to the "
    "250 reply, for imap and import per FETCH batch.",
    ["source"], buckets=LATENCY_BUCKETS)
IMAP_ERRORS = Counter(
    "messagehub_ingest_imap_errors_total",
    "IMAP sync sessions that failed, by error class (auth, tls, connect, timeout, protocol, "
    "folder, storage, settings).",
    ["error_class"])
IMAP_EVENTS = Counter(
    "messagehub_ingest_imap_events_total",
    "Notable IMAP sync events, by kind: uidvalidity_changed (a folder is re-synced) and "
    "quarantined (a mail failed its last attempt and waits for an admin).",
    ["event"])
IMAP_INBOXES = Gauge(
    "messagehub_ingest_imap_inboxes",
    "Folder syncs on this replica, by state (connecting, syncing, idle, backoff, auth_failed, "
    "stopped).",
    ["state"])
IMAP_STATES = ("connecting", "idle", "syncing", "backoff", "auth_failed")


class IngestMetrics:
    def on_accepted(self, source: str, seconds: float) -> None:
        MAILS_ACCEPTED.labels(source).inc()
        ACCEPT_SECONDS.labels(source).observe(seconds)

    def on_rejected(self, source: str, reason: str) -> None:
        MAILS_REJECTED.labels(source, reason).inc()

    def on_imap_error(self, error_class: str) -> None:
        IMAP_ERRORS.labels(error_class).inc()

    def on_imap_event(self, event: str) -> None:
        IMAP_EVENTS.labels(event).inc()

    def on_imap_states(self, inboxes_by_state: Mapping[str, int]) -> None:
        """Set how many inboxes are in each sync state; states not given count 0."""
        for state in (*IMAP_STATES, *inboxes_by_state):
            IMAP_INBOXES.labels(state).set(inboxes_by_state.get(state, 0))
