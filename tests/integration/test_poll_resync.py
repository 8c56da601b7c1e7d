"""A polled object extracted again while the service runs (issue 18, defects 5 and 10): at an operator's request
(`replicator resync`), and for a field added in the org; either way it ends equal to the org and rounds go on."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from replicator.sim.server import SimulatorThread

from .helpers import (
    all_equal,
    config_toml,
    ground_truth,
    pg_value,
    running_service,
    settings_for,
    sim_admin,
    wait_for,
)

pytestmark = pytest.mark.slow  # the service


@pytest.fixture(scope="module")
def sim():
    with SimulatorThread(records=150, seed=10) as thread:
        yield thread.info


def _settings(sim, pg_url, schema, **poll):
    return settings_for(sim, pg_url, schema, salesforce={"pubsub_endpoint": sim["pubsub_endpoint"]},
                        service={"control_poll_s": 0.1}, poll={"lookback_s": 2, **poll},
                        objects={"Task": {"mode": "poll", "poll_interval_s": 0.3}})


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "replicator.cli", "--log-json", *args], env=dict(os.environ),
                          capture_output=True, text=True, timeout=120)


async def _live(sim) -> list[str]:
    return [r["Id"] for r in await ground_truth(sim, "Task") if not r["IsDeleted"]]


async def test_a_requested_resync_of_a_polled_object_runs_and_polling_goes_on(sim, pg_url, tmp_path):
    settings = _settings(sim, pg_url, "rs_poll")
    cfg = tmp_path / "rs_poll.toml"
    cfg.write_text(config_toml(sim, pg_url, "rs_poll").split("[objects.")[0] + '[objects.Task]\nmode = "poll"\n')
    async with running_service(settings) as svc:
        lost = (await _live(sim))[0]
        await pg_value(pg_url, f"DELETE FROM rs_poll.task WHERE id = '{lost}'")  # a row no round reads again
        out = _cli("resync", "--config", str(cfg), "Task")
        assert out.returncode == 0 and "resync requested" in out.stdout, out.stdout + out.stderr
        await wait_for(lambda: pg_value(pg_url, f"SELECT count(*) = 1 FROM rs_poll.task WHERE id = '{lost}'"),
                       timeout=30)
        await wait_for(lambda: pg_value(pg_url, "SELECT phase = 'STREAMING' AND resyncs = 1 AND NOT resync_requested"
                                                " AND last_resync_reason LIKE '%operator%' FROM replicator.objects"
                                                " WHERE object = 'Task'"), timeout=30)
        assert svc.metrics.resyncs.labels(object="Task")._value.get() == 1
        changed = (await _live(sim))[1]
        await sim_admin(sim, "POST", "/__sim/changes", [
            {"object": "Task", "type": "UPDATE", "ids": [changed], "fields": {"Subject": "after the resync"}}])
        await wait_for(lambda: pg_value(pg_url, f"SELECT subject = 'after the resync' FROM rs_poll.task"
                                                f" WHERE id = '{changed}'"), timeout=30)
        assert await all_equal(settings)


async def _set_new_field(sim, name: str, value: str) -> list[str]:
    """A custom field added to Task in the org, then set on three records; their Ids."""
    r = await sim_admin(sim, "POST", "/__sim/schema/Task/fields", {"name": name, "type": "string"})
    assert r.status_code == 200, r.text
    ids = (await _live(sim))[2:5]
    await sim_admin(sim, "POST", "/__sim/changes", [
        {"object": "Task", "type": "UPDATE", "ids": ids, "fields": {name: value}}])
    return ids


async def test_a_field_added_while_polling_is_read_and_its_earlier_values_filled(sim, pg_url):
    settings = _settings(sim, pg_url, "fld_live", describe_interval_s=0.5)
    async with running_service(settings):
        ids = await _set_new_field(sim, "Score__c", "gold")
        await wait_for(lambda: pg_value(pg_url, "SELECT count(*) = 3 FROM fld_live.task WHERE score__c = 'gold'"),
                       timeout=30)
        assert sorted(await _ids(pg_url, "fld_live", "score__c = 'gold'")) == sorted(ids)
        later = (await _live(sim))[6]  # read by the rounds from now on
        await sim_admin(sim, "POST", "/__sim/changes", [
            {"object": "Task", "type": "UPDATE", "ids": [later], "fields": {"Score__c": "silver"}}])
        await wait_for(lambda: pg_value(pg_url, f"SELECT score__c = 'silver' FROM fld_live.task WHERE id = '{later}'"),
                       timeout=30)
        assert await all_equal(settings)


async def test_a_field_added_before_a_restart_has_its_earlier_values_filled_after_it(sim, pg_url):
    """The field is added and set while the service runs (its rounds read those records, without the field, and
    move past them), then the service restarts: the values set before are filled all the same."""
    settings = _settings(sim, pg_url, "fld_restart")  # describe_interval_s: the default, longer than this test
    async with running_service(settings):
        await _set_and_polled_past(sim, pg_url, "Tier__c", "gold")
    async with running_service(settings):
        await wait_for(lambda: pg_value(pg_url, "SELECT count(*) = 3 FROM fld_restart.task WHERE tier__c = 'gold'"),
                       timeout=30)
        assert await all_equal(settings)


async def _set_and_polled_past(sim, pg_url, name: str, value: str) -> None:
    """`_set_new_field`, then wait until the rounds have read past those records, lookback (2 s) included: no round
    after a restart reads them again."""
    ids = await _set_new_field(sim, name, value)
    stamp = max(r["SystemModstamp"] for r in await ground_truth(sim, "Task") if r["Id"] in ids)
    await wait_for(lambda: pg_value(pg_url, "SELECT poll_systemmodstamp >= '" + stamp + "'::timestamptz AND"
                                            " poll_deleted_through > '" + stamp + "'::timestamptz + interval '3 s'"
                                            " FROM replicator.checkpoints WHERE topic = 'poll:Task'"), timeout=30)


async def _ids(pg_url: str, schema: str, where: str) -> list[str]:
    import asyncpg

    conn = await asyncpg.connect(pg_url)
    try:
        return [r[0] for r in await conn.fetch(f"SELECT id FROM {schema}.task WHERE {where}")]
    finally:
        await conn.close()


async def test_a_field_whose_column_another_path_added_first_still_has_its_earlier_values_filled(sim, pg_url):
    """As above, but before the restart another path adds the column: a refresh or a verify --repair (each
    prepares the table from a fresh describe), or a channel describing the object as it joins. The poller then
    finds no column missing, the only sign it had of a field added: the values set before were never read (the
    transitions bench, seed 16008: a channel's joiners described while the allocation was used up). Adding a field's
    column to a polled object's table now requests its resync, whoever adds it."""
    from replicator.app.runtime import open_store, salesforce_client
    from replicator.pipeline.schema import object_table

    settings = _settings(sim, pg_url, "fld_other")
    async with running_service(settings):
        await _set_and_polled_past(sim, pg_url, "Rank__c", "gold")
    async with salesforce_client(settings) as client, open_store(settings) as store:  # another path, first
        table = object_table(await client.describe("Task"), settings.postgres.schema_, settings.objects["Task"], None)
        await store.page_sink(table).prepare()
    async with running_service(settings):
        await wait_for(lambda: pg_value(pg_url, "SELECT count(*) = 3 FROM fld_other.task WHERE rank__c = 'gold'"),
                       timeout=30)
        assert await all_equal(settings)
