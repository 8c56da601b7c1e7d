"""A table keyed by an external id (`Invoice__c.External_Id__c`) whose keys move, collide or are nulled in the org.

Each test makes the org's changes through `POST /__sim/changes`, takes the change events the simulator published
for them from its Pub/Sub API, and applies them as one batch (`ObjectStream.apply_batch`), then compares the table
with a fresh extract (`replicator verify`) and reads the dead letters."""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg
import pytest

from replicator.app.commands import run_backfills
from replicator.app.runtime import open_store, salesforce_client
from replicator.app.service import Service
from replicator.model import ConfigError
from replicator.pipeline.dead_letters import retry as retry_dead_letters
from replicator.pipeline.stream import ObjectStream
from replicator.pipeline.verify import verify_object
from replicator.postgres.state import load_checkpoint
from replicator.salesforce.pubsub import PubSubClient
from replicator.sim.server import SimulatorThread

from .helpers import ground_truth, settings_for, sim_admin

# The test's own sessions see the default org's state unqualified, as the Store's do (postgres/store.py).
DEFAULT_STATE = {"search_path": "replicator"}

OBJ = "Invoice__c"
TOPIC = "/data/Invoice__ChangeEvent"
OBJECTS = {OBJ: {"key": "External_Id__c"}}


@pytest.fixture(scope="module")
def sim():
    with SimulatorThread(records=40, seed=17, keepalive_seconds=0.2) as thread:
        yield thread.info


def _settings(sim, pg_url, schema, objects=None):
    return settings_for(sim, pg_url, schema, objects=objects or OBJECTS,
                        salesforce={"pubsub_endpoint": sim["pubsub_endpoint"]})


async def _change(sim, items) -> dict:
    response = await sim_admin(sim, "POST", "/__sim/changes", items)
    assert response.status_code == 200, response.text
    return response.json()


async def _invoices(sim) -> list[dict]:
    return [r for r in await ground_truth(sim, OBJ) if not r["IsDeleted"]]


@contextlib.asynccontextmanager
async def _stream(settings):
    async with salesforce_client(settings) as client, open_store(settings) as store:
        sf = settings.salesforce
        async with PubSubClient(sf.pubsub_endpoint, client.tokens, ca_file=str(sf.ca_file)) as pubsub:
            stream = ObjectStream(client, pubsub, store, settings, OBJ, settings.objects[OBJ])
            await stream.applier.load_schema()
            yield stream, client, store, pubsub


async def _events(pubsub, *commits: dict) -> list:
    """The change events the simulator published for these commits, in replay order (waits for them to arrive)."""
    wanted = {bytes.fromhex(r) for c in commits for r in c["replay_ids"]}
    got = []
    sub = pubsub.subscribe(TOPIC, replay_id=None, max_pending=100)
    try:
        while wanted:
            event = await asyncio.wait_for(sub.__anext__(), 30)
            if event.replay_id in wanted:
                wanted.discard(event.replay_id)
                got.append(event)
    finally:
        await sub.close()
    return got


async def _dead_letters(pg_url) -> list[dict]:
    conn = await asyncpg.connect(pg_url, server_settings=DEFAULT_STATE)
    try:
        return [dict(r) for r in await conn.fetch(
            "SELECT record_key, source, reason, payload FROM replicator.dead_letters WHERE resolved_at IS NULL "
            "ORDER BY id")]
    finally:
        await conn.close()


async def _verify(settings, repair=False):
    async with salesforce_client(settings) as client, open_store(settings) as store:
        return await verify_object(client, store, settings, OBJ, repair=repair)


async def test_a_key_that_moves_while_a_new_record_takes_it_loses_nothing(sim, pg_url):
    settings = _settings(sim, pg_url, "keymove")
    await run_backfills(settings, [OBJ])
    a = (await _invoices(sim))[0]
    moved = await _change(sim, [
        {"object": OBJ, "type": "UPDATE", "ids": [a["Id"]], "fields": {"External_Id__c": "MOVED-A"}},
        {"object": OBJ, "type": "CREATE", "fields": {"Name": "takes A's old key", "External_Id__c": a["External_Id__c"]}},
    ])
    async with _stream(settings) as (stream, _, _, pubsub):
        batch = await _events(pubsub, moved)
        await stream.apply_batch(batch)
    diff, _ = await _verify(settings)
    assert (diff.missing, diff.extra, diff.different) == (0, 0, 0), diff.examples
    assert await _dead_letters(pg_url) == []
    conn = await asyncpg.connect(pg_url, server_settings=DEFAULT_STATE)
    try:
        assert await conn.fetchval("SELECT id FROM keymove.invoice__c WHERE external_id__c = 'MOVED-A'") == a["Id"]
        assert await load_checkpoint(conn, TOPIC) == batch[-1].replay_id
    finally:
        await conn.close()


async def test_a_key_held_by_a_stale_row_goes_to_the_newer_record_and_the_stale_one_is_fetched_again(sim, pg_url):
    # The copy missed a change (a row of it was stale): record A left key X, then a new record C took X.
    settings = _settings(sim, pg_url, "keystale")
    await run_backfills(settings, [OBJ])
    a = (await _invoices(sim))[1]
    await _change(sim, [{"object": OBJ, "type": "UPDATE", "ids": [a["Id"]], "fields": {"External_Id__c": "LEFT-X"}}])
    created = await _change(sim, [{"object": OBJ, "type": "CREATE",
                                   "fields": {"Name": "new holder", "External_Id__c": a["External_Id__c"]}}])
    async with _stream(settings) as (stream, _, _, pubsub):
        await stream.apply_batch(await _events(pubsub, created))  # the first change never reaches the stream
    diff, _ = await _verify(settings)
    assert (diff.missing, diff.extra, diff.different) == (0, 0, 0), diff.examples
    assert await _dead_letters(pg_url) == []
    assert stream.stats.refetched >= 1


async def test_a_nulled_key_removes_the_row_with_a_dead_letter_and_a_new_key_brings_it_back(sim, pg_url):
    settings = _settings(sim, pg_url, "keynull")
    await run_backfills(settings, [OBJ])
    a = (await _invoices(sim))[2]
    nulled = await _change(sim, [{"object": OBJ, "type": "UPDATE", "ids": [a["Id"]], "nulled": ["External_Id__c"],
                                  "fields": {"Amount__c": 7.5}}])
    async with _stream(settings) as (stream, _, _, pubsub):
        batch = await _events(pubsub, nulled)
        await stream.apply_batch(batch)
        diff, _ = await _verify(settings)
        assert (diff.missing, diff.extra, diff.different, diff.unkeyed) == (0, 0, 0, 1), diff.examples
        assert diff.equal and diff.examples["unkeyed"] == [a["Id"]]
        (letter,) = await _dead_letters(pg_url)
        assert letter["record_key"] == a["Id"] and "External_Id__c" in letter["reason"]
        assert a["External_Id__c"] in letter["payload"]  # the row's last values
        conn = await asyncpg.connect(pg_url, server_settings=DEFAULT_STATE)
        try:
            assert await conn.fetchval("SELECT count(*) FROM keynull.invoice__c WHERE id = $1", a["Id"]) == 0
            assert await load_checkpoint(conn, TOPIC) == batch[-1].replay_id
        finally:
            await conn.close()
        keyed = await _change(sim, [{"object": OBJ, "type": "UPDATE", "ids": [a["Id"]],
                                     "fields": {"External_Id__c": "KEYED-AGAIN"}}])
        await stream.apply_batch(await _events(pubsub, keyed))  # an update of a row we lack: fetched by Id
    diff, _ = await _verify(settings)
    assert (diff.missing, diff.extra, diff.different, diff.unkeyed) == (0, 0, 0, 0), diff.examples


async def test_retrying_the_dead_letter_of_a_record_still_without_a_key_leaves_one_open_letter(sim, pg_url):
    settings = _settings(sim, pg_url, "keyretry")
    await run_backfills(settings, [OBJ])
    a = (await _invoices(sim))[9]
    nulled = await _change(sim, [{"object": OBJ, "type": "UPDATE", "ids": [a["Id"]], "nulled": ["External_Id__c"]}])
    async with _stream(settings) as (stream, client, store, pubsub):
        await stream.apply_batch(await _events(pubsub, nulled))
        assert [x["record_key"] for x in await _dead_letters(pg_url)] == [a["Id"]]
        result = await retry_dead_letters(client, store, settings, OBJ, force=True)
    # still unkeyed in the org: not applied; the key step's new letter replaces the retried one
    assert (result.applied, result.failed, result.gone) == (0, 1, 0)
    (letter,) = await _dead_letters(pg_url)
    assert letter["record_key"] == a["Id"] and "External_Id__c" in letter["reason"]
    conn = await asyncpg.connect(pg_url, server_settings=DEFAULT_STATE)
    try:
        assert await conn.fetchval("SELECT count(*) FROM keyretry.invoice__c WHERE id = $1", a["Id"]) == 0
    finally:
        await conn.close()
    # the org's record gets a key again (the module's other tests share this org)
    await _change(sim, [{"object": OBJ, "type": "UPDATE", "ids": [a["Id"]], "fields": {"External_Id__c": "RETRY-KEY"}}])


async def test_keys_swapped_or_chained_in_one_transaction_apply_together(sim, pg_url):
    settings = _settings(sim, pg_url, "keyswap")
    await run_backfills(settings, [OBJ])
    a, b, c, d, e = (await _invoices(sim))[3:8]
    swap = await _change(sim, [
        {"object": OBJ, "type": "UPDATE", "ids": [a["Id"]], "fields": {"External_Id__c": b["External_Id__c"]}},
        {"object": OBJ, "type": "UPDATE", "ids": [b["Id"]], "fields": {"External_Id__c": a["External_Id__c"]}},
    ])
    chain = await _change(sim, [  # c takes d's key, d takes e's, e a new one: written last to first in the org
        {"object": OBJ, "type": "UPDATE", "ids": [e["Id"]], "fields": {"External_Id__c": "CHAIN-END"}},
        {"object": OBJ, "type": "UPDATE", "ids": [d["Id"]], "fields": {"External_Id__c": e["External_Id__c"]}},
        {"object": OBJ, "type": "UPDATE", "ids": [c["Id"]], "fields": {"External_Id__c": d["External_Id__c"]}},
    ])
    async with _stream(settings) as (stream, _, _, pubsub):
        await stream.apply_batch(await _events(pubsub, swap))
        await stream.apply_batch(await _events(pubsub, chain))
    diff, _ = await _verify(settings)
    assert (diff.missing, diff.extra, diff.different) == (0, 0, 0), diff.examples
    assert await _dead_letters(pg_url) == []


async def test_verify_repair_moves_swaps_and_unkeys_rows_through_the_staging_upsert(sim, pg_url):
    # The stream never saw these changes: `verify --repair` brings them in through the keyed staging upsert
    # (the same statement a resync into a populated table runs).
    settings = _settings(sim, pg_url, "keyrepair")
    await run_backfills(settings, [OBJ])
    a, b, c, d = (await _invoices(sim))[10:14]
    await _change(sim, [
        {"object": OBJ, "type": "UPDATE", "ids": [a["Id"]], "fields": {"External_Id__c": b["External_Id__c"]}},
        {"object": OBJ, "type": "UPDATE", "ids": [b["Id"]], "fields": {"External_Id__c": a["External_Id__c"]}},
        {"object": OBJ, "type": "UPDATE", "ids": [c["Id"]], "fields": {"External_Id__c": "REPAIR-MOVED"}},
        {"object": OBJ, "type": "CREATE", "fields": {"Name": "takes c's key", "External_Id__c": c["External_Id__c"]}},
        {"object": OBJ, "type": "UPDATE", "ids": [d["Id"]], "nulled": ["External_Id__c"]},
    ])
    diff, fixed = await _verify(settings, repair=True)
    assert fixed is not None
    assert (diff.missing, diff.extra, diff.different, diff.unkeyed) == (0, 0, 0, 1), diff.examples
    letters = await _dead_letters(pg_url)
    assert [(x["record_key"], x["source"]) for x in letters] == [(d["Id"], "backfill")]
    assert d["External_Id__c"] in letters[0]["payload"]


async def test_a_key_field_that_is_not_unique_is_refused_at_start(sim, pg_url):
    settings = _settings(sim, pg_url, "keyrefused", objects={OBJ: {"key": "Legacy_Code__c"}})  # External ID, not Unique
    with pytest.raises(ConfigError) as refused:
        await Service(settings).run()
    message = str(refused.value)
    assert "\n" not in message and "objects.Invoice__c.key" in message and "unique" in message.lower()
    results = await run_backfills(settings, [OBJ])
    assert isinstance(results[OBJ], ConfigError)
