"""`replicator run` as operators see it: /readyz, /metrics during traffic, SIGTERM drain within the bound."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from replicator.sim.server import SimulatorThread

from .helpers import (
    OBJECTS,
    config_toml,
    endpoint_get,
    finish,
    free_port,
    pg_value,
    sim_admin,
    start_logged,
    wait_for,
)

pytestmark = pytest.mark.slow  # `replicator run` subprocesses under traffic

SHUTDOWN_BOUND_S = 15


@pytest.fixture(scope="module")
def sim():
    with SimulatorThread(records=1500, seed=41, keepalive_seconds=0.2) as thread:
        yield thread.info


@pytest.fixture()
def own_sim():
    with SimulatorThread(records=1500, seed=43, keepalive_seconds=0.2) as thread:
        yield thread.info


def _config(tmp_path, sim, pg_url, schema: str, port: int) -> str:
    text = config_toml(sim, pg_url, schema, page_size=500)
    text = text.replace("port = 0", f"port = {port}\nshutdown_timeout_s = {SHUTDOWN_BOUND_S}\ncontrol_poll_s = 0.2")
    text = text.replace("[salesforce]\n", f'[salesforce]\npubsub_endpoint = "{sim["pubsub_endpoint"]}"\n', 1)
    cfg = tmp_path / f"{schema}.toml"
    cfg.write_text(text + "[stream]\nbatch_max_wait_s = 0.05\n")
    return str(cfg)


def _start(cfg: str, sim, level: str = "info") -> subprocess.Popen:
    env = dict(os.environ, REPLICATOR_SALESFORCE__CLIENT_SECRET=sim["client_secret"])
    return start_logged([sys.executable, "-m", "replicator.cli", "--log-json", "--log-level", level, "run",
                         "--config", cfg], env)


def _stop(proc: subprocess.Popen) -> tuple[int, float, str]:
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    err = finish(proc, SHUTDOWN_BOUND_S + 30)
    return proc.returncode, time.monotonic() - started, err


async def _scrape(port: int) -> dict[str, dict[tuple, float]]:
    r = await endpoint_get(port, "/metrics")
    assert r is not None and r.status_code == 200
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def _per_object(samples: dict[tuple, float]) -> dict[str, float]:
    return {dict(k)["object"]: v for k, v in samples.items()}


async def test_readyz_metrics_and_clean_stop(sim, pg_url, tmp_path):
    port = free_port()
    cfg = _config(tmp_path, sim, pg_url, "ops", port)
    proc = _start(cfg, sim, level="debug")  # every log line the service can write, checked for secrets below
    first_ready = None
    seen_unready = []
    try:
        async def ready() -> bool:
            nonlocal first_ready
            r = await endpoint_get(port, "/readyz")
            if r is None:
                return False
            if r.status_code == 503:
                seen_unready.append(r.json())
                return False
            first_ready = r.json()
            return r.status_code == 200
        await wait_for(ready, timeout=120, interval=0.02)
        assert first_ready["postgres"] == "ok"
        assert set(first_ready["objects"]) == set(OBJECTS)
        assert all(o["phase"] in ("BACKFILLING", "STREAMING") for o in first_ready["objects"].values())
        assert (await endpoint_get(port, "/healthz")).json()["status"] == "ok"
        probe = subprocess.run([sys.executable, "-m", "replicator.cli", "healthcheck", "--config", cfg],
                               capture_output=True, text=True, timeout=60)
        assert probe.returncode == 0 and "/healthz: 200" in probe.stdout, probe.stdout + probe.stderr

        async def all_streaming() -> bool:
            r = await endpoint_get(port, "/readyz")
            return r.status_code == 200 and all(o["phase"] == "STREAMING" for o in r.json()["objects"].values())
        await wait_for(all_streaming, timeout=120)
        assert (await _scrape(port))["replicator_backfill_rows_expected"]

        await sim_admin(sim, "PUT", "/__sim/traffic", {"running": True, "rate": 400, "changes": 2_000,
                                                        "transaction_size": 2, "records_per_event": 2})
        first = _per_object((await _scrape(port))["replicator_events_applied_total"])
        await sim_admin(sim, "POST", "/__sim/tokens/expire", {})  # the service logs in again mid-stream

        async def rose() -> bool:
            now = _per_object((await _scrape(port))["replicator_events_applied_total"])
            return all(now[o] > first.get(o, 0) for o in OBJECTS)
        await wait_for(rose, timeout=120)
        second = await _scrape(port)
        lags = _per_object(second["replicator_lag_seconds"])
        assert set(lags) == set(OBJECTS) and all(0 <= v < 60 for v in lags.values()), lags
        ttl = _per_object(second["replicator_time_to_data_loss_seconds"])
        assert all(0 < v <= 72 * 3600 for v in ttl.values()), ttl
        assert second["replicator_api_calls_total"][()] > 0
        assert sum(_per_object(second["replicator_batches_total"]).values()) > 0
    finally:
        code, seconds, err = _stop(proc)
    assert code == 0, err[-3000:]
    assert seconds < SHUTDOWN_BOUND_S, seconds
    assert '"service.stopped"' in err
    # the whole debug log of a run, through a forced re-login: no client secret, no access token
    # (the simulator's session ids, like Salesforce's, are "<15-character org id>!<opaque>")
    assert sim["client_secret"] not in err
    assert sim["org_id"][:15] + "!" not in err and '"logged in"' in err
    down = subprocess.run([sys.executable, "-m", "replicator.cli", "healthcheck", "--config", cfg],
                          capture_output=True, text=True, timeout=60)
    assert down.returncode == 1 and "ConnectError" in down.stderr


async def test_sigterm_during_heavy_stream_commits_and_loses_nothing(own_sim, pg_url, tmp_path):
    sim = own_sim  # its own org: every event it publishes must be applied exactly once
    cfg = _config(tmp_path, sim, pg_url, "drain", free_port())
    proc = _start(cfg, sim)
    try:
        await wait_for(lambda: pg_value(pg_url, "SELECT count(*) = 4 FROM replicator.objects WHERE phase = 'STREAMING'"),
                       timeout=120)
        await sim_admin(sim, "PUT", "/__sim/traffic", {"running": True, "rate": 3_000, "changes": 10_000,
                                                        "transaction_size": 5, "records_per_event": 3})
        # stop mid-stream: once a good part of the traffic has been applied
        await wait_for(lambda: pg_value(pg_url, "SELECT sum(events_applied) > 500 FROM replicator.checkpoints"),
                       timeout=120)
    finally:
        code, seconds, err = _stop(proc)
    assert code == 0, err[-3000:]
    assert seconds < SHUTDOWN_BOUND_S, seconds
    stored = await pg_value(pg_url, "SELECT count(*) FROM replicator.checkpoints")
    assert stored == 4

    async def traffic_done() -> bool:
        return (await sim_admin(sim, "GET", "/__sim/traffic")).json()["running"] is False
    await wait_for(traffic_done, timeout=120)
    proc = _start(cfg, sim)
    try:
        published = (await sim_admin(sim, "GET", "/__sim/stats")).json()["events_published"]
        await wait_for(lambda: pg_value(pg_url, f"SELECT sum(events_applied) >= {published} FROM replicator.checkpoints"),
                       timeout=120)
    finally:
        code, _, err = _stop(proc)
    assert code == 0, err[-3000:]
    applied = await pg_value(pg_url, "SELECT sum(events_applied) FROM replicator.checkpoints")
    assert applied == published
    env = dict(os.environ, REPLICATOR_SALESFORCE__CLIENT_SECRET=sim["client_secret"])
    # formula values follow their inputs without an event: `replicator refresh` brings them current
    refresh = subprocess.run([sys.executable, "-m", "replicator.cli", "refresh", "--config", cfg],
                             env=env, capture_output=True, text=True, timeout=300)
    assert refresh.returncode == 0 and "Opportunity: " in refresh.stdout, refresh.stdout + refresh.stderr
    verify = subprocess.run([sys.executable, "-m", "replicator.cli", "verify", "--config", cfg],
                            env=env, capture_output=True, text=True, timeout=300)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert verify.stdout.count("(equal)") == 4


async def _blocked_on(pg_url: str) -> bool:
    return bool(await pg_value(pg_url, "SELECT count(*) > 0 FROM pg_locks l JOIN pg_class c ON c.oid = l.relation"
                                       " WHERE NOT l.granted AND c.relname = 'checkpoints'"))


@pytest.mark.parametrize("second_signal", [False, True], ids=["bound", "second-signal"])
async def test_a_drain_that_cannot_commit_ends_at_the_bound_or_at_a_second_signal(sim, pg_url, tmp_path,
                                                                                  second_signal):
    import asyncpg

    bound = 3
    port = free_port()
    cfg = _config(tmp_path, sim, pg_url, "stuck", port)
    text = open(cfg).read().replace(f"shutdown_timeout_s = {SHUTDOWN_BOUND_S}", f"shutdown_timeout_s = {bound}")
    open(cfg, "w").write(text)
    proc = _start(cfg, sim)
    locker = None
    try:
        await wait_for(lambda: pg_value(pg_url, "SELECT count(*) = 4 FROM replicator.objects WHERE phase = 'STREAMING'"),
                       timeout=120)
        # hold the checkpoint table: the next batch (a keepalive's, within 0.2 s) cannot commit
        locker = await asyncpg.connect(pg_url)
        tx = locker.transaction()
        await tx.start()
        await locker.execute("LOCK TABLE replicator.checkpoints IN ACCESS EXCLUSIVE MODE")
        await wait_for(lambda: _blocked_on(pg_url), timeout=60)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        if second_signal:
            await wait_for(lambda: _stopping(port), timeout=30)  # the first signal was taken
            proc.send_signal(signal.SIGTERM)
        err = finish(proc, 60)
        seconds = time.monotonic() - started
    finally:
        if proc.returncode is None:
            proc.kill()
            proc.wait()
        if locker is not None:
            await locker.close()  # releases the lock (the transaction rolls back)
    assert proc.returncode == 1, err[-3000:]
    if second_signal:
        assert '"service.abort"' in err and seconds < bound, seconds
    else:
        assert '"service.drain_timeout"' in err and bound <= seconds < bound + 10, seconds
        assert '"service.drain_stuck"' in err  # names where each task waited
    # the batches that could not commit rolled back: a restart applies them and the tables match the org
    proc = _start(cfg, sim)
    try:
        async def ready() -> bool:
            r = await endpoint_get(port, "/readyz")
            return r is not None and r.status_code == 200 and all(
                o["phase"] == "STREAMING" for o in r.json()["objects"].values())
        await wait_for(ready, timeout=120)
    finally:
        code, _, err = _stop(proc)
    assert code == 0, err[-3000:]


async def _stopping(port: int) -> bool:
    r = await endpoint_get(port, "/healthz")
    return r is not None and r.json()["status"] == "stopping"
