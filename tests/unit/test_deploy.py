"""The container, Kubernetes and Grafana files agree with the code: their commands exist, their metric names
are the ones the service exports, their ports are the configured default."""

from __future__ import annotations

import json
import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from click.testing import CliRunner

from replicator.cli import main
from replicator.config import ServiceSettings, load_settings
from replicator.observe.metrics import CATALOGUE

ROOT = Path(__file__).resolve().parents[2]
EXPORTED = {name for name, *_ in CATALOGUE}


def _series(expr: str) -> set[str]:
    names = set(re.findall(r"\b(replicator_[a-z_]+)", expr))
    return {re.sub(r"_(bucket|count|sum)$", "", n) for n in names}


def test_dashboard_queries_only_exported_metrics():
    dash = json.loads((ROOT / "deploy/grafana/replicator-dashboard.json").read_text())
    used = set()
    for panel in dash["panels"]:
        for target in panel["targets"]:
            used |= _series(target["expr"])
    assert used and used <= EXPORTED, used - EXPORTED
    # the headline figures an operator looks for first are on it
    assert {"replicator_lag_seconds", "replicator_time_to_data_loss_seconds", "replicator_events_applied_total"} <= used


def test_dashboard_phase_is_an_instant_table_and_api_scales_are_apart():
    dash = json.loads((ROOT / "deploy/grafana/replicator-dashboard.json").read_text())
    (phase,) = [p for p in dash["panels"] if p["title"] == "Phase"]
    # a table of the current phase per object: one instant query, not a range of samples per row
    assert phase["type"] == "table"
    assert all(t.get("instant") is True and t.get("range") is False and t.get("format") == "table"
               for t in phase["targets"]), phase["targets"]
    # calls/s (~1) and requests remaining (~5,000,000) on one axis flatten the first to zero
    for panel in dash["panels"]:
        used = set().union(*(_series(t["expr"]) for t in panel["targets"]))
        assert len(used & {"replicator_api_calls_total", "replicator_api_requests_remaining"}) <= 1, panel["title"]


def test_dockerfile_commands_exist_and_port_matches():
    text = (ROOT / "Dockerfile").read_text()
    entry = json.loads(re.search(r"^ENTRYPOINT (.+)$", text, re.M).group(1))
    cmd = json.loads(re.search(r"^CMD (.+)$", text, re.M).group(1))
    health = json.loads(re.search(r"HEALTHCHECK .* CMD (\[.+\])$", text, re.M).group(1))
    assert entry == ["replicator"] and health[0] == "replicator"
    runner = CliRunner()
    for args in (cmd, health[1:]):
        result = runner.invoke(main, [*args, "--help"])
        assert result.exit_code == 0, (args, result.output)
    port = ServiceSettings().port
    assert f"EXPOSE {port}" in text
    assert "USER replicator" in text and "useradd" in text


def test_kubernetes_probes_use_the_service_endpoints():
    text = (ROOT / "deploy/kubernetes/replicator.yaml").read_text()
    assert "path: /healthz" in text and "path: /readyz" in text
    assert f"containerPort: {ServiceSettings().port}" in text
    grace = int(re.search(r"terminationGracePeriodSeconds: (\d+)", text).group(1))
    assert grace > ServiceSettings().shutdown_timeout_s


def _manifests() -> list[dict]:
    docs = []
    for path in sorted((ROOT / "deploy/kubernetes").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def _one(kind: str) -> dict:
    (doc,) = [d for d in _manifests() if d["kind"] == kind]
    return doc


# The oldest Kubernetes whose schemas kubernetes-validate ships, and its newest: the manifests hold on both.
@pytest.mark.parametrize("version", [kubernetes_validate.utils.all_versions()[0], kubernetes_validate.utils.latest_version()])
def test_kubernetes_manifests_validate_against_the_kubernetes_schemas(version):
    """Each resource of deploy/kubernetes/*.yaml against the Kubernetes OpenAPI schemas (strict: a misspelt or
    misplaced field fails too), offline: kubernetes-validate ships them."""
    docs = _manifests()
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)  # raises ValidationError naming the field
    assert sorted(d["kind"] for d in docs) == ["ConfigMap", "Deployment", "PodDisruptionBudget", "Secret", "Service"]


def test_kubernetes_runs_three_replicas_that_hand_their_objects_over(tmp_path):
    """docs/replicas.md: three pods, a rolling update (safe: leases and fences), one pod at a time
    disrupted, probes on /healthz and /readyz, every pod's metrics scraped, ready or not, and a grace period longer
    than the drain the configuration allows."""
    deployment, pdb, service = _one("Deployment"), _one("PodDisruptionBudget"), _one("Service")
    spec, pod = deployment["spec"], deployment["spec"]["template"]
    assert spec["replicas"] == 3 and spec["strategy"]["type"] == "RollingUpdate"
    labels = pod["metadata"]["labels"]
    assert pdb["spec"]["maxUnavailable"] == 1 and pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items() and service["spec"]["publishNotReadyAddresses"]
    (container,) = pod["spec"]["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    config = _one("ConfigMap")["data"]["replicator.toml"]
    (tmp_path / "replicator.toml").write_text(config)
    settings = load_settings(str(tmp_path / "replicator.toml"))  # the ConfigMap's configuration loads
    assert pod["spec"]["terminationGracePeriodSeconds"] > settings.service.shutdown_timeout_s
    assert container["ports"][0]["containerPort"] == settings.service.port
    replica = next(e for e in container["env"] if e["name"] == "REPLICATOR_SERVICE__REPLICA_ID")
    assert replica["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"  # one name per pod
    secret = _one("Secret")["stringData"]
    assert all("change-me" in value for value in secret.values()), "placeholders only"
