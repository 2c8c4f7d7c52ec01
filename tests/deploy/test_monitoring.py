"""The alerts, the dashboard and the metric catalogue agree with each other and the code.

promtool checks the PrometheusRule and runs the alerts' unit tests. Every
metric named by an alert, a dashboard query or ``docs/metrics.md`` must be
one the services export, or one of the few that Prometheus itself and
Strimzi's Kafka Exporter export. Every metric the services export must be in
the catalogue, and every alert has its section in ``docs/runbooks.md``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

from tests.deploy.deploy_helpers import (EXTERNAL_METRICS, MONITORING_DIR, REPO_ROOT,
                                         catalogue_rows, dashboard_expressions,
                                         exported_metrics, grafana_to_promql,
                                         promql_metric_names, rule_expressions, sample_names)

RULE_FILE = MONITORING_DIR / "prometheusrule.yaml"
ALERT_TESTS = MONITORING_DIR / "tests" / "alerts.test.yaml"
DASHBOARD = MONITORING_DIR / "messagehub-dashboard.json"
CATALOGUE = REPO_ROOT / "docs" / "metrics.md"
RUNBOOKS = REPO_ROOT / "docs" / "runbooks.md"


@pytest.fixture(scope="module")
def rule_spec() -> dict[str, Any]:
    spec: dict[str, Any] = yaml.safe_load(RULE_FILE.read_text(encoding="utf-8"))["spec"]
    return spec


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


@pytest.fixture(scope="module")
def families() -> dict[str, dict[str, Any]]:
    return exported_metrics()


@pytest.fixture(scope="module")
def selectable(families: dict[str, dict[str, Any]]) -> set[str]:
    return sample_names(families) | set(EXTERNAL_METRICS)


def promtool_run(promtool: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, check=False)


def write_rules(directory: Path, spec: dict[str, Any]) -> Path:
    path = directory / "messagehub.rules.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


# --- promtool -------------------------------------------------------------------------

def test_rules__promtool_check(promtool: str, rule_spec: dict[str, Any],
                               tmp_path: Path) -> None:
    path = write_rules(tmp_path, rule_spec)

    result = promtool_run(promtool, "check", "rules", path.name, cwd=tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr


def test_alerts__promtool_unit_tests(promtool: str, rule_spec: dict[str, Any],
                                     tmp_path: Path) -> None:
    write_rules(tmp_path, rule_spec)
    shutil.copy(ALERT_TESTS, tmp_path / ALERT_TESTS.name)

    result = promtool_run(promtool, "test", "rules", ALERT_TESTS.name, cwd=tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_tests__cover_every_alert(rule_spec: dict[str, Any]) -> None:
    tests = yaml.safe_load(ALERT_TESTS.read_text(encoding="utf-8"))
    tested = {case["alertname"] for test in tests["tests"]
              for case in test.get("alert_rule_test", []) if case.get("exp_alerts")}
    alerts = {name for name, _ in rule_expressions(rule_spec)}

    assert alerts - tested == set()


def test_rules__promtool_rejects_broken_rule(promtool: str, rule_spec: dict[str, Any],
                                             tmp_path: Path) -> None:
    broken = json.loads(json.dumps(rule_spec))
    broken["groups"][0]["rules"][0]["expr"] = "sum by (job (up)"
    path = write_rules(tmp_path, broken)

    result = promtool_run(promtool, "check", "rules", path.name, cwd=tmp_path)

    assert result.returncode != 0


def test_dashboard__queries_parse(promtool: str, dashboard: dict[str, Any],
                                  tmp_path: Path) -> None:
    rules = [{"record": f"dashboard:query_{index}", "expr": grafana_to_promql(expr)}
             for index, (_title, expr) in enumerate(dashboard_expressions(dashboard))]
    path = write_rules(tmp_path, {"groups": [{"name": "dashboard", "rules": rules}]})

    result = promtool_run(promtool, "check", "rules", path.name, cwd=tmp_path)

    assert rules
    assert result.returncode == 0, result.stdout + result.stderr


# --- metric names ---------------------------------------------------------------------

def test_alerts__name_exported_metrics(rule_spec: dict[str, Any], selectable: set[str]) -> None:
    unknown = {f"{name}: {metric}" for name, expr in rule_expressions(rule_spec)
               for metric in promql_metric_names(expr) - selectable}

    assert unknown == set()


def test_dashboard__names_exported_metrics(dashboard: dict[str, Any],
                                           selectable: set[str]) -> None:
    unknown = {f"{title}: {metric}" for title, expr in dashboard_expressions(dashboard)
               for metric in promql_metric_names(grafana_to_promql(expr)) - selectable}

    assert unknown == set()


def test_metric_check__catches_unknown_metric(dashboard: dict[str, Any],
                                              selectable: set[str]) -> None:
    broken = json.loads(json.dumps(dashboard))
    broken["panels"][1]["targets"][0]["expr"] = "sum(rate(messagehub_mails_in_total[5m]))"

    names = {metric for _title, expr in dashboard_expressions(broken)
             for metric in promql_metric_names(grafana_to_promql(expr))}

    assert "messagehub_mails_in_total" in names - selectable


def test_catalogue__lists_exported_metrics(families: dict[str, dict[str, Any]]) -> None:
    rows = catalogue_rows(CATALOGUE.read_text(encoding="utf-8"))

    assert set(families) - set(rows) == set()
    assert set(rows) - set(families) - set(EXTERNAL_METRICS) == set()


def test_catalogue__types_and_labels_match(families: dict[str, dict[str, Any]]) -> None:
    rows = catalogue_rows(CATALOGUE.read_text(encoding="utf-8"))

    for name, family in families.items():
        row = rows[name]
        labels = sorted(re.findall(r"`([a-z_]+)`", row["labels"]))
        assert row["type"] == family["type"], name
        assert labels == family["labels"], name


def test_metrics__follow_conventions(families: dict[str, dict[str, Any]]) -> None:
    forbidden_labels = {"message_id", "mail_id", "conversation_id", "address", "email",
                        "recipient", "sender", "subject", "request_id"}

    for name, family in families.items():
        assert name.startswith("messagehub_"), name
        if family["type"] == "counter":
            assert name.endswith("_total"), name
        if name.endswith(("_ms", "_milliseconds", "_minutes")):
            pytest.fail(f"{name}: use base units (seconds)")
        assert forbidden_labels.isdisjoint(family["labels"]), name


# --- promql helper --------------------------------------------------------------------

@pytest.mark.parametrize("expr, names", [
    ("sum by (le) (rate(a_bucket{x=\"y\"}[5m]))", {"a_bucket"}),
    ("x / ignoring (c) group_left sum(rate(y[1m])) > 0.25", {"x", "y"}),
    ("a unless a offset 15m or absent(up{job=\"j\"})", {"a", "up"}),
    ("histogram_quantile(0.95, sum(rate(b[5m])) by (le))", {"b"}),
    ("max(c) > 1e3 and bool d", {"c", "d"}),
])
def test_promql_metric_names__cases(expr: str, names: set[str]) -> None:
    assert promql_metric_names(expr) == names


# --- runbooks -------------------------------------------------------------------------

def _runbook_anchors() -> set[str]:
    headings = re.findall(r"^##\s+(.+?)\s*$", RUNBOOKS.read_text(encoding="utf-8"),
                          flags=re.MULTILINE)
    return {re.sub(r"[^a-z0-9 -]", "", heading.lower()).replace(" ", "-")
            for heading in headings}


def test_alerts__each_has_runbook(rule_spec: dict[str, Any]) -> None:
    anchors = _runbook_anchors()

    for group in rule_spec["groups"]:
        for rule in group["rules"]:
            if "alert" not in rule:
                continue
            runbook = rule["annotations"]["runbook"]
            assert runbook == f"docs/runbooks.md#{rule['alert'].lower()}", rule["alert"]
            assert runbook.split("#")[1] in anchors, rule["alert"]
            assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]


def test_runbooks__each_names_an_alert(rule_spec: dict[str, Any]) -> None:
    alerts = {name.lower() for name, _expr in rule_expressions(rule_spec)}

    assert _runbook_anchors() - alerts == set()
