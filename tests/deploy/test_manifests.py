"""Every overlay renders, and every resource it renders is valid.

Core resources are checked by kubernetes-validate in strict mode (an unknown
field fails) against the oldest and the newest Kubernetes release we
support. Custom resources are checked against JSON Schemas generated from
the operators' CRDs, also strict. The negative tests break a resource in
memory and expect the same checks to reject it.
"""

from __future__ import annotations

import copy
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
from kubernetes_validate import utils as kubernetes_validate  # type: ignore[import-untyped]

from tests.deploy.deploy_helpers import OVERLAYS, by_name, is_custom, of_kind

KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
CUSTOM_KINDS = {"Kafka", "KafkaNodePool", "KafkaTopic", "KafkaUser", "Cluster", "PodMonitor",
                "PrometheusRule", "ScaledObject"}

Resources = dict[str, list[dict[str, Any]]]
Schemas = dict[tuple[str, str], dict[str, Any]]


def _name(resource: dict[str, Any]) -> str:
    return f"{resource['kind']}/{resource['metadata']['name']}"


def validate_core(resource: dict[str, Any], version: str) -> None:
    kubernetes_validate.validate(resource, version, strict=True)


def validate_custom(resource: dict[str, Any], schemas: Schemas) -> None:
    key = (resource["apiVersion"], resource["kind"])
    if key not in schemas:
        raise AssertionError(f"{_name(resource)}: no CRD serves {key[0]} {key[1]}")
    jsonschema.Draft7Validator(schemas[key]).validate(resource)


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_overlay__renders_every_kind(rendered: Resources, overlay: str) -> None:
    kinds = {resource["kind"] for resource in rendered[overlay]}

    assert CUSTOM_KINDS <= kinds
    assert {"Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy"} <= kinds


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_core_resources__strictly_valid(rendered: Resources, overlay: str,
                                        version: str) -> None:
    failures = []
    for resource in rendered[overlay]:
        if is_custom(resource):
            continue
        try:
            validate_core(resource, version)
        except kubernetes_validate.ValidationError as exc:
            failures.append(f"{_name(resource)}: {exc.message} at {list(exc.absolute_path)}")

    assert failures == []


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_custom_resources__match_crds(rendered: Resources, custom_schemas: Schemas,
                                      overlay: str) -> None:
    failures = []
    for resource in rendered[overlay]:
        if not is_custom(resource):
            continue
        try:
            validate_custom(resource, custom_schemas)
        except (jsonschema.ValidationError, AssertionError) as exc:
            failures.append(f"{_name(resource)}: {exc}".splitlines()[0])

    assert failures == []


def test_core_validation__rejects_unknown_field(rendered: Resources) -> None:
    deployment = copy.deepcopy(by_name(rendered["production"], "Deployment", "messagehub-router"))
    probe = deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]
    probe["httpGet"]["prot"] = probe["httpGet"].pop("port")

    with pytest.raises(kubernetes_validate.ValidationError):
        validate_core(deployment, KUBERNETES_VERSIONS[0])


def test_core_validation__rejects_wrong_type(rendered: Resources) -> None:
    budget = copy.deepcopy(by_name(rendered["production"], "PodDisruptionBudget",
                                   "messagehub-ingest"))
    budget["spec"]["selector"] = "app=messagehub"

    with pytest.raises(kubernetes_validate.ValidationError):
        validate_core(budget, KUBERNETES_VERSIONS[0])


@pytest.mark.parametrize("kind, name, path, bad_value", [
    # A misspelt field, which the API server would silently prune.
    ("KafkaTopic", "mail-received", ["spec", "partition"], 12),
    # A value outside the field's enum.
    ("KafkaNodePool", "dual-role", ["spec", "roles"], ["broker", "worker"]),
    # A field of the wrong type.
    ("ScaledObject", "messagehub-router", ["spec", "maxReplicaCount"], "twelve"),
    # A field that Strimzi's v1 API does not have.
    ("Kafka", "messagehub", ["spec", "zookeeper"], {"replicas": 3}),
    ("Cluster", "messagehub-db", ["spec", "instances"], 0),
    ("PodMonitor", "messagehub", ["spec", "podMetricsEndpoints", 0, "scheme"], "gopher"),
    ("PrometheusRule", "messagehub", ["spec", "groups", 0, "rules", 0, "severity"], "page"),
])
def test_custom_validation__rejects_broken_resource(
        rendered: Resources, custom_schemas: Schemas, kind: str, name: str,
        path: list[Any], bad_value: Any) -> None:
    resource = copy.deepcopy(by_name(rendered["production"], kind, name))
    parent = resource
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = bad_value

    with pytest.raises(jsonschema.ValidationError):
        validate_custom(resource, custom_schemas)


def test_custom_validation__rejects_unknown_kind(custom_schemas: Schemas) -> None:
    resource = {"apiVersion": "kafka.strimzi.io/v1beta2", "kind": "KafkaTopic",
                "metadata": {"name": "mail-received"}, "spec": {"partitions": 4}}

    with pytest.raises(AssertionError, match="no CRD serves"):
        validate_custom(resource, custom_schemas)


def test_every_rendered_kind__is_known(rendered: Resources) -> None:
    for overlay, resources in rendered.items():
        unknown = {resource["kind"] for resource in resources if is_custom(resource)}
        assert unknown <= CUSTOM_KINDS, overlay


def test_deployments__each_has_a_budget(rendered: Resources) -> None:
    resources = rendered["production"]
    budgeted = {tuple(sorted(budget["spec"]["selector"]["matchLabels"].items()))
                for budget in of_kind(resources, "PodDisruptionBudget")}

    for deployment in of_kind(resources, "Deployment"):
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert tuple(sorted(selector.items())) in budgeted, deployment["metadata"]["name"]
