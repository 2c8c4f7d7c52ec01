"""The running services pass their probes and export the catalogued metrics.

Against the local stack: the Deployments' probes and the PodMonitor read the
same endpoints on the same ports in Kubernetes.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from messagehub import stackctl
from tests.deploy.deploy_helpers import REPO_ROOT, exported_metrics
from tests.pipeline_helpers import create_inbox, import_and_wait

pytestmark = pytest.mark.stack

PROBED = ("ingest", "router", "assign", "outbound")


def _metrics_port(stack: dict[str, Any], service: str) -> int:
    spec = next(spec for spec in stackctl.SERVICES if spec.name == service)
    return int(stack["port_base"]) + spec.metrics_offset


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _wait_ready(url: str, timeout_seconds: float = 120.0) -> tuple[int, str]:
    deadline = time.monotonic() + timeout_seconds
    status, body = _get(url)
    while status != 200 and time.monotonic() < deadline:
        time.sleep(1)
        status, body = _get(url)
    return status, body


def _scrape(stack: dict[str, Any], service: str) -> dict[str, Any]:
    _status, text = _get(f"http://127.0.0.1:{_metrics_port(stack, service)}/metrics")
    return {family.name: family for family in text_string_to_metric_families(text)}


@pytest.mark.parametrize("service", PROBED)
def test_service__live_and_ready(stack: dict[str, Any], service: str) -> None:
    base = f"http://127.0.0.1:{_metrics_port(stack, service)}"

    ready_status, ready_body = _wait_ready(f"{base}/readyz")
    live_status, live_body = _get(f"{base}/healthz")

    assert ready_status == 200, ready_body
    assert json.loads(ready_body) == {"status": "ok"}
    assert live_status == 200, live_body


def test_routed_mail__age_observed(stack: dict[str, Any]) -> None:
    inbox = create_inbox(stack, email_address="metrics@example.com", agents=["Kim"])
    sample = REPO_ROOT / "samples" / "demo" / "001-damaged-lamp.eml"

    import_and_wait(stack, inbox, [sample])
    families = _scrape(stack, "router")

    ages = [sample for sample in families["messagehub_stage_record_age_seconds"].samples
            if sample.name.endswith("_count") and sample.labels["stage"] == "router"
            and sample.labels["topic"] == "mail.received"]
    assert len(ages) == 1
    assert ages[0].value >= 1
    assert "messagehub_stage_inflight_oldest_seconds" in families


def test_scraped_names__all_catalogued(stack: dict[str, Any]) -> None:
    catalogued = {name.removesuffix("_total") for name in exported_metrics()}

    for service in ("ingest", "router", "assign", "outbound", "api"):
        # The classic text format exposes each counter's and histogram's
        # creation time as a separate "_created" family.
        ours = {name for name in _scrape(stack, service)
                if name.startswith("messagehub_") and not name.endswith("_created")}
        assert ours - catalogued == set(), service


def test_assign__exports_queue_gauges(stack: dict[str, Any]) -> None:
    families = _scrape(stack, "assign")

    assert "messagehub_assignment_queue_conversations" in families
    assert "messagehub_assignment_queue_oldest_seconds" in families
