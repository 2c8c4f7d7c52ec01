"""Liveness and readiness of one service process, for Kubernetes' probes.

Every service serves ``/healthz`` and ``/readyz`` beside ``/metrics`` on its
metrics port (:func:`messagehub.metrics.serve`); the Deployments in
``deploy/k8s/`` point their liveness and readiness probes there.

A :class:`Health` contains named checks. A check returns ``None`` when it passes
and a short reason when it fails:

- liveness checks say the process can still make progress on its own; when
  one fails the kubelet restarts the container. The usual one is a
  :class:`Heartbeat` that the service's event loop beats through a callback
  it schedules itself (:func:`watch_event_loop`), so a blocked or dead loop
  stops beating even though the HTTP thread still answers;
- readiness checks say the process is doing its work now: the consumer has
  joined its group, the SMTP receiver listens, the service is not stopping.

Checks never fail because a dependency (Kafka, PostgreSQL, an SMTP server) is
down: restarting the process would not bring it back, and the stages already
retry. Those outages show in the metrics and alerts instead.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

Check = Callable[[], "str | None"]
Clock = Callable[[], float]

# How often the watched event loop beats, and how long a beat stays fresh:
# six missed beats in a row are no scheduling hiccup.
LOOP_BEAT_SECONDS = 5.0
LOOP_STALE_SECONDS = 30.0


class Heartbeat:
    """A liveness check that fails when :meth:`beat` was not called recently."""

    def __init__(self, name: str, *, stale_after_seconds: float, clock: Clock) -> None:
        self.name = name
        self._stale_after = stale_after_seconds
        self._clock = clock
        self._last: float | None = None

    def beat(self) -> None:
        self._last = self._clock()

    def __call__(self) -> str | None:
        if self._last is None:
            return f"{self.name}: no heartbeat yet"
        silent = self._clock() - self._last
        if silent > self._stale_after:
            return f"{self.name}: no heartbeat for {silent:.0f}s (limit {self._stale_after:.0f}s)"
        return None


class Condition:
    """A readiness check that fails with a reason until it is set."""

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self._reason: str | None = reason
        self._lock = threading.Lock()

    def set(self) -> None:
        with self._lock:
            self._reason = None

    def clear(self, reason: str) -> None:
        with self._lock:
            self._reason = reason

    def __call__(self) -> str | None:
        with self._lock:
            return None if self._reason is None else f"{self.name}: {self._reason}"


class Health:
    """The named liveness and readiness checks of one process."""

    def __init__(self, *, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._liveness: dict[str, Check] = {}
        self._readiness: dict[str, Check] = {}

    def add_liveness(self, name: str, check: Check) -> None:
        self._liveness[name] = check

    def add_readiness(self, name: str, check: Check) -> None:
        self._readiness[name] = check

    def heartbeat(self, name: str, *, stale_after_seconds: float) -> Heartbeat:
        """Register and return a heartbeat that liveness requires."""
        heartbeat = Heartbeat(name, stale_after_seconds=stale_after_seconds, clock=self._clock)
        self.add_liveness(name, heartbeat)
        return heartbeat

    def condition(self, name: str, *, reason: str) -> Condition:
        """Register and return a readiness condition, failing with ``reason`` until set."""
        condition = Condition(name, reason)
        self.add_readiness(name, condition)
        return condition

    def liveness_failures(self) -> list[str]:
        return _failures(self._liveness)

    def readiness_failures(self) -> list[str]:
        # A process that is not live is not ready either.
        return self.liveness_failures() + _failures(self._readiness)

    def report(self, probe: str) -> tuple[int, dict[str, Any]]:
        """Return the HTTP status and JSON body of ``probe``: "live" or "ready"."""
        failures = self.liveness_failures() if probe == "live" else self.readiness_failures()
        if failures:
            return 503, {"status": "failing", "failures": failures}
        return 200, {"status": "ok"}


def _failures(checks: dict[str, Check]) -> list[str]:
    failures = []
    for name, check in checks.items():
        try:
            reason = check()
        except Exception as exc:  # noqa: BLE001 - a broken check is a failing check
            reason = f"{name}: check raised {exc!r}"
        if reason is not None:
            failures.append(reason)
    return failures


def watch_event_loop(loop: asyncio.AbstractEventLoop, heartbeat: Heartbeat, *,
                     interval_seconds: float = LOOP_BEAT_SECONDS) -> None:
    """Beat ``heartbeat`` from ``loop`` every ``interval_seconds`` while the loop runs.

    The beat is a plain ``call_later`` chain, not a task: it only runs when the
    loop gets round to it, which is exactly what liveness should measure.
    Call it from any thread; the first beat is scheduled on ``loop``.
    """
    def beat() -> None:
        heartbeat.beat()
        loop.call_later(interval_seconds, beat)

    loop.call_soon_threadsafe(beat)
