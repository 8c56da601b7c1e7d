"""History tables (README "History"): every committed change of a record is one full version, written with the
batch that applies it; `verify --history` finds the current versions equal to the rows and the intervals whole."""

from __future__ import annotations

import asyncio
import datetime as dt

import asyncpg
import pytest

from replicator.app.commands import verify_command
from replicator.app.service import Service
from replicator.sim.server import SimulatorThread

from .helpers import ground_truth, pg_value, settings_for, sim_admin, wait_for

OBJECTS = {"Account": {"history": True}, "Contact": {"history": True, "deletes": "hard"},
           "Opportunity": {"history": True, "mode": "poll", "poll_interval_s": 0.2}}


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


async def _versions(pg_url, schema, record_id, columns="phone, isdeleted", table="account"):
    conn = await asyncpg.connect(pg_url)
    try:
        return [dict(r) for r in await conn.fetch(
            f"SELECT _op, {columns}, _valid_from, _valid_to, _is_current, _commit_user, _changed_fields "
            f"FROM {schema}.{table}__history WHERE id = $1 ORDER BY _valid_from, _position", record_id)]
    finally:
        await conn.close()


@pytest.fixture
async def service(sim, pg_url):
    svc = Service(_settings(sim, pg_url, "hist"))
    task = asyncio.create_task(svc.run())
    await wait_for(lambda: pg_value(pg_url, "SELECT count(*) = 3 FROM replicator.objects WHERE phase = 'STREAMING'"),
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


async def _history_equal(sim, pg_url, names=("Account", "Contact", "Opportunity")):
    from replicator.app.runtime import open_store, salesforce_client
    from replicator.pipeline.verify import verify_history

    settings = _settings(sim, pg_url, "hist")
    async with salesforce_client(settings) as client, open_store(settings) as store:
        return {n: await verify_history(client, store, settings, n) for n in names}


async def test_hard_delete_closes_the_current_version_and_undelete_opens_one(sim, pg_url, service):
    con = (await _live_ids(sim, "Contact", 1))[0]
    await _changes(sim, [{"object": "Contact", "type": "UPDATE", "ids": [con], "fields": {"Phone": "9"}}])
    await _changes(sim, [{"object": "Contact", "type": "DELETE", "ids": [con]}])
    await wait_for(lambda: pg_value(pg_url, f"SELECT count(*) = 0 FROM hist.contact WHERE id = '{con}'"), timeout=30)
    versions = await _versions(pg_url, "hist", con, table="contact")
    assert [(v["_op"], v["_is_current"]) for v in versions] == [("backfill", False), ("update", False)]
    assert versions[1]["_valid_to"] is not None
    await _changes(sim, [{"object": "Contact", "type": "UNDELETE", "ids": [con]}])
    await wait_for(lambda: pg_value(pg_url, f"SELECT count(*) = 1 FROM hist.contact WHERE id = '{con}'"), timeout=30)
    versions = await _versions(pg_url, "hist", con, table="contact")
    assert [(v["_op"], v["_is_current"]) for v in versions][1:] == [("update", False), ("undelete", True)]
    assert versions[2]["_valid_from"] >= versions[1]["_valid_to"]  # a hole while the record did not exist
    assert await _history_equal(sim, pg_url) == {n: {"current": [], "intervals": []}
                                                  for n in ("Account", "Contact", "Opportunity")}


async def test_a_polled_object_adds_a_version_per_change_a_round_sees(sim, pg_url, service):
    opp = (await _live_ids(sim, "Opportunity", 1))[0]
    await _changes(sim, [{"object": "Opportunity", "type": "UPDATE", "ids": [opp], "fields": {"Name": "polled"}}])
    await wait_for(lambda: pg_value(pg_url, f"SELECT count(*) FROM hist.opportunity__history WHERE id = '{opp}' "
                                      "AND _op = 'poll' AND name = 'polled' AND _is_current"), timeout=30)
    assert await pg_value(pg_url, f"SELECT count(*) FROM hist.opportunity__history WHERE id = '{opp}'") == 2
    assert (await _history_equal(sim, pg_url, ["Opportunity"]))["Opportunity"] == {"current": [], "intervals": []}


async def test_the_refresh_writes_into_current_versions_and_a_new_field_adds_a_column(sim, pg_url, service):
    from replicator.app.ops_commands import refresh_command

    acc = (await _live_ids(sim, "Account", 3))[2]
    await sim_admin(sim, "POST", "/__sim/silent-changes", {"object": "Account", "ids": [acc],
                                                           "fields": {"LastViewedDate": "2026-01-02T03:04:05.000Z"}})
    before = await pg_value(pg_url, "SELECT count(*) FROM hist.account__history")
    assert await refresh_command(_settings(sim, pg_url, "hist"), ["Account"]) == 0
    assert await pg_value(pg_url, f"SELECT lastvieweddate FROM hist.account__history WHERE id = '{acc}' "
                                  "AND _is_current") is not None
    assert await pg_value(pg_url, "SELECT count(*) FROM hist.account__history") == before
    await sim_admin(sim, "POST", "/__sim/schema/Account/fields", {"name": "History_Tier__c", "type": "string"})
    await _changes(sim, [{"object": "Account", "type": "UPDATE", "ids": [acc], "fields": {"History_Tier__c": "gold"}}])
    await wait_for(lambda: pg_value(pg_url, f"SELECT count(*) FROM hist.account__history WHERE id = '{acc}' "
                                      "AND history_tier__c = 'gold' AND _is_current"), timeout=30)
    assert (await _history_equal(sim, pg_url, ["Account"]))["Account"] == {"current": [], "intervals": []}


async def test_as_of_function_and_retention(sim, pg_url, service):
    acc = (await _live_ids(sim, "Account", 4))[3]
    await _changes(sim, [{"object": "Account", "type": "UPDATE", "ids": [acc], "fields": {"Phone": "as-of"}}])
    await wait_for(lambda: pg_value(pg_url, f"SELECT phone = 'as-of' FROM hist.account WHERE id = '{acc}'"),
                   timeout=30)
    conn = await asyncpg.connect(pg_url)
    try:
        first, second = await conn.fetch("SELECT phone, _valid_from FROM hist.account__history WHERE id = $1 "
                                         "ORDER BY _valid_from, _position", acc)
        at = await conn.fetchval("SELECT phone FROM hist.account__as_of($1) WHERE id = $2",
                                 second["_valid_from"] - dt.timedelta(microseconds=1), acc)
        assert at == first["phone"]
        assert await conn.fetchval("SELECT phone FROM hist.account__as_of(now()) WHERE id = $1", acc) == "as-of"
        assert await conn.fetchval("SELECT count(*) FROM hist.account__as_of(now())") == \
            await conn.fetchval("SELECT count(*) FROM hist.account")
        # versions closed long ago are pruned, a few per transaction; current versions never
        await conn.execute("UPDATE hist.account__history SET _valid_to = _valid_to - interval '40 days', "
                           "_valid_from = _valid_from - interval '40 days' WHERE NOT _is_current")
        closed = await conn.fetchval("SELECT count(*) FROM hist.account__history WHERE NOT _is_current")
        assert closed > 0
    finally:
        await conn.close()
    from replicator.app.commands import prune_command

    settings = _settings(sim, pg_url, "hist", history={"retention_days": 30, "prune_batch": 2})
    assert await prune_command(settings, ["Account"]) == 0
    assert await pg_value(pg_url, "SELECT count(*) FROM hist.account__history WHERE NOT _is_current") == 0
    assert await pg_value(pg_url, "SELECT count(*) FROM hist.account__history") == \
        await pg_value(pg_url, "SELECT count(*) FROM hist.account")


async def test_fivetran_names_for_the_validity_columns(sim, pg_url):
    settings = settings_for(sim, pg_url, "ft", salesforce={"pubsub_endpoint": sim["pubsub_endpoint"]},
                            objects={"Account": {"history": True}}, history={"columns": "fivetran"})
    from replicator.app.commands import backfill_command

    assert await backfill_command(settings, ["Account"]) == 0
    rows = await pg_value(pg_url, "SELECT count(*) FROM ft.account")
    assert await pg_value(pg_url, "SELECT count(*) FROM ft.account__history WHERE _fivetran_active "
                                  "AND _fivetran_end IS NULL AND _fivetran_start IS NOT NULL") == rows
    assert await pg_value(pg_url, "SELECT count(*) FROM ft.account__as_of(now())") == rows
