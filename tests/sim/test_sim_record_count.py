"""REST Describe Global and Record Count as the REST API Developer Guide documents them: what `replicator discover`
reads (issue 21)."""

from __future__ import annotations

from .conftest import V, ground_truth


def _live(client, name: str) -> int:
    return sum(1 for r in ground_truth(client, name) if not r["IsDeleted"])


def test_describe_global_has_the_documented_shape(client, auth):
    r = client.get(f"/services/data/{V}/sobjects/", headers=auth)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["encoding"] == "UTF-8" and body["maxBatchSize"] == 200
    entries = {o["name"]: o for o in body["sobjects"]}
    assert {"Account", "Contact", "Opportunity", "Invoice__c", "Task", "Shipment__c"} <= set(entries)
    for entry in entries.values():
        for key in ("name", "label", "labelPlural", "keyPrefix", "custom", "queryable", "replicateable",
                    "retrieveable", "urls"):
            assert key in entry, (entry["name"], key)
    assert entries["Invoice__c"]["custom"] is True and entries["Account"]["custom"] is False


def test_record_count_of_listed_objects_is_their_live_records(client, auth):
    r = client.get(f"/services/data/{V}/limits/recordCount", params={"sObjects": "Account,Invoice__c,Nope__c"},
                   headers=auth)
    assert r.status_code == 200, r.text
    assert r.headers["Sforce-Limit-Info"].startswith("api-usage=")  # an API request like any other
    counts = {o["name"]: o["count"] for o in r.json()["sObjects"]}
    # an unknown name is left out, not an error; soft-deleted records are not counted
    assert counts == {"Account": _live(client, "Account"), "Invoice__c": _live(client, "Invoice__c")}
    totals = client.get("/__sim/counts").json()
    assert counts["Account"] == totals["Account"]["total"] - totals["Account"]["deleted"] < totals["Account"]["total"]


def test_record_count_without_a_list_is_every_object_but_associated_ones(client, auth):
    r = client.get(f"/services/data/{V}/limits/recordCount", headers=auth)
    assert r.status_code == 200, r.text
    names = {o["name"] for o in r.json()["sObjects"]}
    assert {"Account", "Contact", "Opportunity", "Invoice__c", "Task", "Shipment__c"} <= names
    # Share and History objects are associated objects: Record Count leaves them out
    assert not names & {"AccountShare", "AccountHistory"}
    r = client.get(f"/services/data/{V}/limits/recordCount", params={"sObjects": "AccountShare"}, headers=auth)
    assert r.json() == {"sObjects": []}


def test_record_count_follows_a_delete_and_needs_a_session(client, auth):
    before = client.get(f"/services/data/{V}/limits/recordCount", params={"sObjects": "Shipment__c"},
                        headers=auth).json()["sObjects"][0]["count"]
    victim = next(r["Id"] for r in ground_truth(client, "Shipment__c") if not r["IsDeleted"])
    r = client.post("/__sim/changes", json=[{"object": "Shipment__c", "type": "DELETE", "ids": [victim]}])
    assert r.status_code == 200, r.text
    after = client.get(f"/services/data/{V}/limits/recordCount", params={"sObjects": "shipment__c"},
                       headers=auth).json()["sObjects"]
    assert after == [{"count": before - 1, "name": "Shipment__c"}]
    r = client.get(f"/services/data/{V}/limits/recordCount")
    assert r.status_code == 401 and r.json()[0]["errorCode"] == "INVALID_SESSION_ID"
