"""The container, Kubernetes and Grafana files agree with the code: their commands exist, their metric names
are the ones the service exports, their ports are the configured default."""

from __future__ import annotations

import json
import re
from pathlib import Path

from click.testing import CliRunner

from replicator.cli import main
from replicator.config import ServiceSettings
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
