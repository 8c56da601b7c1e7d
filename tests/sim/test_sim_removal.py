"""Records that leave the org for good: PURGE (emptied from the Recycle Bin: no change event) and HARD_DELETE (a
DELETE event, then gone), seen through every API: REST query/queryAll, Bulk query/queryAll, sObject Collections
retrieve, the single-record retrieve, the ground truth, /__sim/counts, and the traffic generator's purge_rate."""

from __future__ import annotations

import csv
import io

import pytest

from replicator.sim.faults import Faults

from .conftest import V, wait_for, wait_job
from .pubsub_client import Org, events_of, running_org


@pytest.fixture(scope="module")
def org():
    with running_org(records=60, seed=23) as o:
        yield o


@pytest.fixture(autouse=True)
def reset(org):
    yield
    org.http.put("/__sim/traffic", json={"running": False, "purge_rate": 0.0})
    org.faults(**Faults().to_dict())


def _auth(org: Org) -> dict:
    return {"Authorization": f"Bearer {org.token}"}


def _truth_ids(org: Org, obj: str) -> dict[str, bool]:
    """Id -> IsDeleted of every record in the ground truth."""
    import orjson
    lines = org.http.get(f"/__sim/objects/{obj}/records").content.splitlines()
    return {rec["Id"]: rec["IsDeleted"] for rec in map(orjson.loads, filter(None, lines))}


def _rest_ids(org: Org, kind: str, obj: str) -> set[str]:
    r = org.http.get(f"/services/data/{V}/{kind}", headers=_auth(org), params={"q": f"SELECT Id FROM {obj}"})
    assert r.status_code == 200, r.text
    body, ids = r.json(), set()
    while True:
        ids |= {rec["Id"] for rec in body["records"]}
        if body["done"]:
            return ids
        body = org.http.get(body["nextRecordsUrl"], headers=_auth(org)).json()


def _bulk_ids(org: Org, operation: str, obj: str) -> set[str]:
    r = org.http.post(f"/services/data/{V}/jobs/query", headers=_auth(org),
                      json={"operation": operation, "query": f"SELECT Id FROM {obj}"})
    assert r.status_code == 200, r.text
    assert wait_job(org.http, _auth(org), r.json()["id"])["state"] == "JobComplete"
    page = org.http.get(f"/services/data/{V}/jobs/query/{r.json()['id']}/results", headers=_auth(org))
    return {row["Id"] for row in csv.DictReader(io.StringIO(page.content.decode()))}


def _retrieved(org: Org, obj: str, ids: list[str]) -> list:
    r = org.http.post(f"/services/data/{V}/composite/sobjects/{obj}", headers=_auth(org),
                      json={"ids": ids, "fields": ["Id"]})
    assert r.status_code == 200, r.text
    return r.json()


def _assert_gone_everywhere(org: Org, obj: str, gone: str, kept: str) -> None:
    """`gone` is in no API's answer any more; `kept`, a live record changed alongside it, still is."""
    assert gone not in _truth_ids(org, obj) and kept in _truth_ids(org, obj)
    for ids in (_rest_ids(org, "query", obj), _rest_ids(org, "queryAll", obj),
                _bulk_ids(org, "query", obj), _bulk_ids(org, "queryAll", obj)):
        assert gone not in ids and kept in ids
    assert [r and r["Id"] for r in _retrieved(org, obj, [gone, kept])] == [None, kept]
    r = org.http.get(f"/services/data/{V}/sobjects/{obj}/{gone}", headers=_auth(org))
    assert r.status_code == 404 and r.json()[0]["errorCode"] == "NOT_FOUND"
    for kind in ("UPDATE", "DELETE", "UNDELETE", "PURGE", "HARD_DELETE"):
        item = {"object": obj, "type": kind, "ids": [gone], **({"fields": {"Name": "x"}} if kind == "UPDATE" else {})}
        r = org.http.post("/__sim/changes", json=[item])
        assert r.status_code == 400 and "INVALID_ID" in r.json()["error"], (kind, r.text)


def _marker(org: Org, account: str, phone: str) -> str:
    return org.changes([{"object": "Account", "type": "UPDATE", "ids": [account], "fields": {"Phone": phone}}])[
        "replay_ids"][0]


def test_purge_removes_a_soft_deleted_record_everywhere_and_publishes_nothing(org):
    first, second, kept = org.first_ids("Opportunity", 3)
    org.changes([{"object": "Opportunity", "type": "DELETE", "ids": [first, second]}])
    counts = org.http.get("/__sim/counts").json()["Opportunity"]
    marker = org.first_ids("Account", 1)[0]
    before = _marker(org, marker, "before purge")
    stats = org.http.get("/__sim/stats").json()
    purged = org.changes([{"object": "Opportunity", "type": "PURGE", "ids": [first]}])
    after = _marker(org, marker, "after purge")
    assert purged["replay_ids"] == [] and purged["ids"] == [[first]]
    # no event between the two markers: their replay ids are consecutive, and the bus published only the second
    assert int(after[:16], 16) == int(before[:16], 16) + 1
    assert [e["Phone"] for e in events_of(org, [before, after])] == ["before purge", "after purge"]
    now = org.http.get("/__sim/stats").json()
    assert now["events_published"] == stats["events_published"] + 1 and now["purged"] == stats["purged"] + 1
    assert org.http.get("/__sim/counts").json()["Opportunity"] == {"total": counts["total"] - 1,
                                                                   "deleted": counts["deleted"] - 1}
    _assert_gone_everywhere(org, "Opportunity", first, kept=kept)
    assert second in _rest_ids(org, "queryAll", "Opportunity") - _rest_ids(org, "query", "Opportunity")


def test_purge_refuses_a_live_record_and_applies_nothing_of_the_request(org):
    deleted, live = org.first_ids("Contact", 2)
    org.changes([{"object": "Contact", "type": "DELETE", "ids": [deleted]}])
    stats = org.http.get("/__sim/stats").json()
    r = org.http.post("/__sim/changes", json=[{"object": "Contact", "type": "PURGE", "ids": [deleted]},
                                              {"object": "Contact", "type": "PURGE", "ids": [live]}])
    assert r.status_code == 400 and live in r.json()["error"] and "Recycle Bin" in r.json()["error"]
    assert _truth_ids(org, "Contact")[deleted] is True and _truth_ids(org, "Contact")[live] is False
    assert org.http.get("/__sim/stats").json()["purged"] == stats["purged"]
    r = org.http.post("/__sim/changes", json=[{"object": "Contact", "type": "PURGE", "ids": [deleted],
                                               "fields": {"LastName": "x"}}])
    assert r.status_code == 400 and "takes no fields" in r.json()["error"]


def test_hard_delete_publishes_a_delete_event_and_the_record_is_gone_at_once(org):
    gone, kept = org.first_ids("Invoice__c", 2)
    counts = org.http.get("/__sim/counts").json()["Invoice__c"]
    result = org.changes([{"object": "Invoice__c", "type": "HARD_DELETE", "ids": [gone]},
                          {"object": "Invoice__c", "type": "UPDATE", "ids": [kept], "fields": {"Memo__c": "kept"}}])
    delete, update = events_of(org, result["replay_ids"], "/data/Invoice__ChangeEvent")
    header = delete["ChangeEventHeader"]
    assert header["changeType"] == "DELETE" and header["recordIds"] == [gone]
    assert header["transactionKey"] == update["ChangeEventHeader"]["transactionKey"]
    assert all(v is None for k, v in delete.items() if not k.startswith("_") and k != "ChangeEventHeader")
    assert org.http.get("/__sim/counts").json()["Invoice__c"] == {"total": counts["total"] - 1,
                                                                  "deleted": counts["deleted"]}
    assert org.http.get("/__sim/stats").json()["changes"]["by_type"]["HARD_DELETE"] >= 1
    _assert_gone_everywhere(org, "Invoice__c", gone, kept=kept)


def test_hard_delete_refuses_a_soft_deleted_record(org):
    deleted = org.first_ids("Account", 3)[2]
    org.changes([{"object": "Account", "type": "DELETE", "ids": [deleted]}])
    r = org.http.post("/__sim/changes", json=[{"object": "Account", "type": "HARD_DELETE", "ids": [deleted]}])
    assert r.status_code == 400 and "ENTITY_IS_DELETED" in r.json()["error"]
    assert _truth_ids(org, "Account")[deleted] is True


def test_delete_then_purge_in_one_request_publishes_only_the_delete(org):
    record, kept = org.first_ids("Contact", 4)[2:]
    result = org.changes([{"object": "Contact", "type": "DELETE", "ids": [record]},
                          {"object": "Contact", "type": "PURGE", "ids": [record]}])
    [delete] = events_of(org, result["replay_ids"], "/data/ContactChangeEvent")
    assert delete["ChangeEventHeader"]["changeType"] == "DELETE"
    assert delete["ChangeEventHeader"]["recordIds"] == [record]
    _assert_gone_everywhere(org, "Contact", record, kept=kept)
    r = org.http.post("/__sim/changes", json=[{"object": "Contact", "type": "HARD_DELETE", "ids": [kept]},
                                              {"object": "Contact", "type": "UNDELETE", "ids": [kept]}])
    assert r.status_code == 400 and "removed by an earlier change" in r.json()["error"]
    assert kept in _truth_ids(org, "Contact")  # nothing applied


def test_a_removed_record_id_is_never_issued_again(org):
    [gone] = org.first_ids("Account", 1)
    org.changes([{"object": "Account", "type": "HARD_DELETE", "ids": [gone]}])
    total = org.http.get("/__sim/counts").json()["Account"]["total"]
    created = org.changes([{"object": "Account", "type": "CREATE", "fields": {"Name": "after removal"}, "count": 2}])
    new_ids = created["ids"][0]
    assert gone not in new_ids and set(new_ids) <= set(_truth_ids(org, "Account"))
    assert org.http.get("/__sim/counts").json()["Account"]["total"] == total + 2


def test_traffic_purges_at_purge_rate_without_events_and_the_counts_follow(org):
    assert org.http.put("/__sim/traffic", json={"purge_rate": 1.5}).status_code == 400
    assert org.http.get("/__sim/traffic").json()["purge_rate"] == 0.0  # the default
    before = org.http.get("/__sim/stats").json()
    goal = before["changes"]["total"] + 60
    r = org.http.put("/__sim/traffic", json={"running": True, "rate": 300, "changes": None, "purge_rate": 1.0,
                                              "mix": {"DELETE": 1, "UPDATE": 1}, "objects": ["Contact"]})
    assert r.status_code == 200, r.text
    wait_for(lambda: org.http.get("/__sim/stats").json()["changes"]["total"] >= goal)
    org.http.put("/__sim/traffic", json={"running": False})
    after = org.http.get("/__sim/stats").json()
    assert after["purged"] - before["purged"] >= 20
    # every event is a change the generator made: purges published none
    made = after["changes"]["total"] - before["changes"]["total"]
    assert after["events_published"] - before["events_published"] == made
    truth = _truth_ids(org, "Contact")
    counts = org.http.get("/__sim/counts").json()["Contact"]
    assert counts == {"total": len(truth), "deleted": sum(truth.values())}
    assert _rest_ids(org, "queryAll", "Contact") == set(truth)
    assert _rest_ids(org, "query", "Contact") == {i for i, d in truth.items() if not d}
