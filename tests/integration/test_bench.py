"""`python -m bench --quick` (the harness's smoke test): it must produce complete, well-formed results, tables
and charts. Speed is not asserted here (bench/RESULTS.md reports it), so a noisy machine cannot fail this.
Also: bench/'s modules import one another without a cycle, and each imports on its own."""

from __future__ import annotations

import ast
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # the bench's own subprocesses

ROOT = Path(__file__).resolve().parents[2]
BENCH_MODULES = sorted(p.stem for p in (ROOT / "bench").glob("*.py"))


def _bench_imports(module: str) -> set[str]:
    """The bench modules `module` imports, at any depth (a function-level import is still an edge)."""
    tree = ast.parse((ROOT / "bench" / f"{module}.py").read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level == 1 or base == "bench":  # from . import x / from bench import x
                names = [base] if base and base != "bench" else [a.name for a in node.names]
            elif base.startswith("bench."):
                names = [base.removeprefix("bench.")]
            else:
                continue
            out |= {n.split(".")[0] for n in names}
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names if a.name.startswith("bench.")}
    return out & set(BENCH_MODULES)


def test_no_import_cycle_inside_bench():
    graph = {m: _bench_imports(m) for m in BENCH_MODULES}
    assert graph["harness"] == set(), graph["harness"]  # the common parts depend on no scenario
    done: set[str] = set()

    def visit(m: str, path: list[str]) -> None:
        if m in path:
            raise AssertionError("import cycle: " + " -> ".join([*path[path.index(m):], m]))
        if m not in done:
            for n in sorted(graph[m]):
                visit(n, [*path, m])
            done.add(m)
    for m in BENCH_MODULES:
        visit(m, [])


@pytest.mark.parametrize("module", BENCH_MODULES)
def test_bench_module_imports_alone(module):
    out = subprocess.run([sys.executable, "-c", f"import bench.{module}"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]


def _numbers(d: dict) -> list[float]:
    return [v for v in d.values() if isinstance(v, int | float) and not isinstance(v, bool)]


@pytest.mark.timeout(600)  # the bench subprocess's own bound below; 300 s is too tight on a loaded 2-core machine
def test_quick_bench_writes_results_tables_and_charts(tmp_path, pg_url):
    server = pg_url.rsplit("/", 1)[0] + "/test"
    out = subprocess.run([sys.executable, "-m", "bench", "--quick", "--out", str(tmp_path)],
                         env=dict(os.environ, DATABASE_URL=server), capture_output=True, text=True, timeout=600,
                         cwd=ROOT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    reports = {}
    for path in tmp_path.glob("*.json"):
        report = json.loads(path.read_text())
        reports[report["scenario"]] = report
    assert set(reports) == {"ceilings", "backfill", "stream", "burst", "limits", "e2e", "chaos", "transitions"}
    for name, report in reports.items():
        assert report["command"].startswith("python -m bench --quick")
        assert {"cores", "memory_gib", "python", "postgres"} <= set(report["machine"]), name
        figures = _numbers(report["figures"])
        if name != "transitions":  # counts of failures there: 0 is the good value
            assert figures and all(math.isfinite(v) and v > 0 for v in figures), (name, report["figures"])
        for sw in report["sweeps"]:
            assert len(sw["rows"]) >= 2 or sw["name"] in ("offered rate", "chaos", "burst drain", "sequences"), (
                name, sw["name"])
            for row in sw["rows"]:
                for key in sw["y"]:
                    assert isinstance(row[key], int | float) and row[key] >= 0, (name, sw["name"], key, row)
    ceilings = reports["ceilings"]["figures"]
    assert {"copy_rows_per_s", "csv_parse_rows_per_s", "avro_decode_events_per_s", "bulk_serving_rows_per_s",
            "pubsub_serving_events_per_s", "apply_narrow_events_per_s", "apply_full_events_per_s",
            "apply_narrow_ratio_to_copy", "apply_full_ratio_to_copy"} <= set(ceilings)
    sweeps = {sw["name"] for r in reports.values() for sw in r["sweeps"]}
    assert {"page size", "parallel pages", "record count", "row width", "apply batch size", "event mix", "key collisions",
            "offered rate", "events owed by the server", "large transaction"} <= sweeps
    big = next(sw for sw in reports["stream"]["sweeps"] if sw["name"] == "large transaction")["rows"]
    at, past = big  # at the overflow threshold: one event per change; past it: GAP_OVERFLOW and a resync
    assert at["events"] == at["changes"] and at["resyncs"] == 0 and at["table_equals_org"] == 1, at
    assert past["events"] == at["changes"] + 1 and past["resyncs"] == 1 and past["table_equals_org"] == 1, past
    counts = next(sw for sw in reports["backfill"]["sweeps"] if sw["name"] == "record count")["rows"]
    assert all(0 < r["end_to_end_rows_per_s"] < r["rows_per_s"] for r in counts), counts
    widths = next(sw for sw in reports["backfill"]["sweeps"] if sw["name"] == "row width")["rows"]
    assert [r["object"] for r in widths][-1] == "Wide__c" and all(r["page_mb"] > 0 for r in widths), widths
    limits = reports["limits"]
    assert limits["figures"]["all_landed_correctly"] == 1
    assert all(r["landed_correctly"] == r["of"] > 0 for r in limits["sweeps"][0]["rows"])
    for row in limits["sweeps"][0]["rows"]:  # GAP cases fetch every record by id; the others fetch none
        assert row["refetched"] == (row["of"] if "GAP" in row["x"] else 0), row
    assert any("1 MB limit: GAP" in r["x"] for r in limits["sweeps"][0]["rows"])
    burst = reports["burst"]  # every stage counted, and what none counted is not most of the time
    stages = {r["x"]: r["us_per_event"] for r in burst["sweeps"][0]["rows"]}
    assert {"decode", "fold", "reconcile", "commit", "rest"} <= set(stages), stages
    drained = burst["sweeps"][1]["rows"][0]
    assert drained["x"] == "HEAD" and drained["events"] == burst["figures"]["events"], drained
    assert 0 < burst["figures"]["ratio_to_decode_alone"] < 1, burst["figures"]
    crashes = reports["e2e"]["sweeps"][0]["rows"]  # e2e.run raises unless verify finds every table equal
    assert [r["x"] for r in crashes] == [0, 2] and all(r["objects_equal"] == 4 for r in crashes), crashes
    assert crashes[1]["events_applied"] == crashes[1]["events_published"], crashes  # crashes: none lost, none twice
    chaos = reports["chaos"]["sweeps"][0]["rows"]  # chaos.run raises unless verify finds every table equal
    assert chaos and all(r["objects_equal"] == 4 and r["kills"] == 3 for r in chaos), chaos
    transitions = reports["transitions"]  # one fixed sequence: a second process, the holder paused, the first killed
    tf = transitions["figures"]
    assert tf["sequences"] == tf["equal"] == 1 and tf["stuck_conditions"] == tf["unexpected_exits"] == 0, tf
    assert tf["pauses"] == 1 and tf["takeovers"] >= 8, tf  # the pause's units, then the killed first's
    md = (tmp_path / "RESULTS.md").read_text()
    for name in reports:
        assert f"<!-- bench:{name}:start -->" in md and f"<!-- bench:{name}:end -->" in md
    charts = list((tmp_path / "charts").glob("*.png"))
    # named cases are drawn as bars; a sweep without figures (the transitions' sequences) is a table only
    assert len(charts) == sum(bool(sw["y"]) for r in reports.values() for sw in r["sweeps"])
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in charts)
