"""Issue 12, "Done when": on an org where Account and Contact publish change events and Opportunity and Invoice__c
do not (`--cdc-objects Account,Contact`), one `replicator run` with all four in `auto` mode, under traffic with hard
deletes (HARD_DELETE and Recycle Bin purges), same-second changes, a late commit, formula inputs (Amount,
Probability) and silent changes (LastViewedDate, LastActivityDate), ends with `verify` equal for all four, formula
columns included, after a refresh; `status --json` shows each object's mode."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from replicator.app.commands import status_command
from replicator.app.ops_commands import refresh_command
from replicator.app.runtime import open_store, salesforce_client
from replicator.pipeline.verify import verify_object
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

pytestmark = pytest.mark.slow  # the service under traffic

OBJECTS = {"Account": {}, "Contact": {}, "Opportunity": {"poll_interval_s": 0.5},
           "Invoice__c": {"key": "External_Id__c", "poll_interval_s": 0.5}}
CHANGES = 1_500


@pytest.fixture(scope="module")
def sim():
    with SimulatorThread(records=500, seed=12, keepalive_seconds=0.2, cdc_objects=["Account", "Contact"]) as thread:
        yield thread.info


async def _live(sim, obj: str, n: int) -> list[dict]:
    return [r for r in await ground_truth(sim, obj) if not r["IsDeleted"]][:n]


async def _changes(sim, body):
    """POST /__sim/changes; a refusal fails the test with the simulator's reason."""
    try:
        return await sim_admin(sim, "POST", "/__sim/changes", body)
    except httpx.HTTPStatusError as exc:
        raise AssertionError(f"{exc.response.status_code} {exc.response.text} for {body}") from exc


async def _traffic_stopped(sim) -> bool:
    return (await sim_admin(sim, "GET", "/__sim/traffic")).json()["running"] is False


async def _pg(pg_url: str, sql: str):
    return await pg_value(pg_url, sql)


async def _all_equal(settings) -> dict:
    async with salesforce_client(settings) as client, open_store(settings) as store:
        return {name: (await verify_object(client, store, settings, name))[0] for name in settings.objects}


async def _targeted_changes(sim) -> dict:
    """Changes a steady traffic mix rarely makes: formula inputs, same-second creates, a late commit, hard deletes
    on a streamed and on a polled object. Returns what to wait for."""
    opps = await _live(sim, "Opportunity", 7)
    accounts = await _live(sim, "Account", 3)
    # 60 records of each polled object stamped in one second, as separate transactions
    same = (await _changes(sim, {"separate_transactions": True, "changes": [
        {"object": obj, "type": "CREATE", "fields": {}, "count": 20} for obj in ("Opportunity", "Invoice__c")
        for _ in range(3)]})).json()
    assert sum(len(t["ids"][0]) for t in same["transactions"]) == 120
    # a late commit: stamped now, visible 3 s later
    late = (await _changes(sim, {"visible_after_seconds": 3, "changes": [
        {"object": "Opportunity", "type": "UPDATE", "ids": [opps[5]["Id"]], "fields": {"Amount": 777.0}}]})).json()
    await _changes(sim, [
        {"object": "Opportunity", "type": "HARD_DELETE", "ids": [opps[6]["Id"]]},
        {"object": "Account", "type": "HARD_DELETE", "ids": [accounts[0]["Id"]]}])
    return {"late": opps[5]["Id"], "late_visible_ms": late["system_modstamp"] + 3_000,
            "hard_polled": opps[6]["Id"], "hard_streamed": accounts[0]["Id"]}


async def test_cdc_and_polled_objects_end_equal_with_formulas_after_a_refresh(sim, pg_url, capsys):
    settings = settings_for(sim, pg_url, "coverage", salesforce={"pubsub_endpoint": sim["pubsub_endpoint"]},
                            stream={"batch_max_wait_s": 0.05}, poll={"page_size": 50},
                            service={"control_poll_s": 0.5}, objects=OBJECTS)
    async with running_service(settings, timeout=180):
        await sim_admin(sim, "PUT", "/__sim/faults", {"silent_changes": "on"})
        await sim_admin(sim, "PUT", "/__sim/traffic", {
            "running": True, "rate": 300, "changes": CHANGES // 2, "transaction_size": 3, "records_per_event": 2,
            "collision_rate": 0.3, "purge_rate": 0.05, "fields_per_update": 4,
            "mix": {"CREATE": 0.2, "UPDATE": 0.65, "DELETE": 0.1, "UNDELETE": 0.05}})
        await wait_for(lambda: _traffic_stopped(sim), timeout=120)
        # between the two halves (records the generator might delete meanwhile are chosen while it pauses); the
        # late commit becomes visible during the second half
        wanted = await _targeted_changes(sim)
        # the late commit holds its record's row lock: the traffic leaves it alone, and the formula inputs below
        # wait for it if they come first (as in Salesforce: admin_events.py)
        await sim_admin(sim, "PUT", "/__sim/traffic", {"running": True, "changes": CHANGES})
        await wait_for(lambda: _traffic_stopped(sim), timeout=120)
        # formula inputs: Expected_Revenue__c follows Amount x Probability, in no event and in no poll of its own
        # (polled records bring it; streamed ones would need the refresh)
        opps = [o["Id"] for o in await _live(sim, "Opportunity", 6)]
        await _changes(sim, [
            {"object": "Opportunity", "type": "UPDATE", "ids": opps[:4], "fields": {"Amount": 12345.67, "Probability": 35}},
            {"object": "Opportunity", "type": "UPDATE", "ids": opps[4:], "fields": {"Probability": 90}}])
        await wait_for(lambda: _after(wanted["late_visible_ms"] + 1_000), timeout=10)
        await sim_admin(sim, "PUT", "/__sim/faults", {"silent_changes": "off"})
        stats = (await sim_admin(sim, "GET", "/__sim/stats")).json()
        assert stats["silent_changes"] > 0 and stats["purged"] > 0
        by_object = stats["changes"]["by_object"]
        assert all(by_object.get(name, 0) > 0 for name in OBJECTS), by_object
        # every published event is applied (only Account and Contact publish), and the polled objects caught up
        published = stats["events_published"]
        await wait_for(lambda: _pg(pg_url, f"SELECT sum(events_applied) >= {published} FROM replicator.checkpoints"
                                           " WHERE topic LIKE '/data/%'"), timeout=120)
        await wait_for(lambda: _pg(pg_url, "SELECT isdeleted FROM coverage.opportunity WHERE id = "
                                           f"'{wanted['hard_polled']}'"), timeout=60)
        assert await _pg(pg_url, f"SELECT isdeleted FROM coverage.account WHERE id = '{wanted['hard_streamed']}'")
        newest = max(r["SystemModstamp"] for r in await ground_truth(sim, "Invoice__c"))
        await wait_for(lambda: _pg(pg_url, "SELECT to_char(poll_systemmodstamp AT TIME ZONE 'UTC', "
                                           "'YYYY-MM-DD\"T\"HH24:MI:SS') >= "
                                           f"'{newest[:19]}' FROM replicator.checkpoints WHERE topic = 'poll:Invoice__c'"),
                       timeout=60)
        # traffic has stopped: a refresh (as `replicator refresh` runs it) brings what events never carry current
        capsys.readouterr()
        assert await refresh_command(settings, list(OBJECTS)) == 0
        refreshed = capsys.readouterr().out
        assert "Invoice__c: nothing to refresh" in refreshed
        try:  # a poll round may still be on its way with the last changes
            await wait_for(lambda: _equal_or_none(settings), timeout=90, interval=0.5)
        except TimeoutError:
            diffs = await _all_equal(settings)
            problems = [line for n, d in diffs.items() if not d.equal
                        for line in await compare_with_truth(pg_url, "coverage", n, "Id", await ground_truth(sim, n))
                        if not line.endswith(": extra")]  # hard-deleted records stay as deleted rows
            assert all(d.equal for d in diffs.values()), "\n".join([*problems[:10], repr(diffs), repr(wanted)])
    # the formula columns were compared, and changed by the traffic's inputs
    ids = ", ".join(f"'{i}'" for i in opps[:4])
    assert await _pg(pg_url, f"SELECT count(*) FROM coverage.opportunity WHERE id IN ({ids}) "
                             "AND expected_revenue__c = 4320.98") == 4
    capsys.readouterr()
    assert await status_command(settings, as_json=True) == 0
    rows = {r["object"]: r for r in json.loads(capsys.readouterr().out)}
    assert {n: rows[n]["mode"] for n in OBJECTS} == {"Account": "cdc", "Contact": "cdc", "Opportunity": "poll",
                                                       "Invoice__c": "poll"}
    assert all(rows[n]["refreshed_at"] for n in ("Account", "Contact", "Opportunity"))
    assert rows["Account"]["refresh_rows_changed"] + rows["Contact"]["refresh_rows_changed"] > 0  # silent changes


async def _equal_or_none(settings) -> dict | None:
    diffs = await _all_equal(settings)
    return diffs if all(d.equal for d in diffs.values()) else None


async def _after(ms: float) -> bool:
    return time.time() * 1000 >= ms
