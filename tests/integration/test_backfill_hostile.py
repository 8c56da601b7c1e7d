"""Hostile metadata: a field whose API name carries a quote and a semicolon never reaches SQL unquoted."""

from __future__ import annotations

import asyncpg
import pytest

from replicator.app.commands import run_backfills
from replicator.sim.server import SimulatorThread

from .helpers import compare_with_truth, ground_truth, settings_for


@pytest.fixture(scope="module")
def sim():
    with SimulatorThread(records=300, seed=3, hostile_field=True) as thread:
        yield thread.info


async def test_hostile_field_name_neither_crashes_nor_reaches_sql(sim, pg_url):
    hostile = [f["name"] for f in (await _describe(sim))["fields"] if '"' in f["name"]]
    assert hostile, "the simulator did not add the hostile field"
    settings = settings_for(sim, pg_url, "hostile")
    results = await run_backfills(settings, ["Account"])
    assert not isinstance(results["Account"], BaseException), results["Account"]
    conn = await asyncpg.connect(pg_url)
    try:
        cols = {r[0] for r in await conn.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = 'hostile'")}
        tables = {r[0] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'hostile'")}
    finally:
        await conn.close()
    assert tables == {"account"}
    assert not any('"' in c or ";" in c for c in cols)
    truth = [{k: v for k, v in r.items() if k not in hostile} for r in await ground_truth(sim, "Account")]
    assert await compare_with_truth(pg_url, "hostile", "Account", "Id", truth) == []


async def _describe(sim):
    from replicator.app.runtime import salesforce_client

    settings = settings_for(sim, "postgresql://unused", "x")
    async with salesforce_client(settings) as client:
        resp = await client.request("GET", f"/services/data/v{settings.salesforce.api_version}/sobjects/Account/describe")
        return resp.json()
