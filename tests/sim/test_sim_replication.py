"""Polling an object without change events: getDeleted and getUpdated (docs/bulk-rest-oauth.md §3.5),
many records sharing one SystemModstamp, and a late commit that becomes visible after its stamp
(docs/salesforce-coverage.md §1 "Time and visibility")."""

from __future__ import annotations

import datetime as dt
import json
import time

import pytest

from replicator.protocol import pubsub_api_pb2 as pb

from .conftest import V, wait_for
from .pubsub_client import Org, running_org


@pytest.fixture(scope="module")
def org():
    with running_org(records=30, seed=13) as o:
        yield o


def auth(org: Org) -> dict:
    return {"Authorization": f"Bearer {org.token}"}


def truth(org: Org, obj: str) -> dict[str, dict]:
    return {r["Id"]: r for r in map(json.loads, org.http.get(f"/__sim/objects/{obj}/records").content.splitlines())}


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)


def iso(value: dt.datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%S+00:00")


def when(text: str) -> dt.datetime:
    """A REST datetime ("2026-01-02T03:04:05.000+0000") or a ground-truth one ("…Z") as naive UTC."""
    return dt.datetime.fromisoformat(text.replace("+0000", "").replace("Z", ""))


def replication(org: Org, obj: str, kind: str, start: dt.datetime, end: dt.datetime):
    return org.http.get(f"/services/data/{V}/sobjects/{obj}/{kind}/", headers=auth(org),
                        params={"start": iso(start), "end": iso(end)})


def recent_window() -> tuple[dt.datetime, dt.datetime]:
    now = utc_now()
    return now - dt.timedelta(minutes=5), now + dt.timedelta(minutes=5)


def test_get_deleted_lists_records_deleted_in_the_window(org):
    kept, deleted, hard, undeleted = org.first_ids("Task", 4)
    org.changes([{"object": "Task", "type": "DELETE", "ids": [deleted, undeleted]}])
    org.changes([{"object": "Task", "type": "HARD_DELETE", "ids": [hard]},
                 {"object": "Task", "type": "UNDELETE", "ids": [undeleted]}])
    start, end = recent_window()
    r = replication(org, "Task", "deleted", start, end)
    assert r.status_code == 200, r.text
    body = r.json()
    assert [d["id"] for d in body["deletedRecords"]] == [deleted, hard]
    assert when(body["deletedRecords"][0]["deletedDate"]) == when(truth(org, "Task")[deleted]["SystemModstamp"])
    earliest = when(body["earliestDateAvailable"])
    assert abs(earliest - (utc_now() - dt.timedelta(days=15))) < dt.timedelta(minutes=2)
    assert when(body["deletedRecords"][-1]["deletedDate"]) <= when(body["latestDateCovered"]) <= end
    before = replication(org, "Task", "deleted", start, start + dt.timedelta(minutes=1)).json()
    assert before["deletedRecords"] == []


def test_windows_are_15_days_for_deletes_and_30_for_updates(org):
    now = utc_now()
    for kind, days in (("deleted", 15), ("updated", 30)):
        assert replication(org, "Shipment__c", kind, now - dt.timedelta(days=days - 1), now).status_code == 200
        r = replication(org, "Shipment__c", kind, now - dt.timedelta(days=days + 1), now)
        assert (r.status_code, r.json()[0]["errorCode"]) == (400, "INVALID_REPLICATION_DATE")
    r = replication(org, "Shipment__c", "updated", now, now - dt.timedelta(minutes=5))
    assert (r.status_code, r.json()[0]["errorCode"]) == (400, "INVALID_REPLICATION_DATE")
    assert replication(org, "Nope__c", "updated", now, now).status_code == 404


def test_more_ids_than_the_replication_limit_is_exceeded_id_limit(org):
    """"sObject Get Deleted" (REST API Developer Guide): more than 600,000 ids found is EXCEEDED_ID_LIMIT; closer
    start and end dates serve. PUT /__sim/limits replication_id_limit lowers the limit so a test reaches it."""
    org.changes([{"object": "Contact", "type": "DELETE", "ids": org.first_ids("Contact", 3)},
                 {"object": "Contact", "type": "CREATE", "fields": {"LastName": "Limit"}, "count": 3}])
    start, end = recent_window()
    try:
        assert org.http.put("/__sim/limits", json={"replication_id_limit": 2}).json()["replication_id_limit"] == 2
        for kind in ("deleted", "updated"):
            r = replication(org, "Contact", kind, start, end)
            assert (r.status_code, r.json()[0]["errorCode"]) == (400, "EXCEEDED_ID_LIMIT"), r.text
        assert replication(org, "Contact", "deleted", start, start + dt.timedelta(minutes=1)).status_code == 200
    finally:
        org.http.put("/__sim/limits", json={"replication_id_limit": 600_000})
    assert replication(org, "Contact", "deleted", start, end).status_code == 200
    assert org.http.put("/__sim/limits", json={"replication_id_limit": -1}).status_code == 400


def test_get_updated_lists_live_records_changed_in_the_window(org):
    changed, gone = org.first_ids("Shipment__c", 2)
    created = org.changes([{"object": "Shipment__c", "type": "UPDATE", "ids": [changed],
                            "fields": {"Carrier__c": "UPS"}},
                           {"object": "Shipment__c", "type": "CREATE", "fields": {"Name": "SHP-NEW"}},
                           {"object": "Shipment__c", "type": "DELETE", "ids": [gone]}])["ids"][1][0]
    start, end = recent_window()
    body = replication(org, "Shipment__c", "updated", start, end).json()
    assert set(body["ids"]) == {changed, created}
    assert when(body["latestDateCovered"]) >= when(truth(org, "Shipment__c")[created]["SystemModstamp"])


def test_separate_transactions_share_one_whole_second_stamp(org):
    result = org.http.post("/__sim/changes", json={"separate_transactions": True, "changes": [
        {"object": "Task", "type": "CREATE", "fields": {"Subject": f"same second {k}"}, "count": 30}
        for k in range(4)]}).json()
    transactions = result["transactions"]
    assert len({t["transaction_key"] for t in transactions}) == 4
    numbers = [t["commit_number"] for t in transactions]
    assert numbers == sorted(numbers) and len(set(numbers)) == 4
    ids = {i for t in transactions for i in t["ids"][0]}
    rows = truth(org, "Task")
    stamps = {rows[i]["SystemModstamp"] for i in ids}
    assert len(ids) == 120 and len(stamps) == 1 and stamps.pop().endswith(".000Z")
    stamp = rows[next(iter(ids))]["SystemModstamp"]
    r = org.http.get(f"/services/data/{V}/query", headers=auth(org),
                     params={"q": f"SELECT Id FROM Task WHERE SystemModstamp = {stamp}"})
    assert {rec["Id"] for rec in r.json()["records"]} >= ids


def test_a_late_commit_is_stamped_before_it_becomes_visible(org):
    task, account = org.first_ids("Task", 1)[0], org.first_ids("Account", 1)[0]
    org.faults(purge_before_now=True)
    asked = time.monotonic()
    pending = org.http.post("/__sim/changes", json={"visible_after_seconds": 2, "changes": [
        {"object": "Task", "type": "UPDATE", "ids": [task], "fields": {"Subject": "Late"}},
        {"object": "Account", "type": "UPDATE", "ids": [account], "fields": {"Phone": "late"}}]}).json()
    stamp = dt.datetime.fromtimestamp(pending["system_modstamp"] / 1000, dt.UTC).replace(tzinfo=None)
    assert truth(org, "Task")[task]["Subject"] != "Late"
    start, end = recent_window()
    held = replication(org, "Task", "updated", start, end).json()
    assert when(held["latestDateCovered"]) == stamp and task not in held["ids"]
    wait_for(lambda: truth(org, "Task")[task]["Subject"] == "Late")
    waited = time.monotonic() - asked
    assert waited >= 1.9  # measured: it stayed invisible for the whole delay
    assert when(truth(org, "Task")[task]["SystemModstamp"]) == stamp
    r = org.http.get(f"/services/data/{V}/query", headers=auth(org),
                     params={"q": f"SELECT Id, SystemModstamp FROM Task WHERE Id = '{task}'"})
    assert when(r.json()["records"][0]["SystemModstamp"]) == stamp
    after = replication(org, "Task", "updated", stamp, end).json()
    assert task in after["ids"] and when(after["latestDateCovered"]) > stamp
    with org.subscribe("/data/AccountChangeEvent", pb.EARLIEST, num_requested=5) as sub:
        wait_for(lambda: sub.events)
        header = org.decode(sub.events[0])["ChangeEventHeader"]
    # the event is published when the transaction commits, and says so; the record keeps its earlier stamp
    assert header["recordIds"] == [account]
    assert header["commitTimestamp"] >= pending["system_modstamp"] + 2000


def test_a_late_commit_that_no_longer_applies_is_rolled_back(org):
    # a record created meanwhile took the unique value the late one creates (a new record holds no row lock)
    rolled = org.http.get("/__sim/stats").json()["rolled_back"]
    late = {"object": "Invoice__c", "type": "CREATE", "fields": {"External_Id__c": "LATE-CLASH"}}
    org.http.post("/__sim/changes", json={"visible_after_seconds": 0.3, "changes": [late]}).raise_for_status()
    org.changes([late])
    wait_for(lambda: org.http.get("/__sim/stats").json()["rolled_back"] == rolled + 1)
    assert [r["External_Id__c"] for r in truth(org, "Invoice__c").values()].count("LATE-CLASH") == 1


def test_a_change_to_a_record_a_late_commit_holds_waits_for_its_row_lock(org):
    # Salesforce makes the second transaction wait for the first one's row lock: it lands after it, newer
    task = org.first_ids("Task", 2)[1]
    pending = org.http.post("/__sim/changes", json={"visible_after_seconds": 1, "changes": [
        {"object": "Task", "type": "UPDATE", "ids": [task], "fields": {"Subject": "First"}}]}).json()
    asked = time.monotonic()
    org.changes([{"object": "Task", "type": "UPDATE", "ids": [task], "fields": {"Subject": "Second"}}])
    assert time.monotonic() - asked >= 0.5  # it waited for the commit (1 s after the stamp)
    record = truth(org, "Task")[task]
    assert record["Subject"] == "Second"
    assert when(record["SystemModstamp"]) >= dt.datetime.fromtimestamp(
        pending["system_modstamp"] / 1000 + 1, dt.UTC).replace(tzinfo=None, microsecond=0)


def test_a_row_lock_not_released_in_time_is_unable_to_lock_row(org, monkeypatch):
    from replicator.sim import admin_events

    monkeypatch.setattr(admin_events, "LOCK_WAIT_S", 0.3)
    task = org.first_ids("Task", 3)[2]
    org.http.post("/__sim/changes", json={"visible_after_seconds": 2, "changes": [
        {"object": "Task", "type": "UPDATE", "ids": [task], "fields": {"Subject": "Held"}}]}).raise_for_status()
    r = org.http.post("/__sim/changes", json=[
        {"object": "Task", "type": "UPDATE", "ids": [task], "fields": {"Subject": "Refused"}}])
    assert r.status_code == 400 and r.json()[0]["errorCode"] == "UNABLE_TO_LOCK_ROW" and task in r.json()[0]["message"]
    wait_for(lambda: truth(org, "Task")[task]["Subject"] == "Held")


def test_bad_options_are_refused(org):
    for body in ({"changes": []}, {"changes": [{"object": "Task", "type": "DELETE", "ids": []}], "nope": 1},
                 {"changes": [{"object": "Task", "type": "CREATE"}], "visible_after_seconds": -1},
                 {"changes": [{"object": "Task", "type": "CREATE"}], "separate_transactions": "yes"}):
        assert org.http.post("/__sim/changes", json=body).status_code == 400
