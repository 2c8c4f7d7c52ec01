"""``messagehub bench``: start a stack of its own, run the benchmark, write the results.

By default the command wipes and starts a stack in ``/var/tmp/messagehub/bench``
with ports from 25000 (``MESSAGEHUB_BENCH_STATE_DIR``,
``MESSAGEHUB_BENCH_PORT_BASE``). So every run starts from empty tables and
never touches the demo's or the tests' stacks. It stops the stack at the
end unless ``--keep-stack``. With ``--running`` it uses the stack that
``messagehub up`` started instead, and leaves it as it is. ``--memory-mails N`` runs the long memory
check instead (:mod:`bench.memory`).

This module imports nothing heavy at import time, because the ``messagehub``
command builds its parser from :func:`add_arguments` on every call.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_STATE_DIR = "/var/tmp/messagehub/bench"
DEFAULT_PORT_BASE = 25000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the command's options on ``parser``."""
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object with the figures instead of the table")
    parser.add_argument("--quick", action="store_true",
                        help="seconds at tiny rates: checks that the benchmark runs, measures "
                             "nothing worth comparing")
    parser.add_argument("--rates", help="offered rates of the rising steps, mails/s, comma "
                                        "separated (default 50,100,150,...,1000)")
    parser.add_argument("--step-seconds", type=float, help="length of each rising step, seconds")
    parser.add_argument("--latency-rate", type=float,
                        help="fixed rate of the latency phase, mails/s (default 100)")
    parser.add_argument("--latency-seconds", type=float,
                        help="length of the latency phase, seconds (default 60)")
    parser.add_argument("--profile", action="store_true",
                        help="attach py-spy to every service during one more step at the top "
                             "rate and report the hottest functions")
    parser.add_argument("--memory-mails", type=int, metavar="N",
                        help="instead of the benchmark, send N mails at --memory-rate and "
                             "report each service's memory over the run")
    parser.add_argument("--memory-rate", type=float, default=100.0,
                        help="offered rate of the memory run, mails/s (default 100)")
    parser.add_argument("--keep-stack", action="store_true",
                        help="leave the benchmark's stack running afterwards")
    parser.add_argument("--running", action="store_true",
                        help="use the stack that `messagehub up` started (MESSAGEHUB_STATE_DIR) "
                             "instead of a fresh one; nothing is wiped or stopped")
    parser.add_argument("--out", type=Path, help="folder for latest.md, latency.png and "
                                                 "latest.json (default bench/out)")
    parser.add_argument("--results-file", type=Path,
                        help="JSON lines file the run is appended to (default "
                             "bench/results.jsonl)")


def run(args: argparse.Namespace) -> int:
    """Run the command with parsed ``args``; return the exit code."""
    from messagehub import logs

    logs.setup("WARNING" if args.json else "INFO")
    if args.running:
        from messagehub import stackctl

        return _run(args, stackctl.stack_info())

    state_dir = Path(os.environ.get("MESSAGEHUB_BENCH_STATE_DIR", DEFAULT_STATE_DIR))
    port_base = int(os.environ.get("MESSAGEHUB_BENCH_PORT_BASE", DEFAULT_PORT_BASE))
    info = _start_stack(state_dir, port_base)
    try:
        return _run(args, info)
    finally:
        if not args.keep_stack:
            _stop_stack(state_dir, port_base)


def _run(args: argparse.Namespace, info: dict[str, Any]) -> int:
    if args.memory_mails:
        return _run_memory(args, info)
    return _run_benchmark(args, info)


def _start_stack(state_dir: Path, port_base: int) -> dict[str, Any]:
    from messagehub import stackctl

    log.info("bench: starting a fresh stack in %s on ports from %d", state_dir, port_base)
    stackctl.reset(state_dir, port_base)
    stackctl.up(state_dir, port_base)
    return stackctl.stack_info(state_dir)


def _stop_stack(state_dir: Path, port_base: int) -> None:
    from messagehub import stackctl

    stackctl.down(state_dir, port_base)


def config_from(args: argparse.Namespace) -> Any:
    """Return the :class:`~bench.pipeline.BenchConfig` that ``args`` ask for."""
    from bench.pipeline import BenchConfig

    config = BenchConfig.quick() if args.quick else BenchConfig()
    changes: dict[str, Any] = {"profile": args.profile}
    if args.rates:
        changes["rates"] = tuple(float(rate) for rate in args.rates.split(","))
    for name in ("step_seconds", "latency_rate", "latency_seconds"):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    from dataclasses import replace

    return replace(config, **changes)


def _run_benchmark(args: argparse.Namespace, info: dict[str, Any]) -> int:
    from bench import report
    from bench.pipeline import run_benchmark

    results = run_benchmark(info, config_from(args))
    written = report.write_outputs(results, out_dir=args.out or report.DEFAULT_OUT_DIR,
                                   results_file=args.results_file or report.DEFAULT_RESULTS_FILE)
    if args.json:
        output = {**report.summary(results), "targets_met": report.targets_met(results)}
        sys.stdout.write(json.dumps(output, ensure_ascii=False) + "\n")
    else:
        sys.stdout.write(report.markdown(results))
        sys.stdout.write(f"\nplot: {written['plot']}\nall figures: {written['results']}\n")
    return 0


def _run_memory(args: argparse.Namespace, info: dict[str, Any]) -> int:
    from bench import memory, report

    result = memory.run_memory(info, mails=args.memory_mails, rate=args.memory_rate,
                               results_file=args.results_file,
                               out_dir=args.out or report.DEFAULT_OUT_DIR)
    if args.json:
        sys.stdout.write(json.dumps(result, ensure_ascii=False) + "\n")
    else:
        sys.stdout.write(memory.markdown(result))
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    raise SystemExit(run(parser.parse_args(argv)))
