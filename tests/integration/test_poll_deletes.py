"""getDeleted answering EXCEEDED_ID_LIMIT (more than 600,000 deletes in the window; "sObject Get Deleted", REST API
Developer Guide) must not stop a polled object (issue 18, defect 6): the window is split, down to a minute, then
the key reconciliation finds what was deleted; and a delete read that fails never keeps a round from its changes.
The simulator's limit is lowered (PUT /__sim/limits replication_id_limit) so a few deletes reach it."""

from __future__ import annotations

import pytest

from replicator.app.runtime import open_store, salesforce_client
from replicator.config import ServiceSettings
from replicator.model import JobFailedError
from replicator.pipeline.backfill import Backfill
from replicator.pipeline.poll import ObjectPoller
from replicator.sim.server import SimulatorThread

from .helpers import all_equal, ground_truth, pg_value, settings_for, sim_admin

LIMIT = 4


@pytest.fixture
def sim():
    """One per test: each test's deletes must be the only ones in getDeleted's recent windows."""
    with SimulatorThread(records=120, seed=6) as thread:
        yield thread.info


def _settings(sim, pg_url, schema, deletes="soft"):
    return settings_for(sim, pg_url, schema, poll={"page_size": 60, "lookback_s": 0},
                        objects={"Task": {"mode": "poll", "poll_interval_s": 0.3, "deletes": deletes}})


async def _polled(settings, client, store) -> ObjectPoller:
    poller = ObjectPoller(client, store, settings, "Task", settings.objects["Task"])
    await poller.capture_position()
    await Backfill(client, store, settings, "Task", settings.objects["Task"]).run()
    await store.set_phase("Task", "STREAMING")
    await poller.prepare()
    return poller


async def _too_many_deletes(sim, pg_url) -> tuple[list[str], str]:
    """LIMIT + 1 records hard-deleted and one changed, getDeleted's limit lowered to LIMIT, and the window begun 30
    minutes ago (so it can be split). Returns (deleted Ids, changed Id)."""
    live = [r["Id"] for r in await ground_truth(sim, "Task") if not r["IsDeleted"]]
    gone, changed = live[:LIMIT + 1], live[LIMIT + 1]
    await sim_admin(sim, "POST", "/__sim/changes", [
        {"object": "Task", "type": "HARD_DELETE", "ids": gone},
        {"object": "Task", "type": "UPDATE", "ids": [changed], "fields": {"Subject": "beside many deletes"}}])
    await sim_admin(sim, "PUT", "/__sim/limits", {"replication_id_limit": LIMIT})
    await pg_value(pg_url, "UPDATE replicator.checkpoints SET poll_deleted_through = now() - interval '30 minutes'"
                           " WHERE topic = 'poll:Task' RETURNING true")
    return gone, changed


@pytest.mark.parametrize("deletes", ["soft", "hard"])
async def test_more_deletes_than_get_deleted_answers_are_read_all_the_same(sim, pg_url, deletes):
    settings = _settings(sim, pg_url, "del_limit", deletes)
    async with salesforce_client(settings) as client, open_store(settings) as store:
        poller = await _polled(settings, client, store)
        gone, changed = await _too_many_deletes(sim, pg_url)
        await poller.round()
        assert poller.reconciliations == 1  # the last minute alone held too many: the key reconciliation
    assert await pg_value(pg_url, f"SELECT subject FROM del_limit.task WHERE id = '{changed}'") == \
        "beside many deletes"
    listed = ", ".join(f"'{g}'" for g in gone)
    kept = "isdeleted" if deletes == "soft" else "true"
    assert await pg_value(pg_url, f"SELECT count(*) FILTER (WHERE NOT {kept}) FROM del_limit.task"
                                  f" WHERE id IN ({listed})") == 0
    assert await pg_value(pg_url, "SELECT poll_deleted_through > now() - interval '1 minute' FROM"
                                  " replicator.checkpoints WHERE topic = 'poll:Task'")
    assert await all_equal(settings)


async def test_a_failing_delete_read_does_not_keep_a_round_from_its_changes(sim, pg_url):
    settings = _settings(sim, pg_url, "del_fail")
    async with salesforce_client(settings) as client, open_store(settings) as store:
        poller = await _polled(settings, client, store)
        gone, changed = await _too_many_deletes(sim, pg_url)
        await sim_admin(sim, "PUT", "/__sim/faults", {"fail_jobs": 1})  # the reconciliation's extract fails
        with pytest.raises(JobFailedError):  # the supervisor retries the object
            await poller.round()
        assert await pg_value(pg_url, f"SELECT subject FROM del_fail.task WHERE id = '{changed}'") == \
            "beside many deletes"
        await poller.round()  # the next round reconciles
        assert poller.reconciliations == 1
    assert await all_equal(settings)


async def test_a_reconciliation_slower_than_the_idle_bound_between_its_requests_still_commits(sim, pg_url):
    """The key reconciliation reads the extract's pages and asks the org for recent Ids (`present`): network calls,
    each as slow as Salesforce is. The service's sessions end a transaction idle for `service.lease_s`
    (postgres/store.py `Store.open`: a paused process must not keep its unit), so no network call may wait inside
    a write transaction: here every Salesforce request takes longer than that bound and the reconciliation (two
    result pages) still commits (it failed with the session ended, and would on every retry)."""
    settings = _settings(sim, pg_url, "del_slow").model_copy(update={"service": ServiceSettings(lease_s=1)})
    async with salesforce_client(settings) as client, open_store(settings) as store:
        poller = await _polled(settings, client, store)
        live = [r["Id"] for r in await ground_truth(sim, "Task") if not r["IsDeleted"]]
        await sim_admin(sim, "POST", "/__sim/changes", [{"object": "Task", "type": "HARD_DELETE", "ids": live[:3]}])
        await sim_admin(sim, "PUT", "/__sim/faults", {"latency_ms": 1100})
        assert await poller.reconcile() == 3
        await sim_admin(sim, "PUT", "/__sim/faults", {"latency_ms": 0})
    listed = ", ".join(f"'{g}'" for g in live[:3])
    assert await pg_value(pg_url, f"SELECT count(*) FILTER (WHERE isdeleted) FROM del_slow.task"
                                  f" WHERE id IN ({listed})") == 3
    assert await all_equal(settings)
