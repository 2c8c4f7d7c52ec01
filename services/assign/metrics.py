"""Prometheus metrics of the assign service, behind the sensor the stage calls."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from messagehub.metrics import LATENCY_BUCKETS

DECISIONS = Counter(
    "messagehub_assign_decisions_total",
    "Assignment decisions, by decision (assigned, unassigned, queued) and reason.",
    ["decision", "reason"])
ASSIGN_SECONDS = Histogram(
    "messagehub_assign_created_to_assigned_seconds",
    "Time from the router's CONVERSATION_CREATED to the assignment, for conversations "
    "assigned without waiting in the queue.",
    buckets=LATENCY_BUCKETS)
QUEUE_WAIT_SECONDS = Histogram(
    "messagehub_assign_queue_wait_seconds",
    "Time a conversation waited in its inbox's queue before the assign service assigned it.",
    buckets=(*LATENCY_BUCKETS, 300.0, 900.0, 3600.0, 4 * 3600.0, 24 * 3600.0))
AUTOMATIC_ANSWERS = Counter(
    "messagehub_assign_automatic_answers_total",
    "Automatic answers requested, by kind (greeting, out_of_hours).",
    ["kind"])


class AssignMetrics:
    def on_decision(self, decision: str, reason: str) -> None:
        DECISIONS.labels(decision, reason).inc()

    def on_assigned_new(self, seconds: float) -> None:
        ASSIGN_SECONDS.observe(max(seconds, 0.0))

    def on_assigned_from_queue(self, waited_seconds: float) -> None:
        QUEUE_WAIT_SECONDS.observe(max(waited_seconds, 0.0))

    def on_automatic_answer(self, kind: str) -> None:
        AUTOMATIC_ANSWERS.labels(kind).inc()
