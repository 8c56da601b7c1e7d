"""Crash safety: SIGKILL `replicator run` at 10 moments during live traffic; the end state equals the org's
and every published event was applied exactly once (counted in the checkpoint's transaction)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys

import pytest

from replicator.sim.server import SimulatorThread

from .helpers import (
    OBJECTS,
    compare_with_truth,
    config_toml,
    finish,
    ground_truth,
    pg_value,
    sim_admin,
    start_logged,
    wait_for,
)

pytestmark = pytest.mark.slow  # `replicator run` subprocesses, killed

CHANGES = 3_000
KILLS = 10


@pytest.fixture(scope="module")
def sim():
    with SimulatorThread(records=1500, seed=31, keepalive_seconds=0.2) as thread:
        yield thread.info


def _start(cfg, sim) -> subprocess.Popen:
    # One replica id for every restart: a restart after SIGKILL takes its units over at once, as a process that
    # keeps its name does (docs/operating.md "One writer"), not after the killed process's lease expires.
    env = dict(os.environ, REPLICATOR_SALESFORCE__CLIENT_SECRET=sim["client_secret"],
               REPLICATOR_SERVICE__REPLICA_ID="run")
    return start_logged([sys.executable, "-m", "replicator.cli", "--log-json", "run", "--config", str(cfg)], env)



async def _made(sim) -> int:
    return (await sim_admin(sim, "GET", "/__sim/stats")).json()["changes"]["total"]


async def test_sigkill_ten_times_during_traffic_converges_exactly_once(sim, pg_url, tmp_path):
    cfg = tmp_path / "run.toml"
    text = config_toml(sim, pg_url, "crash", page_size=500) + "[stream]\nbatch_max_wait_s = 0.05\n"
    cfg.write_text(text.replace("[salesforce]\n", f'[salesforce]\npubsub_endpoint = "{sim["pubsub_endpoint"]}"\n', 1))
    proc = _start(cfg, sim)
    try:
        await wait_for(lambda: pg_value(pg_url, "SELECT count(*) = 4 FROM replicator.objects WHERE phase = 'STREAMING'"),
                       timeout=120)
        await sim_admin(sim, "PUT", "/__sim/traffic", {
            "running": True, "rate": 250, "changes": CHANGES, "transaction_size": 3, "records_per_event": 2,
            "collision_rate": 0.3})
        rng = random.Random(5)
        points = sorted(rng.sample(range(100, CHANGES - 100), KILLS))
        for point in points:  # kill when the org has made `point` changes: random moments, no sleeps
            await wait_for(lambda p=point: _at_least(sim, p), timeout=120)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            proc = _start(cfg, sim)
        await wait_for(lambda: _at_least(sim, CHANGES), timeout=120)
        published = (await sim_admin(sim, "GET", "/__sim/stats")).json()["events_published"]
        await wait_for(lambda: pg_value(pg_url, f"SELECT sum(events_applied) >= {published} FROM replicator.checkpoints"),
                       timeout=120)
    finally:
        proc.send_signal(signal.SIGTERM)
        err = finish(proc, 60)
    assert proc.returncode == 0, err[-3000:]
    applied = await pg_value(pg_url, "SELECT sum(events_applied) FROM replicator.checkpoints")
    assert applied == published, f"{applied} events applied for {published} published"
    # formula values follow their inputs without an event: `replicator refresh` brings them current
    env = dict(os.environ, REPLICATOR_SALESFORCE__CLIENT_SECRET=sim["client_secret"])
    refresh = subprocess.run([sys.executable, "-m", "replicator.cli", "refresh", "--config", str(cfg)],
                             env=env, capture_output=True, text=True, timeout=300)
    assert refresh.returncode == 0, refresh.stdout + refresh.stderr
    for name, opts in OBJECTS.items():
        truth = await ground_truth(sim, name)
        problems = await compare_with_truth(pg_url, "crash", name, opts.get("key", "Id"), truth)
        assert problems == [], problems[:10]


async def _at_least(sim, n):
    return await _made(sim) >= n
