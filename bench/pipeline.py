"""The end-to-end benchmark of a running stack, phase by phase.

:func:`run_benchmark` takes what ``messagehub up`` recorded about a stack
(``stackctl.stack_info``) and, in one run:

1. creates fresh inboxes with agents (auto-assignment on, no limit,
   greetings off, so only the inbound path is measured);
2. measures the parsing ceiling over the first mails of the stream
   (:mod:`bench.ceiling`);
3. warms the pipeline up, then offers rising rates, one step each, until
   a step no longer keeps up: its conversation events, counted up to a
   short grace after the step's last due time, fall below
   ``keep_up_ratio`` of the mails offered, or the receiver rejects mail.
   The highest rate that kept up is the sustained rate;
4. offers mail at a fixed rate (100/s by default) and reports the latency
   from the SMTP DATA command to the conversation event and to ASSIGNED;
5. optionally profiles every service with py-spy during a step at the top
   rate (:mod:`bench.profile`);
6. measures IMAP APPEND to ``mail.received`` (:mod:`bench.imap_idle`);
7. samples CPU and memory of every process throughout
   (:mod:`bench.resources`).

``bench.report`` turns the returned dict into the table, the plot and the
line in ``bench/results.jsonl``; ``messagehub bench`` and ``python -m
bench`` start a stack for it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import platform
import subprocess
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench import imap_idle, profile
from bench.ceiling import measure_ceiling
from bench.load import offer
from bench.mailgen import DEFAULT_SEED, MailGenerator
from bench.observer import EventObserver, wait_for
from bench.resources import SERVICES, ResourceSampler, load_average
from bench.stats import StepFigures, step_figures, summary_ms
from messagehub import db, inboxes

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class BenchConfig:
    """How much of each phase to run; the defaults take ten minutes or more."""

    inboxes: int = 4
    agents_per_inbox: int = 5
    seed: int = DEFAULT_SEED
    large_attachment_max_mb: float = 3.0
    ceiling_mails: int = 1000
    ceiling_rounds: int = 5
    warmup_seconds: float = 10.0
    latency_rate: float = 100.0
    latency_seconds: float = 30.0
    rates: tuple[float, ...] = (10, 20, 30, 40, 50, 75, 100, 150, 200, 300, 400, 500, 600,
                                800, 1000)
    step_seconds: float = 20.0
    keep_up_ratio: float = 0.95
    grace_seconds: float = 2.0
    drain_timeout_seconds: float = 180.0
    connections: int = 32
    idle_mails: int = 40
    idle_pause_seconds: float = 0.5
    profile: bool = False
    profile_dir: Path = field(default_factory=lambda: REPO_ROOT / "bench" / "out" / "profiles")

    @classmethod
    def quick(cls) -> BenchConfig:
        """Return a configuration of seconds at tiny rates, to check that the benchmark runs."""
        return cls(inboxes=2, agents_per_inbox=2, large_attachment_max_mb=1.0, ceiling_mails=30,
                   ceiling_rounds=1, warmup_seconds=1.0, latency_rate=5.0, latency_seconds=3.0,
                   rates=(5.0, 10.0), step_seconds=2.0, drain_timeout_seconds=60.0,
                   connections=4, idle_mails=3, idle_pause_seconds=0.3)


class BenchRun:
    """The state of one benchmark run: inboxes, the mail stream, observer and sampler."""

    def __init__(self, info: dict[str, Any], config: BenchConfig, *,
                 sample_seconds: float = 1.0) -> None:
        self.info = info
        self.config = config
        self.run_tag = f"bench{datetime.now(timezone.utc):%Y%m%d%H%M%S}-{uuid.uuid4().hex[:6]}"
        self.host, port = info["ingest_smtp"].rsplit(":", 1)
        self.port = int(port)
        self.addresses: list[str] = []
        self.mails = self.generator()
        self.observer = EventObserver(info["kafka_bootstrap"])
        self.sampler = ResourceSampler(Path(info["state_dir"]), interval_seconds=sample_seconds,
                                       extra_pids={"bench": os.getpid()})

    def generator(self) -> MailGenerator:
        """Return a new generator of this run's mail stream, from its first mail."""
        return MailGenerator(run_tag=self.run_tag, inboxes=self.config.inboxes,
                             seed=self.config.seed,
                             large_attachment_max_mb=self.config.large_attachment_max_mb)

    def create_inboxes(self) -> None:
        with db.connect(self.info["database_url"], autocommit=True) as conn:
            for number in range(self.config.inboxes):
                name = f"{self.run_tag}-{number}"
                inbox = inboxes.create_inbox(conn, name=name,
                                             email=f"support{number}@shop.example.com",
                                             inbound_domain=self.info["inbound_domain"],
                                             greeting_enabled=False)
                for agent in range(self.config.agents_per_inbox):
                    inboxes.add_agent(conn, inbox=name, name=f"Agent {agent}",
                                      email=f"agent{agent}.{name}@agents.example.com")
                self.addresses.append(inbox["forwarding_address"])

    def step(self, rate: float, seconds: float) -> StepFigures:
        """Offer ``rate`` mails/s for ``seconds``, wait for the events, return the figures."""
        count = max(1, round(rate * seconds))
        before = self.observer.counts()
        result = asyncio.run(offer(iter(self.mails), forwarding_addresses=self.addresses,
                                   host=self.host, port=self.port, rate=rate, count=count,
                                   connections=self.config.connections))
        new = sum(1 for sent in result.accepted if not sent.reply)
        expected_events = before.conversation + len(result.accepted)
        expected_assigned = before.assigned + new
        drained = wait_for(
            self.observer,
            lambda c: c.conversation >= expected_events and c.assigned >= expected_assigned,
            timeout_seconds=self.config.drain_timeout_seconds)
        if not drained:
            log.warning("bench: %.0f mails/s: not every event arrived within %.0f s",
                        rate, self.config.drain_timeout_seconds)
        return step_figures(result, self.observer.snapshot(),
                            grace_seconds=self.config.grace_seconds,
                            keep_up_ratio=self.config.keep_up_ratio)


def run_benchmark(info: dict[str, Any], config: BenchConfig) -> dict[str, Any]:
    """Run every phase against the stack described by ``info``; return all figures."""
    run = BenchRun(info, config)
    started_at = datetime.now(timezone.utc)
    load_before = load_average()
    run.create_inboxes()

    ceiling = measure_ceiling(run.generator().take(config.ceiling_mails),
                              rounds=config.ceiling_rounds)
    log.info("bench: parsing ceiling %.1f mails/s", ceiling.mails_per_s)

    run.observer.start()
    run.sampler.add("bench-observer", run.observer.pid or 0)
    run.sampler.start()
    try:
        figures = _run_phases(run)
    finally:
        run.sampler.stop()
        run.observer.stop()

    return _results(run, started_at, load_before, ceiling, figures)


def _run_phases(run: BenchRun) -> dict[str, Any]:
    config = run.config
    run.step(config.rates[0], config.warmup_seconds)

    steps: list[StepFigures] = []
    for rate in config.rates:
        figures = run.step(rate, config.step_seconds)
        steps.append(figures)
        log.info("bench: %g mails/s offered: %.1f accepted/s, %d of %d in time, p99 %s ms%s",
                 rate, figures.achieved_per_s, figures.completed_in_time, figures.mails,
                 figures.event_ms["p99"], "" if figures.keeps_up else ", not keeping up")
        if not figures.keeps_up:
            break

    latency = run.step(config.latency_rate, config.latency_seconds)
    log.info("bench: %g mails/s: p99 to the event %s ms, to ASSIGNED %s ms",
             config.latency_rate, latency.event_ms["p99"], latency.assigned_ms["p99"])

    profiles = _profile_step(run, steps[-1].offered_per_s) if config.profile else []
    idle = imap_idle.measure_idle_latency(run.info, run.observer, mails=config.idle_mails,
                                          pause_seconds=config.idle_pause_seconds)
    return {"latency": latency, "steps": steps, "profiles": profiles, "idle": idle}


def _profile_step(run: BenchRun, rate: float) -> list[profile.Profile]:
    """Offer ``rate`` once more with py-spy attached to every service."""
    pids = _service_pids(run.info)
    out_dir = run.config.profile_dir / run.run_tag
    try:
        recorders = profile.start(pids, run.config.step_seconds, out_dir)
    except profile.ProfilerUnavailable as exc:
        log.warning("bench: no profile: %s", exc)
        return []
    run.step(rate, run.config.step_seconds)
    return profile.finish(recorders, out_dir)


def _service_pids(info: dict[str, Any]) -> dict[str, int]:
    found: dict[str, int] = {}
    for name in SERVICES:
        path = Path(info["state_dir"]) / "services" / f"service-{name}.pid"
        try:
            found[name] = int(path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return found


def _results(run: BenchRun, started_at: datetime, load_before: tuple[float, float, float],
             ceiling: Any, figures: dict[str, Any]) -> dict[str, Any]:
    config, sampler = run.config, run.sampler
    steps: list[StepFigures] = figures["steps"]
    passing = [s for s in steps if s.keeps_up]
    sustained = max((s.offered_per_s for s in passing), default=0.0)
    top = max(steps, key=lambda s: s.completed_per_s, default=None)
    latency: StepFigures = figures["latency"]
    sustained_step = next((s for s in passing if s.offered_per_s == sustained), None)
    idle: imap_idle.IdleResult = figures["idle"]

    return {
        "run": run.run_tag,
        "started_at": started_at.isoformat(timespec="seconds"),
        "machine": _machine(),
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "config": {k: v for k, v in asdict(config).items() if k != "profile_dir"},
        "ceiling_mails_per_s": ceiling.mails_per_s,
        "ceiling": asdict(ceiling),
        "sustained_mails_per_s": sustained,
        "sustained_share_of_ceiling": round(sustained / ceiling.mails_per_s, 2)
        if ceiling.mails_per_s else None,
        "saturated_completed_per_s": top.completed_per_s if top else None,
        "latency_rate": config.latency_rate,
        "p50_event_ms": latency.event_ms["p50"],
        "p95_event_ms": latency.event_ms["p95"],
        "p99_event_ms": latency.event_ms["p99"],
        "p50_assigned_ms": latency.assigned_ms["p50"],
        "p95_assigned_ms": latency.assigned_ms["p95"],
        "p99_assigned_ms": latency.assigned_ms["p99"],
        "p99_event_ms_under_1mb": latency.event_ms_small["p99"],
        "idle_p50_ms": summary_ms(idle.latencies_ms)["p50"],
        "idle_p99_ms": summary_ms(idle.latencies_ms)["p99"],
        "idle_samples": len(idle.latencies_ms),
        "idle_server_notify_p50_ms": summary_ms(idle.server_notify_ms)["p50"],
        "idle_missing": idle.missing,
        "rss_mb": sampler.memory_mb(),
        "cpu_percent_at_latency_rate": sampler.cpu_percent(latency.started_at,
                                                           latency.finished_at),
        "cpu_percent_at_sustained_rate": sampler.cpu_percent(
            sustained_step.started_at, sustained_step.finished_at) if sustained_step else {},
        "latency_step": latency.as_json(),
        "steps": [s.as_json() for s in steps],
        "profiles": [asdict(p) for p in figures["profiles"]],
    }


def _machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu_model": model, "python": platform.python_version(),
            "commit": _git_commit()}


def _git_commit() -> str | None:
    try:
        result = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return None
    return result.stdout.strip() or None


__all__ = ["BenchConfig", "BenchRun", "run_benchmark"]
