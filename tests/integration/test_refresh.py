"""The refresh of columns change events never carry (issue 12 §2): formula fields (Opportunity.Expected_Revenue__c)
and LastActivityDate/LastViewedDate. One UPDATE writes only the rows whose refreshed values differ, only those
columns; a row written after the refresh's job began is left for the next refresh; the service schedules it per
object and does not refresh again at a restart."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from prometheus_client import generate_latest

from replicator.app.commands import run_backfills, status_command
from replicator.app.ops_commands import refresh_command
from replicator.app.runtime import open_store, salesforce_client
from replicator.pipeline.refresh import refresh_object, seconds_until_due
from replicator.pipeline.verify import verify_object
from replicator.sim.server import SimulatorThread

from .helpers import ground_truth, pg_value, running_service, settings_for, sim_admin, wait_for

pytestmark = pytest.mark.slow  # the service and refresh extracts

OBJECTS = {"Account": {}, "Opportunity": {}, "Invoice__c": {"key": "External_Id__c"}}


@pytest.fixture(scope="module")
def sim():
    with SimulatorThread(records=400, seed=31, keepalive_seconds=0.2) as thread:
        yield thread.info


def _settings(sim, pg_url, schema, objects=OBJECTS, **sections):
    return settings_for(sim, pg_url, schema, salesforce={"pubsub_endpoint": sim["pubsub_endpoint"]},
                        stream={"batch_max_wait_s": 0.05}, objects=objects, **sections)


async def _verify(settings, name):
    async with salesforce_client(settings) as client, open_store(settings) as store:
        diff, _ = await verify_object(client, store, settings, name)
    return diff


async def _refresh(settings, name):
    async with salesforce_client(settings) as client, open_store(settings) as store:
        return await refresh_object(client, store, settings, name)


async def _live_ids(sim, obj, n):
    return [r["Id"] for r in await ground_truth(sim, obj) if not r["IsDeleted"]][:n]


async def test_refresh_writes_only_the_differing_refreshed_columns(sim, pg_url, capsys):
    settings = _settings(sim, pg_url, "refresh")
    assert all(not isinstance(r, BaseException) for r in (await run_backfills(settings, list(OBJECTS))).values())
    # the formula is replicated by the backfill
    truth = {r["Id"]: r for r in await ground_truth(sim, "Opportunity")}
    assert await pg_value(pg_url, "SELECT count(*) FROM refresh.opportunity WHERE expected_revenue__c IS NOT NULL") \
        == sum(1 for r in truth.values() if r["Expected_Revenue__c"] is not None) > 0
    accounts = await _live_ids(sim, "Account", 5)
    await sim_admin(sim, "POST", "/__sim/silent-changes", {"object": "Account", "ids": accounts[:3], "fields": {
        "LastViewedDate": "2026-11-30T12:00:00Z", "LastActivityDate": "2026-11-29"}})
    # stale formula values, a column the stream owns changed here (the refresh must leave it), and a row written
    # "after the job began" (its _sf_synced_at in the future): the refresh must leave it for the next one
    opps = sorted(i for i, r in truth.items() if r["Expected_Revenue__c"] is not None and not r["IsDeleted"])[:4]
    conn_sql = (f"UPDATE refresh.opportunity SET expected_revenue__c = -1 WHERE id IN ('{opps[0]}', '{opps[1]}');"
                f"UPDATE refresh.opportunity SET name = 'kept' WHERE id = '{opps[0]}';"
                f"UPDATE refresh.opportunity SET expected_revenue__c = -2, _sf_synced_at = now() + interval '1 hour'"
                f" WHERE id = '{opps[2]}'")
    for statement in conn_sql.split(";"):
        await pg_value(pg_url, statement)
    synced_before = await pg_value(pg_url, f"SELECT _sf_synced_at FROM refresh.opportunity WHERE id = '{opps[1]}'")
    assert not (await _verify(settings, "Account")).equal

    account = await _refresh(settings, "Account")
    assert account.columns == ["lastactivitydate", "lastvieweddate"]
    assert (account.rows_changed, account.rows_skipped) == (3, 0)
    assert account.rows_compared == len(await ground_truth(sim, "Account"))
    assert (await _verify(settings, "Account")).equal
    opp = await _refresh(settings, "Opportunity")
    assert "expected_revenue__c" in opp.columns and "name" not in opp.columns and "amount" not in opp.columns
    assert (opp.rows_changed, opp.rows_skipped) == (2, 1)
    assert await pg_value(pg_url, f"SELECT expected_revenue__c FROM refresh.opportunity WHERE id = '{opps[2]}'") == -2
    assert await pg_value(pg_url, f"SELECT name FROM refresh.opportunity WHERE id = '{opps[0]}'") == "kept"
    assert await pg_value(pg_url, f"SELECT _sf_synced_at FROM refresh.opportunity WHERE id = '{opps[1]}'") \
        == synced_before  # the refresh writes its columns only, not the stream's metadata
    assert float(await pg_value(pg_url, f"SELECT expected_revenue__c FROM refresh.opportunity WHERE id = '{opps[0]}'")) \
        == truth[opps[0]]["Expected_Revenue__c"]
    # run again: nothing differs but the skipped row, which still looks newer than the job
    again = await _refresh(settings, "Opportunity")
    assert (again.rows_changed, again.rows_skipped) == (0, 1)
    # Invoice__c has no formula field nor LastViewedDate: nothing to refresh, no job
    invoice = await _refresh(settings, "Invoice__c")
    assert invoice.columns == [] and invoice.job_id is None
    capsys.readouterr()
    assert await status_command(settings, as_json=True) == 0
    rows = {r["object"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["Opportunity"]["refresh_rows_changed"] == 0 and rows["Opportunity"]["refresh_rows_skipped"] == 1
    assert rows["Account"]["refresh_rows_changed"] == 3 and rows["Account"]["refreshed_at"]
    assert rows["Invoice__c"]["refreshed_at"] is None
    assert await refresh_command(settings, ["Account", "Invoice__c"]) == 0
    out = capsys.readouterr().out
    assert "Account: " in out and "0 changed" in out and "Invoice__c: nothing to refresh" in out


async def test_a_formula_field_added_after_the_backfill_gets_its_column_from_the_refresh(sim, pg_url):
    settings = _settings(sim, pg_url, "refresh_new", objects={"Opportunity": {}})
    assert all(not isinstance(r, BaseException) for r in (await run_backfills(settings, ["Opportunity"])).values())
    # a table built before formula fields were replicated
    await pg_value(pg_url, "ALTER TABLE refresh_new.opportunity DROP COLUMN expected_revenue__c")
    result = await _refresh(settings, "Opportunity")
    assert result.rows_changed == await pg_value(
        pg_url, "SELECT count(*) FROM refresh_new.opportunity WHERE expected_revenue__c IS NOT NULL") > 0
    assert (await _verify(settings, "Opportunity")).equal


def test_the_first_refresh_is_due_an_interval_after_the_last_stored_one():
    assert seconds_until_due(None, 86_400, now=1_000.0) == 0  # never refreshed: at once
    assert seconds_until_due(1_000.0, 86_400, now=1_000.0 + 3_600) == 86_400 - 3_600
    assert seconds_until_due(1_000.0, 60, now=2_000.0) == 0


async def test_service_refreshes_streamed_objects_on_schedule_and_not_again_at_restart(sim, pg_url):
    settings = _settings(sim, pg_url, "refresh_svc", objects={"Account": {"formula_refresh_s": 1.5}},
                         service={"control_poll_s": 0.2})
    async def refreshed():
        return await pg_value(pg_url, "SELECT refreshes >= 1 FROM replicator.refreshes"
                                      " WHERE object = 'Account' AND finished_at IS NOT NULL")
    async with running_service(settings, until=refreshed) as svc:
        ids = await _live_ids(sim, "Account", 2)
        await sim_admin(sim, "POST", "/__sim/silent-changes", {"object": "Account", "ids": ids, "fields": {
            "LastViewedDate": "2026-11-30T13:14:15Z"}})
        await wait_for(lambda: pg_value(pg_url, "SELECT count(*) = 2 FROM refresh_svc.account WHERE lastvieweddate ="
                                                " '2026-11-30T13:14:15Z'"), timeout=60)
        await wait_for(lambda: _refresh_metrics(svc), timeout=30)
    assert (await _verify(settings, "Account")).equal
    # a restart with a long interval: the stored refresh counts, so none is due until a day after it
    count = await pg_value(pg_url, "SELECT refreshes FROM replicator.refreshes WHERE object = 'Account'")
    settings = _settings(sim, pg_url, "refresh_svc", objects={"Account": {"formula_refresh_s": 86_400}},
                         service={"control_poll_s": 0.2})
    async with running_service(settings) as svc:
        # the schedule has read the stored refresh (its gauge is set from it) and waits a day from it
        await wait_for(lambda: _due_in_a_day(svc), timeout=30)
    assert await pg_value(pg_url, "SELECT refreshes FROM replicator.refreshes WHERE object = 'Account'") == count


async def _refresh_metrics(svc) -> bool:
    text = generate_latest(svc.metrics.registry).decode()
    return ('replicator_refresh_rows_changed_total{object="Account"} 2.0' in text
            and 'replicator_refresh_last_timestamp_seconds{object="Account"}' in text)


async def _due_in_a_day(svc, name: str = "Account") -> bool:
    health, now = svc.metrics.object(name), dt.datetime.now(dt.UTC).timestamp()
    return health.refreshed_at is not None and health.refresh_due_at is not None \
        and health.refresh_due_at > now + 86_400 - 600


async def test_a_finished_backfill_counts_as_a_refresh_so_none_follows_it_at_once(sim, pg_url):
    """The extract read the formula and eventless columns too: stored as the last refresh (its job, no row
    changed), the next refresh is due a day later, and no refresh job follows the backfill."""
    settings = _settings(sim, pg_url, "refresh_bf", objects={"Opportunity": {}, "Invoice__c": {}},
                         service={"control_poll_s": 0.2})
    jobs_before = {j["id"] for j in (await sim_admin(sim, "GET", "/__sim/jobs")).json()}
    async with running_service(settings) as svc:
        await wait_for(lambda: _due_in_a_day(svc, "Opportunity"), timeout=30)
    backfill_job = await pg_value(pg_url, "SELECT job_id FROM replicator.objects WHERE object = 'Opportunity'")
    assert await pg_value(pg_url, "SELECT job_id || ' ' || refreshes || ' ' || rows_changed || ' ' || rows_compared"
                                  " FROM replicator.refreshes WHERE object = 'Opportunity'") == \
        f"{backfill_job} 0 0 {await pg_value(pg_url, 'SELECT count(*) FROM refresh_bf.opportunity')}"
    # Invoice__c has nothing to refresh: no refresh stored
    assert await pg_value(pg_url, "SELECT count(*) FROM replicator.refreshes WHERE object = 'Invoice__c'") == 0
    jobs = {j["id"] for j in (await sim_admin(sim, "GET", "/__sim/jobs")).json()} - jobs_before
    backfills = {await pg_value(pg_url, f"SELECT job_id FROM replicator.objects WHERE object = '{n}'")
                 for n in ("Opportunity", "Invoice__c")}
    assert jobs == backfills  # no refresh job
