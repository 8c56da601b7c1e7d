"""Contact's compound fields as a real org has them: Name (a person name) and the Mailing and Other addresses,
in describe (`compoundFieldName`), Bulk CSV, REST and change events (docs/pubsub-cdc.md §5, §6;
docs/bulk-rest-oauth.md §1.9, §3.2)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from replicator.protocol import pubsub_api_pb2 as pb
from replicator.sim.store import OrgStore

from .conftest import V, wait_job
from .pubsub_client import Org, decode_bitmap, events_of, running_org

CAPTURED = Path(__file__).parents[1] / "salesforce" / "data" / "AccountChangeEvent.v1.avsc"
NAME_PARTS = ("Salutation", "FirstName", "MiddleName", "LastName", "Suffix")


@pytest.fixture(scope="module")
def org():
    with running_org(records=40, seed=13) as o:
        yield o


def auth(org: Org) -> dict:
    return {"Authorization": f"Bearer {org.token}"}


def contacts(org: Org) -> list[dict]:
    return [json.loads(line) for line in org.http.get("/__sim/objects/Contact/records").content.splitlines()]


def full_name(rec: dict) -> str:
    """The documented format, written here: Salutation FirstName MiddleName LastName Suffix, empty parts left out."""
    return " ".join(rec[p] for p in NAME_PARTS if rec[p])


def bulk_rows(org: Org, query: str) -> list[dict]:
    r = org.http.post(f"/services/data/{V}/jobs/query", headers=auth(org), json={"operation": "query", "query": query})
    assert r.status_code == 200, r.text
    wait_job(org.http, auth(org), r.json()["id"])
    page = org.http.get(f"/services/data/{V}/jobs/query/{r.json()['id']}/results", headers=auth(org))
    return list(csv.DictReader(io.StringIO(page.content.decode(), newline="")))


def test_describe_has_the_compounds_and_their_components(org):
    fields = {f["name"]: f for f in org.http.get(f"/services/data/{V}/sobjects/Contact/describe",
                                                  headers=auth(org)).json()["fields"]}
    name = fields["Name"]
    assert (name["type"], name["createable"], name["updateable"], name["nameField"]) == ("string", False, False, True)
    assert name["compoundFieldName"] is None and not name["calculated"] and name["filterable"]
    assert {n for n, f in fields.items() if f["compoundFieldName"] == "Name"} == set(NAME_PARTS)
    assert fields["Salutation"]["type"] == "picklist" and fields["LastName"]["nillable"] is False
    assert all(fields[p]["createable"] and fields[p]["updateable"] for p in NAME_PARTS)
    for prefix in ("Mailing", "Other"):
        assert fields[f"{prefix}Address"]["type"] == "address"
        parts = {n for n, f in fields.items() if f["compoundFieldName"] == f"{prefix}Address"}
        assert parts == {prefix + p for p in ("Street", "City", "State", "PostalCode", "Country", "Latitude",
                                              "Longitude")}
    order = list(fields)
    assert order.index("LastName") < order.index("Name") < order.index("OtherAddress") < order.index("MailingAddress")


def test_name_is_computed_from_its_components_and_generation_is_deterministic(org):
    records = contacts(org)
    assert all(rec["Name"] == full_name(rec) for rec in records)
    assert any(rec["Salutation"] for rec in records) and any(rec["MailingCity"] for rec in records)
    assert any(rec["OtherCity"] is None for rec in records) and any(rec["OtherCity"] for rec in records)
    one, two = OrgStore(200, seed=13).stores["Contact"], OrgStore(200, seed=13).stores["Contact"]
    assert list(one.rows()) == list(two.rows())
    assert any(one.as_dict(r)["MiddleName"] for r in one.rows()) and any(one.as_dict(r)["Suffix"] for r in one.rows())


def test_bulk_and_rest_read_name_and_components(org):
    live = [r for r in contacts(org) if not r["IsDeleted"]]
    columns = ["Id", "Name", *NAME_PARTS, "MailingStreet", "MailingCity", "OtherCity", "MailingLatitude"]
    rows = bulk_rows(org, f"SELECT {', '.join(columns)} FROM Contact")
    assert [r["Id"] for r in rows] == [t["Id"] for t in live]
    for row, rec in zip(rows, live, strict=True):
        assert row["Name"] == rec["Name"] and row["MailingStreet"] == rec["MailingStreet"]
        assert row["OtherCity"] == (rec["OtherCity"] or "") and float(row["MailingLatitude"]) == rec["MailingLatitude"]
    r = org.http.post(f"/services/data/{V}/jobs/query", headers=auth(org),
                      json={"operation": "query", "query": "SELECT Id, MailingAddress FROM Contact"})
    assert r.status_code == 400 and r.json()[0]["errorCode"] == "FUNCTIONALITY_NOT_ENABLED"
    target = next(r for r in live if "'" not in r["Name"] and r["MailingCity"])
    q = f"SELECT Id, Name, MailingAddress FROM Contact WHERE Name = '{target['Name']}'"
    got = org.http.get(f"/services/data/{V}/query", headers=auth(org), params={"q": q}).json()["records"]
    first = next(g for g in got if g["Id"] == target["Id"])
    assert first["Name"] == target["Name"] and first["MailingAddress"]["city"] == target["MailingCity"]


def test_change_event_schema_has_person_name_and_addresses(org):
    schema = org.schema(org.stub.GetTopic(pb.TopicRequest(topic_name="/data/ContactChangeEvent"),
                                          metadata=org.metadata).schema_id)
    fields = {f["name"]: f for f in schema["fields"]}
    names = list(fields)
    assert names[:5] == ["ChangeEventHeader", "AccountId", "Name", "OtherAddress", "MailingAddress"]
    assert not set(NAME_PARTS) & set(names) and "MailingCity" not in names
    captured = {f["name"]: f for f in json.loads(CAPTURED.read_text())["fields"]}
    switchable = captured["Name"]["type"][2]
    person = fields["Name"]["type"][1]
    assert fields["Name"]["type"][0] == "null" and fields["Name"]["doc"] == "Data:PersonName"
    assert (person["name"], person["fields"]) == ("PersonName", switchable["fields"])
    assert fields["OtherAddress"]["type"] == captured["BillingAddress"]["type"]  # defines Address
    assert fields["MailingAddress"]["type"] == ["null", "Address"]  # refers to it by name


def test_update_of_components_names_nested_bits_and_the_name_follows(org):
    contact = next(r for r in contacts(org) if not r["IsDeleted"] and r["Salutation"])
    result = org.changes([{"object": "Contact", "type": "UPDATE", "ids": [contact["Id"]],
                           "fields": {"LastName": "Lovelace", "MailingCity": "Oslo", "MiddleName": "B."},
                           "nulled": ["Salutation"]}])
    event, = events_of(org, result["replay_ids"])
    header = event["ChangeEventHeader"]
    assert decode_bitmap(event["_schema"], header["changedFields"]) == {
        "Name.LastName", "Name.MiddleName", "Name.Salutation", "MailingAddress.City", "LastModifiedDate"}
    assert decode_bitmap(event["_schema"], header["nulledFields"]) == {"Name.Salutation"}
    assert event["Name"] == {"Salutation": None, "FirstName": None, "LastName": "Lovelace", "MiddleName": "B.",
                             "InformalName": None, "Suffix": None}
    assert event["MailingAddress"]["City"] == "Oslo" and event["MailingAddress"]["Street"] is None
    assert event["OtherAddress"] is None
    truth = org.record("Contact", contact["Id"])
    assert truth["Name"] == full_name(truth) and "Lovelace" in truth["Name"] and truth["Salutation"] is None
    rows = bulk_rows(org, f"SELECT Id, Name FROM Contact WHERE Id = '{contact['Id']}'")
    assert rows == [{"Id": contact["Id"], "Name": truth["Name"]}]


def test_create_carries_the_whole_name_and_the_name_cannot_be_set(org):
    result = org.changes([{"object": "Contact", "type": "CREATE",
                           "fields": {"FirstName": "Grace", "LastName": "Hopper", "Suffix": "PhD",
                                      "MailingCountry": "USA"}}])
    event, = events_of(org, result["replay_ids"])
    assert event["Name"]["FirstName"] == "Grace" and event["Name"]["Suffix"] == "PhD"
    assert event["MailingAddress"]["Country"] == "USA" and event["OtherAddress"] is None
    assert org.record("Contact", result["ids"][0][0])["Name"] == "Grace Hopper PhD"
    r = org.http.post("/__sim/changes", json=[{"object": "Contact", "type": "UPDATE",
                                                "ids": result["ids"][0], "fields": {"Name": "X"}}])
    assert r.status_code == 400 and "INVALID_FIELD" in r.json()["error"]
