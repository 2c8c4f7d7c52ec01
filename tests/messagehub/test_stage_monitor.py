"""Unit tests of the stage monitor: in-flight records, record age, rebalances."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

from faust.types import TP

from messagehub.health import Health
from messagehub.stage_monitor import StageMonitor


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class RecordingSensor:
    def __init__(self) -> None:
        self.acknowledged: list[tuple[str, float]] = []
        self.oldest: Any = None

    def on_acknowledged(self, topic: str, age_seconds: float) -> None:
        self.acknowledged.append((topic, age_seconds))

    def track_inflight_oldest(self, oldest_seconds: Any) -> None:
        self.oldest = oldest_seconds


def _event(timestamp: float | None) -> Any:
    return SimpleNamespace(message=SimpleNamespace(timestamp=timestamp))


def _monitor() -> tuple[StageMonitor, RecordingSensor, Health, FakeClock]:
    clock = FakeClock()
    sensor = RecordingSensor()
    checks = Health(clock=clock)
    monitor = StageMonitor(sensor, checks, clock=clock,  # type: ignore[arg-type]
                           rebalance_stuck_seconds=300)
    return monitor, sensor, checks, clock


def test_inflight__oldest_until_acknowledged() -> None:
    monitor, sensor, _checks, clock = _monitor()
    tp = TP("mail.received", 0)

    monitor.on_stream_event_in(tp, 5, None, _event(None))  # type: ignore[arg-type]
    clock.now += 10
    monitor.on_stream_event_in(tp, 6, None, _event(None))  # type: ignore[arg-type]
    clock.now += 5
    both = sensor.oldest()
    monitor.on_stream_event_out(tp, 5, None, _event(None))  # type: ignore[arg-type]
    one = sensor.oldest()
    monitor.on_stream_event_out(tp, 6, None, _event(None))  # type: ignore[arg-type]

    assert both == 15
    assert one == 5
    assert sensor.oldest() == 0


def test_acknowledged__observes_record_age() -> None:
    monitor, sensor, _checks, _clock = _monitor()
    tp = TP("mail.received", 3)

    monitor.on_stream_event_in(tp, 1, None, _event(time.time() - 42))  # type: ignore[arg-type]
    monitor.on_stream_event_out(tp, 1, None, _event(time.time() - 42))  # type: ignore[arg-type]

    assert len(sensor.acknowledged) == 1
    topic, age = sensor.acknowledged[0]
    assert topic == "mail.received"
    assert 41 <= age <= 45


def test_rebalance__drops_inflight_records() -> None:
    monitor, sensor, _checks, clock = _monitor()

    monitor.on_stream_event_in(TP("t", 0), 1, None, _event(None))  # type: ignore[arg-type]
    clock.now += 30
    monitor.on_rebalance_start(None)  # type: ignore[arg-type]

    assert sensor.oldest() == 0


def test_readiness__after_first_rebalance() -> None:
    monitor, _sensor, checks, _clock = _monitor()

    before = checks.readiness_failures()
    monitor.on_rebalance_start(None)  # type: ignore[arg-type]
    monitor.on_rebalance_end(None, {})  # type: ignore[arg-type]

    assert before == ["consumer group: no partition assignment completed yet"]
    assert checks.readiness_failures() == []


def test_liveness__fails_on_hung_rebalance() -> None:
    monitor, _sensor, checks, clock = _monitor()

    monitor.on_rebalance_start(None)  # type: ignore[arg-type]
    clock.now += 299
    during = checks.liveness_failures()
    clock.now += 2
    hung = checks.liveness_failures()
    monitor.on_rebalance_end(None, {})  # type: ignore[arg-type]

    assert during == []
    assert hung == ["rebalance in progress for 301s (limit 300s)"]
    assert checks.liveness_failures() == []
