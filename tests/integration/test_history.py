"""History tables (docs/history.md): every committed change of a record is one full version, written with the
batch that applies it; `verify --history` finds the current versions equal to the rows and the intervals whole."""

from __future__ import annotations

import datetime as dt
import os
import signal
import sys

import asyncpg
import pytest

from replicator.app.commands import verify_command
from replicator.sim.server import SimulatorThread

from .helpers import (
    finish,
    ground_truth,
    pg_value,
    running_service,
    settings_for,
    sim_admin,
    start_logged,
    wait_for,
)

pytestmark = pytest.mark.slow  # the service and `replicator run` subprocesses

OBJECTS = {"Account": {"history": True}, "Contact": {"history": True, "deletes": "hard"},
           "Opportunity": {"history": True, "mode": "poll", "poll_interval_s": 0.2},
           "Invoice__c": {"history": True, "key": "External_Id__c"}}


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
    async with running_service(_settings(sim, pg_url, "hist")) as svc:
        yield svc


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


async def _history_equal(sim, pg_url, names=("Account", "Contact", "Opportunity", "Invoice__c")):
    from replicator.app.runtime import open_store, salesforce_client
    from replicator.pipeline.verify import verify_history

    settings = _settings(sim, pg_url, "hist", history={"default": True})
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
    assert versions[2]["_valid_from"] >= versions[1]["_valid_to"]  # a hole while the record was gone
    assert await _history_equal(sim, pg_url) == {n: {"current": [], "intervals": []}
                                                  for n in ("Account", "Contact", "Opportunity", "Invoice__c")}


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
    # the first load went without the history's indexes (postgres/history.py drop_indexes): built at its end
    assert await _history_indexes(pg_url, "ft") == ["account__history_closed", "account__history_version"]


def _history_indexes(pg_url, schema):
    return pg_value(pg_url, f"SELECT coalesce(array_agg(indexname::text ORDER BY indexname), '{{}}') FROM pg_indexes "
                            f"WHERE schemaname = '{schema}' AND tablename = 'account__history'")


async def test_a_first_load_killed_without_the_history_indexes_gets_them_back_and_each_version_once(sim, pg_url,
                                                                                                   tmp_path):
    """A first load into a history table with no version goes without its indexes; `replicator backfill`
    SIGKILLed after a page: the next run makes them again before it resumes the job, which ends with one version
    per record, none twice, and verify --history equal."""
    cfg = tmp_path / "load.toml"
    cfg.write_text("\n".join([
        "[salesforce]", f'instance_url = "{sim["instance_url"]}"', f'client_id = "{sim["client_id"]}"',
        f'ca_file = "{sim["ca_file"]}"', "[postgres]", f'url = "{pg_url}"', 'schema = "ix"',
        "[backfill]", "poll_max_s = 0.2", "page_size = 100", "parallel_pages = 1",
        "[objects.Account]", "history = true"]) + "\n")
    env = dict(os.environ, REPLICATOR_SALESFORCE__CLIENT_SECRET=sim["client_secret"])
    args = [sys.executable, "-m", "replicator.cli", "--log-json", "backfill", "--config", str(cfg), "Account"]
    pages = "SELECT count(*) FROM replicator.backfill_pages WHERE object = 'Account'"

    async def one_page():
        return (await pg_value(pg_url, pages) or 0) >= 1

    await sim_admin(sim, "PUT", "/__sim/faults", {"latency_ms": 400})  # the second page comes after the kill
    try:
        proc = start_logged(args, env)
        try:
            await wait_for(one_page, timeout=60)
        finally:
            proc.send_signal(signal.SIGKILL)
            finish(proc, 30)
    finally:
        await sim_admin(sim, "PUT", "/__sim/faults", {"latency_ms": 0})
    assert await pg_value(pg_url, pages) == 1, "the load ended before the kill"
    assert await pg_value(pg_url, "SELECT count(*) FROM ix.account__history") == \
        await pg_value(pg_url, "SELECT count(*) FROM ix.account") == 100
    assert await _history_indexes(pg_url, "ix") == []
    proc = start_logged(args, env)
    err = finish(proc, 120)
    assert proc.returncode == 0, err[-3000:]
    assert await _history_indexes(pg_url, "ix") == ["account__history_closed", "account__history_version"]
    rows = await pg_value(pg_url, "SELECT count(*) FROM ix.account")
    assert rows == len(await ground_truth(sim, "Account"))
    assert await pg_value(pg_url, "SELECT count(DISTINCT id) FROM ix.account__history WHERE _is_current") == \
        await pg_value(pg_url, "SELECT count(*) FROM ix.account__history") == rows
    settings = settings_for(sim, pg_url, "ix", objects={"Account": {"history": True}})
    assert await verify_command(settings, ["Account"], history=True) == 0


async def test_a_resync_of_a_record_in_its_versions_second_writes_into_that_version(sim, pg_url, service):
    """A resync's row stamped with the current version's own SystemModstamp, but other values (a field Salesforce
    changes without an event, here LastViewedDate set before the update): the record did not change since that
    version, so its values go into it, as the refresh's do. Before: a resync version at the same time with an
    empty position, sorted before the update version it followed: verify --history found the intervals broken (the
    chaos bench with history, GAP_OVERFLOW's resync after the overflowing transaction's first events)."""
    from replicator.app.ops_commands import resync_command

    acc = (await _live_ids(sim, "Account", 16))[15]
    await sim_admin(sim, "POST", "/__sim/silent-changes", {"object": "Account", "ids": [acc],
                                                           "fields": {"LastViewedDate": "2026-01-02T03:04:05.000Z"}})
    await _changes(sim, [{"object": "Account", "type": "UPDATE", "ids": [acc], "fields": {"Phone": "tie"}}])
    await wait_for(lambda: pg_value(pg_url, f"SELECT phone = 'tie' FROM hist.account WHERE id = '{acc}'"), timeout=30)
    assert await pg_value(pg_url, f"SELECT lastvieweddate IS NULL OR lastvieweddate <> '2026-01-02T03:04:05Z' "
                                  f"FROM hist.account WHERE id = '{acc}'")
    assert await resync_command(_settings(sim, pg_url, "hist"), ["Account"]) == 0
    await wait_for(lambda: pg_value(pg_url, "SELECT resyncs = 1 AND phase = 'STREAMING' AND NOT resync_requested "
                                      "FROM replicator.objects WHERE object = 'Account'"), timeout=60)
    assert await pg_value(pg_url, f"SELECT lastvieweddate = '2026-01-02T03:04:05Z' FROM hist.account "
                                  f"WHERE id = '{acc}'")
    versions = await _versions(pg_url, "hist", acc, "phone, lastvieweddate")
    assert [(v["_op"], v["phone"], v["_is_current"]) for v in versions][1:] == [("update", "tie", True)]
    assert versions[1]["lastvieweddate"] == dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    assert (await _history_equal(sim, pg_url, ["Account"]))["Account"] == {"current": [], "intervals": []}


async def test_a_first_load_whose_job_failed_loads_again_with_the_history_indexes(sim, pg_url):
    """The first job of a first load fails: its history's indexes (dropped for the load) are built before the next
    job, which goes through the upsert (it may overlap what the first loaded) and so through the indexed path."""
    from replicator.app.commands import run_backfills

    settings = settings_for(sim, pg_url, "jf", objects={"Account": {"history": True}}, backfill={"job_retries": 1})
    await sim_admin(sim, "PUT", "/__sim/faults", {"fail_jobs": 1, "fail_jobs_object": "Account"})
    try:
        results = await run_backfills(settings, ["Account"])
    finally:
        await sim_admin(sim, "PUT", "/__sim/faults", {"fail_jobs": 0, "fail_jobs_object": ""})
    assert not isinstance(results["Account"], BaseException), results["Account"]
    assert await _history_indexes(pg_url, "jf") == ["account__history_closed", "account__history_version"]
    assert await pg_value(pg_url, "SELECT count(*) FROM jf.account__history WHERE _is_current") == \
        await pg_value(pg_url, "SELECT count(*) FROM jf.account") > 0
    assert await verify_command(settings, ["Account"], history=True) == 0


async def test_switching_the_validity_column_names_renames_them_in_place(sim, pg_url):
    """`history.columns` switched after `<table>__history` exists: its three validity columns are renamed in place
    and the as-of function made again, once, logged; the versions stay, and switching back renames them back."""
    from replicator.app.commands import backfill_command

    def settings(columns):
        return settings_for(sim, pg_url, "sw", salesforce={"pubsub_endpoint": sim["pubsub_endpoint"]},
                            objects={"Account": {"history": True}}, history={"columns": columns})

    def names():
        return pg_value(pg_url, "SELECT string_agg(column_name, ',' ORDER BY column_name) FROM "
                                "information_schema.columns WHERE table_schema = 'sw' AND table_name = "
                                "'account__history' AND column_name ~ '^_(valid|is_current|fivetran)'")

    assert await backfill_command(settings("replicator"), ["Account"]) == 0
    versions = await pg_value(pg_url, "SELECT count(*) FROM sw.account__history")
    assert versions == await pg_value(pg_url, "SELECT count(*) FROM sw.account") > 0
    assert await backfill_command(settings("fivetran"), ["Account"]) == 0
    assert await names() == "_fivetran_active,_fivetran_end,_fivetran_start"
    assert await pg_value(pg_url, "SELECT count(*) FROM sw.account__history WHERE _fivetran_active") == versions
    assert await pg_value(pg_url, "SELECT count(*) FROM sw.account__as_of(now())") == versions
    # back, by the first command an operator may run: verify --history
    assert await verify_command(settings("replicator"), ["Account"], history=True) == 0
    assert await names() == "_is_current,_valid_from,_valid_to"
    assert await pg_value(pg_url, "SELECT count(*) FROM sw.account__as_of(now())") == versions
    assert await pg_value(pg_url, "SELECT count(*) FROM sw.account__history") == versions
    # a naming neither whole (renamed by hand): a configuration error, nothing guessed
    await pg_value(pg_url, "ALTER TABLE sw.account__history RENAME COLUMN _valid_to TO valid_to")
    assert await backfill_command(settings("fivetran"), ["Account"]) == 2
    assert await names() == "_is_current,_valid_from"


async def test_a_resync_adds_versions_only_for_rows_that_changed(sim, pg_url):
    settings = _settings(sim, pg_url, "hist")
    await sim_admin(sim, "PUT", "/__sim/faults", {"purge_before_now": True})  # earlier tests' events: gone
    async with running_service(settings):
        await wait_for(lambda: pg_value(pg_url, "SELECT count(*) >= 3 FROM replicator.checkpoints "
                                          "WHERE topic LIKE '/data/%'"), timeout=30)
    acc, gone = (await _live_ids(sim, "Account", 11))[4:11:6]
    await _changes(sim, [{"object": "Account", "type": "UPDATE", "ids": [acc], "fields": {"Phone": "missed"}}])
    await _changes(sim, [{"object": "Account", "type": "HARD_DELETE", "ids": [gone]}])
    await sim_admin(sim, "PUT", "/__sim/faults", {"purge_before_now": True})  # the stream cannot replay them
    async with running_service(settings, until=lambda: pg_value(pg_url, "SELECT phone = 'missed' FROM hist.account"
                                                                       f" WHERE id = '{acc}'"), timeout=60):
        assert await pg_value(pg_url, "SELECT resyncs FROM replicator.objects WHERE object = 'Account'") == 1
    assert [v["_op"] for v in await _versions(pg_url, "hist", acc)] == ["backfill", "resync"]
    # the record that left the org unseen: its last version stays as it lived, a deleted one follows it
    removed = await _versions(pg_url, "hist", gone)
    assert [(v["_op"], v["isdeleted"]) for v in removed] == [("backfill", False), ("resync", True)]
    assert removed[1]["_valid_from"] > removed[0]["_valid_from"]
    assert await pg_value(pg_url, "SELECT (SELECT count(*) FROM hist.account__history WHERE _op = 'resync') + "
                                  "(SELECT count(*) FROM hist.contact__history WHERE _op = 'resync') + "
                                  "(SELECT count(*) FROM hist.invoice__c__history WHERE _op = 'resync')") == 2
    assert (await _history_equal(sim, pg_url, ["Account", "Contact"])) == {
        "Account": {"current": [], "intervals": []}, "Contact": {"current": [], "intervals": []}}


async def test_keys_two_records_swap_in_one_transaction_keep_their_histories(sim, pg_url, service):
    invoices = [r for r in await ground_truth(sim, "Invoice__c") if not r["IsDeleted"] and r["External_Id__c"]][:2]
    (a, ka), (b, kb) = [(r["Id"], r["External_Id__c"]) for r in invoices]
    await _changes(sim, [{"object": "Invoice__c", "type": "UPDATE", "ids": [a], "fields": {"External_Id__c": kb}},
                         {"object": "Invoice__c", "type": "UPDATE", "ids": [b], "fields": {"External_Id__c": ka}}])
    await wait_for(lambda: pg_value(pg_url, f"SELECT external_id__c = '{kb}' FROM hist.invoice__c WHERE id = '{a}'"),
                   timeout=30)
    for record_id, key in ((a, kb), (b, ka)):
        assert await pg_value(pg_url, f"SELECT external_id__c FROM hist.invoice__c__history WHERE id = '{record_id}' "
                                      "AND _is_current") == key
    assert (await _history_equal(sim, pg_url, ["Invoice__c"]))["Invoice__c"] == {"current": [], "intervals": []}


async def test_the_service_prunes_versions_past_retention_when_it_starts(sim, pg_url):
    settings = _settings(sim, pg_url, "hist", history={"retention_days": 30})

    async def run_until(predicate):
        async with running_service(settings, until=predicate, timeout=60):
            pass

    acc = (await _live_ids(sim, "Account", 6))[5]

    async def changed():
        if await pg_value(pg_url, "SELECT count(*) = 4 FROM replicator.objects WHERE phase = 'STREAMING'"):
            await _changes(sim, [{"object": "Account", "type": "UPDATE", "ids": [acc], "fields": {"Phone": "old"}}])
            return True
        return False

    await run_until(changed)
    await run_until(lambda: pg_value(pg_url, f"SELECT phone = 'old' FROM hist.account WHERE id = '{acc}'"))
    assert await pg_value(pg_url, "UPDATE hist.account__history SET _valid_to = _valid_to - interval '40 days', "
                                  "_valid_from = _valid_from - interval '40 days' WHERE NOT _is_current "
                                  "RETURNING 1") == 1
    await run_until(lambda: pg_value(pg_url, "SELECT count(*) = 0 FROM hist.account__history WHERE NOT _is_current"))


async def test_verify_history_finds_a_wrong_current_version_and_overlapping_versions(sim, pg_url, service):
    acc, other = (await _live_ids(sim, "Account", 13))[11:13]
    await _changes(sim, [{"object": "Account", "type": "UPDATE", "ids": [other], "fields": {"Phone": "o"}}])
    await wait_for(lambda: pg_value(pg_url, f"SELECT phone = 'o' FROM hist.account WHERE id = '{other}'"), timeout=30)
    await pg_value(pg_url, f"UPDATE hist.account__history SET phone = 'wrong' WHERE id = '{acc}' AND _is_current")
    await pg_value(pg_url, f"UPDATE hist.account__history SET _valid_to = _valid_to + interval '1 second' "
                           f"WHERE id = '{other}' AND NOT _is_current")
    assert (await _history_equal(sim, pg_url, ["Account"]))["Account"] == {"current": [acc], "intervals": [other]}
    assert await verify_command(_settings(sim, pg_url, "hist"), ["Account"], history=True) == 1


async def test_a_channel_batch_writes_each_members_versions(sim, pg_url):
    settings = settings_for(sim, pg_url, "chan", salesforce={"pubsub_endpoint": sim["pubsub_endpoint"]},
                            stream={"batch_max_wait_s": 0.05, "channel": "/data/ChangeEvents"},
                            objects={"Account": {"history": True}, "Contact": {"history": True}})
    async with running_service(settings):
        acc, con = (await _live_ids(sim, "Account", 14))[13], (await _live_ids(sim, "Contact", 3))[2]
        await _changes(sim, [{"object": "Account", "type": "UPDATE", "ids": [acc], "fields": {"Phone": "c1"}},
                             {"object": "Contact", "type": "UPDATE", "ids": [con], "fields": {"Phone": "c1"}},
                             {"object": "Account", "type": "UPDATE", "ids": [acc], "fields": {"Phone": "c2"}}])
        await wait_for(lambda: pg_value(pg_url, f"SELECT phone = 'c2' FROM chan.account WHERE id = '{acc}'"),
                       timeout=30)
    assert [v["phone"] for v in await _versions(pg_url, "chan", acc)][1:] == ["c1", "c2"]
    assert [v["phone"] for v in await _versions(pg_url, "chan", con, table="contact")][1:] == ["c1"]
