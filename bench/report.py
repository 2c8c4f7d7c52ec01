"""The benchmark's outputs: the summary JSON, a Markdown table, a plot and the results file.

``messagehub bench`` calls :func:`write_outputs` with the dict that
:func:`bench.pipeline.run_benchmark` returned. It writes ``latest.md`` (the
tables) and ``latency.png`` (latency against offered load) into the output
folder, and appends one line to the results file (``bench/results.jsonl``
by default), so runs can be compared over time.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RESULTS_FILE = REPO_ROOT / "bench" / "results.jsonl"
DEFAULT_OUT_DIR = REPO_ROOT / "bench" / "out"

# Keys every consumer of `messagehub bench --json` may rely on.
SUMMARY_KEYS = ("ceiling_mails_per_s", "sustained_mails_per_s", "p50_event_ms", "p99_event_ms",
                "p99_assigned_ms", "idle_p99_ms", "rss_mb")
TARGETS = {
    "sustained_mails_per_s": 500.0,
    "sustained_share_of_ceiling": 0.60,
    "p99_event_ms": 250.0,
    "p99_assigned_ms": 400.0,
}


def summary(results: dict[str, Any]) -> dict[str, Any]:
    """Return the flat figures of a run, for ``--json`` and the results file."""
    keys = ("run", "started_at", "ceiling_mails_per_s", "sustained_mails_per_s",
            "sustained_share_of_ceiling", "saturated_completed_per_s", "latency_rate",
            "p50_event_ms", "p95_event_ms", "p99_event_ms", "p99_event_ms_under_1mb",
            "p50_assigned_ms",
            "p95_assigned_ms", "p99_assigned_ms", "idle_p50_ms", "idle_p99_ms", "idle_samples",
            "idle_server_notify_p50_ms",
            "rss_mb", "cpu_percent_at_latency_rate", "cpu_percent_at_sustained_rate",
            "load_average_before", "load_average_after", "machine")
    return {key: results.get(key) for key in keys}


def targets_met(results: dict[str, Any]) -> dict[str, bool | None]:
    """Return, for each target, whether this run met it (None when not measured)."""
    met: dict[str, bool | None] = {}
    for key, target in TARGETS.items():
        value = results.get(key)
        if value is None:
            met[key] = None
        elif key.startswith("p99"):
            met[key] = value < target
        else:
            met[key] = value >= target
    return met


def results_line(results: dict[str, Any]) -> str:
    """Return the run as one JSON line: the summary, each step and the targets met."""
    line = {**summary(results), "targets_met": targets_met(results),
            "ceiling_ms_per_shape": results["ceiling"]["ms_per_shape"],
            "steps": [{k: step[k] for k in ("offered_per_s", "achieved_per_s", "completed_per_s",
                                            "completed_in_time", "mails", "keeps_up", "event_ms",
                                            "event_ms_small", "assigned_ms")}
                      for step in results["steps"]]}
    return json.dumps(line, ensure_ascii=False, sort_keys=True)


def markdown(results: dict[str, Any]) -> str:
    """Return the run's tables in Markdown."""
    lines = [
        f"Run `{results['run']}` at {results['started_at']}, commit "
        f"{results['machine'].get('commit')}, {results['machine']['cpus']} CPUs "
        f"({results['machine']['cpu_model']}), load average before "
        f"{_triple(results['load_average_before'])}, after "
        f"{_triple(results['load_average_after'])}.",
        "",
        "| figure | value | target |",
        "|---|---|---|",
        f"| parsing ceiling (one process, best of {len(results['ceiling']['rounds'])} rounds) "
        f"| {results['ceiling_mails_per_s']} mails/s | |",
        f"| sustained end to end | {results['sustained_mails_per_s']:g} mails/s "
        f"({_percent(results['sustained_share_of_ceiling'])} of the ceiling) "
        f"| ≥ 500 mails/s and ≥ 60% |",
        f"| most completed per second (top step) | {results['saturated_completed_per_s']} "
        f"mails/s | |",
        f"| at {results['latency_rate']:g} mails/s: DATA to conversation event p50 / p95 / p99 "
        f"| {results['p50_event_ms']} / {results['p95_event_ms']} / {results['p99_event_ms']} ms "
        f"| p99 < 250 ms |",
        f"| at {results['latency_rate']:g} mails/s: the same p99 for mails under 1 MB "
        f"| {results.get('p99_event_ms_under_1mb')} ms | |",
        f"| at {results['latency_rate']:g} mails/s: DATA to ASSIGNED p50 / p95 / p99 "
        f"| {results['p50_assigned_ms']} / {results['p95_assigned_ms']} / "
        f"{results['p99_assigned_ms']} ms | p99 < 400 ms |",
        f"| IMAP APPEND to mail.received p50 / p99 ({results['idle_samples']} mails) "
        f"| {results['idle_p50_ms']} / {results['idle_p99_ms']} ms | |",
        f"| of which Dovecot's IDLE notification alone, p50 "
        f"| {results.get('idle_server_notify_p50_ms')} ms | |",
        "",
        "| offered mails/s | accepted/s | completed/s | in time | event p50 / p99 ms "
        "| event p99 under 1 MB ms | assigned p50 / p99 ms | keeps up |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for step in results["steps"]:
        lines.append(
            f"| {step['offered_per_s']:g} | {step['achieved_per_s']} | {step['completed_per_s']} "
            f"| {step['completed_in_time']} of {step['mails']} "
            f"| {step['event_ms']['p50']} / {step['event_ms']['p99']} "
            f"| {step.get('event_ms_small', {}).get('p99')} "
            f"| {step['assigned_ms']['p50']} / {step['assigned_ms']['p99']} "
            f"| {'yes' if step['keeps_up'] else 'no'} |")

    lines += ["", "| process | CPU % of one core at "
              f"{results['latency_rate']:g} mails/s | CPU % at the sustained rate | memory MB "
              "(end of run) |", "|---|---|---|---|"]
    at_latency = results["cpu_percent_at_latency_rate"]
    at_sustained = results["cpu_percent_at_sustained_rate"]
    for name, memory in results["rss_mb"].items():
        lines.append(f"| {name} | {at_latency.get(name, '')} | {at_sustained.get(name, '')} "
                     f"| {memory} |")

    lines += ["", "Parser time per mail by shape (ms): " + ", ".join(
        f"{shape} {ms}" for shape, ms in results["ceiling"]["ms_per_shape"].items()) + "."]
    return "\n".join(lines) + "\n"


def _triple(values: Any) -> str:
    return " / ".join(f"{v:.2f}" for v in values)


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.0f}%"


def plot(results: dict[str, Any], path: Path) -> None:
    """Draw latency percentiles against offered load into a PNG file."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    steps = results["steps"]
    rates = [step["offered_per_s"] for step in steps]
    figure, axes = pyplot.subplots(figsize=(7.5, 4.5), dpi=110)
    for label, key, quantile, style in (("event p50", "event_ms", "p50", "o-"),
                                        ("event p99", "event_ms", "p99", "s-"),
                                        ("assigned p99", "assigned_ms", "p99", "^--")):
        points = [(rate, step[key][quantile]) for rate, step in zip(rates, steps)
                  if step[key][quantile] is not None]
        if points:
            axes.plot([p[0] for p in points], [p[1] for p in points], style, label=label)
    for rate, step in zip(rates, steps):
        if not step["keeps_up"]:
            axes.axvline(rate, color="grey", linestyle=":", linewidth=1)
    axes.axhline(250, color="tab:red", linewidth=0.8, linestyle="--", label="event p99 target")
    axes.set_yscale("log")
    axes.set_xlabel("offered load (mails/s)")
    axes.set_ylabel("SMTP DATA to event (ms)")
    axes.set_title(f"messagehub end to end, {results['machine']['cpus']} CPUs, "
                   f"ceiling {results['ceiling_mails_per_s']} mails/s")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(loc="upper left", fontsize="small")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    pyplot.close(figure)


def write_outputs(results: dict[str, Any], *, out_dir: Path = DEFAULT_OUT_DIR,
                  results_file: Path = DEFAULT_RESULTS_FILE) -> dict[str, Path]:
    """Write the table, the plot and the full results; append the run to ``results_file``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    table = out_dir / "latest.md"
    table.write_text(markdown(results), encoding="utf-8")
    figure = out_dir / "latency.png"
    plot(results, figure)
    full = out_dir / "latest.json"
    full.write_text(json.dumps(results, ensure_ascii=False, indent=2, default=str),
                    encoding="utf-8")
    results_file.parent.mkdir(parents=True, exist_ok=True)
    with results_file.open("a", encoding="utf-8") as handle:
        handle.write(results_line(results) + "\n")
    log.info("bench: wrote %s, %s and a line in %s", table, figure, results_file)
    return {"table": table, "plot": figure, "results": full, "results_file": results_file}
