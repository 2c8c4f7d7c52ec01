"""Prometheus exposition shared by the services, and the stage sensor.

Every service serves ``/metrics`` on its own port through :func:`serve`,
with the ``/healthz`` and ``/readyz`` probes of :mod:`messagehub.health`
beside it. Metrics that every consuming stage has (records applied, dead
letters, the outbox, record age) are declared here once, labelled by stage.
Each service declares its own in ``services/<name>/metrics.py``. Stage code
calls sensor methods, never prometheus-client directly. All durations are in
seconds. ``docs/metrics.md`` is the catalogue of every metric.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import psycopg
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from messagehub.health import Health

log = logging.getLogger(__name__)

# Buckets from 1 ms to 60 s: a mail's path through one stage is usually
# milliseconds, and a stuck dependency shows up in the top buckets.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                   1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

# Buckets from 50 ms to 6 h for the age of a record when its stage is done
# with it: seconds when the pipeline keeps up, hours after an outage.
AGE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
               300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0)

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
RECORD_AGE = Histogram(
    "messagehub_stage_record_age_seconds",
    "Time from a record's Kafka timestamp to the moment its stage acknowledged it, by source "
    "topic. For the router on mail.received: a mail's age when its conversation event is out.",
    ["stage", "topic"], buckets=AGE_BUCKETS)
INFLIGHT_OLDEST = Gauge(
    "messagehub_stage_inflight_oldest_seconds",
    "Time the oldest record the stage has taken from Kafka but not acknowledged has been in "
    "flight; 0 when none is.",
    ["stage"])


class StageMetrics:
    """The sensor of one consuming stage."""

    def __init__(self, stage: str) -> None:
        self.stage = stage
        # Created now so that the gauge reads 0, not absent, before the first record.
        INFLIGHT_OLDEST.labels(stage).set(0)

    def on_record(self, result: str, seconds: float) -> None:
        RECORDS.labels(self.stage, result).inc()
        RECORD_SECONDS.labels(self.stage).observe(seconds)

    def on_dead_letter(self, error_class: str) -> None:
        DEAD_LETTERS.labels(self.stage, error_class).inc()

    def on_published(self, topic: str, count: int) -> None:
        OUTBOX_PUBLISHED.labels(self.stage, topic).inc(count)

    def on_acknowledged(self, topic: str, age_seconds: float) -> None:
        RECORD_AGE.labels(self.stage, topic).observe(max(age_seconds, 0.0))

    def track_inflight_oldest(self, oldest_seconds: Callable[[], float]) -> None:
        """Read the oldest in-flight record's age from ``oldest_seconds`` at each scrape."""
        INFLIGHT_OLDEST.labels(self.stage).set_function(oldest_seconds)


class AssignmentQueueCollector(Collector):
    """Open conversations that wait for an agent, per inbox, counted at scrape time.

    The assign service registers it. Each scrape runs one grouped query on a
    short-lived connection with a statement timeout, so a slow database
    delays the scrape but never the stage. When the query fails, the two
    gauges are left out of that scrape and the failure is logged.
    """

    QUERY = (
        "SELECT i.id::text AS inbox_id, i.name AS inbox_name, count(c.id) AS waiting, "
        "coalesce(extract(epoch FROM now() - min(c.created_at)), 0) AS oldest_seconds "
        "FROM inboxes i LEFT JOIN conversations c ON c.inbox_id = i.id "
        "AND c.status = 'open' AND c.assignee_id IS NULL "
        "GROUP BY i.id, i.name")

    def __init__(self, database_url: str, *, timeout_seconds: int = 5) -> None:
        self._database_url = database_url
        self._timeout_seconds = timeout_seconds

    def describe(self) -> Iterable[Any]:
        return [GaugeMetricFamily("messagehub_assignment_queue_conversations", "", labels=[]),
                GaugeMetricFamily("messagehub_assignment_queue_oldest_seconds", "", labels=[])]

    def collect(self) -> Iterator[Any]:
        waiting = GaugeMetricFamily(
            "messagehub_assignment_queue_conversations",
            "Open conversations without an assignee, per inbox.",
            labels=["inbox_id", "inbox_name"])
        oldest = GaugeMetricFamily(
            "messagehub_assignment_queue_oldest_seconds",
            "Age of the oldest open conversation without an assignee, per inbox; 0 when none.",
            labels=["inbox_id", "inbox_name"])
        try:
            rows = self._query()
        except psycopg.Error as exc:
            log.warning("assignment queue: query failed, gauges left out of this scrape: %s", exc)
            return
        for inbox_id, inbox_name, count, oldest_seconds in rows:
            waiting.add_metric([inbox_id, inbox_name], count)
            oldest.add_metric([inbox_id, inbox_name], float(oldest_seconds))
        yield waiting
        yield oldest

    def _query(self) -> list[tuple[str, str, int, float]]:
        timeout_ms = self._timeout_seconds * 1000
        with psycopg.connect(self._database_url, connect_timeout=self._timeout_seconds,
                             options=f"-c statement_timeout={timeout_ms}") as conn:
            return conn.execute(self.QUERY).fetchall()


def register_assignment_queue(database_url: str,
                              registry: CollectorRegistry = REGISTRY) -> None:
    """Export the assignment queue gauges of :class:`AssignmentQueueCollector`."""
    registry.register(AssignmentQueueCollector(database_url))


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base signature
        pass


def _probe_app(health: Health, probe: str) -> Callable[..., list[bytes]]:
    def app(_environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        status, body = health.report(probe)
        reason = "OK" if status == 200 else "Service Unavailable"
        start_response(f"{status} {reason}", [("Content-Type", "application/json")])
        return [json.dumps(body).encode()]
    return app


def serve(host: str, port: int, registry: CollectorRegistry = REGISTRY, *,
          health: Health | None = None) -> Health:
    """Serve ``/metrics``, ``/healthz`` and ``/readyz`` from a background thread.

    Returns the :class:`Health` whose checks the probes report, a new empty
    one (always passing) when ``health`` is not given.
    """
    health = health or Health()
    routes = {"/healthz": _probe_app(health, "live"), "/readyz": _probe_app(health, "ready")}
    metrics_app = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        route: Callable[..., Any] = routes.get(environ.get("PATH_INFO", ""), metrics_app)
        return route(environ, start_response)

    server = make_server(host, port, app, server_class=_ThreadingWSGIServer,
                         handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return health
