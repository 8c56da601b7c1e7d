"""History tables (README "History"): every committed change of a record is one full version, written with the
batch that applies it; `verify --history` finds the current versions equal to the rows and the intervals whole."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from replicator.app.commands import verify_command
from replicator.app.service import Service
from replicator.sim.server import SimulatorThread

from .helpers import ground_truth, pg_value, settings_for, sim_admin, wait_for

OBJECTS = {"Account": {"history": True}, "Contact": {}}


@pytest.fixture(scope="module")
def sim():
    with SimulatorThread(records=200, seed=41, keepalive_seconds=0.2) as thread:
        yield thread.info


def _settings(sim, pg_url, schema, **extra):
    return settings_for(sim, pg_url, schema, salesforce={"pubsub_endpoint": sim["pubsub_endpoint"]},
                        stream={"batch_max_wait_s": 0.05}, objects=OBJECTS, **extra)


async def _changes(sim, items, **kw):
    return (await sim_admin(sim, "POST", "/__sim/changes", {"changes": items, **kw} if kw else items)).json()


async def _live_ids(sim, obj, n):
    return [r["Id"] for r in await ground_truth(sim, obj) if not r["IsDeleted"]][:n]


async def _versions(pg_url, schema, record_id, columns="phone, isdeleted"):
    conn = await asyncpg.connect(pg_url)
    try:
        return [dict(r) for r in await conn.fetch(
            f"SELECT _op, {columns}, _valid_from, _valid_to, _is_current, _commit_user, _changed_fields "
            f"FROM {schema}.account__history WHERE id = $1 ORDER BY _valid_from, _position", record_id)]
    finally:
        await conn.close()


@pytest.fixture
async def service(sim, pg_url):
    svc = Service(_settings(sim, pg_url, "hist"))
    task = asyncio.create_task(svc.run())
    await wait_for(lambda: pg_value(pg_url, "SELECT count(*) = 2 FROM replicator.objects WHERE phase = 'STREAMING'"),
                   timeout=60)
    yield svc
    svc.stop.set()
    assert await asyncio.wait_for(task, 30) == 0


async def test_every_change_of_one_batch_is_a_version_of_its_own(sim, pg_url, service):
    acc, other = await _live_ids(sim, "Account", 2)
    rows = await pg_value(pg_url, "SELECT count(*) FROM hist.account")
    assert await pg_value(pg_url, "SELECT count(*) FROM hist.account__history WHERE _op = 'backfill'") == rows
    # two changes of one record in the same second (each its own transaction), then a transaction of two records
    await _changes(sim, [{"object": "Account", "type": "UPDATE", "ids": [acc], "fields": {"Phone": "1"}},
                         {"object": "Account", "type": "UPDATE", "ids": [acc], "fields": {"Phone": "2"}}],
                   separate_transactions=True)
    # one transaction: two records, one of them changed twice (one batch: each change is still a version)
    await _changes(sim, [{"object": "Account", "type": "UPDATE", "ids": [acc], "fields": {"Phone": "3", "Name": "N"}},
                         {"object": "Account", "type": "UPDATE", "ids": [other], "fields": {"Phone": "3"}},
                         {"object": "Account", "type": "UPDATE", "ids": [acc], "fields": {"Phone": "4"}}])
    await _changes(sim, [{"object": "Account", "type": "DELETE", "ids": [acc]}])
    await wait_for(lambda: pg_value(pg_url, f"SELECT isdeleted FROM hist.account WHERE id = '{acc}'"), timeout=30)
    await _changes(sim, [{"object": "Account", "type": "UNDELETE", "ids": [acc]}])
    await wait_for(lambda: pg_value(pg_url, f"SELECT NOT isdeleted FROM hist.account WHERE id = '{acc}'"), timeout=30)
    versions = await _versions(pg_url, "hist", acc, "phone, name, isdeleted")
    assert [v["_op"] for v in versions] == ["backfill", "update", "update", "update", "update", "delete", "undelete"]
    assert [v["phone"] for v in versions][1:] == ["1", "2", "3", "4", "4", "4"]
    assert [v["name"] for v in versions][3:] == ["N"] * 4
    assert [v["isdeleted"] for v in versions] == [False, False, False, False, False, True, False]
    assert [v["_is_current"] for v in versions] == [False] * 6 + [True]
    for before, after in zip(versions, versions[1:], strict=False):
        assert before["_valid_to"] == after["_valid_from"]
    assert versions[1]["_changed_fields"] and "Phone" in versions[1]["_changed_fields"]
    assert await verify_command(_settings(sim, pg_url, "hist"), ["Account"], history=True) == 0
