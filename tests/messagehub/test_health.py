"""Unit tests of the liveness and readiness checks and the probe endpoints."""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.error
import urllib.request

from prometheus_client import CollectorRegistry, Counter

from messagehub import health, metrics


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_heartbeat__fails_before_first_beat() -> None:
    checks = health.Health(clock=FakeClock())
    checks.heartbeat("event loop", stale_after_seconds=30)

    assert checks.liveness_failures() == ["event loop: no heartbeat yet"]


def test_heartbeat__fails_when_stale() -> None:
    clock = FakeClock()
    checks = health.Health(clock=clock)
    beat = checks.heartbeat("event loop", stale_after_seconds=30)

    beat.beat()
    clock.now += 29
    fresh = checks.liveness_failures()
    clock.now += 2
    stale = checks.liveness_failures()

    assert fresh == []
    assert stale == ["event loop: no heartbeat for 31s (limit 30s)"]


def test_condition__gates_readiness_not_liveness() -> None:
    checks = health.Health(clock=FakeClock())
    listening = checks.condition("smtp receiver", reason="not listening yet")

    assert checks.liveness_failures() == []
    assert checks.readiness_failures() == ["smtp receiver: not listening yet"]
    listening.set()
    assert checks.readiness_failures() == []
    listening.clear("stopping")
    assert checks.report("ready") == (503, {"status": "failing",
                                            "failures": ["smtp receiver: stopping"]})


def test_readiness__includes_liveness() -> None:
    checks = health.Health(clock=FakeClock())
    checks.heartbeat("event loop", stale_after_seconds=30)

    assert checks.report("ready")[0] == 503


def test_broken_check__reported_as_failure() -> None:
    checks = health.Health(clock=FakeClock())

    def broken() -> str | None:
        raise RuntimeError("boom")

    checks.add_liveness("broken", broken)

    assert checks.liveness_failures() == ["broken: check raised RuntimeError('boom')"]


async def test_watch_event_loop__beats_while_loop_runs() -> None:
    checks = health.Health()
    beat = checks.heartbeat("event loop", stale_after_seconds=30)

    health.watch_event_loop(asyncio.get_running_loop(), beat, interval_seconds=0.01)
    await asyncio.sleep(0.05)

    assert checks.liveness_failures() == []


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_serve__routes_probes_and_metrics() -> None:
    registry = CollectorRegistry()
    Counter("probe_test_total", "A counter of the test.", registry=registry).inc()
    checks = health.Health(clock=FakeClock())
    ready = checks.condition("stage", reason="starting")
    port = _free_port()

    metrics.serve("127.0.0.1", port, registry, health=checks)
    base = f"http://127.0.0.1:{port}"
    live_status, _ = _get(f"{base}/healthz")
    unready_status, unready_body = _get(f"{base}/readyz")
    ready.set()
    ready_status, _ = _get(f"{base}/readyz")
    metrics_status, metrics_body = _get(f"{base}/metrics")

    assert live_status == 200
    assert unready_status == 503
    assert json.loads(unready_body)["failures"] == ["stage: starting"]
    assert ready_status == 200
    assert metrics_status == 200
    assert b"probe_test_total 1.0" in metrics_body
