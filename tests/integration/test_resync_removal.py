"""A resync removes the rows its extract lacks, decided by presence in the extract, never by when a row was
written (docs/design.md contract 5): a row the stream wrote from a late commit (its commitTimestamp seconds after the
records' SystemModstamp) is newer than the extract's copy of its record, so the extract does not rewrite it; it is
still in the extract, and stays live."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest

from replicator.app.commands import run_backfills
from replicator.app.runtime import open_store, salesforce_client
from replicator.model import FieldSpec, ObjectDescribe, TableInfo
from replicator.pipeline.backfill import Backfill
from replicator.pipeline.schema import table_spec, version_column
from replicator.pipeline.verify import verify_object
from replicator.postgres.store import Store
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

pytestmark = pytest.mark.slow  # the service and resync extracts


@pytest.fixture(scope="module")
def sim():
    with SimulatorThread(records=500, seed=18, keepalive_seconds=0.2) as thread:
        yield thread.info


def _object_state(pg_url: str, condition: str):
    return lambda: pg_value(pg_url, f"SELECT coalesce(bool_and({condition}), false) FROM replicator.objects "
                                    "WHERE object = 'Account'")


async def _after(epoch_s: float) -> bool:
    return time.time() >= epoch_s


@pytest.mark.parametrize("deletes", ["soft", "hard"])
async def test_a_resync_after_a_late_commit_keeps_the_records_it_streamed(sim, pg_url, deletes):
    schema = f"late_{deletes}"
    settings = settings_for(sim, pg_url, schema, salesforce={"pubsub_endpoint": sim["pubsub_endpoint"]},
                            stream={"batch_max_wait_s": 0.05}, service={"control_poll_s": 0.2},
                            objects={"Account": {"deletes": deletes}})
    async with running_service(settings) as service:
        ids = [r["Id"] for r in await ground_truth(sim, "Account") if not r["IsDeleted"]][:3]
        phone = f"late commit, {deletes} deletes"  # a value of this test's own (the simulator is the module's)
        # A long transaction: its records are stamped now, it commits (and its events carry that commit time)
        # 1.5 s later, so the stream's version of these rows is newer than their SystemModstamp.
        late = (await sim_admin(sim, "POST", "/__sim/changes", {"visible_after_seconds": 1.5, "changes": [
            {"object": "Account", "type": "UPDATE", "ids": ids, "fields": {"Phone": phone}}]})).json()
        assert late["commit_timestamp"] is None
        in_list = ", ".join(f"'{i}'" for i in ids)
        await wait_for(lambda: pg_value(pg_url, f"SELECT count(*) = 3 FROM {schema}.account "
                                                f"WHERE phone = '{phone}' AND id IN ({in_list})"), timeout=30)
        # the resync's job is created a second after that commit or later: a row the job began after is absent
        # from its extract only when the extract lacks the record, and presence alone keeps these rows
        committed = await pg_value(pg_url, f"SELECT extract(epoch FROM max(_sf_version)) FROM {schema}.account "
                                           f"WHERE id IN ({in_list})")
        await wait_for(lambda: _after(float(committed) + 1), timeout=10)
        async with open_store(settings) as store:
            assert await store.request_resync("Account")  # what `replicator resync Account` does
        await wait_for(_object_state(pg_url, "resyncs >= 1 AND phase = 'STREAMING' AND NOT resync_requested"),
                       timeout=60)
        # the stream hands over to the resync it was asked for: no failure on the way
        failures = {s.labels["kind"]: s.value for m in service.metrics.errors.collect() for s in m.samples
                    if s.name == "replicator_errors_total" and s.value}
        assert failures == {}
        live = await pg_value(pg_url, f"SELECT count(*) FROM {schema}.account WHERE id IN ({in_list})"
                                      + (" AND NOT isdeleted" if deletes == "soft" else ""))
        assert live == 3, f"{3 - live} of the 3 live records the stream wrote were removed by the resync"
        # and the copy equals the org, SystemModstamp included: not the commit time, which change events carry, but
        # the time the records were saved (their LastModifiedDate)
        truth = await ground_truth(sim, "Account")
        if deletes == "hard":
            truth = [r for r in truth if not r["IsDeleted"]]
        assert await compare_with_truth(pg_url, schema, "Account", "Id", truth) == []
        async with salesforce_client(settings) as client, open_store(settings) as store:
            diff, _ = await verify_object(client, store, settings, "Account")
        assert diff.equal, diff


async def test_a_resync_resumed_after_a_crash_removes_only_the_rows_its_whole_extract_lacked(sim, pg_url):
    # The keys each page held commit with the page: a job stopped after some pages and resumed knows what its
    # committed pages held, and removes neither their records nor those of the pages loaded after the restart.
    settings = settings_for(sim, pg_url, "resumed", backfill={"page_size": 100, "parallel_pages": 1},
                            objects={"Account": {}})
    await run_backfills(settings, ["Account"])
    ghost = "001000000000GHOSTA"  # purged in the org while the stream was away
    conn = await asyncpg.connect(pg_url)
    await conn.execute("INSERT INTO resumed.account (id, name, isdeleted, systemmodstamp, _sf_synced_at) "
                       "VALUES ($1, 'purged', false, now() - interval '1 day', now() - interval '1 day')", ghost)
    pages = "SELECT count(*) FROM replicator.backfill_pages p JOIN replicator.objects o USING (object, job_id) " \
            "WHERE o.load_mode = 'upsert'"
    try:
        async with salesforce_client(settings) as client, open_store(settings) as store:
            await store.begin_resync("Account", "test: stopped after two pages, then resumed")
            await sim_admin(sim, "PUT", "/__sim/faults", {"latency_ms": 300})
            first = asyncio.create_task(Backfill(client, store, settings, "Account", settings.objects["Account"]).run())
            try:
                await wait_for(lambda: pg_value(pg_url, f"SELECT ({pages}) >= 2"), timeout=60)
            finally:
                first.cancel()
                await asyncio.gather(first, return_exceptions=True)
                await sim_admin(sim, "PUT", "/__sim/faults", {"latency_ms": 0})
            job = await conn.fetchval("SELECT job_id FROM replicator.objects WHERE object = 'Account'")
            assert 2 <= await conn.fetchval(pages) < 5, "the extract finished before it was stopped"
            await Backfill(client, store, settings, "Account", settings.objects["Account"]).run()
        assert await conn.fetchval("SELECT job_id FROM replicator.objects WHERE object = 'Account'") == job
        assert await conn.fetchval(pages) == 5
        assert await conn.fetchval("SELECT isdeleted FROM resumed.account WHERE id = $1", ghost) is True
        assert await conn.fetchval("SELECT count(*) FROM replicator.extract_keys") == 0  # forgotten when done
    finally:
        await conn.close()
    problems = await compare_with_truth(pg_url, "resumed", "Account", "Id", await ground_truth(sim, "Account"))
    assert problems == [f"Account {ghost}: extra"]  # the row stays as history, marked deleted (soft deletes)


async def test_a_resync_page_rewrites_a_tie_only_when_its_values_differ(pg_url):
    # Salesforce stamps whole seconds: an extract row in the second of the row's version may hold a change the
    # stream missed (it was away), and is written; one whose values are the row's already changes nothing, and is
    # left unwritten (the resync of a loaded object rewrote every row before: `python -m bench.resync_load`).
    describe = ObjectDescribe(name="Account", fields=(
        FieldSpec("Id", "id"), FieldSpec("Name", "string"), FieldSpec("Phone", "phone"),
        FieldSpec("IsDeleted", "boolean"), FieldSpec("SystemModstamp", "datetime")))
    spec = table_spec(describe, schema="ties")
    stamp = "2026-11-30T12:00:00.000Z"

    async def page(*phones: str):
        yield ("Id,Name,Phone,IsDeleted,SystemModstamp\n" + "".join(
            f"001000000000{n:03d}AAA,a,{p},false,{stamp}\n" for n, p in enumerate(phones))).encode()

    async with Store.open(pg_url, pool_size=2) as store:
        sink = store.page_sink(TableInfo(spec, version_column(spec), True, hard_deletes=False))
        await sink.prepare()
        await store.start_job("Account", "750000000000001AAA", "copy", 100)
        await sink.load_page("750000000000001AAA", "", "copy", page("1", "2"))
        conn = await asyncpg.connect(pg_url)
        try:
            before = dict(await conn.fetch("SELECT id, xmin::text FROM ties.account"))
            await store.start_job("Account", "750000000000002AAA", "upsert", 100)
            await sink.load_page("750000000000002AAA", "", "upsert", page("1", "2 changed in the same second"))
            assert await sink.remove_unseen() == 0
            after = {r["id"]: r for r in await conn.fetch("SELECT id, phone, isdeleted, xmin::text FROM ties.account")}
        finally:
            await conn.close()
    same, changed = "001000000000000AAA", "001000000000001AAA"
    assert after[same]["xmin"] == before[same] and after[same]["phone"] == "1"  # not written
    assert after[changed]["xmin"] != before[changed] and after[changed]["phone"] == "2 changed in the same second"
    assert not any(r["isdeleted"] for r in after.values())


async def test_verify_repair_brings_back_a_live_record_an_earlier_resync_marked_deleted(sim, pg_url):
    # What the removal by write time left behind (before it went by presence): a live record the stream wrote from a
    # late commit (its version, the commit time, after the SystemModstamp the org holds), marked deleted. The
    # extract's copy of the record is older by version, but the extract began after that commit: its live record
    # is the org's state, and `verify --repair` writes it.
    settings = settings_for(sim, pg_url, "damaged", objects={"Account": {}})
    await run_backfills(settings, ["Account"])
    damaged = [r["Id"] for r in await ground_truth(sim, "Account") if not r["IsDeleted"]][40]
    await pg_value(pg_url, "UPDATE damaged.account SET isdeleted = true, _sf_stream_position = '\\x01', "
                           "_sf_stream_version = systemmodstamp + interval '3 seconds' "
                           f"WHERE id = '{damaged}' RETURNING true")
    async with salesforce_client(settings) as client, open_store(settings) as store:
        diff, _ = await verify_object(client, store, settings, "Account")
        assert diff.examples.get("different") == [damaged]
        diff, fixed = await verify_object(client, store, settings, "Account", repair=True)
    assert diff.equal, (diff, fixed)
    assert await pg_value(pg_url, f"SELECT NOT isdeleted FROM damaged.account WHERE id = '{damaged}'")
