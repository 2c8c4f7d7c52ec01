"""Sampling profiles of the running services, with py-spy.

``messagehub bench --profile`` attaches py-spy (a sampling profiler that
reads a process's stacks from outside, so the service runs unchanged) to
each service during one step at the top offered rate. :func:`summarize`
turns py-spy's collapsed stacks into the functions with the most samples:
``self`` counts samples where the function itself was running, ``total``
samples where it was anywhere on the stack. py-spy needs ptrace rights on
the services (root, or CAP_SYS_PTRACE).
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

SAMPLE_RATE_HZ = 100


class ProfilerUnavailable(RuntimeError):
    """py-spy is not installed or cannot attach to the services."""


@dataclass(frozen=True)
class Profile:
    service: str
    samples: int
    idle_share: float  # share of samples in which the main thread waited in the event loop
    top_self: list[tuple[str, float]]  # function, share of samples
    top_total: list[tuple[str, float]]


def py_spy_path() -> str:
    beside = Path(sys.executable).parent / "py-spy"
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if found is None:
        raise ProfilerUnavailable("py-spy is not installed: run `.venv/bin/pip install py-spy`")
    return found


def start(pids: dict[str, int], seconds: float,
          out_dir: Path) -> dict[str, subprocess.Popen[bytes]]:
    """Start one py-spy per service, each recording for ``seconds``."""
    executable = py_spy_path()
    out_dir.mkdir(parents=True, exist_ok=True)
    recorders = {}
    for service, pid in pids.items():
        recorders[service] = subprocess.Popen(
            [executable, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))),
             "--rate", str(SAMPLE_RATE_HZ), "--format", "raw", "--nonblocking",
             "--output", str(out_dir / f"{service}.txt")],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return recorders


def finish(recorders: dict[str, subprocess.Popen[bytes]], out_dir: Path) -> list[Profile]:
    """Wait for the recorders and summarize each service's profile."""
    profiles = []
    for service, recorder in recorders.items():
        _, stderr = recorder.communicate(timeout=120)
        path = out_dir / f"{service}.txt"
        if recorder.returncode != 0 or not path.exists():
            log.warning("bench: py-spy on %s failed with exit code %s: %s", service,
                        recorder.returncode, stderr.decode(errors="replace").strip()[-300:])
            continue
        profiles.append(summarize(service, path.read_text(encoding="utf-8")))
    return profiles


# Frames that mean the main thread is waiting for work, not doing it.
_IDLE_FRAMES = ("select (selectors.py", "_run_once (asyncio/base_events.py")


def summarize(service: str, collapsed: str, top: int = 15) -> Profile:
    """Return the hottest functions of py-spy's raw (collapsed stack) output."""
    self_counts: Counter[str] = Counter()
    total_counts: Counter[str] = Counter()
    samples = idle = 0

    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        samples += count
        if any(marker in frames[-1] for marker in _IDLE_FRAMES):
            idle += count
            continue
        self_counts[frames[-1]] += count
        for frame in set(frames[1:]):
            total_counts[frame] += count

    def shares(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(frame, round(count / samples, 3)) for frame, count in counter.most_common(top)]

    return Profile(service=service, samples=samples,
                   idle_share=round(idle / samples, 3) if samples else 0.0,
                   top_self=shares(self_counts), top_total=shares(total_counts))
