"""Percentiles and per-step figures of the benchmark, from the sent mails and what was observed."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from bench.load import OfferResult
from bench.observer import Observations

SMALL_MAIL_BYTES = 1024 * 1024


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """Return the ``fraction`` percentile (0..1) by linear interpolation, None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low, high = math.floor(position), math.ceil(position)
    value = ordered[low] + (ordered[high] - ordered[low]) * (position - low)
    return round(value, 1)


def summary_ms(values: Sequence[float]) -> dict[str, float | None]:
    return {"p50": percentile(values, 0.50), "p95": percentile(values, 0.95),
            "p99": percentile(values, 0.99), "max": round(max(values), 1) if values else None}


@dataclass(frozen=True)
class StepFigures:
    """Rates and latencies of one step at a fixed offered rate."""

    offered_per_s: float
    started_at: float  # wall clock of the first due time
    finished_at: float  # wall clock of the last reply from the receiver
    seconds: float
    mails: int
    accepted: int
    errors: int
    late: int  # mails whose DATA started more than a second after their due time
    achieved_per_s: float  # accepted by the receiver, per second
    completed_in_time: int  # conversation events seen by the end of the step plus the grace
    completed_per_s: float  # conversation events per second while the step ran
    event_ms: dict[str, float | None]
    # The same for mails under 1 MB: without the multi-megabyte attachments
    event_ms_small: dict[str, float | None]
    assigned_ms: dict[str, float | None]
    missing_events: int
    keeps_up: bool

    def as_json(self) -> dict[str, object]:
        return dict(self.__dict__)


def step_figures(result: OfferResult, observations: Observations, *, grace_seconds: float,
                 keep_up_ratio: float) -> StepFigures:
    """Return the step's rates and latencies; it keeps up when the events keep pace."""
    accepted = result.accepted
    due_end = result.started_at + len(result.sent) / result.rate
    event_latencies: list[float] = []
    small_latencies: list[float] = []
    assigned_latencies: list[float] = []
    event_times: list[float] = []
    in_time = 0

    for sent in accepted:
        seen = observations.conversation.get(sent.message_id)
        if seen is None:
            continue
        seen_at, conversation_id, kind = seen
        event_times.append(seen_at)
        event_latencies.append(1000 * (seen_at - sent.data_at))
        if sent.size < SMALL_MAIL_BYTES:
            small_latencies.append(event_latencies[-1])
        in_time += seen_at <= due_end + grace_seconds
        assigned_at = observations.assigned.get(conversation_id)
        if kind == "CONVERSATION_CREATED" and assigned_at is not None:
            assigned_latencies.append(1000 * (assigned_at - sent.data_at))

    seconds = due_end - result.started_at
    completed_per_s = 0.0
    if len(event_times) > 1:
        completed_per_s = (len(event_times) - 1) / (max(event_times) - min(event_times))
    needed = keep_up_ratio * len(result.sent)
    return StepFigures(
        offered_per_s=result.rate, started_at=result.started_at,
        finished_at=result.finished_at, seconds=round(seconds, 1), mails=len(result.sent),
        accepted=len(accepted), errors=len(result.sent) - len(accepted), late=result.late,
        achieved_per_s=round(result.achieved_rate, 1), completed_in_time=in_time,
        completed_per_s=round(completed_per_s, 1), event_ms=summary_ms(event_latencies),
        event_ms_small=summary_ms(small_latencies),
        assigned_ms=summary_ms(assigned_latencies),
        missing_events=len(accepted) - len(event_latencies),
        keeps_up=len(accepted) == len(result.sent) and in_time >= needed)
