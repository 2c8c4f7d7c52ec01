"""The benchmark at CI size: it runs on the test stack and prints sane figures.

It runs ``python -m bench --quick --json --running`` against the session's
stack: a few seconds at 5 and 10 mails/s. It checks that every phase ran and
that the figures are in range, never that a target is met: the machine is
shared and small, and timing targets belong to ``messagehub bench`` runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import report
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.stack

SERVICES = ("ingest", "router", "assign", "outbound", "api")


@pytest.fixture(scope="module")
def bench_run(stack: dict[str, Any], tmp_path_factory: pytest.TempPathFactory,
              ) -> tuple[dict[str, Any], Path]:
    out_dir = tmp_path_factory.mktemp("bench")
    env = {**os.environ, "MESSAGEHUB_STATE_DIR": stack["state_dir"],
           "MESSAGEHUB_PORT_BASE": str(stack["port_base"])}
    completed = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--json", "--running", "--out", str(out_dir),
         "--results-file", str(out_dir / "results.jsonl")],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1]), out_dir


def test_bench_quick__prints_every_key(bench_run: tuple[dict[str, Any], Path]) -> None:
    figures, _ = bench_run
    for key in report.SUMMARY_KEYS:
        assert key in figures, key
        assert figures[key] is not None, key


def test_bench_quick__rates_in_range(bench_run: tuple[dict[str, Any], Path]) -> None:
    figures, _ = bench_run
    assert figures["ceiling_mails_per_s"] > 1
    assert figures["sustained_mails_per_s"] in (0.0, 5.0, 10.0)


def test_bench_quick__latencies_in_range(bench_run: tuple[dict[str, Any], Path]) -> None:
    figures, _ = bench_run
    assert 0 < figures["p50_event_ms"] <= figures["p99_event_ms"] < 120_000
    assert 0 < figures["p99_assigned_ms"] < 120_000
    assert 0 < figures["idle_p99_ms"] < 60_000
    assert figures["idle_samples"] == 3


def test_bench_quick__memory_of_each_service(bench_run: tuple[dict[str, Any], Path]) -> None:
    figures, _ = bench_run
    for service in SERVICES:
        assert 10 < figures["rss_mb"][service] < 4000, service
    assert figures["rss_mb"]["kafka"] > 50
    assert figures["rss_mb"]["postgresql"] > 1


def test_bench_quick__writes_table_plot_and_results(bench_run: tuple[dict[str, Any], Path],
                                                    ) -> None:
    figures, out_dir = bench_run
    lines = (out_dir / "results.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0])["run"] == figures["run"]
    assert (out_dir / "latency.png").read_bytes().startswith(b"\x89PNG")
    assert "sustained end to end" in (out_dir / "latest.md").read_text(encoding="utf-8")
