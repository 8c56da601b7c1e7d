"""Polling objects without change events (issue 12 §1): Account streams (it has a change-event topic), Task is
polled (`mode = "auto"`, and the simulator publishes no change events for Task). Under same-second changes split
across poll pages, a late commit, a soft delete and a hard delete, both tables end equal to the org."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from prometheus_client import generate_latest

from replicator.app.commands import status_command
from replicator.app.runtime import open_store, salesforce_client
from replicator.app.service import Service
from replicator.model import ConfigError
from replicator.pipeline.verify import verify_object
from replicator.sim.server import SimulatorThread

from .helpers import pg_value, settings_for, sim_admin, wait_for

OBJECTS = {"Account": {}, "Task": {"poll_interval_s": 0.3}}


@pytest.fixture(scope="module")
def sim():
    with SimulatorThread(records=300, seed=12, keepalive_seconds=0.2) as thread:
        yield thread.info


def _settings(sim, pg_url, schema, objects=OBJECTS):
    return settings_for(sim, pg_url, schema, salesforce={"pubsub_endpoint": sim["pubsub_endpoint"]},
                        stream={"batch_max_wait_s": 0.05}, poll={"page_size": 60, "lookback_s": 10},
                        objects=objects)


async def _live(sim, obj: str) -> list[str]:
    body = (await sim_admin(sim, "GET", f"/__sim/objects/{obj}/records")).content
    return [r["Id"] for r in (json.loads(line) for line in body.splitlines() if line.strip()) if not r["IsDeleted"]]


async def _all_equal(settings) -> bool:
    async with salesforce_client(settings) as client, open_store(settings) as store:
        for name in settings.objects:
            diff, _ = await verify_object(client, store, settings, name)
            if not diff.equal:
                return False
    return True


async def test_account_streams_task_polls_and_both_end_equal(sim, pg_url, capsys):
    settings = _settings(sim, pg_url, "poll")
    svc = Service(settings)
    task = asyncio.create_task(svc.run())
    try:
        await wait_for(lambda: pg_value(pg_url, "SELECT count(*) = 2 FROM replicator.objects WHERE phase = 'STREAMING'"
                                                " AND object IN ('Account', 'Task')"), timeout=120)
        await wait_for(lambda: pg_value(pg_url, "SELECT poll_systemmodstamp IS NOT NULL FROM replicator.checkpoints"
                                                " WHERE topic = 'poll:Task'"), timeout=60)
        tasks, accounts = await _live(sim, "Task"), await _live(sim, "Account")
        late, soft, hard, *_ = tasks
        # A late commit: stamped now, visible 3 s later, after the poll position has moved past its stamp.
        pending = (await sim_admin(sim, "POST", "/__sim/changes", {"visible_after_seconds": 3, "changes": [
            {"object": "Task", "type": "UPDATE", "ids": [late], "fields": {"Subject": "committed late"}}]})).json()
        stamp_ms = pending["system_modstamp"]
        await wait_for(lambda: _after(stamp_ms + 1000), timeout=5)
        # 100 records sharing one whole-second SystemModstamp (separate transactions): two poll pages of 60.
        same = (await sim_admin(sim, "POST", "/__sim/changes", {"separate_transactions": True, "changes": [
            {"object": "Task", "type": "CREATE", "fields": {"Subject": f"same second {k}"}, "count": 20}
            for k in range(5)]})).json()
        assert sum(len(t["ids"][0]) for t in same["transactions"]) == 100
        await sim_admin(sim, "POST", "/__sim/changes", [
            {"object": "Task", "type": "DELETE", "ids": [soft]},
            {"object": "Task", "type": "HARD_DELETE", "ids": [hard]},
            {"object": "Account", "type": "UPDATE", "ids": accounts[:3], "fields": {"Phone": "555-0112"}},
            {"object": "Account", "type": "DELETE", "ids": accounts[3:4]}])
        # the position passes the late commit's stamp before it becomes visible
        await wait_for(lambda: pg_value(pg_url, "SELECT extract(epoch FROM poll_systemmodstamp) * 1000 > "
                                                f"{stamp_ms} FROM replicator.checkpoints WHERE topic = 'poll:Task'"),
                       timeout=30)
        await wait_for(lambda: pg_value(pg_url, "SELECT count(*) = 100 FROM poll.task WHERE subject LIKE 'same second%'"),
                       timeout=30)
        await wait_for(lambda: pg_value(pg_url, f"SELECT subject = 'committed late' FROM poll.task WHERE id = '{late}'"),
                       timeout=30)
        await wait_for(lambda: pg_value(pg_url, f"SELECT isdeleted FROM poll.task WHERE id = '{hard}'"), timeout=30)
        await wait_for(lambda: _all_equal(settings), timeout=60, interval=0.5)
        metrics = generate_latest(svc.metrics.registry).decode()
        assert 'replicator_object_mode{mode="poll",object="Task"} 1.0' in metrics
        assert 'replicator_object_mode{mode="cdc",object="Account"} 1.0' in metrics
        assert 'replicator_poll_position_timestamp_seconds{object="Task"}' in metrics
        # the hard-deleted record came from getDeleted: queryAll no longer returns it
        assert await pg_value(pg_url, "SELECT poll_deleted_through > now() - interval '1 minute'"
                                      " FROM replicator.checkpoints WHERE topic = 'poll:Task'")
    finally:
        svc.stop.set()
        assert await asyncio.wait_for(task, 60) == 0
    assert await pg_value(pg_url, f"SELECT isdeleted FROM poll.task WHERE id = '{soft}'") is True
    capsys.readouterr()
    assert await status_command(settings, as_json=True) == 0
    rows = {r["object"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["Account"]["mode"] == "cdc" and rows["Task"]["mode"] == "poll"
    assert "no change-event topic /data/TaskChangeEvent" in rows["Task"]["mode_reason"]
    assert rows["Task"]["poll_systemmodstamp"] and rows["Task"]["poll_id"]
    assert rows["Account"]["poll_systemmodstamp"] is None


async def _after(ms: float) -> bool:
    return time.time() * 1000 >= ms


async def test_polled_deletes_hard_remove_soft_and_hard_deleted_records(sim, pg_url):
    settings = _settings(sim, pg_url, "poll_hard", objects={"Task": {"mode": "poll", "deletes": "hard",
                                                                      "poll_interval_s": 0.3}})
    svc = Service(settings)
    task = asyncio.create_task(svc.run())
    try:
        await wait_for(lambda: pg_value(pg_url, "SELECT phase = 'STREAMING' FROM replicator.objects WHERE object = 'Task'"
                                                " AND mode = 'poll'"), timeout=120)
        soft, hard, *_ = await _live(sim, "Task")
        await sim_admin(sim, "POST", "/__sim/changes", [{"object": "Task", "type": "DELETE", "ids": [soft]},
                                                        {"object": "Task", "type": "HARD_DELETE", "ids": [hard]}])
        await wait_for(lambda: pg_value(pg_url, f"SELECT count(*) = 0 FROM poll_hard.task WHERE id IN ('{soft}', '{hard}')"),
                       timeout=30)
        await wait_for(lambda: _all_equal(settings), timeout=60, interval=0.5)
    finally:
        svc.stop.set()
        assert await asyncio.wait_for(task, 60) == 0


async def test_polling_resumes_from_its_position_after_a_restart(sim, pg_url):
    settings = _settings(sim, pg_url, "poll_restart", objects={"Task": {"poll_interval_s": 0.3}})
    job = "SELECT job_id FROM replicator.objects WHERE object = 'Task'"
    svc = Service(settings)
    task = asyncio.create_task(svc.run())
    try:
        # a round committed after the backfill
        await wait_for(lambda: pg_value(pg_url, "SELECT c.updated_at > o.backfill_finished_at FROM replicator.checkpoints c,"
                                                " replicator.objects o WHERE c.topic = 'poll:Task' AND o.object = 'Task'"),
                       timeout=120)
    finally:
        svc.stop.set()
        assert await asyncio.wait_for(task, 60) == 0
    first_job = await pg_value(pg_url, job)
    changed, gone, *_ = await _live(sim, "Task")
    await sim_admin(sim, "POST", "/__sim/changes", [
        {"object": "Task", "type": "UPDATE", "ids": [changed], "fields": {"Subject": "while stopped"}},
        {"object": "Task", "type": "HARD_DELETE", "ids": [gone]},
        {"object": "Task", "type": "CREATE", "fields": {"Subject": "created while stopped"}, "count": 3}])
    svc = Service(settings)
    task = asyncio.create_task(svc.run())
    try:
        await wait_for(lambda: pg_value(pg_url, "SELECT count(*) = 3 FROM poll_restart.task"
                                                " WHERE subject = 'created while stopped'"), timeout=60)
        await wait_for(lambda: _all_equal(settings), timeout=60, interval=0.5)
    finally:
        svc.stop.set()
        assert await asyncio.wait_for(task, 60) == 0
    assert await pg_value(pg_url, job) == first_job  # resumed from the position: no second extract
    assert await pg_value(pg_url, f"SELECT subject FROM poll_restart.task WHERE id = '{changed}'") == "while stopped"


async def test_a_streamed_object_configured_to_poll_is_polled_from_its_stream_position(sim, pg_url):
    """No new extract (app/modes.py): the poll position starts at the stream checkpoint, less the lookback."""
    streamed = _settings(sim, pg_url, "poll_switch", objects={"Account": {}})
    svc = Service(streamed)
    task = asyncio.create_task(svc.run())
    try:
        await wait_for(lambda: pg_value(pg_url, "SELECT phase = 'STREAMING' AND mode = 'cdc' FROM replicator.objects"
                                                " WHERE object = 'Account'"), timeout=120)
    finally:
        svc.stop.set()
        assert await asyncio.wait_for(task, 60) == 0
    job = await pg_value(pg_url, "SELECT job_id FROM replicator.objects WHERE object = 'Account'")
    polled = _settings(sim, pg_url, "poll_switch", objects={"Account": {"mode": "poll", "poll_interval_s": 0.3}})
    svc = Service(polled)
    task = asyncio.create_task(svc.run())
    try:
        await wait_for(lambda: pg_value(pg_url, "SELECT mode = 'poll' AND resyncs = 0 AND phase = 'STREAMING'"
                                                " FROM replicator.objects WHERE object = 'Account'"), timeout=120)
        account = (await _live(sim, "Account"))[0]
        await sim_admin(sim, "POST", "/__sim/changes", [
            {"object": "Account", "type": "UPDATE", "ids": [account], "fields": {"Phone": "555-0199"}}])
        await wait_for(lambda: pg_value(pg_url, f"SELECT phone = '555-0199' FROM poll_switch.account WHERE id = '{account}'"),
                       timeout=30)
        await wait_for(lambda: _all_equal(polled), timeout=60, interval=0.5)
        assert await pg_value(pg_url, "SELECT job_id FROM replicator.objects WHERE object = 'Account'") == job
    finally:
        svc.stop.set()
        assert await asyncio.wait_for(task, 60) == 0


async def test_a_failed_round_is_retried_by_the_supervisor(sim, pg_url):
    settings = _settings(sim, pg_url, "poll_fail", objects={"Task": {"poll_interval_s": 0.3}})
    svc = Service(settings)
    task = asyncio.create_task(svc.run())
    try:
        await wait_for(lambda: pg_value(pg_url, "SELECT c.updated_at > o.backfill_finished_at FROM replicator.checkpoints c,"
                                                " replicator.objects o WHERE c.topic = 'poll:Task' AND o.object = 'Task'"),
                       timeout=120)
        await sim_admin(sim, "PUT", "/__sim/faults", {"error_500_rate": 1.0})
        try:
            await wait_for(lambda: pg_value(pg_url, "SELECT last_error LIKE '%UNKNOWN_EXCEPTION%' FROM replicator.objects"
                                                    " WHERE object = 'Task'"), timeout=60)
            changed = (await _live(sim, "Task"))[0]
            await sim_admin(sim, "POST", "/__sim/changes", [
                {"object": "Task", "type": "UPDATE", "ids": [changed], "fields": {"Subject": "after a failure"}}])
        finally:
            await sim_admin(sim, "PUT", "/__sim/faults", {"error_500_rate": 0.0})
        await wait_for(lambda: pg_value(pg_url, f"SELECT subject = 'after a failure' FROM poll_fail.task WHERE id = '{changed}'"),
                       timeout=90)
        assert svc.metrics.object("Task").mode == "poll"
    finally:
        svc.stop.set()
        assert await asyncio.wait_for(task, 60) == 0


async def test_cdc_mode_on_an_object_without_a_topic_is_a_config_error(sim, pg_url):
    settings = _settings(sim, pg_url, "poll_cdc", objects={"Task": {"mode": "cdc"}})
    with pytest.raises(ConfigError, match="Task.*no change-event topic"):
        await asyncio.wait_for(Service(settings).run(), 60)
