"""The long memory run: each service's memory over N mails at a fixed rate.

``messagehub bench --memory-mails 100000`` calls :func:`run_memory`: it
offers the benchmark's mail mix at ``rate`` mails/s until N mails are sent,
waits until every conversation event has arrived, and samples the memory of
every process every few seconds. A service passes when its RSS at the end
is under the limit and it grew by at most ``GROWTH_TOLERANCE`` over the
second half of the run (after N/2 mails). A leak grows steadily with the
mail count, while caches and allocator pools level off in the first half.
It takes N / rate seconds and more; it is run on demand, never in CI.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench import report
from bench.load import offer
from bench.observer import wait_for
from bench.pipeline import BenchConfig, BenchRun
from bench.resources import SERVICES, Sample, load_average
from messagehub import db

log = logging.getLogger(__name__)

LIMIT_MB = 200.0
GROWTH_TOLERANCE = 0.05  # of the memory at half time
SAMPLE_SECONDS = 5.0


def run_memory(info: dict[str, Any], *, mails: int, rate: float,
               results_file: Path | None = None,
               out_dir: Path = report.DEFAULT_OUT_DIR) -> dict[str, Any]:
    """Send ``mails`` mails at ``rate``; return each process's memory figures."""
    # The backlog of a rate above the sustained one drains after the last mail.
    config = replace(BenchConfig(), drain_timeout_seconds=3600.0)
    run = BenchRun(info, config, sample_seconds=SAMPLE_SECONDS)
    run.create_inboxes()
    load_before = load_average()

    run.observer.start()
    run.sampler.start()
    scans: dict[str, dict[str, dict[str, int]]] = {}
    half_timer = threading.Timer(mails / rate / 2, lambda: scans.update(
        half=table_scans(info["database_url"])))
    half_timer.start()
    try:
        result = asyncio.run(offer(iter(run.mails), forwarding_addresses=run.addresses,
                                   host=run.host, port=run.port, rate=rate, count=mails,
                                   connections=config.connections))
        drained = wait_for(run.observer, lambda c: c.conversation >= len(result.accepted),
                           timeout_seconds=config.drain_timeout_seconds)
    finally:
        half_timer.cancel()
        run.sampler.stop()
        run.observer.stop()
    scans["end"] = table_scans(info["database_url"])

    half_at = result.started_at + (result.finished_at - result.started_at) / 2
    figures = {name: _figures(run.sampler.memory_series(name), half_at)
               for name in (*SERVICES, "kafka", "postgresql")}
    summary = {
        "kind": "memory", "run": run.run_tag, "mails": mails, "offered_per_s": rate,
        "accepted": len(result.accepted), "achieved_per_s": round(result.achieved_rate, 1),
        "all_events_arrived": drained, "seconds": round(result.finished_at - result.started_at),
        "load_average_before": load_before, "load_average_after": load_average(),
        "memory_mb": figures,
        "services_pass": {name: figures[name]["pass"] for name in SERVICES if figures[name]},
        "seq_scans_last_half": _seq_scans_between(scans.get("half", {}), scans["end"]),
    }
    _plot(run.sampler.samples, result.started_at, out_dir / "memory.png")
    with (results_file or report.DEFAULT_RESULTS_FILE).open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(summary, sort_keys=True) + "\n")
    return summary


def table_scans(database_url: str) -> dict[str, dict[str, int]]:
    """Return sequential and index scans so far, and live rows, of every table."""
    with db.connect(database_url) as conn:
        rows = conn.execute("SELECT relname, seq_scan, coalesce(idx_scan, 0) AS idx_scan, "
                            "n_live_tup FROM pg_stat_user_tables").fetchall()
    return {row["relname"]: {"seq_scan": row["seq_scan"], "idx_scan": row["idx_scan"],
                             "rows": row["n_live_tup"]} for row in rows}


def _seq_scans_between(half: dict[str, dict[str, int]],
                       end: dict[str, dict[str, int]]) -> dict[str, int]:
    """Return sequential scans in the second half on tables of more than 1,000 rows.

    Each table should be read through its indexes by then; a count here
    points at a statement whose plan was made while the table was small.
    """
    found = {}
    for table, figures in end.items():
        before = half.get(table, {}).get("seq_scan", 0)
        if figures["rows"] > 1000 and figures["seq_scan"] > before:
            found[table] = figures["seq_scan"] - before
    return found


def _figures(samples: list[Sample], half_at: float) -> dict[str, Any]:
    if not samples:
        return {}
    first_half = [s for s in samples if s.at <= half_at] or samples[:1]
    at_half, at_end = first_half[-1].memory_mb, samples[-1].memory_mb
    growth = at_end - at_half
    return {"start_mb": round(samples[0].memory_mb, 1), "half_mb": round(at_half, 1),
            "end_mb": round(at_end, 1), "max_mb": round(max(s.memory_mb for s in samples), 1),
            "growth_last_half_mb": round(growth, 1),
            "pass": at_end < LIMIT_MB and growth <= GROWTH_TOLERANCE * at_half}


def markdown(summary: dict[str, Any]) -> str:
    """Return the memory run as a Markdown table."""
    lines = [f"Memory run `{summary['run']}`: {summary['accepted']} of {summary['mails']} mails "
             f"at {summary['offered_per_s']:g} mails/s offered ({summary['achieved_per_s']} "
             f"accepted/s) in {summary['seconds']} s; load average before "
             f"{summary['load_average_before']}, after {summary['load_average_after']}.", "",
             "| process | start MB | at half MB | end MB | max MB | growth over the last half "
             "MB | under 200 MB, no growth |", "|---|---|---|---|---|---|---|"]
    for name, figures in summary["memory_mb"].items():
        if not figures:
            continue
        verdict = ""
        if name in SERVICES:
            verdict = "yes" if figures["pass"] else "no"
        lines.append(f"| {name} | {figures['start_mb']} | {figures['half_mb']} | "
                     f"{figures['end_mb']} | {figures['max_mb']} | "
                     f"{figures['growth_last_half_mb']} | {verdict} |")
    scans = summary["seq_scans_last_half"]
    lines += ["", "Sequential scans in the second half on tables of more than 1,000 rows: "
              + (", ".join(f"{table} {count}" for table, count in scans.items()) or "none") + "."]
    return "\n".join(lines) + "\n"


def _plot(samples: dict[str, list[Sample]], started_at: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(7.5, 4.5), dpi=110)
    for name in SERVICES:
        series = samples.get(name, [])
        if series:
            axes.plot([(s.at - started_at) / 60 for s in series], [s.memory_mb for s in series],
                      label=name)
    axes.axhline(LIMIT_MB, color="tab:red", linestyle="--", linewidth=0.8, label="limit")
    axes.set_xlabel("minutes since the first mail")
    axes.set_ylabel("RSS (MB)")
    axes.grid(True, alpha=0.3)
    axes.legend(loc="lower right", fontsize="small")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    pyplot.close(figure)
