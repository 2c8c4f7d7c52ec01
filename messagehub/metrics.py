"""Prometheus exposition shared by the services, and the stage sensor.

Every service serves ``/metrics`` on its own port through :func:`serve`.
Metrics that every consuming stage has (records applied, dead letters, the
outbox) are declared here once, labelled by stage; each service declares its
own in ``services/<name>/metrics.py``. Stage code calls sensor methods, never
prometheus-client directly. All durations are in seconds.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, start_http_server

# Buckets from 1 ms to 60 s: a mail's path through one stage is usually
# milliseconds, and a stuck dependency shows up in the top buckets.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                   1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

RECORDS = Counter(
    "messagehub_stage_records_total",
    "Records a stage consumed, by result: applied, or duplicate (already applied, skipped).",
    ["stage", "result"])
RECORD_SECONDS = Histogram(
    "messagehub_stage_record_seconds",
    "Time a stage spent applying one record inside its batch transaction.",
    ["stage"], buckets=LATENCY_BUCKETS)
DEAD_LETTERS = Counter(
    "messagehub_dead_letters_total",
    "Records a stage sent to its dead-letter topic, by error class.",
    ["stage", "error_class"])
OUTBOX_PUBLISHED = Counter(
    "messagehub_outbox_published_total",
    "Events the outbox relay sent to Kafka and the broker acknowledged, by topic.",
    ["stage", "topic"])


class StageMetrics:
    """The sensor of one consuming stage."""

    def __init__(self, stage: str) -> None:
        self.stage = stage

    def on_record(self, result: str, seconds: float) -> None:
        RECORDS.labels(self.stage, result).inc()
        RECORD_SECONDS.labels(self.stage).observe(seconds)

    def on_dead_letter(self, error_class: str) -> None:
        DEAD_LETTERS.labels(self.stage, error_class).inc()

    def on_published(self, topic: str, count: int) -> None:
        OUTBOX_PUBLISHED.labels(self.stage, topic).inc(count)


def serve(host: str, port: int, registry: CollectorRegistry = REGISTRY) -> None:
    """Serve ``/metrics`` from a background thread."""
    start_http_server(port, addr=host, registry=registry)
