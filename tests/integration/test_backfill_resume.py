"""SIGKILL in the middle of a backfill, then run it again: it continues the same job at the next page."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import asyncpg
import pytest

from replicator.sim.server import SimulatorThread

from .helpers import compare_with_truth, config_toml, ground_truth, sim_get, sim_put, wait_for

pytestmark = pytest.mark.slow  # `replicator backfill` subprocesses, killed

PAGE = 200


@pytest.fixture(scope="module")
def sim():
    with SimulatorThread(records=3000, seed=11) as thread:
        yield thread.info


def _backfill(cfg, sim) -> subprocess.Popen:
    env = dict(os.environ, REPLICATOR_SALESFORCE__CLIENT_SECRET=sim["client_secret"])
    return subprocess.Popen(
        [sys.executable, "-m", "replicator.cli", "--log-json", "backfill", "--config", str(cfg), "Account"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )


async def _committed(pg_url: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(pg_url)
    try:
        return await conn.fetch("SELECT job_id, locator FROM replicator.backfill_pages WHERE object = 'Account'")
    except asyncpg.UndefinedTableError:
        return []
    finally:
        await conn.close()


async def test_sigkill_mid_object_resumes_same_job_at_next_page(sim, pg_url, tmp_path):
    cfg = tmp_path / "replicator.toml"
    cfg.write_text(config_toml(sim, pg_url, "resume", page_size=PAGE, parallel_pages=2))
    await sim_put(sim, "/__sim/faults", {"latency_ms": 60})
    proc = _backfill(cfg, sim)
    try:
        await wait_for(lambda: _at_least(pg_url, 3), timeout=90)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    before = await _committed(pg_url)  # pages committed when the process died
    job_ids = {r["job_id"] for r in before}
    assert len(job_ids) == 1
    total_pages = -(-3000 // PAGE)
    assert len(before) < total_pages, "the backfill finished before it could be killed"

    await sim_put(sim, "/__sim/faults", {"latency_ms": 0})
    second = _backfill(cfg, sim)
    _, err = second.communicate(timeout=120)
    assert second.returncode == 0, err.decode()[-2000:]

    after = await _committed(pg_url)
    assert {r["job_id"] for r in after} == job_ids, "a new job was started instead of resuming"
    assert len(after) == len({r["locator"] for r in after}) == total_pages
    jobs = [j for j in (await sim_get(sim, "/__sim/jobs")).json() if j["object"] == "Account"]
    assert len(jobs) == 1
    requests = jobs[0]["results_requests"]
    # Pages committed before the kill were not downloaded again.
    assert all(requests[r["locator"]] == 1 for r in before), requests
    truth = await ground_truth(sim, "Account")
    assert await compare_with_truth(pg_url, "resume", "Account", "Id", truth) == []


async def _at_least(pg_url: str, n: int):
    rows = await _committed(pg_url)
    return rows if len(rows) >= n else None


async def test_job_gone_after_crash_starts_a_new_job_through_the_upsert(sim, pg_url, tmp_path):
    """Salesforce deletes jobs after 7 days: the stored job is gone, so a new one runs, keyed, no duplicates."""
    cfg = tmp_path / "replicator.toml"
    cfg.write_text(config_toml(sim, pg_url, "gone", page_size=PAGE, parallel_pages=1))
    await sim_put(sim, "/__sim/faults", {"latency_ms": 60})
    proc = _backfill(cfg, sim)
    try:
        await wait_for(lambda: _at_least(pg_url, 2), timeout=90)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    await sim_put(sim, "/__sim/faults", {"latency_ms": 0})
    old_job = (await _committed(pg_url))[0]["job_id"]
    await _delete_job(sim, old_job)

    second = _backfill(cfg, sim)
    _, err = second.communicate(timeout=120)
    assert second.returncode == 0, err.decode()[-2000:]
    conn = await asyncpg.connect(pg_url)
    try:
        row = await conn.fetchrow("SELECT job_id, load_mode FROM replicator.objects WHERE object = 'Account'")
    finally:
        await conn.close()
    assert row["job_id"] != old_job and row["load_mode"] == "upsert"
    truth = await ground_truth(sim, "Account")
    assert await compare_with_truth(pg_url, "gone", "Account", "Id", truth) == []


async def _delete_job(sim, job_id: str) -> None:
    from replicator.app.runtime import salesforce_client
    from replicator.salesforce.bulk import BulkClient

    from .helpers import settings_for

    settings = settings_for(sim, "postgresql://unused", "x")
    async with salesforce_client(settings) as client:
        bulk = BulkClient(client)
        job = await bulk.get_job(job_id)
        if not job.done:
            await bulk.wait_for_job(job_id)
        await bulk.delete_job(job_id)


async def test_sigterm_mid_backfill_stops_at_a_page_boundary_with_one_line_and_resumes(sim, pg_url, tmp_path):
    # A container's stop (SIGTERM) must not kill the backfill mid-page without a word: it stops where pages resume,
    # says so in one line, exits 143 (128 + SIGTERM, docs/commands.md), and the next run continues the same job.
    cfg = tmp_path / "replicator.toml"
    cfg.write_text(config_toml(sim, pg_url, "term", page_size=PAGE, parallel_pages=2))
    await sim_put(sim, "/__sim/faults", {"latency_ms": 60})
    proc = _backfill(cfg, sim)
    try:
        await wait_for(lambda: _at_least(pg_url, 2), timeout=90)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
        await sim_put(sim, "/__sim/faults", {"latency_ms": 0})
    lines = err.decode().splitlines()
    assert proc.returncode == 128 + signal.SIGTERM, lines[-5:]
    stopped = [line for line in lines if '"backfill.stopped"' in line]
    assert len(stopped) == 1 and '"signal": "SIGTERM"' in stopped[0], lines[-5:]
    assert not [line for line in lines if '"backfill.failed"' in line or "Traceback" in line], lines[-5:]
    conn = await asyncpg.connect(pg_url)
    try:
        phase, error = await conn.fetchrow("SELECT phase, last_error FROM replicator.objects WHERE object = 'Account'")
    finally:
        await conn.close()
    assert (phase, error) == ("BACKFILLING", None)  # resumable, not failed

    before = await _committed(pg_url)
    second = _backfill(cfg, sim)
    _, err = second.communicate(timeout=120)
    assert second.returncode == 0, err.decode()[-2000:]
    after = await _committed(pg_url)
    assert {r["job_id"] for r in after} == {r["job_id"] for r in before}
    assert len(after) == -(-3000 // PAGE)
    truth = await ground_truth(sim, "Account")
    assert await compare_with_truth(pg_url, "term", "Account", "Id", truth) == []
