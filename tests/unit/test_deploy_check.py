"""The deploy artefacts as `make deploy-check` sees them: the chart renders for production
as a bank would run it, and the check's validators do refuse what is wrong (a check that
passes everything would prove nothing)."""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import pytest

CHECK = Path(__file__).resolve().parents[2] / "deploy" / "check"
sys.path.insert(0, str(CHECK))

from check import VALUES, documents, render, validate_manifest  # noqa: E402


@pytest.fixture(scope="module")
def production() -> list[dict[str, Any]]:
    return documents(render(VALUES["production"]))


def _by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def test_every_process_runs_locked_down_with_health_probes(
    production: list[dict[str, Any]],
) -> None:
    deployments = _by_kind(production, "Deployment")
    components = {
        d["metadata"]["labels"]["app.kubernetes.io/component"] for d in deployments.values()
    }
    assert components == {"command-api", "query-api", "relay", "workers", "case-opener"}
    for name, deployment in deployments.items():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["automountServiceAccountToken"] is False, name
        (container,) = pod["containers"]
        assert "@sha256:" in container["image"], name  # production deploys by digest
        assert container["securityContext"]["readOnlyRootFilesystem"] is True, name
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"], name
        assert container["livenessProbe"]["httpGet"]["path"] == "/health/live", name
        assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready", name
    assert deployments["vigil-relay"]["spec"]["replicas"] == 1


def test_production_migrates_first_and_denies_by_default(
    production: list[dict[str, Any]],
) -> None:
    jobs = _by_kind(production, "Job")
    migrate = jobs["vigil-migrate"]
    assert "pre-install" in migrate["metadata"]["annotations"]["helm.sh/hook"]
    args = migrate["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:1] == ["migrate"]
    assert "--grant-to" in args
    config = _by_kind(production, "ConfigMap")["vigil"]["data"]
    assert config["VIGIL_MIGRATE_ON_START"] == "false"
    assert config["VIGIL_ENV"] == "production"
    assert config["VIGIL_JWKS_URL"].startswith("https://")
    assert config["VIGIL_TOPIC_REPLICATION_FACTOR"] == "3"
    assert config["VIGIL_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    policies = _by_kind(production, "NetworkPolicy")
    deny = policies["vigil-default-deny"]["spec"]
    assert deny["policyTypes"] == ["Ingress", "Egress"]
    assert "ingress" not in deny  # nothing in, and out only DNS, but what a process adds
    assert {p["port"] for rule in deny["egress"] for p in rule["ports"]} == {53}
    hpas = _by_kind(production, "HorizontalPodAutoscaler")
    assert set(hpas) == {"vigil-command-api", "vigil-query-api", "vigil-workers"}
    assert hpas["vigil-workers"]["spec"]["maxReplicas"] <= 12  # the topic's partitions
    topics = jobs["vigil-kafka-topics"]["spec"]["template"]["spec"]["containers"][0]
    assert "--command-config" in topics["command"][-1]  # MSK wants SASL_SSL from it too


def test_every_rendered_manifest_validates(production: list[dict[str, Any]]) -> None:
    assert [p for p in map(validate_manifest, production) if p] == []


def test_a_misspelt_or_misplaced_field_is_refused(production: list[dict[str, Any]]) -> None:
    deployment = copy.deepcopy(_by_kind(production, "Deployment")["vigil-relay"])
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    assert "readinesProbe" in str(validate_manifest(deployment))
    job = copy.deepcopy(_by_kind(production, "Job")["vigil-migrate"])
    job["spec"]["backoffLimit"] = "three"
    assert validate_manifest(job) is not None
    monitor = copy.deepcopy(_by_kind(production, "ServiceMonitor")["vigil"])
    assert validate_manifest(monitor) is None
    monitor["spec"]["endpoints"][0]["intervall"] = "15s"
    assert "intervall" in str(validate_manifest(monitor))
    monitor = copy.deepcopy(_by_kind(production, "ServiceMonitor")["vigil"])
    monitor["spec"]["endpoints"][0]["interval"] = "15 seconds"
    assert validate_manifest(monitor) is not None


def test_msk_iam_renders_without_the_topic_job_only(tmp_path: Path) -> None:
    import yaml

    values = yaml.safe_load(VALUES["production"].read_text())
    values["config"]["extra"]["VIGIL_KAFKA_SASL_MECHANISM"] = "AWS_MSK_IAM"
    values["config"]["extra"]["VIGIL_KAFKA_AWS_REGION"] = "eu-west-2"
    path = tmp_path / "iam.yaml"
    path.write_text(yaml.safe_dump(values))
    with pytest.raises(Exception, match="no AWS IAM login module"):
        render(path)
    values["kafka"]["topics"]["create"] = False
    path.write_text(yaml.safe_dump(values))
    docs = documents(render(path))
    assert "vigil-kafka-topics" not in _by_kind(docs, "Job")
    assert (
        _by_kind(docs, "ConfigMap")["vigil"]["data"]["VIGIL_KAFKA_SASL_MECHANISM"] == "AWS_MSK_IAM"
    )
