"""deploy/kubernetes/*.yaml: every document valid for a pinned Kubernetes (the JSON schemas kubernetes-validate
ships, strict, offline), and the facts the several-replica setup relies on (docs/replicas.md): three pods, one
disrupted at a time, probes on the service's endpoints, every pod scraped ready or not, one name per pod, and each
org's Secret mounted where the ConfigMap's replicator.toml reads its client secret."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path, PurePosixPath

import kubernetes_validate
import pytest
import yaml

from replicator.config import (
    ObjectSettings,
    SalesforceSettings,
    ServiceSettings,
    StreamSettings,
    load_settings,
)

ROOT = Path(__file__).resolve().parents[2]
# The Kubernetes the manifests are written for (pinned: the test does not change when kubernetes-validate does),
# and the newest one the installed kubernetes-validate ships (a field dropped since shows up here first).
PINNED = "1.30.0"
VERSIONS = sorted({PINNED, kubernetes_validate.utils.latest_version()})


def _manifests() -> list[dict]:
    docs = []
    for path in sorted((ROOT / "deploy/kubernetes").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def _kind(kind: str) -> list[dict]:
    return [d for d in _manifests() if d["kind"] == kind]


def _one(kind: str) -> dict:
    (doc,) = _kind(kind)
    return doc


def _config() -> dict:
    return tomllib.loads(_one("ConfigMap")["data"]["replicator.toml"])


def _pod() -> dict:
    return _one("Deployment")["spec"]["template"]


def _container() -> dict:
    (container,) = _pod()["spec"]["containers"]
    return container


@pytest.mark.parametrize("version", VERSIONS)
def test_every_document_validates_strictly(version):
    docs = _manifests()
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)  # raises ValidationError naming the field
    assert sorted(d["kind"] for d in docs) == [
        "ConfigMap", "Deployment", "PodDisruptionBudget", "Secret", "Secret", "Secret", "Service"]


def test_strict_validation_refuses_an_unknown_field():
    """The check above is worth something: a misplaced field (here `replicas` inside the pod spec) fails."""
    deployment = copy.deepcopy(_one("Deployment"))
    deployment["spec"]["template"]["spec"]["replicas"] = 3
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, PINNED, strict=True)


def test_three_replicas_rolled_one_at_a_time_and_one_disrupted_at_a_time():
    deployment, pdb = _one("Deployment"), _one("PodDisruptionBudget")
    spec, labels = deployment["spec"], _pod()["metadata"]["labels"]
    assert spec["replicas"] == 3
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    # the PDB selects exactly the Deployment's pods (labels only, nothing that could match fewer or more)
    assert pdb["spec"]["selector"] == {"matchLabels": spec["selector"]["matchLabels"]}
    assert pdb["spec"]["maxUnavailable"] == 1
    replica = next(e for e in _container()["env"] if e["name"] == "REPLICATOR_SERVICE__REPLICA_ID")
    assert replica["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}  # one name per pod


def test_probes_use_the_service_endpoints_on_the_metrics_port():
    container, service = _container(), ServiceSettings(**_config().get("service", {}))
    (port,) = container["ports"]
    assert port == {"name": "metrics", "containerPort": service.port}
    for probe, path in [("livenessProbe", "/healthz"), ("startupProbe", "/healthz"), ("readinessProbe", "/readyz")]:
        assert container[probe]["httpGet"] == {"path": path, "port": "metrics"}, probe
    # the drain (batches in flight committed, leases released) ends before the SIGKILL
    assert _pod()["spec"]["terminationGracePeriodSeconds"] > service.shutdown_timeout_s


def test_metrics_service_scrapes_every_pod_ready_or_not():
    service, pod = _one("Service"), _pod()
    assert service["spec"]["clusterIP"] == "None"  # headless: one address per pod
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["metrics"]
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(_container()["ports"][0]["containerPort"])


def test_config_map_holds_two_orgs_whose_sections_are_valid():
    config = _config()
    assert sorted(config["orgs"]) == ["acme", "globex"]
    for name, org in config["orgs"].items():
        assert org.get("schema", f"sf_{name}") == f"sf_{name}"
        # each section against today's model of it (unknown keys refused): a typo fails here, not in the cluster
        SalesforceSettings(**org["salesforce"])
        StreamSettings(**org.get("stream", {}))
        assert org["objects"], name
        for obj in org["objects"].values():
            ObjectSettings(**obj)
    assert "salesforce" not in config or "client_secret_file" not in config["salesforce"]  # secrets are per org


def test_each_org_secret_is_mounted_where_its_config_reads_it():
    config, pod, container = _config(), _pod(), _container()
    secrets = {s["metadata"]["name"]: s for s in _kind("Secret")}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert pod["spec"]["securityContext"]["fsGroup"] == pod["spec"]["securityContext"]["runAsUser"]
    used = set()
    for name, org in config["orgs"].items():
        path = PurePosixPath(org["salesforce"]["client_secret_file"])
        assert path == PurePosixPath(f"/var/run/secrets/replicator/{name}/client_secret")
        mount = mounts[str(path.parent)]
        assert mount.get("readOnly") is True and "subPath" not in mount
        source = volumes[mount["name"]]["secret"]
        assert "items" not in source  # each key of the Secret is a file of its name
        assert source["defaultMode"] == 0o440  # readable by the replicator's group (fsGroup) only
        secret = secrets[source["secretName"]]
        assert path.name in {**secret.get("data", {}), **secret.get("stringData", {})}, (name, secret["metadata"])
        used.add(source["secretName"])
    assert len(used) == len(config["orgs"]), "one Secret per org"
    # the Postgres URL: one Secret key, as DATABASE_URL (the shared [postgres] url)
    (database,) = [e for e in container["env"] if e["name"] == "DATABASE_URL"]
    ref = database["valueFrom"]["secretKeyRef"]
    assert ref["key"] in secrets[ref["name"]]["stringData"]
    assert set(secrets) == used | {ref["name"]}
    for secret in secrets.values():
        assert all("change-me" in value for value in secret["stringData"].values()), "placeholders only"


def test_config_map_loads(tmp_path, monkeypatch):
    """The whole file through the service's own loader: two orgs, each reading its secret from its own Secret's
    mount, the database URL from the environment for both."""
    monkeypatch.setenv("DATABASE_URL", "postgresql://replicator:change-me@postgres:5432/salesforce")
    (tmp_path / "replicator.toml").write_text(_one("ConfigMap")["data"]["replicator.toml"])
    orgs = load_settings(str(tmp_path / "replicator.toml")).for_orgs()
    assert [o.org for o in orgs] == ["acme", "globex"]
    for org in orgs:
        assert str(org.salesforce.client_secret_file) == f"/var/run/secrets/replicator/{org.org}/client_secret"
        assert org.postgres.url.get_secret_value().endswith("@postgres:5432/salesforce")
        assert org.objects, f"{org.org}: objects configured"
