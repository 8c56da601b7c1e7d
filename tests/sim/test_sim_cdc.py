"""Change data capture: schema shape against the captured Account schemas, event bodies and bitmaps
(docs/pubsub-cdc.md §5, §6), store agreement (Bulk, ground truth), transactions, GAP and GAP_OVERFLOW,
schema changes, traffic and the CLI."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import re
import selectors
import signal
import ssl
import subprocess
import sys
from pathlib import Path

import fastavro
import httpx
import pytest

from replicator.protocol import pubsub_api_pb2 as pb
from replicator.sim.faults import Faults

from .conftest import V, wait_for, wait_job
from .pubsub_client import Org, decode_bitmap, events_of, running_org

# A live org's Account schema (captured via GetSchema, docs/pubsub-cdc.md §5), kept with the client's tests.
CAPTURED = Path(__file__).parents[1] / "salesforce" / "data" / "AccountChangeEvent.v1.avsc"
ACCOUNTS = "/data/AccountChangeEvent"


@pytest.fixture(scope="module")
def org():
    with running_org(records=40, seed=5) as o:
        yield o


@pytest.fixture(autouse=True)
def reset(org):
    yield
    org.faults(**Faults().to_dict())


def schema_of(org: Org, topic: str) -> dict:
    return org.schema(org.stub.GetTopic(pb.TopicRequest(topic_name=topic), metadata=org.metadata).schema_id)


def test_schemas_look_like_the_captured_account_schema(org):
    captured = json.loads(CAPTURED.read_text())
    for topic, record in ((ACCOUNTS, "AccountChangeEvent"), ("/data/Invoice__ChangeEvent", "Invoice__ChangeEvent"),
                          ("/data/ContactChangeEvent", "ContactChangeEvent")):
        info = org.stub.GetTopic(pb.TopicRequest(topic_name=topic), metadata=org.metadata)
        assert re.fullmatch(r"[A-Za-z0-9_-]{22}", info.schema_id)
        schema = org.schema(info.schema_id)
        fastavro.parse_schema(schema)
        assert (schema["name"], schema["namespace"]) == (record, "com.sforce.eventbus")
        assert schema["fields"][0] == captured["fields"][0]  # the header, field for field
        names = [f["name"] for f in schema["fields"]]
        assert not {"Id", "IsDeleted", "SystemModstamp"} & set(names)
        for f in schema["fields"][1:]:
            assert f["type"][0] == "null" and f["default"] is None and ":" in f["doc"]
    account = schema_of(org, ACCOUNTS)
    names = [f["name"] for f in account["fields"]]
    assert "BillingAddress" in names and "BillingState" not in names
    address = account["fields"][names.index("BillingAddress")]
    captured_address = next(f for f in captured["fields"] if f["name"] == "BillingAddress")
    assert address["type"] == captured_address["type"]
    assert names.index("BillingAddress") < names.index("Regions__c")  # where its components are, not at the end
    docs = {f["name"]: f["doc"] for f in account["fields"]}
    assert docs["CreatedDate"] == "CreatedDate:DateTime" and docs["Phone"] == "Data:Phone"
    assert re.fullmatch(r"Data:MultiEnum:00N\w{12}", docs["Regions__c"])


def test_update_bitmap_names_exactly_the_changed_fields(org):
    account = org.first_ids("Account", 1)[0]
    result = org.changes([{"object": "Account", "type": "UPDATE", "ids": [account],
                           "fields": {"Phone": "555", "BillingState": "CA"}, "nulled": ["Website"]}])
    event, = events_of(org, result["replay_ids"])
    header = event["ChangeEventHeader"]
    assert header["changeType"] == "UPDATE" and header["recordIds"] == [account]
    assert decode_bitmap(event["_schema"], header["changedFields"]) == \
        {"Phone", "Website", "LastModifiedDate", "BillingAddress.State"}
    assert decode_bitmap(event["_schema"], header["nulledFields"]) == {"Website"}
    assert all(re.fullmatch(r"(\d+-)?0x([0-9A-F]{2})+", b) for b in header["changedFields"])
    assert event["Phone"] == "555" and event["Website"] is None and event["Name"] is None
    assert event["BillingAddress"]["State"] == "CA" and event["BillingAddress"]["City"] is None
    assert event["LastModifiedDate"] == header["commitTimestamp"] == result["commit_timestamp"]
    truth = org.record("Account", account)
    assert truth["Phone"] == "555" and truth["BillingState"] == "CA" and truth["Website"] is None
    stamp = truth["SystemModstamp"]
    assert stamp == truth["LastModifiedDate"]
    assert epoch_ms(stamp) == header["commitTimestamp"]


def epoch_ms(text: str) -> int:
    value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return int(value.timestamp() * 1000)


def test_a_replayed_transaction_commits_at_the_times_given():
    """commit_timestamp and system_modstamp: a recorded transaction replayed with its own times (an org made again
    as an earlier run had it, tests/fixtures/upgrade_2026_11_30); never before the previous commit."""
    with running_org(records=5, seed=5) as own:
        account = own.first_ids("Account", 1)[0]
        at, stamp = 1_796_040_000_000, 1_796_039_998_000  # 2026-11-30T12:00:00Z, and two seconds before it
        body = {"commit_timestamp": at, "system_modstamp": stamp,
                "changes": [{"object": "Account", "type": "UPDATE", "ids": [account], "fields": {"Phone": "r-1"}}]}
        result = own.changes(body)
        assert result["commit_timestamp"] == at
        event, = events_of(own, result["replay_ids"], ACCOUNTS)
        assert event["ChangeEventHeader"]["commitTimestamp"] == at and event["LastModifiedDate"] == stamp
        assert epoch_ms(own.record("Account", account)["SystemModstamp"]) == stamp
        for refused in ({**body, "commit_timestamp": at - 1000, "system_modstamp": None},  # before the previous one
                        {**body, "system_modstamp": at + 1000}, {**body, "commit_timestamp": None},
                        {**body, "visible_after_seconds": 1}):
            r = own.http.post("/__sim/changes", json=refused)
            assert r.status_code == 400, (refused, r.text)
        assert own.changes(body)["commit_timestamp"] == at  # the same time again is no earlier


def test_change_shows_up_in_bulk_results(org):
    account = org.first_ids("Account", 2)[1]
    result = org.changes([{"object": "Account", "type": "UPDATE", "ids": [account], "fields": {"Phone": "bulk-1"}}])
    auth = {"Authorization": f"Bearer {org.token}"}
    r = org.http.post(f"/services/data/{V}/jobs/query", headers=auth, json={
        "operation": "query", "query": f"SELECT Id, Phone, SystemModstamp FROM Account WHERE Id = '{account}'"})
    assert r.status_code == 200, r.text
    wait_job(org.http, auth, r.json()["id"])
    page = org.http.get(f"/services/data/{V}/jobs/query/{r.json()['id']}/results", headers=auth)
    rows = list(csv.DictReader(io.StringIO(page.content.decode())))
    assert rows[0]["Phone"] == "bulk-1"
    assert epoch_ms(rows[0]["SystemModstamp"]) == result["commit_timestamp"]


def test_create_delete_undelete_shapes(org):
    created = org.changes([{"object": "Account", "type": "CREATE",
                            "fields": {"Name": "Fresh", "Phone": "1", "BillingCity": "Oslo"}}])
    new_id = created["ids"][0][0]
    deleted = org.changes([{"object": "Account", "type": "DELETE", "ids": [new_id]}])
    assert org.record("Account", new_id)["IsDeleted"] is True
    undeleted = org.changes([{"object": "Account", "type": "UNDELETE", "ids": [new_id]}])
    assert org.record("Account", new_id)["IsDeleted"] is False
    create, delete, undelete = events_of(org, created["replay_ids"] + deleted["replay_ids"] + undeleted["replay_ids"])
    assert create["ChangeEventHeader"]["changedFields"] == [] and create["Name"] == "Fresh"
    assert create["BillingAddress"]["City"] == "Oslo" and create["Active__c"] is False
    assert create["CreatedDate"] == create["LastModifiedDate"] == created["commit_timestamp"]
    assert delete["ChangeEventHeader"]["changeType"] == "DELETE"
    assert all(v is None for k, v in delete.items() if not k.startswith("_") and k != "ChangeEventHeader")
    assert undelete["Name"] == "Fresh" and undelete["LastModifiedDate"] == undeleted["commit_timestamp"]
    r = org.http.post("/__sim/changes", json=[{"object": "Account", "type": "UNDELETE", "ids": [new_id]}])
    assert r.status_code == 400  # not deleted: nothing applied


def test_transaction_shares_key_and_counts_sequence(org):
    ids = org.first_ids("Contact", 3)
    first = org.changes([{"object": "Contact", "type": "UPDATE", "ids": ids, "fields": {"Email": "x@y.z"}},
                         {"object": "Account", "type": "CREATE", "fields": {"Name": "T"}}])
    second = org.changes([{"object": "Contact", "type": "UPDATE", "ids": ids[:1], "fields": {"LastName": "Lee"}}])
    a, b, c = events_of(org, first["replay_ids"] + second["replay_ids"])
    assert a["ChangeEventHeader"]["recordIds"] == ids and a["Email"] == "x@y.z"
    assert a["ChangeEventHeader"]["transactionKey"] == b["ChangeEventHeader"]["transactionKey"]
    assert [a["ChangeEventHeader"]["sequenceNumber"], b["ChangeEventHeader"]["sequenceNumber"]] == [1, 2]
    assert c["ChangeEventHeader"]["commitNumber"] > a["ChangeEventHeader"]["commitNumber"]
    assert c["ChangeEventHeader"]["transactionKey"] != a["ChangeEventHeader"]["transactionKey"]
    assert "Lee" in org.record("Contact", ids[0])["Name"].split(" ")  # the computed Name follows


def test_gap_events_are_header_only(org):
    account = org.first_ids("Account", 3)[2]
    forced = org.changes([{"object": "Account", "type": "UPDATE", "ids": [account], "fields": {"Phone": "gap"},
                           "force_gap": True}])
    org.faults(gap_event_bytes=500)
    big = org.changes([{"object": "Account", "type": "CREATE", "fields": {"Name": "Big", "Description": "x" * 2000}}])
    for event, kind in zip(events_of(org, forced["replay_ids"] + big["replay_ids"]), ("GAP_UPDATE", "GAP_CREATE"),
                           strict=True):
        header = event["ChangeEventHeader"]
        assert header["changeType"] == kind
        assert header["changedFields"] == header["nulledFields"] == header["diffFields"] == []
        assert all(v is None for k, v in event.items() if not k.startswith("_") and k != "ChangeEventHeader")
    assert org.record("Account", account)["Phone"] == "gap"  # the store still changed
    assert org.record("Account", big["ids"][0][0])["Description"] == "x" * 2000


def test_overflow_after_threshold_emits_one_gap_overflow_per_entity(org):
    contacts = org.first_ids("Contact", 5)[3:5]
    org.faults(overflow_threshold=3)
    result = org.changes([
        {"object": "Account", "type": "CREATE", "fields": {"Name": "O"}, "count": 2},  # counts 2
        {"object": "Contact", "type": "UPDATE", "ids": contacts, "fields": {"Phone": "ov"}},  # 2 fields each
        {"object": "Account", "type": "CREATE", "fields": {"Name": "P"}},
    ])
    events = events_of(org, result["replay_ids"])
    kinds = [(e["ChangeEventHeader"]["changeType"], e["ChangeEventHeader"]["entityName"]) for e in events]
    assert kinds == [("CREATE", "Account"), ("GAP_OVERFLOW", "Contact"), ("GAP_OVERFLOW", "Account")]
    assert events[0]["ChangeEventHeader"]["recordIds"] == result["ids"][0]
    for event in events[1:]:
        assert event["ChangeEventHeader"]["recordIds"] == ["000000000000000AAA"]
        assert event["ChangeEventHeader"]["changedFields"] == []
    assert [e["ChangeEventHeader"]["sequenceNumber"] for e in events] == [1, 2, 3]
    assert org.record("Contact", contacts[1])["Phone"] == "ov"  # overflowed changes still apply


def test_schema_change_inserts_the_field_and_changes_the_schema_id(org):
    before = org.stub.GetTopic(pb.TopicRequest(topic_name="/data/Invoice__ChangeEvent"), metadata=org.metadata)
    r = org.http.post("/__sim/schema/Invoice__c/fields", json={"name": "Loyalty_Tier__c", "type": "string"})
    assert r.status_code == 200, r.text
    after = org.stub.GetTopic(pb.TopicRequest(topic_name="/data/Invoice__ChangeEvent"), metadata=org.metadata)
    assert after.schema_id == r.json()["schema_id"] != before.schema_id
    names = [f["name"] for f in org.schema(after.schema_id)["fields"]]
    old = [f["name"] for f in org.schema(before.schema_id)["fields"]]
    last_custom = [n for n in old if n.endswith("__c")][-1]  # Legacy_Code__c
    assert names.index("Loyalty_Tier__c") == old.index(last_custom) + 1 < len(names) - 1
    assert names[-1] == "LastModifiedDate"
    invoice = org.first_ids("Invoice__c", 1)[0]
    result = org.changes([{"object": "Invoice__c", "type": "UPDATE", "ids": [invoice],
                           "fields": {"Loyalty_Tier__c": "Gold"}}])
    event, = events_of(org, result["replay_ids"])
    assert event["_schema_id"] == after.schema_id and event["Loyalty_Tier__c"] == "Gold"
    assert decode_bitmap(event["_schema"], event["ChangeEventHeader"]["changedFields"]) == \
        {"Loyalty_Tier__c", "LastModifiedDate"}
    auth = {"Authorization": f"Bearer {org.token}"}
    describe = org.http.get(f"/services/data/{V}/sobjects/Invoice__c/describe", headers=auth).json()
    assert "Loyalty_Tier__c" in [f["name"] for f in describe["fields"]]
    q = org.http.get(f"/services/data/{V}/query", headers=auth,
                     params={"q": f"SELECT Loyalty_Tier__c FROM Invoice__c WHERE Id = '{invoice}'"}).json()
    assert q["records"][0]["Loyalty_Tier__c"] == "Gold"
    assert org.record("Invoice__c", invoice)["Loyalty_Tier__c"] == "Gold"


def test_traffic_put_runs_and_pauses(org):
    before = org.http.get("/__sim/stats").json()["changes"]["total"]
    r = org.http.put("/__sim/traffic", json={"running": True, "rate": 500, "transaction_size": 3,
                                              "records_per_event": 2, "changes": before + 200,
                                              "platform_event_rate": 1.0})
    assert r.status_code == 200, r.text
    wait_for(lambda: org.http.get("/__sim/traffic").json()["running"] is False)
    stats = org.http.get("/__sim/stats").json()
    assert stats["changes"]["total"] - before >= 200 - 2
    assert sum(stats["changes"]["by_type"].values()) == stats["changes"]["total"]
    assert re.fullmatch(r"[0-9a-f]{20}", stats["last_replay_id"])
    assert org.http.put("/__sim/traffic", json={"rate": -1}).status_code == 400
    with org.subscribe("/event/Order_Ready__e", pb.EARLIEST, num_requested=1) as sub:
        wait_for(lambda: sub.events)
        assert org.decode(sub.events[0])["Order_Id__c"].startswith("ORD-")


def test_cli_rate_and_changes_reach_the_count():
    proc = subprocess.Popen([sys.executable, "-m", "replicator.sim", "--records", "100", "--rate", "50",
                             "--changes", "100"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        assert sel.select(timeout=15), "no ready line"
        info = json.loads(proc.stdout.readline())
        assert re.fullmatch(r"127\.0\.0\.1:\d+", info["pubsub_endpoint"]) and info["tenant_id"] == info["org_id"]
        with httpx.Client(base_url=info["instance_url"], verify=info["ca_file"] and _ctx(info["ca_file"])) as http:
            stats = wait_for(lambda: (s := http.get("/__sim/stats").json())["changes"]["total"] >= 100 and s)
            assert stats["changes"]["total"] == 100
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0


def _ctx(ca_file: str):
    return ssl.create_default_context(cafile=ca_file)
