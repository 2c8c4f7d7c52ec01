"""The manifests agree with the code: topics, consumer groups, settings, ports, probes.

These checks catch what a schema cannot: a KafkaTopic missing for a topic
the code uses, a ScaledObject watching the wrong consumer group or allowed
more replicas than there are partitions, an environment variable no setting
reads, a probe on a port the container does not open.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest

from messagehub import settings, topics
from tests.deploy.deploy_helpers import OVERLAYS, REPO_ROOT, by_name, of_kind

Resources = dict[str, list[dict[str, Any]]]

STAGE_TOPICS = {
    "router": {topics.MAIL_RECEIVED, topics.MAIL_SENT},
    "assign": {topics.CONVERSATION_EVENTS},
    "outbound": {topics.OUTBOUND_REQUESTS},
}
SERVICES = ("ingest", "router", "assign", "outbound", "api")


def _containers(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    containers: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["containers"]
    return containers


def _partitions(resources: list[dict[str, Any]]) -> dict[str, int]:
    return {topic["spec"]["topicName"]: topic["spec"]["partitions"]
            for topic in of_kind(resources, "KafkaTopic")}


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_kafka_topics__match_code(rendered: Resources, overlay: str) -> None:
    declared = [topic["spec"]["topicName"] for topic in of_kind(rendered[overlay], "KafkaTopic")]

    assert sorted(declared) == sorted(topics.ALL_TOPICS)


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_fixed_partitions__match_code(rendered: Resources, overlay: str) -> None:
    partitions = _partitions(rendered[overlay])
    fixed = getattr(topics, "IMAP_ASSIGNMENT_PARTITIONS", None)

    if fixed is None:
        pytest.skip("no topic has a partition count fixed in messagehub/topics.py")
    assert partitions[topics.IMAP_ASSIGNMENT] == fixed


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_kafka_topics__belong_to_cluster(rendered: Resources, overlay: str) -> None:
    cluster = of_kind(rendered[overlay], "Kafka")[0]["metadata"]["name"]

    for kind in ("KafkaTopic", "KafkaUser", "KafkaNodePool"):
        for resource in of_kind(rendered[overlay], kind):
            assert resource["metadata"]["labels"]["strimzi.io/cluster"] == cluster


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_scaled_objects__within_partitions(rendered: Resources, overlay: str) -> None:
    partitions = _partitions(rendered[overlay])

    for stage, consumed in STAGE_TOPICS.items():
        scaled = by_name(rendered[overlay], "ScaledObject", f"messagehub-{stage}")
        allowed = min(partitions[topic] for topic in consumed)
        assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]
        assert scaled["spec"]["maxReplicaCount"] <= allowed, stage


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_scaled_objects__watch_stage_group(rendered: Resources, overlay: str) -> None:
    namespace = of_kind(rendered[overlay], "Deployment")[0]["metadata"].get("namespace")

    for stage, consumed in STAGE_TOPICS.items():
        scaled = by_name(rendered[overlay], "ScaledObject", f"messagehub-{stage}")
        triggers = [trigger["metadata"] for trigger in scaled["spec"]["triggers"]]
        main_source = (REPO_ROOT / "services" / stage / "__main__.py").read_text()

        assert scaled["spec"]["scaleTargetRef"]["name"] == f"messagehub-{stage}"
        assert {trigger["topic"] for trigger in triggers} == consumed
        for trigger in triggers:
            assert f'"{trigger["consumerGroup"]}"' in main_source
            # The KEDA operator runs in another namespace, so a short Service
            # name would not resolve there.
            if namespace:
                host = trigger["bootstrapServers"].split(":")[0]
                assert host == f"messagehub-kafka-bootstrap.{namespace}.svc"


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_scaled_deployments__leave_replicas_to_keda(rendered: Resources, overlay: str) -> None:
    for stage in STAGE_TOPICS:
        deployment = by_name(rendered[overlay], "Deployment", f"messagehub-{stage}")
        assert "replicas" not in deployment["spec"], stage


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_environment__names_real_settings(rendered: Resources, overlay: str) -> None:
    known = {settings.env_name(field.name) for field in dataclasses.fields(settings.Settings)}
    used = set()
    for config in of_kind(rendered[overlay], "ConfigMap"):
        used |= {key for key in config.get("data", {}) if key.startswith("MESSAGEHUB_")}
    for deployment in of_kind(rendered[overlay], "Deployment"):
        for container in _containers(deployment):
            used |= {variable["name"] for variable in container.get("env", [])}

    assert used - known == set()
    assert "MESSAGEHUB_DATABASE_URL" in used


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_deployments__run_their_service(rendered: Resources, overlay: str) -> None:
    for service in SERVICES:
        deployment = by_name(rendered[overlay], "Deployment", f"messagehub-{service}")
        container = _containers(deployment)[0]
        assert container["args"] == ["python", "-m", f"services.{service}"]


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_probes__use_declared_ports(rendered: Resources, overlay: str) -> None:
    for service in SERVICES:
        container = _containers(by_name(rendered[overlay], "Deployment",
                                        f"messagehub-{service}"))[0]
        ports = {port["name"] for port in container["ports"]}
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert container[probe]["httpGet"]["port"] in ports, (service, probe)


def test_probes__hit_health_endpoints(rendered: Resources) -> None:
    for service in ("ingest", "router", "assign", "outbound"):
        container = _containers(by_name(rendered["production"], "Deployment",
                                        f"messagehub-{service}"))[0]
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_pods__restricted_security(rendered: Resources, overlay: str) -> None:
    user = _dockerfile_user()

    for deployment in of_kind(rendered[overlay], "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == user
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert pod["automountServiceAccountToken"] is False
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]
            assert "memory" in container["resources"]["limits"]
            assert "cpu" in container["resources"]["requests"]


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_secrets__referenced_by_existing_names(rendered: Resources, overlay: str) -> None:
    generated = {secret["metadata"]["name"] for secret in of_kind(rendered[overlay], "Secret")}
    # Created by CloudNativePG, or by the operator before applying production.
    external = {"messagehub-db-app", "messagehub-secrets"}

    for deployment in of_kind(rendered[overlay], "Deployment"):
        for container in _containers(deployment):
            for variable in container.get("env", []):
                reference = variable.get("valueFrom", {}).get("secretKeyRef")
                if reference:
                    assert reference["name"] in generated | external, variable["name"]


def test_dev_secret__generated(rendered: Resources) -> None:
    names = [secret["metadata"]["name"] for secret in of_kind(rendered["dev"], "Secret")]

    assert len(names) == 1
    assert names[0].startswith("messagehub-secrets-")


def test_images__pinned_tags(rendered: Resources) -> None:
    for overlay in ("dev", "production"):
        for deployment in of_kind(rendered[overlay], "Deployment"):
            image = _containers(deployment)[0]["image"]
            assert re.fullmatch(r"[\w./-]+:[\w.-]+", image), image
            assert not image.endswith(":latest"), image


def _dockerfile_user() -> int:
    dockerfile = (REPO_ROOT / "deploy" / "Dockerfile").read_text(encoding="utf-8")
    users = re.findall(r"^USER\s+(\d+)", dockerfile, flags=re.MULTILINE)
    assert users, "deploy/Dockerfile sets no numeric USER"
    return int(users[-1].split(":")[0])


def test_dockerfile__multi_stage_pinned_non_root() -> None:
    dockerfile = (REPO_ROOT / "deploy" / "Dockerfile").read_text(encoding="utf-8")
    bases = re.findall(r"^FROM\s+(\S+)", dockerfile, flags=re.MULTILINE)

    assert len(bases) >= 2
    for base in bases:
        if base in re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", dockerfile, flags=re.MULTILINE):
            continue
        assert "@sha256:" in base or re.search(r":\d+\.\d+\.\d+", base), base
    assert _dockerfile_user() != 0
