"""Memory and CPU of the stack's processes, read from /proc.

The benchmark finds each process through the pid files under the stack's
state dir: the five services (``services/service-NAME.pid``), Kafka
(``kafka/kafka.pid``) and PostgreSQL (``postgresql/postgresql.pid``, the
postmaster). PostgreSQL runs one backend process per connection, so its
figures cover the postmaster and all its children. Its memory is the sum of
their PSS (proportional set size), so shared buffers count once and not once
per backend. Its CPU includes the backends that have already exited. For
every other process memory is its RSS.

:class:`ResourceSampler` reads them once per interval in a thread and keeps
the samples, so a phase of the benchmark can ask for CPU use between two
instants and for memory at its end.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
SERVICES = ("ingest", "router", "assign", "outbound", "api")


@dataclass(frozen=True)
class Sample:
    at: float  # wall clock, seconds
    memory_mb: float
    cpu_seconds: float


def component_pids(state_dir: Path) -> dict[str, Path]:
    """Return the pid file of each component of the stack in ``state_dir``."""
    pid_files = {name: state_dir / "services" / f"service-{name}.pid" for name in SERVICES}
    pid_files["kafka"] = state_dir / "kafka" / "kafka.pid"
    pid_files["postgresql"] = state_dir / "postgresql" / "postgresql.pid"
    return pid_files


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _cpu_seconds(pid: int, *, with_reaped_children: bool = False) -> float:
    """Return user + system CPU seconds of ``pid`` (fields 14-17 of /proc/PID/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name may contain spaces; the fields after it are fixed.
    fields = stat.rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    if with_reaped_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLOCK_TICKS


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _pss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return 0.0
    return 0.0


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def measure(pid: int, *, tree: bool = False) -> Sample:
    """Return one sample of a process, or of it and its children when ``tree``."""
    now = time.time()
    if not tree:
        return Sample(now, _rss_mb(pid), _cpu_seconds(pid))

    memory, cpu = _pss_mb(pid), _cpu_seconds(pid, with_reaped_children=True)
    for child in _children(pid):
        try:
            memory += _pss_mb(child)
            cpu += _cpu_seconds(child)
        except (OSError, IndexError):
            continue  # the backend exited between the listing and the read
    return Sample(now, memory, cpu)


class ResourceSampler:
    """Samples every component of a stack, and extra named pids, in a thread."""

    def __init__(self, state_dir: Path, *, interval_seconds: float = 1.0,
                 extra_pids: dict[str, int] | None = None) -> None:
        self._pid_files = component_pids(state_dir)
        self._extra = dict(extra_pids or {})
        self._interval = interval_seconds
        self.samples: dict[str, list[Sample]] = {}
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-resources", daemon=True)

    def add(self, name: str, pid: int) -> None:
        self._extra[name] = pid

    def start(self) -> None:
        self.sample_once()
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(5)
        self.sample_once()

    def sample_once(self) -> None:
        pids = {name: _read_pid(path) for name, path in self._pid_files.items()}
        pids.update(self._extra)
        for name, pid in pids.items():
            if pid is None:
                continue
            try:
                sample = measure(pid, tree=name == "postgresql")
            except (OSError, IndexError):
                continue
            self.samples.setdefault(name, []).append(sample)

    def _run(self) -> None:
        while not self._stopping.wait(self._interval):
            self.sample_once()

    def cpu_percent(self, started_at: float, finished_at: float) -> dict[str, float]:
        """Return each component's CPU use between two instants, in % of one core."""
        result: dict[str, float] = {}
        for name, samples in self.samples.items():
            window = [s for s in samples if started_at <= s.at <= finished_at]
            if len(window) < 2 or window[-1].at <= window[0].at:
                continue
            used = window[-1].cpu_seconds - window[0].cpu_seconds
            result[name] = round(100 * used / (window[-1].at - window[0].at), 1)
        return result

    def memory_mb(self, at: float | None = None) -> dict[str, float]:
        """Return each component's memory at the last sample before ``at`` (default: latest)."""
        result: dict[str, float] = {}
        for name, samples in self.samples.items():
            before = [s for s in samples if at is None or s.at <= at]
            if before:
                result[name] = round(before[-1].memory_mb, 1)
        return result

    def memory_series(self, name: str) -> list[Sample]:
        return list(self.samples.get(name, []))


def load_average() -> tuple[float, float, float]:
    """Return the 1, 5 and 15 minute load averages of this machine."""
    one, five, fifteen = os.getloadavg()
    return round(one, 2), round(five, 2), round(fifteen, 2)
