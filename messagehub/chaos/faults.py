"""Fault injection for the chaos run, and the supervisor that undoes it.

:class:`FaultInjector` runs beside the import of :mod:`messagehub.chaos.harness`.
At random moments it injects one fault at a time into a local stack started
by ``messagehub up`` (:mod:`messagehub.stackctl`):

- ``kill:<service>``: SIGKILL to one of the five service processes;
- ``restart:kafka``: SIGKILL to the broker's JVM, then a start (an unclean
  restart, with log recovery);
- ``restart:postgresql``: SIGQUIT to the postmaster (PostgreSQL's
  immediate shutdown, which recovers from the WAL at the next start, as
  after a crash), then a start;
- ``outage:smtp-sink``: the SMTP server that outbound delivers to is
  stopped for a while, then started again.

Nothing in messagehub restarts a killed process, so the injector plays the
part of a process supervisor (Kubernetes restarting a container): right
after a fault it calls :func:`stackctl.up`, which starts whatever is not
running and leaves the rest alone. Between faults it checks every
component, and a process that died without being killed is restarted the
same way and recorded as an unplanned restart: that is a service that did
not survive an outage by itself.

Recovery of a fault is the time from the moment the component is brought
back until the work that waited on it moves again. Moving again means that
the consumer group of the killed stage commits offsets past where it
stood, that ingest accepts mail, or that the sink stores mail. When no work was waiting, the readiness probes of
all services stand in for it (``measured_by`` says which).
"""

from __future__ import annotations

import logging
import os
import random
import signal
import threading
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from messagehub import db, stackctl, topics
from messagehub.localstack.errors import LocalStackError

log = logging.getLogger(__name__)

SERVICE_KINDS = tuple(f"kill:{spec.name}" for spec in stackctl.SERVICES)
INFRA_KINDS = ("restart:kafka", "restart:postgresql", "outage:smtp-sink")
FAULT_KINDS = SERVICE_KINDS + INFRA_KINDS

# The faust app id of each consuming stage is its consumer group.
STAGE_GROUPS = {
    "router": ("messagehub-router", (topics.MAIL_RECEIVED, topics.MAIL_SENT)),
    "assign": ("messagehub-assign", (topics.CONVERSATION_EVENTS,)),
    "outbound": ("messagehub-outbound", (topics.OUTBOUND_REQUESTS, topics.CONVERSATION_EVENTS)),
}
_INFRA_COMPONENT = {"restart:kafka": "kafka", "restart:postgresql": "postgresql",
                    "outage:smtp-sink": "smtp-sink"}
_INFRA_SIGNAL = {"kafka": signal.SIGKILL, "postgresql": signal.SIGQUIT, "smtp-sink": signal.SIGKILL}
SUPERVISE_INTERVAL_SECONDS = 2.0
RESTORE_LIMIT_SECONDS = 120.0
PROBE_INTERVAL_SECONDS = 0.5


@dataclass
class FaultRecord:
    """One injected fault and how the stack came back from it."""

    kind: str
    at_s: float  # since the start of the run
    down_s: float = 0.0  # how long the component was away before it was brought back
    recovery_s: float | None = None  # None: nothing moved again within the limit
    measured_by: str = ""  # "progress" of the waiting work, or "readiness"
    detail: str = ""


@dataclass
class UnplannedRestart:
    """A component that died without being killed, and the last lines of its log."""

    component: str
    at_s: float
    last_log_lines: list[str] = field(default_factory=list)


class StackControl:
    """Kills, restores and probes the components of one local stack."""

    def __init__(self, state_dir: Path, port_base: int) -> None:
        self.state_dir = state_dir
        self.port_base = port_base

    def status(self) -> dict[str, Any]:
        return stackctl.status(self.state_dir, self.port_base)

    def pid_of(self, component: str) -> int | None:
        pid: int | None = self.status()[component]["pid"]
        return pid

    def kill(self, component: str, sig: signal.Signals) -> None:
        """Send ``sig`` to the component's process and wait until it is gone."""
        pid = self.pid_of(component)
        if pid is None:
            raise LocalStackError(f"chaos: {component} is not running, so it cannot be killed")
        os.kill(pid, sig)
        deadline = time.monotonic() + 60.0
        while self.pid_of(component) is not None:
            if time.monotonic() > deadline:
                raise LocalStackError(f"chaos: {component} pid {pid} still runs 60 s after {sig.name}")
            time.sleep(0.1)

    def restore(self) -> None:
        """Start every component that is not running, as a supervisor would.

        A start that fails is tried again for a while, as a supervisor
        restarts a container that failed to start; the last error is raised.
        """
        deadline = time.monotonic() + RESTORE_LIMIT_SECONDS
        while True:
            try:
                stackctl.up(self.state_dir, self.port_base)
                return
            except LocalStackError as exc:
                if time.monotonic() > deadline:
                    raise
                log.warning("chaos: restoring the stack failed, trying again in 2s: %s", exc)
                time.sleep(2)

    def not_running(self) -> list[str]:
        return [name for name, detail in self.status().items() if not detail["running"]]

    def unready(self) -> list[str]:
        """Return the services whose readiness probe does not return 200."""
        failing = []
        for spec in stackctl.SERVICES:
            url = f"http://127.0.0.1:{self.port_base + spec.metrics_offset}/readyz"
            try:
                with urllib.request.urlopen(url, timeout=2.0) as response:
                    if response.status != 200:
                        failing.append(spec.name)
            except (OSError, urllib.error.URLError):
                failing.append(spec.name)
        return failing

    def log_tail(self, component: str, lines: int = 5) -> list[str]:
        """Return the last error lines of a component's log, or its last lines."""
        path = self._log_path(component)
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return []
        interesting = [line for line in text.splitlines()
                       if any(word in line for word in ("ERROR", "Error", "Traceback", "CRITICAL"))]
        return (interesting or text.splitlines())[-lines:]

    def _log_path(self, component: str) -> Path:
        if component in {spec.name for spec in stackctl.SERVICES}:
            return self.state_dir / "services" / f"service-{component}.log"
        return self.state_dir / component / f"{component}.log"


class ConsumerProgress:
    """Committed offsets and lag of the stages' consumer groups, read from Kafka."""

    def __init__(self, bootstrap: str) -> None:
        self._bootstrap = bootstrap
        self._admin: Any = None
        self._consumer: Any = None

    def committed_and_lag(self, stage: str) -> tuple[int, int]:
        """Return the sum of committed offsets and the total lag of one stage."""
        group, group_topics = STAGE_GROUPS[stage]
        admin, consumer = self._clients()
        committed = admin.list_group_offsets(group).get(group, {})
        partitions = [tp for tp in consumer_partitions(consumer, group_topics)]
        ends = consumer.end_offsets(partitions)
        total_committed = 0
        lag = 0
        for tp in partitions:
            position = committed[tp].offset if tp in committed else 0
            position = max(position, 0)
            total_committed += position
            lag += max(0, ends[tp] - position)
        return total_committed, lag

    def close(self) -> None:
        for client in (self._admin, self._consumer):
            if client is not None:
                try:
                    client.close()
                except Exception:  # noqa: BLE001 - a broken client is dropped anyway
                    pass
        self._admin = self._consumer = None

    def _clients(self) -> tuple[Any, Any]:
        if self._admin is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                from kafka import KafkaAdminClient, KafkaConsumer
            self._admin = KafkaAdminClient(bootstrap_servers=self._bootstrap,
                                           client_id="messagehub-chaos-lag",
                                           request_timeout_ms=10_000)
            self._consumer = KafkaConsumer(bootstrap_servers=self._bootstrap,
                                           client_id="messagehub-chaos-ends",
                                           enable_auto_commit=False,
                                           request_timeout_ms=15_000)
        return self._admin, self._consumer


def consumer_partitions(consumer: Any, names: Sequence[str]) -> list[Any]:
    """Return every partition of the named topics."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from kafka import TopicPartition
    partitions = []
    for name in names:
        for number in sorted(consumer.partitions_for_topic(name) or ()):
            partitions.append(TopicPartition(name, number))
    return partitions


class PipelineProbe:
    """Counters of the recovery measurement: per signal, a count and whether work waits."""

    def __init__(self, control: StackControl, database_url: str, bootstrap: str,
                 sink_dir: Path, import_stats: Callable[[], tuple[int, bool]]) -> None:
        self._control = control
        self._database_url = database_url
        self._consumers = ConsumerProgress(bootstrap)
        self._sink_dir = sink_dir
        self._import_stats = import_stats

    def snapshot(self, signals: Sequence[str]) -> dict[str, tuple[int, bool]]:
        """Return ``{signal: (counter, work waiting)}``; raises while a dependency is away."""
        result: dict[str, tuple[int, bool]] = {}
        for name in signals:
            if name == "ingest":
                result[name] = self._import_stats()
            elif name in STAGE_GROUPS:
                try:
                    committed, lag = self._consumers.committed_and_lag(name)
                except Exception:
                    self._consumers.close()
                    raise
                result[name] = (committed, lag > 0)
            elif name == "sink":
                _, outbound_lag = self._consumers.committed_and_lag("outbound")
                result[name] = (self._sink_count(), outbound_lag > 0 or self._sends_waiting())
        return result

    def close(self) -> None:
        self._consumers.close()

    def _sink_count(self) -> int:
        return sum(1 for _ in self._sink_dir.glob("*.json")) if self._sink_dir.is_dir() else 0

    def _sends_waiting(self) -> bool:
        with db.connect(self._database_url, autocommit=True) as conn:
            row = conn.execute("SELECT count(*) AS n FROM send_ledger WHERE status = 'sending'"
                               ).fetchone()
        return bool(row and row["n"])


# The signals whose progress shows that a fault is over.
_SIGNALS = {
    "kill:ingest": ("ingest",),
    "kill:router": ("router",),
    "kill:assign": ("assign",),
    "kill:outbound": ("outbound",),
    "kill:api": (),
    "restart:kafka": ("ingest", "router", "assign", "outbound"),
    "restart:postgresql": ("ingest", "router", "assign", "outbound"),
    "outage:smtp-sink": ("sink",),
}


class FaultInjector(threading.Thread):
    """Injects the planned faults at random moments and supervises the stack."""

    def __init__(self, control: StackControl, probe: PipelineProbe, plan: Sequence[str], *,
                 rng: random.Random, gap_seconds: tuple[float, float],
                 sink_outage_seconds: tuple[float, float], recovery_limit_seconds: float,
                 started_at: float) -> None:
        super().__init__(name="chaos-faults", daemon=True)
        unknown = [kind for kind in plan if kind not in FAULT_KINDS]
        if unknown:
            raise ValueError(f"unknown fault kinds {unknown}: expected some of {FAULT_KINDS}")
        self._control = control
        self._probe = probe
        self._plan = list(plan)
        self._rng = rng
        self._gap_seconds = gap_seconds
        self._sink_outage_seconds = sink_outage_seconds
        self._recovery_limit = recovery_limit_seconds
        self._started_at = started_at
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self.faults: list[FaultRecord] = []
        self.unplanned: list[UnplannedRestart] = []
        self.plan_done = threading.Event()
        self.error: BaseException | None = None

    def stop(self) -> None:
        self._stopping.set()

    def run(self) -> None:
        try:
            for kind in self._plan:
                if self._pause(self._rng.uniform(*self._gap_seconds)):
                    return
                self._inject(kind)
            self.plan_done.set()
            while not self._pause(SUPERVISE_INTERVAL_SECONDS):
                pass
        except BaseException as exc:  # noqa: BLE001 - reported by the run, not lost in a thread
            log.exception("chaos: fault injector failed")
            self.error = exc
            self.plan_done.set()

    def report(self) -> dict[str, Any]:
        with self._lock:
            return {"faults": [asdict(fault) for fault in self.faults],
                    "unplanned_restarts": [asdict(restart) for restart in self.unplanned]}

    def _now(self) -> float:
        return time.monotonic() - self._started_at

    def _pause(self, seconds: float) -> bool:
        """Supervise for ``seconds``; return True when the injector was stopped."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self._stopping.wait(min(SUPERVISE_INTERVAL_SECONDS, deadline - time.monotonic())):
                return True
            self._supervise()
        return self._stopping.is_set()

    def _supervise(self) -> None:
        """Restart whatever died by itself, and record it."""
        down = self._control.not_running()
        if not down:
            return
        at_s = self._now()
        for component in down:
            log.warning("chaos: %s died without being killed, restarting it", component)
            with self._lock:
                self.unplanned.append(UnplannedRestart(component, round(at_s, 1),
                                                       self._control.log_tail(component)))
        self._control.restore()

    def _inject(self, kind: str) -> None:
        record = FaultRecord(kind=kind, at_s=round(self._now(), 1))
        log.info("chaos: injecting %s at %.1fs", kind, record.at_s)
        injected = time.monotonic()
        waiting = self._waiting_work(_SIGNALS[kind])

        action, _, component = kind.partition(":")
        if action == "kill":
            self._control.kill(component, signal.SIGKILL)
        else:
            self._control.kill(component, _INFRA_SIGNAL[component])
            if action == "outage":
                time.sleep(self._rng.uniform(*self._sink_outage_seconds))
                # The work that piled up while the sink was away is what must move.
                waiting = self._waiting_work(_SIGNALS[kind])

        restoring = time.monotonic()
        record.down_s = round(restoring - injected, 1)
        self._control.restore()
        record.recovery_s, record.measured_by, record.detail = self._await_recovery(
            restoring, waiting)
        log.info("chaos: %s recovered in %s s (%s)", kind, record.recovery_s, record.measured_by)
        with self._lock:
            self.faults.append(record)

    def _waiting_work(self, signals: Sequence[str]) -> list[str]:
        """Return the signals with work waiting just before the fault."""
        try:
            snapshot = self._probe.snapshot(signals)
        except Exception:  # noqa: BLE001 - unknown: assume work waits
            return list(signals)
        return [name for name, (_, pending) in snapshot.items() if pending]

    def _await_recovery(self, restoring: float,
                        waiting: list[str]) -> tuple[float | None, str, str]:
        """Wait until every service is ready and the waiting work has moved on.

        Counters are read only once every service is ready again, because a
        worker that crashes commits its last offsets on the way down, which
        is no progress. A component that dies meanwhile is restarted.
        """
        deadline = restoring + self._recovery_limit
        baseline: dict[str, int] | None = None
        while time.monotonic() < deadline:
            self._supervise()
            if baseline is None and self._control.unready():
                time.sleep(PROBE_INTERVAL_SECONDS)
                continue
            try:
                current = self._probe.snapshot(waiting)
            except Exception:  # noqa: BLE001 - a dependency is still coming back
                time.sleep(PROBE_INTERVAL_SECONDS)
                continue

            if baseline is None:
                # Work that finished meanwhile no longer needs to move.
                baseline = {name: counter for name, (counter, pending) in current.items()
                            if pending}
            else:
                baseline = {name: counter for name, counter in baseline.items()
                            if current[name][0] <= counter}
            if not baseline:
                measured_by = "progress" if waiting else "readiness"
                return round(time.monotonic() - restoring, 1), measured_by, ""
            time.sleep(PROBE_INTERVAL_SECONDS)
        return None, "progress", (f"no progress of {sorted(baseline or waiting)} or not ready "
                                  f"({self._control.unready()}) after {self._recovery_limit:.0f}s")
