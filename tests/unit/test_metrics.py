"""Pure logic of lag, time to data loss and readiness (the endpoints serve exactly these)."""

from __future__ import annotations

import time
from types import SimpleNamespace

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from replicator.app.limits import OrgLimits, Reading
from replicator.observe.endpoints import readiness
from replicator.observe.metrics import CATALOGUE, Metrics, ObjectHealth

NOW = 1_800_000_000.0
RETENTION = 72 * 3600.0


def test_caught_up_stream_has_zero_lag_and_full_retention():
    h = ObjectHealth("Account", phase="STREAMING", connected=True, idle=True, last_commit=NOW - 3600,
                     position_time=NOW - 3600)
    assert h.lag(NOW) == 0.0
    assert h.time_to_data_loss(NOW, RETENTION) == RETENTION


def test_lag_counts_from_newest_commit_or_from_when_last_caught_up():
    h = ObjectHealth("Account", phase="STREAMING", connected=True, idle=False, last_commit=NOW - 600,
                     caught_up_at=NOW - 2)
    assert h.lag(NOW) == 2.0  # events arrived after a quiet spell: not 600 s behind
    h.caught_up_at = None
    assert h.lag(NOW) == 600.0
    h.connected, h.idle = False, True  # disconnected: "idle" proves nothing
    assert h.lag(NOW) == 600.0


def test_time_to_data_loss_falls_with_the_age_of_the_stored_position():
    h = ObjectHealth("Account", phase="STREAMING", connected=False, position_time=NOW - 70 * 3600)
    assert h.time_to_data_loss(NOW, RETENTION) == 2 * 3600
    assert ObjectHealth("Account").time_to_data_loss(NOW, RETENTION) is None


def test_readiness_names_what_is_not_ready():
    m = Metrics()
    m.objects["A"] = ObjectHealth("A", phase="STREAMING", connected=True, idle=True)
    m.objects["B"] = ObjectHealth("B", phase="BACKFILLING")
    ready, body = readiness(m, True, None, 60)
    assert ready and body["objects"]["B"]["ready"]
    m.objects["A"].connected = False
    ready, body = readiness(m, True, None, 60)
    assert not ready and body["objects"]["A"]["reason"] == "stream not connected"
    m.objects["A"] = ObjectHealth("A", phase="STREAMING", connected=True, last_commit=time.time() - 300)
    ready, body = readiness(m, True, None, 60)
    assert not ready and body["objects"]["A"]["reason"].startswith("lag 300 s")
    m.objects["A"] = ObjectHealth("A", phase="RETRYING", last_error="TransientError: boom")
    ready, body = readiness(m, True, None, 60)
    assert not ready and "boom" in body["objects"]["A"]["reason"]
    m.objects["A"] = ObjectHealth("A", phase="STREAMING", connected=True, idle=True)
    ready, body = readiness(m, False, "ConnectionRefusedError", 60)
    assert not ready and body["postgres"].startswith("unreachable")


def test_readiness_of_a_standby_is_ready_and_says_it_stands_by():
    m = Metrics()
    m.objects["A"] = ObjectHealth("A")  # never started here: another process holds it
    m.objects["B"] = ObjectHealth("B", phase="STREAMING", connected=True, idle=True)
    m.units = SimpleNamespace(standby=lambda: ["object:A"], held=lambda: {"object:B": 3})
    ready, body = readiness(m, True, None, 60)
    assert ready and body["standby"] == ["object:A"]
    assert body["objects"]["A"] == {"phase": "STANDBY", "lag_s": None, "ready": True}
    held = {s.labels["unit"]: s.value for f in text_string_to_metric_families(generate_latest(m.registry).decode())
            if f.name == "replicator_unit_held" for s in f.samples}
    assert held == {"object:A": 0.0, "object:B": 1.0}


def test_exposition_has_every_catalogued_metric():
    m = Metrics()
    m.client = SimpleNamespace(call_count=7, api_usage=(25, 15000), calls_by_kind={"query": 5, "bulk": 2})
    m.store = SimpleNamespace(usage=lambda: (3, 1, 8))
    m.limits = OrgLimits(m.client)
    m.limits.readings["DailyDeliveredPlatformEvents"] = Reading(10_000, 4_000, NOW, rate=2.0)
    m.mode_switches.labels(object="Account", mode="poll", cause="allocation").inc()
    h = m.object("Account")
    h.phase, h.connected, h.last_commit, h.position_time, h.checkpoint_saved = "STREAMING", True, NOW, NOW, NOW
    h.rows_done, h.rows_expected = 50, 100
    for name in ("events_applied", "batches", "gaps_healed", "resyncs", "backfill_rows", "events_received"):
        getattr(m, name).labels(object="Account").inc()
    m.rows_written.labels(object="Account", op="upsert").inc()
    m.batch_duration.labels(object="Account").observe(0.1)
    m.batch_size.labels(object="Account").observe(10)
    m.dead_letters.labels(object="Account", source="stream").inc()
    m.errors.labels(object="Account", kind="TransientError").inc()
    m.units = SimpleNamespace(standby=lambda: ["object:Contact"], held=lambda: {"object:Account": 3},
                              fleet=SimpleNamespace(replicas=2, share=1, rows=lambda: [
                                  ("object:Account", "a", 3, 1.5, True), ("object:Contact", "b", 2, 4.0, False)]))
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(m.registry).decode())}
    for name, kind, _, _ in CATALOGUE:
        base = name.removesuffix("_total") if kind == "counter" else name
        assert base in families, name
        assert families[base].type == kind, name
    remaining = families["replicator_api_requests_remaining"].samples[0].value
    assert remaining == 15000 - 25
    progress = families["replicator_backfill_progress_ratio"].samples[0].value
    assert progress == 0.5
    ends = families["replicator_salesforce_limit_exhaustion_seconds"].samples[0]
    assert ends.labels == {"limit": "DailyDeliveredPlatformEvents"} and ends.value == 2_000.0  # 4,000 left at 2/s
    assert {s.labels["kind"]: s.value for s in families["replicator_salesforce_requests"].samples
            if s.name.endswith("_total")} == {"query": 5.0, "bulk": 2.0}
    in_use = [s.value for s in families["replicator_postgres_pool_connections"].samples if s.labels["state"] == "in_use"]
    assert in_use == [2.0]


def test_backfill_rows_count_only_rows_loaded_by_this_run():
    m = Metrics()
    p = SimpleNamespace(object="Account", rows_done=400, rows_expected=1000)  # a resumed job starts at 400
    m.backfill_progress(p)
    p.rows_done = 700
    m.backfill_progress(p)
    assert m.backfill_rows.labels(object="Account")._value.get() == 300
