"""Where a polled object's position comes from (issue 18, defect 7): always Salesforce's time with its hold-back
(getDeleted's `latestDateCovered`, held back to the start of a transaction still in flight), never this host's
clock. Each test holds a transaction in flight (`visible_after_seconds`) across the moment a position is set, with
no lookback at all, and proves the late commit is read once it commits."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest

from replicator.app.runtime import open_store, salesforce_client
from replicator.pipeline.backfill import Backfill
from replicator.pipeline.poll import ObjectPoller
from replicator.sim.server import SimulatorThread

from .helpers import ground_truth, pg_value, settings_for, sim_admin, wait_for

pytestmark = pytest.mark.slow  # polls against the simulator

LATE_S = 5  # long enough that the position is surely set while the transaction is in flight


@pytest.fixture(scope="module")
def sim():
    with SimulatorThread(records=200, seed=18) as thread:
        yield thread.info


def _settings(sim, pg_url, schema):
    return settings_for(sim, pg_url, schema, poll={"page_size": 60, "lookback_s": 0},
                        objects={"Task": {"mode": "poll", "poll_interval_s": 0.3}})


async def _live_task(sim, index: int) -> str:
    """A live Task of its own per test: a late transaction of one test holds its record's row lock a while."""
    return [r["Id"] for r in await ground_truth(sim, "Task") if not r["IsDeleted"]][index]


async def _begin_late(sim, rid: str, subject: str) -> int:
    """An update of `rid` stamped now and committed LATE_S seconds later; its SystemModstamp (epoch ms), once this
    host's clock is a second past it (so a position from this clock would be after it)."""
    pending = (await sim_admin(sim, "POST", "/__sim/changes", {"visible_after_seconds": LATE_S, "changes": [
        {"object": "Task", "type": "UPDATE", "ids": [rid], "fields": {"Subject": subject}}]})).json()
    stamp = pending["system_modstamp"]
    await wait_for(lambda: _after(stamp + 1000), timeout=5)
    return stamp


async def _after(ms: float) -> bool:
    return time.time() * 1000 >= ms


async def _committed(sim, rid: str, subject: str) -> bool:
    return any(r["Id"] == rid and r["Subject"] == subject for r in await ground_truth(sim, "Task"))


@contextlib.asynccontextmanager
async def _polled(settings) -> AsyncIterator[ObjectPoller]:
    """Task polled from a position captured before its backfill, described and ready for rounds."""
    async with salesforce_client(settings) as client, open_store(settings) as store:
        poller = ObjectPoller(client, store, settings, "Task", settings.objects["Task"])
        await poller.capture_position()
        await Backfill(client, store, settings, "Task", settings.objects["Task"]).run()
        await store.set_phase("Task", "STREAMING")
        await poller.prepare()
        yield poller


async def _rounds_past_commit(poller: ObjectPoller, sim, rid: str, subject: str) -> None:
    """Rounds until the late transaction is visible in the org, then two more: what any later round would read."""
    while not await _committed(sim, rid, subject):
        await poller.round()
    await poller.round()
    await poller.round()


async def test_salesforce_position_is_held_back_to_a_transaction_in_flight(sim, pg_url):
    from replicator.pipeline.poll import salesforce_position

    settings = _settings(sim, pg_url, "pos_now")
    async with salesforce_client(settings) as client:
        idle = (await salesforce_position(client, "Task")).ms
        assert abs(idle - time.time() * 1000) < 3000  # Salesforce's now, whole seconds
        stamp = await _begin_late(sim, await _live_task(sim, 0), "held back")
        held = (await salesforce_position(client, "Task")).ms
        assert held <= stamp  # not this host's clock, a second later
        assert time.time() * 1000 < stamp + LATE_S * 1000  # read while the transaction was in flight


async def test_a_late_commit_spanning_the_position_captured_before_the_backfill_is_read(sim, pg_url):
    settings = _settings(sim, pg_url, "pos_capture")
    rid = await _live_task(sim, 1)
    stamp = await _begin_late(sim, rid, "late across the capture")
    async with salesforce_client(settings) as client, open_store(settings) as store:
        poller = ObjectPoller(client, store, settings, "Task", settings.objects["Task"])
        await poller.capture_position()
        assert time.time() * 1000 < stamp + LATE_S * 1000  # captured while the transaction was in flight
        await Backfill(client, store, settings, "Task", settings.objects["Task"]).run()
        await store.set_phase("Task", "STREAMING")
        await poller.prepare()
        await _rounds_past_commit(poller, sim, rid, "late across the capture")
    assert await pg_value(pg_url, f"SELECT subject FROM pos_capture.task WHERE id = '{rid}'") == \
        "late across the capture"


async def test_a_late_commit_spanning_a_key_reconciliation_is_read(sim, pg_url):
    """The reconciliation sets getDeleted's window start, which bounds where the next round's keyset starts; a
    newer record already moved the keyset past the late transaction's stamp."""
    settings = _settings(sim, pg_url, "pos_reconcile")
    async with _polled(settings) as poller:
        await poller.round()
        rid = await _live_task(sim, 2)
        stamp = await _begin_late(sim, rid, "late across the reconciliation")
        created = (await sim_admin(sim, "POST", "/__sim/changes", [
            {"object": "Task", "type": "CREATE", "fields": {"Subject": "after the late one"}}])).json()
        await poller.round()  # reads the newer record: the keyset passes the late stamp
        assert await pg_value(pg_url, "SELECT count(*) FROM pos_reconcile.task WHERE id = "
                                      f"'{created['ids'][0][0]}'") == 1
        await poller.reconcile()
        assert time.time() * 1000 < stamp + LATE_S * 1000  # reconciled while the transaction was in flight
        await _rounds_past_commit(poller, sim, rid, "late across the reconciliation")
    assert await pg_value(pg_url, f"SELECT subject FROM pos_reconcile.task WHERE id = '{rid}'") == \
        "late across the reconciliation"


async def test_a_round_cut_after_its_deletes_window_leaves_no_hole(sim, pg_url):
    """A round stores getDeleted's window end before it reads the changes; halted in between (the service switching
    the object to events, a stop), it read no change. The next round starts no later than that window end, so the
    stored position must not claim the changes up to it were read: a late commit behind the newest record read
    before (bench transitions A1: the allocation back, the watcher halting the round during its getDeleted)."""
    settings = _settings(sim, pg_url, "pos_cut")
    async with _polled(settings) as poller:
        await poller.round()
        rid = await _live_task(sim, 3)
        await _begin_late(sim, rid, "late across a cut round")
        await sim_admin(sim, "POST", "/__sim/changes", [
            {"object": "Task", "type": "CREATE", "fields": {"Subject": "newer than the late one"}}])
        await poller.round()  # reads the newer record; the window end is held back to the late transaction
        await wait_for(lambda: _committed(sim, rid, "late across a cut round"), timeout=LATE_S + 5)

        halt = asyncio.Event()
        read = poller.deletes._get_deleted

        async def halted_after(start, end):
            try:
                return await read(start, end)
            finally:
                halt.set()  # as the watcher does while the call is out

        poller.deletes._get_deleted = halted_after
        await poller.round(halt)  # its window end (now, past the commit) is stored; no change read
        poller.deletes._get_deleted = read
        await poller.round()
        await poller.round()
    assert await pg_value(pg_url, f"SELECT subject FROM pos_cut.task WHERE id = '{rid}'") == \
        "late across a cut round"


async def test_a_late_commit_before_a_key_reconciliation_after_a_round_is_read(sim, pg_url):
    """A key reconciliation sets getDeleted's window end to Salesforce's time when it runs, after the round before
    it read its changes: a transaction committed in between, stamped before the newest record that round read, is
    read by the next round all the same (the keyset is set back with the window end)."""
    settings = _settings(sim, pg_url, "pos_reconcile_after")
    async with _polled(settings) as poller:
        await poller.round()
        rid = await _live_task(sim, 4)
        await _begin_late(sim, rid, "late before a reconciliation")
        await sim_admin(sim, "POST", "/__sim/changes", [
            {"object": "Task", "type": "CREATE", "fields": {"Subject": "newer than the late one"}}])
        await poller.round()  # reads the newer record; the window end is held back to the late transaction
        await wait_for(lambda: _committed(sim, rid, "late before a reconciliation"), timeout=LATE_S + 5)
        await poller.reconcile()  # its position: after the commit
        await poller.round()
        await poller.round()
    assert await pg_value(pg_url, f"SELECT subject FROM pos_reconcile_after.task WHERE id = '{rid}'") == \
        "late before a reconciliation"
