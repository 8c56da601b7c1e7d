"""A polled object extracted again while the service runs (issue 18, defects 5 and 10): at an operator's request
(`replicator resync`), and for a field added in the org; either way it ends equal to the org and rounds go on."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

from replicator.app.service import Service
from replicator.sim.server import SimulatorThread

from .helpers import all_equal, config_toml, ground_truth, pg_value, settings_for, sim_admin, wait_for


@pytest.fixture(scope="module")
def sim():
    with SimulatorThread(records=150, seed=10) as thread:
        yield thread.info


def _settings(sim, pg_url, schema, **poll):
    return settings_for(sim, pg_url, schema, salesforce={"pubsub_endpoint": sim["pubsub_endpoint"]},
                        service={"control_poll_s": 0.1}, poll={"lookback_s": 2, **poll},
                        objects={"Task": {"mode": "poll", "poll_interval_s": 0.3}})


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "replicator.cli", "--log-json", *args], env=dict(os.environ),
                          capture_output=True, text=True, timeout=120)


async def _live(sim) -> list[str]:
    return [r["Id"] for r in await ground_truth(sim, "Task") if not r["IsDeleted"]]


async def test_a_requested_resync_of_a_polled_object_runs_and_polling_goes_on(sim, pg_url, tmp_path):
    settings = _settings(sim, pg_url, "rs_poll")
    cfg = tmp_path / "rs_poll.toml"
    cfg.write_text(config_toml(sim, pg_url, "rs_poll").split("[objects.")[0] + '[objects.Task]\nmode = "poll"\n')
    svc = Service(settings)
    task = asyncio.create_task(svc.run())
    try:
        await wait_for(lambda: pg_value(pg_url, "SELECT phase = 'STREAMING' FROM replicator.objects"
                                                " WHERE object = 'Task'"), timeout=120)
        lost = (await _live(sim))[0]
        await pg_value(pg_url, f"DELETE FROM rs_poll.task WHERE id = '{lost}'")  # a row no round reads again
        out = _cli("resync", "--config", str(cfg), "Task")
        assert out.returncode == 0 and "resync requested" in out.stdout, out.stdout + out.stderr
        await wait_for(lambda: pg_value(pg_url, f"SELECT count(*) = 1 FROM rs_poll.task WHERE id = '{lost}'"),
                       timeout=30)
        await wait_for(lambda: pg_value(pg_url, "SELECT phase = 'STREAMING' AND resyncs = 1 AND NOT resync_requested"
                                                " AND last_resync_reason LIKE '%operator%' FROM replicator.objects"
                                                " WHERE object = 'Task'"), timeout=30)
        assert svc.metrics.resyncs.labels(object="Task")._value.get() == 1
        changed = (await _live(sim))[1]
        await sim_admin(sim, "POST", "/__sim/changes", [
            {"object": "Task", "type": "UPDATE", "ids": [changed], "fields": {"Subject": "after the resync"}}])
        await wait_for(lambda: pg_value(pg_url, f"SELECT subject = 'after the resync' FROM rs_poll.task"
                                                f" WHERE id = '{changed}'"), timeout=30)
        assert await all_equal(settings)
    finally:
        svc.stop.set()
        assert await asyncio.wait_for(task, 60) == 0
