"""The timestamp_precision knob: with "s", every timestamp the simulator emits is a whole second, in the store,
Bulk CSV, REST JSON, job info and change events (Salesforce datetime fields store no milliseconds:
docs/salesforce-coverage.md, "Time and visibility"). The default stays "ms"."""

from __future__ import annotations

import csv
import io
import json

import pytest

from replicator.protocol import pubsub_api_pb2 as pb
from replicator.sim.faults import Faults

from .conftest import V, wait_for
from .pubsub_client import Org, running_org

DATETIMES = ("CreatedDate", "LastModifiedDate", "SystemModstamp", "Paid_At__c")


@pytest.fixture(scope="module")
def org():
    with running_org(records=20, seed=5) as o:
        yield o


def make_changes(org: Org) -> None:
    """Every kind of change, with datetime values given to the millisecond, then live traffic."""
    account, other = org.first_ids("Account", 2)
    invoice = org.first_ids("Invoice__c", 1)[0]
    org.changes([{"object": "Account", "type": "CREATE", "fields": {"Name": "Whole seconds"}},
                 {"object": "Account", "type": "UPDATE", "ids": [account], "fields": {"Phone": "1"}},
                 {"object": "Invoice__c", "type": "UPDATE", "ids": [invoice],
                  "fields": {"Paid_At__c": "2025-03-04T05:06:07.891Z"}}])
    org.changes([{"object": "Account", "type": "DELETE", "ids": [other]}])
    org.changes([{"object": "Account", "type": "UNDELETE", "ids": [other]},
                 {"object": "Invoice__c", "type": "UPDATE", "ids": [invoice],
                  "fields": {"Paid_At__c": 1741064767891}}])
    made = org.http.put("/__sim/traffic", json={"running": True, "rate": 500, "changes": 200,
                                                "platform_event_rate": 0.5}).json()["made"]
    wait_for(lambda: org.http.get("/__sim/traffic").json()["made"] >= made + 200)


def bulk_rows(org: Org, auth: dict, soql: str) -> tuple[dict, list[dict]]:
    job = org.http.post(f"/services/data/{V}/jobs/query", json={"operation": "queryAll", "query": soql},
                        headers=auth).json()

    def done():
        info = org.http.get(f"/services/data/{V}/jobs/query/{job['id']}", headers=auth).json()
        return info if info["state"] == "JobComplete" else None
    info = wait_for(done)
    r = org.http.get(f"/services/data/{V}/jobs/query/{job['id']}/results", headers=auth)
    return info, list(csv.DictReader(io.StringIO(r.text, newline="")))


def test_default_precision_is_whole_seconds():
    assert Faults().timestamp_precision == "s"
    with pytest.raises(ValueError, match="timestamp_precision"):
        Faults().update({"timestamp_precision": "us"})


def test_whole_seconds_everywhere(org):
    org.faults(timestamp_precision="ms")
    org.changes([{"object": "Account", "type": "UPDATE", "ids": org.first_ids("Account", 1),
                  "fields": {"Phone": "before the switch"}}])  # a commit to the millisecond first
    org.faults(purge_before_now=True, timestamp_precision="s", keepalive_seconds=0.05)
    make_changes(org)
    auth = {"Authorization": f"Bearer {org.token}"}

    for obj in ("Account", "Contact", "Opportunity", "Invoice__c"):
        fields = [f for f in DATETIMES if obj == "Invoice__c" or f != "Paid_At__c"]
        for line in org.http.get(f"/__sim/objects/{obj}/records").text.splitlines():
            record = json.loads(line)
            assert all(record[f] is None or record[f].endswith(".000Z") for f in fields), record
        info, rows = bulk_rows(org, auth, f"SELECT Id, {', '.join(fields)} FROM {obj}")
        assert rows and all(row[f] == "" or row[f].endswith(".000Z") for row in rows for f in fields), obj
        assert info["createdDate"].endswith(".000+0000") and info["systemModstamp"].endswith(".000+0000")
        records = org.http.get(f"/services/data/{V}/query", params={"q": f"SELECT {', '.join(fields)} FROM {obj}"},
                               headers=auth).json()["records"]
        assert all(r[f] is None or r[f].endswith(".000+0000") for r in records for f in fields), obj

    events = []
    last = org.http.get("/__sim/stats").json()["last_replay_id"]
    for topic in ("/data/ChangeEvents", "/event/Order_Ready__e"):
        with org.subscribe(topic, pb.EARLIEST, num_requested=100) as sub:
            wait_for(lambda sub=sub: sub.keep_flowing(100) and sub.scanned >= last)
            events += [org.decode(e) for e in sub.events]
    stamps = [e["ChangeEventHeader"]["commitTimestamp"] for e in events if "ChangeEventHeader" in e]
    stamps += [e[f] for e in events for f in ("CreatedDate", "LastModifiedDate", "Paid_At__c", "Ready_At__c")
               if e.get(f) is not None]
    assert len(stamps) > 400 and any("Ready_At__c" in e for e in events)
    assert all(ms % 1000 == 0 for ms in stamps), sorted({ms % 1000 for ms in stamps})

