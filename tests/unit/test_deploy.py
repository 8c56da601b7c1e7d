"""The container and Grafana files agree with the code: their commands exist, their metric names are the ones the
service exports, their ports are the configured default. deploy/kubernetes: tests/unit/test_manifests.py."""

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
