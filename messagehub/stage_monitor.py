"""Metrics and health checks of a consuming stage, fed by faust's sensor hooks.

:func:`messagehub.service.run_stage_service` adds one :class:`StageMonitor`
to the faust app of router, assign and outbound. Faust calls its sensor
hooks when a record enters the agent's stream, when the agent acknowledges
it (after its batch committed and the outbox was published) and around
consumer-group rebalances. From those the monitor:

- observes each record's age at acknowledgement (``on_acknowledged``);
- tracks the records in flight, so that the oldest one's age is a gauge;
- marks the stage ready once its consumer has completed a rebalance, and
  fails liveness when a rebalance has lasted longer than
  ``rebalance_stuck_seconds``: a worker stuck there consumes nothing until it
  is restarted.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import faust
from faust.types import TP, AppT, EventT, StreamT

from messagehub.health import Clock, Condition, Health
from messagehub.metrics import StageMetrics

log = logging.getLogger(__name__)

REBALANCE_STUCK_SECONDS = 300.0


class StageMonitor(faust.Sensor):
    """Faust sensor of one stage; see the module docstring."""

    def __init__(self, sensor: StageMetrics, health: Health, *,
                 rebalance_stuck_seconds: float = REBALANCE_STUCK_SECONDS,
                 clock: Clock = time.monotonic, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._sensor = sensor
        self._clock = clock
        self._rebalance_stuck_seconds = rebalance_stuck_seconds
        # The metrics thread reads the in-flight table while the worker's loop writes it.
        self._lock = threading.Lock()
        self._inflight: dict[tuple[str, int, int], float] = {}
        self._rebalance_started: float | None = None
        self.joined: Condition = health.condition(
            "consumer group", reason="no partition assignment completed yet")
        health.add_liveness("rebalance", self._check_rebalance)
        sensor.track_inflight_oldest(self.oldest_inflight_seconds)

    def on_stream_event_in(self, tp: TP, offset: int, stream: StreamT[Any],
                           event: EventT[Any]) -> dict[str, Any] | None:
        with self._lock:
            self._inflight[(tp.topic, tp.partition, offset)] = self._clock()
        return None

    def on_stream_event_out(self, tp: TP, offset: int, stream: StreamT[Any], event: EventT[Any],
                            state: dict[str, Any] | None = None) -> None:
        with self._lock:
            self._inflight.pop((tp.topic, tp.partition, offset), None)
        timestamp = event.message.timestamp
        if timestamp:
            self._sensor.on_acknowledged(tp.topic, time.time() - timestamp)

    def on_rebalance_start(self, app: AppT) -> dict[str, Any]:
        self._rebalance_started = self._clock()
        # Records taken before the rebalance are redelivered to the next owner
        # of their partition, so they no longer count as this worker's.
        with self._lock:
            self._inflight.clear()
        return {}

    def on_rebalance_end(self, app: AppT, state: dict[str, Any]) -> None:
        self._rebalance_started = None
        self.joined.set()

    def oldest_inflight_seconds(self) -> float:
        with self._lock:
            oldest = min(self._inflight.values(), default=None)
        return 0.0 if oldest is None else self._clock() - oldest

    def _check_rebalance(self) -> str | None:
        started = self._rebalance_started
        if started is None:
            return None
        lasted = self._clock() - started
        if lasted > self._rebalance_stuck_seconds:
            return (f"rebalance in progress for {lasted:.0f}s "
                    f"(limit {self._rebalance_stuck_seconds:.0f}s)")
        return None
