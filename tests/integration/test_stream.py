"""End to end: backfill, then change events over the Pub/Sub API applied to Postgres, equal to the org."""

from __future__ import annotations

import asyncpg
import pytest

from replicator.sim.server import SimulatorThread

from .helpers import (
    compare_with_truth,
    ground_truth,
    pg_value,
    running_service,
    settings_for,
    sim_admin,
    wait_for,
)

pytestmark = pytest.mark.slow  # the service

OBJECTS = {"Account": {}, "Invoice__c": {"key": "External_Id__c"}}


@pytest.fixture(scope="module")
def sim():
    with SimulatorThread(records=300, seed=21, keepalive_seconds=0.2) as thread:
        yield thread.info


def stream_settings(sim, pg_url, schema):
    return settings_for(sim, pg_url, schema, salesforce={"pubsub_endpoint": sim["pubsub_endpoint"]},
                        stream={"batch_max_wait_s": 0.05}, objects=OBJECTS)


async def _equal(sim, pg_url, schema):
    for name, opts in OBJECTS.items():
        truth = await ground_truth(sim, name)
        if await compare_with_truth(pg_url, schema, name, opts.get("key", "Id"), truth):
            return False
    return True


async def _converge(sim, pg_url, schema, timeout=60):
    try:
        await wait_for(lambda: _equal(sim, pg_url, schema), timeout=timeout, interval=0.2)
    except TimeoutError:
        for name, opts in OBJECTS.items():
            problems = await compare_with_truth(pg_url, schema, name, opts.get("key", "Id"),
                                                await ground_truth(sim, name))
            assert problems == [], problems[:10]


@pytest.fixture
async def service(sim, pg_url):
    async with running_service(stream_settings(sim, pg_url, "stream")) as svc:
        yield svc


async def _changes(sim, items):
    return (await sim_admin(sim, "POST", "/__sim/changes", items)).json()


async def _some_ids(sim, obj, n):
    return [r["Id"] for r in await ground_truth(sim, obj) if not r["IsDeleted"]][:n]


async def test_changes_of_every_kind_converge_to_the_org(sim, pg_url, service):
    acc = await _some_ids(sim, "Account", 6)
    await _changes(sim, [{"object": "Account", "type": "UPDATE", "ids": [acc[0]], "fields": {"Phone": "555-0100"}}])
    await _changes(sim, [{"object": "Account", "type": "UPDATE", "ids": acc[1:3], "fields": {"BillingState": "CA"},
                          "nulled": ["Website"]}])
    await _changes(sim, [{"object": "Account", "type": "DELETE", "ids": [acc[3]]}])
    await _changes(sim, [{"object": "Account", "type": "CREATE", "fields": {"Name": "Brand \"new\", é"}}])
    await _changes(sim, [{"object": "Account", "type": "UPDATE", "ids": [acc[4]], "fields": {"Phone": "1"},
                          "force_gap": True}])
    inv = await _some_ids(sim, "Invoice__c", 2)
    await _changes(sim, [{"object": "Invoice__c", "type": "UPDATE", "ids": inv, "fields": {"Amount__c": 12.5}},
                         {"object": "Account", "type": "UPDATE", "ids": [acc[5]], "fields": {"Name": "in txn"}}])
    await _converge(sim, pg_url, "stream")


async def test_partial_update_leaves_every_other_column_untouched(sim, pg_url, service):
    await _converge(sim, pg_url, "stream")
    acc = (await _some_ids(sim, "Account", 10))[9]
    conn = await asyncpg.connect(pg_url)
    before = dict(await conn.fetchrow("SELECT * FROM stream.account WHERE id = $1", acc))
    await _changes(sim, [{"object": "Account", "type": "UPDATE", "ids": [acc], "fields": {"Phone": "777"}}])
    await wait_for(lambda: conn.fetchval("SELECT phone = '777' FROM stream.account WHERE id = $1", acc), timeout=30)
    after = dict(await conn.fetchrow("SELECT * FROM stream.account WHERE id = $1", acc))
    await conn.close()
    changed = {k for k in before if before[k] != after[k]}
    assert changed <= {"phone", "lastmodifieddate", "systemmodstamp", "_sf_stream_version", "_sf_stream_position",
                       "_sf_version", "_sf_synced_at"}, changed
    assert "phone" in changed



async def test_a_new_field_becomes_a_column_before_its_batch(sim, pg_url, service):
    added = (await sim_admin(sim, "POST", "/__sim/schema/Account/fields",
                             {"name": "Loyalty_Tier__c", "type": "string"})).json()
    assert added["schema_id"]
    acc = (await _some_ids(sim, "Account", 12))[11]
    await _changes(sim, [{"object": "Account", "type": "UPDATE", "ids": [acc], "fields": {"Loyalty_Tier__c": "gold"}}])
    await wait_for(lambda: pg_value(pg_url, f"SELECT count(*) FROM stream.account WHERE id = '{acc}' "
                                      "AND loyalty_tier__c = 'gold'"), timeout=30)
    await _converge(sim, pg_url, "stream")


async def test_overflow_resyncs_the_object_and_converges(sim, pg_url, service):
    await sim_admin(sim, "PUT", "/__sim/faults", {"overflow_threshold": 5})
    try:
        acc = await _some_ids(sim, "Account", 20)
        await _changes(sim, [{"object": "Account", "type": "UPDATE", "ids": acc[12:20], "fields": {"Phone": "0"}}])
        await wait_for(lambda: pg_value(pg_url, "SELECT resyncs FROM replicator.objects WHERE object = 'Account'"),
                       timeout=60)
        await _converge(sim, pg_url, "stream")
    finally:
        await sim_admin(sim, "PUT", "/__sim/faults", {"overflow_threshold": 100_000})


async def test_expired_replay_id_resyncs_by_itself_and_converges(sim, pg_url):
    settings = stream_settings(sim, pg_url, "expiry")
    await sim_admin(sim, "PUT", "/__sim/faults", {"purge_before_now": True})  # earlier tests' events: gone
    async with running_service(settings):
        await wait_for(lambda: pg_value(pg_url, "SELECT count(*) = 2 FROM replicator.checkpoints"), timeout=30)
    assert await pg_value(pg_url, "SELECT resyncs FROM replicator.objects WHERE object = 'Account'") == 0
    # While it is stopped: changes happen, then Salesforce's retention window passes them all.
    acc = await _some_ids(sim, "Account", 3)
    await _changes(sim, [{"object": "Account", "type": "UPDATE", "ids": acc, "fields": {"Phone": "expired"}}])
    await sim_admin(sim, "PUT", "/__sim/faults", {"purge_before_now": True})
    resynced = "SELECT resyncs = 1 FROM replicator.objects WHERE object = 'Account'"
    async with running_service(settings, until=lambda: pg_value(pg_url, resynced), timeout=60):
        reason = await pg_value(pg_url, "SELECT last_resync_reason FROM replicator.objects WHERE object = 'Account'")
        assert reason == "replay id expired or invalid"
        await _converge(sim, pg_url, "expiry")


async def test_platform_events_are_appended_once_by_replay_id(sim, pg_url):
    settings = settings_for(sim, pg_url, "events", salesforce={"pubsub_endpoint": sim["pubsub_endpoint"]},
                            stream={"batch_max_wait_s": 0.05, "platform_events": ["Order_Ready__e"]},
                            objects={"Account": {}})
    await sim_admin(sim, "PUT", "/__sim/faults", {"purge_before_now": True})
    await sim_admin(sim, "PUT", "/__sim/traffic", {"running": True, "rate": 200, "platform_event_rate": 1.0,
                                                   "objects": ["Account"], "changes": 40,
                                                   "mix": {"UPDATE": 1.0}})
    await sim_admin(sim, "PUT", "/__sim/faults", {"duplicate_rate": 0.5})
    try:
        async with running_service(settings):
            async def traffic_done():
                return (await sim_admin(sim, "GET", "/__sim/traffic")).json()["running"] is False
            await wait_for(traffic_done, timeout=60)
            await wait_for(lambda: pg_value(pg_url, "SELECT count(*) >= 40 FROM events.order_ready__e"), timeout=60)
    finally:
        await sim_admin(sim, "PUT", "/__sim/faults", {"duplicate_rate": 0})
    assert await pg_value(pg_url, "SELECT count(*) FROM events.order_ready__e") == 40
    assert await pg_value(pg_url, "SELECT count(*) FROM events.order_ready__e WHERE fields ? 'Order_Id__c'") == 40
