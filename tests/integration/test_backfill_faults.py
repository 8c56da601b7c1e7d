"""Backfill under faults: expired tokens, 5xx, failed jobs, rows Postgres cannot take, hostile metadata."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from replicator.app.commands import run_backfills
from replicator.sim.admin_client import sim_admin

from .helpers import compare_with_truth, ground_truth, settings_for, sim_get, sim_put, wait_for


@pytest.fixture(autouse=True)
async def reset_faults(sim):
    yield
    await sim_put(sim, "/__sim/faults", {"error_500_rate": 0, "error_503_rate": 0, "latency_ms": 0,
                                        "fail_jobs": 0, "fail_jobs_object": "", "malformed_rows": 0})


async def _pages(pg_url: str, obj: str) -> int:
    conn = await asyncpg.connect(pg_url)
    try:
        return await conn.fetchval("SELECT count(*) FROM replicator.backfill_pages WHERE object = $1", obj)
    except asyncpg.UndefinedTableError:  # not migrated yet
        return 0
    finally:
        await conn.close()


async def test_expired_token_and_5xx_mid_backfill_lose_no_row(sim, pg_url):
    settings = settings_for(sim, pg_url, "faults", backfill={"page_size": 100, "parallel_pages": 2})
    await sim_put(sim, "/__sim/faults", {"latency_ms": 15})
    task = asyncio.create_task(run_backfills(settings, ["Account"]))
    await wait_for(lambda: _pages(pg_url, "Account"), timeout=60)
    # Mid-backfill: every token dies (401 INVALID_SESSION_ID next call) and 10% of calls fail with 500/503.
    expired = (await sim_admin(sim, "POST", "/__sim/tokens/expire")).json()
    assert expired["expired"] >= 1
    await sim_put(sim, "/__sim/faults", {"error_503_rate": 0.07, "error_500_rate": 0.03})
    results = await asyncio.wait_for(task, timeout=120)
    assert not isinstance(results["Account"], BaseException), results["Account"]
    truth = await ground_truth(sim, "Account")
    assert await compare_with_truth(pg_url, "faults", "Account", "Id", truth) == []


async def test_failed_job_is_replaced_by_a_new_job(sim, pg_url):
    settings = settings_for(sim, pg_url, "failed_job", backfill={"job_retries": 2})
    await sim_put(sim, "/__sim/faults", {"fail_jobs": 2})
    results = await run_backfills(settings, ["Contact"])
    assert not isinstance(results["Contact"], BaseException), results["Contact"]
    truth = await ground_truth(sim, "Contact")
    assert await compare_with_truth(pg_url, "failed_job", "Contact", "Id", truth) == []


async def test_job_failing_every_time_stops_the_object_with_a_clear_error(sim, pg_url):
    settings = settings_for(sim, pg_url, "always_failing", backfill={"job_retries": 1})
    # Opportunity's jobs only: two objects create their jobs at once, and a failure Invoice__c took would leave
    # Opportunity one short of failing twice
    await sim_put(sim, "/__sim/faults", {"fail_jobs": 2, "fail_jobs_object": "Opportunity"})
    results = await run_backfills(settings, ["Opportunity", "Invoice__c"])
    err = results["Opportunity"]
    assert isinstance(err, Exception) and "failed 2 times" in str(err)
    # One failing object does not stop another.
    assert not isinstance(results["Invoice__c"], BaseException)
    conn = await asyncpg.connect(pg_url)
    try:
        row = await conn.fetchrow("SELECT phase, last_error FROM replicator.objects WHERE object = 'Opportunity'")
    finally:
        await conn.close()
    assert row["phase"] == "FAILED" and "failed 2 times" in row["last_error"]


async def test_malformed_rows_go_to_dead_letters_and_the_rest_loads(sim, pg_url):
    settings = settings_for(sim, pg_url, "malformed", backfill={"page_size": 500})
    await sim_put(sim, "/__sim/faults", {"malformed_rows": 3})
    results = await run_backfills(settings, ["Account"])
    progress = results["Account"]
    assert not isinstance(progress, BaseException), progress
    assert progress.dead_letters == 3
    conn = await asyncpg.connect(pg_url)
    try:
        dead = await conn.fetch("SELECT record_key, reason, payload FROM replicator.dead_letters WHERE object = 'Account'")
        loaded = await conn.fetchval("SELECT count(*) FROM malformed.account")
    finally:
        await conn.close()
    assert len(dead) == 3
    assert all("columns" in d["reason"] for d in dead)
    counts = (await sim_get(sim, "/__sim/counts")).json()
    assert loaded == counts["Account"]["total"] - 3
    # The dead letters hold the raw rows; the loaded rows equal the org's.
    truth = {r["Id"]: r for r in await ground_truth(sim, "Account")}
    dead_keys = {d["record_key"] for d in dead}
    problems = await compare_with_truth(pg_url, "malformed", "Account", "Id",
                                        [r for k, r in truth.items() if k not in dead_keys])
    assert problems == []


@pytest.mark.slow  # the service
async def test_under_run_a_job_failing_every_time_stops_the_object_and_the_others_go_on(sim, pg_url):
    """`replicator run` as `replicator backfill` (above): after `backfill.job_retries` new jobs the object stops
    FAILED with the error (docs/guarantees.md), rather than creating a new Bulk job every minute for ever."""
    from replicator.app.service import Service

    settings = settings_for(sim, pg_url, "run_failing", backfill={"job_retries": 1},
                            objects={"Opportunity": {"mode": "poll"}, "Invoice__c": {"mode": "poll"}})
    await sim_put(sim, "/__sim/faults", {"fail_jobs": 2, "fail_jobs_object": "Opportunity"})
    svc = Service(settings)
    task = asyncio.create_task(svc.run())

    async def phases():
        conn = await asyncpg.connect(pg_url)
        try:
            return dict(await conn.fetch("SELECT object, phase FROM replicator.objects"))
        except asyncpg.UndefinedTableError:
            return {}
        finally:
            await conn.close()

    try:
        await wait_for(lambda: _settled(task, phases), timeout=90)
        assert not task.done(), task
        assert await phases() == {"Opportunity": "FAILED", "Invoice__c": "STREAMING"}
        conn = await asyncpg.connect(pg_url)
        try:
            error = await conn.fetchval("SELECT last_error FROM replicator.objects WHERE object = 'Opportunity'")
        finally:
            await conn.close()
        assert "failed 2 times" in error
    finally:
        svc.stop.set()
        assert await asyncio.wait_for(task, 60) == 0


async def _settled(task, phases) -> bool:
    return task.done() or await phases() == {"Opportunity": "FAILED", "Invoice__c": "STREAMING"}
