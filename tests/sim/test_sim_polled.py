"""Objects that publish no change events (Task, Shipment__c) and the entity selection: served by describe, REST
and Bulk like the others, no `/data/<Object>ChangeEvent` topic unless selected (docs/pubsub-cdc.md §4,
"Topic unknown, or CDC not enabled for the entity"), and their changes still happen in the org
(docs/salesforce-coverage.md §2, §5)."""

from __future__ import annotations

import csv
import io
import json

import grpc
import pytest

from replicator.protocol import pubsub_api_pb2 as pb
from replicator.sim.__main__ import build_parser, main
from replicator.sim.server import Simulator, SimulatorThread

from .conftest import V, wait_for, wait_job
from .pubsub_client import Org, running_org, trailer

DEFAULT_SELECTION = ["Account", "Contact", "Opportunity", "Invoice__c"]
NOT_FOUND = "sfdc.platform.eventbus.grpc.topic.not.found"


@pytest.fixture(scope="module")
def org():
    with running_org(records=30, seed=11) as o:
        yield o


@pytest.fixture(autouse=True)
def reset(org):
    yield
    assert org.http.put("/__sim/cdc", json={"objects": DEFAULT_SELECTION}).status_code == 200
    org.http.put("/__sim/traffic", json={"running": False, "objects": DEFAULT_SELECTION})


def auth(org: Org) -> dict:
    return {"Authorization": f"Bearer {org.token}"}


def truth(org: Org, obj: str) -> dict[str, dict]:
    return {r["Id"]: r for r in map(json.loads, org.http.get(f"/__sim/objects/{obj}/records").content.splitlines())}


def topic_error(org: Org, topic: str) -> tuple:
    with pytest.raises(grpc.RpcError) as err:
        org.stub.GetTopic(pb.TopicRequest(topic_name=topic), metadata=org.metadata)
    return err.value.code(), trailer(err.value)


def test_polled_objects_are_described_like_the_others(org):
    names = {o["name"] for o in org.http.get(f"/services/data/{V}/sobjects", headers=auth(org)).json()["sobjects"]}
    assert {"Task", "Shipment__c", *DEFAULT_SELECTION} <= names
    fields = {f["name"]: f for f in
              org.http.get(f"/services/data/{V}/sobjects/Task/describe", headers=auth(org)).json()["fields"]}
    assert {"Subject", "Status", "Priority", "ActivityDate", "WhoId", "WhatId", "Description", "IsDeleted",
            "SystemModstamp", "LastModifiedDate", "CreatedDate"} <= set(fields)
    assert (fields["WhatId"]["referenceTo"], fields["WhatId"]["polymorphicForeignKey"]) == \
        (["Account", "Opportunity"], True)
    assert (fields["WhoId"]["referenceTo"], fields["WhoId"]["polymorphicForeignKey"]) == (["Contact"], False)
    shipment = org.http.get(f"/services/data/{V}/sobjects/Shipment__c/describe", headers=auth(org)).json()
    assert shipment["custom"] and shipment["keyPrefix"] == "a2S"


def test_rest_and_bulk_serve_them_as_the_ground_truth(org):
    live = {i: r for i, r in truth(org, "Task").items() if not r["IsDeleted"]}
    r = org.http.get(f"/services/data/{V}/query", headers=auth(org),
                     params={"q": "SELECT Id, Subject, WhatId, SystemModstamp FROM Task"})
    assert r.status_code == 200, r.text
    assert {rec["Id"]: rec["Subject"] for rec in r.json()["records"]} == {i: t["Subject"] for i, t in live.items()}
    job = org.http.post(f"/services/data/{V}/jobs/query", headers=auth(org),
                        json={"operation": "queryAll", "query": "SELECT Id, Name, Weight_Kg__c FROM Shipment__c"})
    wait_job(org.http, auth(org), job.json()["id"])
    page = org.http.get(f"/services/data/{V}/jobs/query/{job.json()['id']}/results", headers=auth(org))
    rows = {row["Id"]: row["Name"] for row in csv.DictReader(io.StringIO(page.content.decode(), newline=""))}
    assert rows == {i: s["Name"] for i, s in truth(org, "Shipment__c").items()}


def test_count_answers_the_number_of_matching_records_without_records(org):
    """`SELECT COUNT() FROM … WHERE …` (SOQL and SOSL Reference, "COUNT() and COUNT(fieldName)"): what a poller asks
    before reading a large delta page by page."""
    rows = truth(org, "Task")
    cut = sorted(r["SystemModstamp"] for r in rows.values())[len(rows) // 2]
    where = f"SystemModstamp >= {cut.replace('+0000', 'Z')}"
    for kind, expected in (("query", [r for r in rows.values() if not r["IsDeleted"]]), ("queryAll", list(rows.values()))):
        r = org.http.get(f"/services/data/{V}/{kind}", headers=auth(org),
                         params={"q": f"SELECT COUNT() FROM Task WHERE {where}"})
        assert r.status_code == 200, r.text
        want = sum(1 for rec in expected if rec["SystemModstamp"] >= cut)
        assert r.json() == {"totalSize": want, "done": True, "records": []} and 0 < want < len(rows)
    r = org.http.get(f"/services/data/{V}/query", headers=auth(org), params={"q": "SELECT COUNT(Id) FROM Task"})
    assert (r.status_code, r.json()[0]["errorCode"]) == (400, "MALFORMED_QUERY")


def test_unselected_objects_have_no_topic(org):
    assert org.http.get("/__sim/cdc").json() == {"objects": DEFAULT_SELECTION}
    for topic in ("/data/TaskChangeEvent", "/data/Shipment__ChangeEvent"):
        assert topic_error(org, topic) == (grpc.StatusCode.NOT_FOUND, NOT_FOUND)
        sub = org.subscribe(topic, num_requested=1)
        assert sub.done.wait(10) and sub.error.code() == grpc.StatusCode.NOT_FOUND
    assert org.stub.GetTopic(pb.TopicRequest(topic_name="/data/AccountChangeEvent"), metadata=org.metadata).schema_id


def test_changes_to_unselected_objects_happen_in_the_org_without_events(org):
    org.faults(purge_before_now=True)
    task, account = org.first_ids("Task", 1)[0], org.first_ids("Account", 1)[0]
    before = truth(org, "Task")[task]
    result = org.changes([{"object": "Task", "type": "UPDATE", "ids": [task], "fields": {"Subject": "Polled"}},
                          {"object": "Account", "type": "UPDATE", "ids": [account], "fields": {"Phone": "1"}}])
    assert len(result["replay_ids"]) == 1  # the Account event only
    after = truth(org, "Task")[task]
    assert after["Subject"] == "Polled" and after["SystemModstamp"] > before["SystemModstamp"]
    assert after["SystemModstamp"] == after["LastModifiedDate"]
    marker = org.changes([{"object": "Account", "type": "UPDATE", "ids": [account], "fields": {"Phone": "2"}}])
    with org.subscribe("/data/ChangeEvents", pb.EARLIEST, num_requested=10) as everything:
        wait_for(lambda: marker["replay_ids"][0] in [e.replay_id.hex() for e in everything.events])
        entities = [org.decode(e)["ChangeEventHeader"]["entityName"] for e in everything.events]
    assert entities == ["Account", "Account"]


def test_the_selection_changes_at_run_time(org):
    assert org.http.put("/__sim/cdc", json={"objects": ["task"]}).json() == {"objects": ["Task"]}
    assert topic_error(org, "/data/AccountChangeEvent") == (grpc.StatusCode.NOT_FOUND, NOT_FOUND)
    task = org.first_ids("Task", 1)[0]
    result = org.changes([{"object": "Task", "type": "UPDATE", "ids": [task], "fields": {"Status": "Deferred"}}])
    assert len(result["replay_ids"]) == 1
    with org.subscribe("/data/TaskChangeEvent", pb.EARLIEST, num_requested=10) as earliest:
        wait_for(lambda: earliest.events)
        assert earliest.events[-1].replay_id.hex() == result["replay_ids"][0]
        header = org.decode(earliest.events[-1])["ChangeEventHeader"]
        assert (header["entityName"], header["recordIds"]) == ("Task", [task])
    bad = org.http.put("/__sim/cdc", json={"objects": ["Task", "Nope"]})
    assert bad.status_code == 400 and org.http.get("/__sim/cdc").json() == {"objects": ["Task"]}


def test_default_traffic_leaves_them_alone_and_a_setting_sends_it_there(org):
    assert org.http.get("/__sim/traffic").json()["objects"] == DEFAULT_SELECTION
    start = org.http.get("/__sim/stats").json()
    made = org.http.get("/__sim/traffic").json()["made"]
    org.http.put("/__sim/traffic", json={"objects": ["Task"], "rate": 500, "changes": made + 20, "running": True})
    wait_for(lambda: org.http.get("/__sim/traffic").json()["made"] == made + 20)
    end = org.http.get("/__sim/stats").json()
    assert end["changes"]["by_object"].get("Task", 0) - start["changes"]["by_object"].get("Task", 0) == 20
    assert end["events_published"] == start["events_published"]


def test_cdc_objects_flag():
    assert build_parser().parse_args(["--cdc-objects", "Task, Account"]).cdc_objects == ["Task", "Account"]
    assert build_parser().parse_args([]).cdc_objects is None
    with pytest.raises(ValueError, match="Nope"):
        Simulator(records=1, cdc_objects=["Nope"])
    assert main(["--records", "1", "--cdc-objects", "Nope"]) == 2
    with SimulatorThread(records=5, cdc_objects=["Shipment__c"]) as running:
        o = Org(running.info)
        try:
            assert o.http.get("/__sim/cdc").json() == {"objects": ["Shipment__c"]}
            assert o.stub.GetTopic(pb.TopicRequest(topic_name="/data/Shipment__ChangeEvent"),
                                   metadata=o.metadata).schema_id
        finally:
            o.close()


def test_share_and_history_objects_have_the_audit_fields_salesforce_documents(org):
    """AccountShare has LastModifiedDate and no SystemModstamp or CreatedDate; AccountHistory has CreatedDate only
    (Object Reference, "AccountShare" and "AccountHistory"). A share's change and delete move its LastModifiedDate,
    which getUpdated and getDeleted then read (REST API Developer Guide, "sObject Get Updated": SystemModstamp, else
    LastModifiedDate)."""
    audit = ("CreatedDate", "LastModifiedDate", "SystemModstamp")
    for obj, has in (("AccountShare", ["LastModifiedDate"]), ("AccountHistory", ["CreatedDate"])):
        fields = {f["name"] for f in org.http.get(f"/services/data/{V}/sobjects/{obj}/describe",
                                                  headers=auth(org)).json()["fields"]}
        assert [f for f in audit if f in fields] == has and {"Id", "IsDeleted", "AccountId"} <= fields
        assert truth(org, obj)
    changed, gone, *_ = [i for i, r in truth(org, "AccountShare").items() if not r["IsDeleted"]]
    before = truth(org, "AccountShare")[changed]["LastModifiedDate"]
    r = org.http.post("/__sim/changes", json=[
        {"object": "AccountShare", "type": "UPDATE", "ids": [changed], "fields": {"RowCause": "Manual"}},
        {"object": "AccountShare", "type": "HARD_DELETE", "ids": [gone]}])
    assert r.status_code == 200, r.text
    after = truth(org, "AccountShare")[changed]
    assert after["RowCause"] == "Manual" and after["LastModifiedDate"] > before and "SystemModstamp" not in after
    window = {"start": after["LastModifiedDate"].replace("+0000", "Z")[:17] + "00Z",
              "end": "2100-01-01T00:00:00Z"}
    ids = org.http.get(f"/services/data/{V}/sobjects/AccountShare/updated/", headers=auth(org), params=window).json()
    deleted = org.http.get(f"/services/data/{V}/sobjects/AccountShare/deleted/", headers=auth(org), params=window).json()
    assert changed in ids["ids"] and [d["id"] for d in deleted["deletedRecords"]] == [gone]
    r = org.http.get(f"/services/data/{V}/queryAll", headers=auth(org),
                     params={"q": f"SELECT Id FROM AccountShare WHERE LastModifiedDate >= {window['start']}"})
    assert {rec["Id"] for rec in r.json()["records"]} == {changed}  # a hard delete leaves queryAll too


def test_order_by_id_is_the_order_id_comparisons_use(org):
    """A keyset `WHERE Id > :last ORDER BY Id` reads every record once: ORDER BY Id sorts ids as `>` compares
    them, across ids whose characters differ only in case (base-62 ids: digits, upper case, lower case)."""
    r = org.http.post("/__sim/changes", json=[{"object": "Task", "type": "CREATE", "fields": {"Subject": "keyset"},
                                               "count": 200}])
    assert r.status_code == 200, r.text
    seen, last = [], None
    while True:
        where = "Subject = 'keyset'" + (f" AND Id > '{last}'" if last else "")
        page = org.http.get(f"/services/data/{V}/query", headers=auth(org),
                            params={"q": f"SELECT Id FROM Task WHERE {where} ORDER BY Id LIMIT 30"}).json()["records"]
        if not page:
            break
        seen += [rec["Id"] for rec in page]
        last = page[-1]["Id"]
    created = [i for i, rec in truth(org, "Task").items() if rec["Subject"] == "keyset"]
    assert seen == sorted(created) and len(seen) == 200
    assert any(a[:15].lower() > b[:15].lower() for a, b in zip(seen, seen[1:], strict=False))  # both cases met
