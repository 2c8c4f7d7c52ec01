"""Helpers of the deploy tests: rendering, CRD schemas, PromQL and metric names.

The tests in this folder validate ``deploy/k8s`` and ``deploy/monitoring``
offline. This module finds the tools (kustomize, promtool), turns the
operators' CRDs into JSON Schemas, pulls metric names out of PromQL, and
lists the metrics the services export.
"""

from __future__ import annotations

import copy
import importlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]

REPO_ROOT = Path(__file__).resolve().parents[2]
K8S_DIR = REPO_ROOT / "deploy" / "k8s"
MONITORING_DIR = REPO_ROOT / "deploy" / "monitoring"
OVERLAYS = {"base": K8S_DIR / "base", "dev": K8S_DIR / "overlays" / "dev",
            "production": K8S_DIR / "overlays" / "production"}

# Kinds that Kubernetes serves itself; kubernetes-validate has their schemas.
CORE_KINDS = frozenset({"Namespace", "ServiceAccount", "ConfigMap", "Secret", "Service",
                        "Deployment", "PodDisruptionBudget", "NetworkPolicy"})

# Metrics the dashboard and alerts read that other programs export.
EXTERNAL_METRICS = {
    "up": "Prometheus, for every scrape target",
    "kafka_consumergroup_lag": "Strimzi's Kafka Exporter",
}


def find_tool(name: str) -> str | None:
    """Return the path of ``name``: on PATH, beside this Python, or in Go's bin folder."""
    found = shutil.which(name)
    if found:
        return found
    candidates = [Path(sys.executable).parent / name]
    gopath = os.environ.get("GOPATH") or str(Path.home() / "go")
    candidates.append(Path(gopath) / "bin" / name)
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def kustomize_build(kustomize: str, directory: Path) -> list[dict[str, Any]]:
    """Render one kustomization and return its resources."""
    result = subprocess.run([kustomize, "build", str(directory)], capture_output=True,
                            text=True, timeout=120, check=False)
    if result.returncode != 0:
        raise AssertionError(f"kustomize build {directory} failed: {result.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def is_custom(resource: dict[str, Any]) -> bool:
    return resource["kind"] not in CORE_KINDS


def of_kind(resources: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [resource for resource in resources if resource["kind"] == kind]


def by_name(resources: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    for resource in of_kind(resources, kind):
        if resource["metadata"]["name"] == name:
            return resource
    raise AssertionError(f"no {kind} named {name!r} in the rendered resources")


# --- CRDs to JSON Schema -------------------------------------------------------------

_KEPT_KEYWORDS = ("type", "enum", "required", "minimum", "maximum", "exclusiveMinimum",
                  "exclusiveMaximum", "minLength", "maxLength", "minItems", "maxItems",
                  "uniqueItems", "pattern", "minProperties", "maxProperties", "default")


def crd_schemas(crds_dir: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """Return a JSON Schema per (apiVersion, kind) served by the CRDs in ``crds_dir``."""
    schemas = {}
    for path in sorted(crds_dir.glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                if not version.get("served", False):
                    continue
                api_version = f"{group}/{version['name']}"
                schema = to_json_schema(version["schema"]["openAPIV3Schema"])
                schema["properties"]["apiVersion"] = {"const": api_version}
                schema["properties"]["kind"] = {"const": kind}
                schema["properties"]["metadata"] = _METADATA_SCHEMA
                schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind",
                                             "metadata"})
                schemas[(api_version, kind)] = schema
    return schemas


_DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_METADATA_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "pattern": _DNS_SUBDOMAIN, "maxLength": 253},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


def to_json_schema(node: dict[str, Any], *, strict: bool = True) -> dict[str, Any]:
    """Convert a structural OpenAPI v3 schema of a CRD into a JSON Schema.

    With ``strict``, an object that lists its properties rejects any other
    field, as the API server's strict field validation does. Without it, the
    server would silently prune a misspelt field. Schemas inside anyOf, oneOf
    and allOf only add value checks to fields declared elsewhere, so they are
    never made strict.
    """
    result: dict[str, Any] = {key: copy.deepcopy(node[key]) for key in _KEPT_KEYWORDS
                              if key in node}

    if node.get("x-kubernetes-int-or-string"):
        result.pop("type", None)
        result["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in result:
        result["type"] = [result["type"], "null"]

    if "properties" in node:
        result["properties"] = {name: to_json_schema(child, strict=strict)
                                for name, child in node["properties"].items()}
    if isinstance(node.get("additionalProperties"), dict):
        result["additionalProperties"] = to_json_schema(node["additionalProperties"],
                                                        strict=strict)
    elif (strict and "properties" in node and "additionalProperties" not in node
          and not node.get("x-kubernetes-preserve-unknown-fields")):
        result["additionalProperties"] = False
    if node.get("x-kubernetes-embedded-resource"):
        for name in ("apiVersion", "kind", "metadata"):
            result.setdefault("properties", {}).setdefault(name, {})
    if "items" in node:
        result["items"] = to_json_schema(node["items"], strict=strict)

    for combinator in ("anyOf", "oneOf", "allOf"):
        if combinator in node:
            result.setdefault(combinator, [])
            result[combinator] += [to_json_schema(branch, strict=False)
                                   for branch in node[combinator]]
    if "not" in node:
        result["not"] = to_json_schema(node["not"], strict=False)
    return result


# --- PromQL ---------------------------------------------------------------------------

_PROMQL_KEYWORDS = frozenset({"and", "or", "unless", "by", "without", "on", "ignoring",
                              "group_left", "group_right", "bool", "offset", "inf", "nan",
                              "atan2"})


def promql_metric_names(expr: str) -> set[str]:
    """Return the metric names an expression selects (functions and keywords left out)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\boffset\s+\S+", " ", text)
    text = re.sub(r"\b\d+(\.\d+)?([eE][+-]?\d+)?\b", " ", text)

    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = match.group(0)
        if word.lower() in _PROMQL_KEYWORDS:
            continue
        if text[match.end():].lstrip().startswith("("):
            continue
        names.add(word)
    return names


def rule_expressions(rule_spec: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """Yield (rule name, expression) of every rule in a PrometheusRule's spec."""
    for group in rule_spec["groups"]:
        for rule in group["rules"]:
            yield rule.get("alert") or rule["record"], rule["expr"]


def dashboard_expressions(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """Yield (panel title, expression) of every query in a Grafana dashboard."""
    panels = list(dashboard.get("panels", []))
    while panels:
        panel = panels.pop(0)
        panels.extend(panel.get("panels", []))
        for target in panel.get("targets", []):
            if target.get("expr"):
                yield panel["title"], target["expr"]


def grafana_to_promql(expr: str) -> str:
    """Replace the dashboard's variables so that promtool can parse the expression."""
    return (expr.replace("$__rate_interval", "5m").replace("$__interval", "1m")
            .replace("$namespace", "messagehub"))


# --- Metrics the services export -----------------------------------------------------

def exported_metrics() -> dict[str, dict[str, Any]]:
    """Return the services' metric families by the name the catalogue uses.

    Counters are listed with their ``_total`` suffix, histograms by their base
    name. Each entry has the type, the label names and the sample names a
    query may select.
    """
    from prometheus_client.metrics import MetricWrapperBase

    # Each service declares its metrics in services/<name>/metrics.py, and the
    # shared ones are in messagehub/metrics.py.
    names = ["messagehub.metrics"] + [
        f"services.{path.parent.name}.metrics"
        for path in sorted((REPO_ROOT / "services").glob("*/metrics.py"))]

    families: dict[str, dict[str, Any]] = {}
    for module in map(importlib.import_module, names):
        for value in vars(module).values():
            if isinstance(value, MetricWrapperBase):
                _add_family(families, value._name, str(value._type), list(value._labelnames))

    for name, labels in _assignment_queue_families().items():
        _add_family(families, name, "gauge", labels)
    return families


def _add_family(families: dict[str, dict[str, Any]], name: str, kind: str,
                labels: list[str]) -> None:
    if kind == "counter":
        catalogue_name, samples = f"{name}_total", {f"{name}_total"}
    elif kind == "histogram":
        catalogue_name, samples = name, {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    else:
        catalogue_name, samples = name, {name}
    families[catalogue_name] = {"type": kind, "labels": sorted(labels), "samples": samples}


def _assignment_queue_families() -> dict[str, list[str]]:
    from messagehub.metrics import AssignmentQueueCollector

    collector = AssignmentQueueCollector("postgresql://unused")
    # One row as the query would return it; no database is needed.
    collector._query = lambda: [("0b8a...", "support", 3, 42.0)]  # type: ignore[method-assign]
    families = {}
    for family in collector.collect():
        families[family.name] = sorted(family.samples[0].labels)
    return families


def sample_names(families: dict[str, dict[str, Any]]) -> set[str]:
    """Return every sample name a query may select from ``families``."""
    return {sample for family in families.values() for sample in family["samples"]}


def catalogue_rows(markdown: str) -> dict[str, dict[str, str]]:
    """Return the rows of the metric tables in docs/metrics.md, by metric name.

    A metric table is a Markdown table whose header starts with
    ``| metric | type | unit | labels |``.
    """
    rows: dict[str, dict[str, str]] = {}
    header: list[str] | None = None
    for line in markdown.splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if header is None:
            header = [cell.lower() for cell in cells]
            continue
        if header[:4] != ["metric", "type", "unit", "labels"] or set(cells[0]) <= {"-", ":"}:
            continue
        name = cells[0].strip("`")
        rows[name] = dict(zip(header, cells))
    return rows
