"""cdc.py: header bitmaps (docs/pubsub-cdc.md §6) and event decoding over the two captured Account
schemas."""

from __future__ import annotations

import asyncio
import copy
import io
import json
from pathlib import Path
from typing import Any

import fastavro
import pytest

from replicator.model import StreamEvent, Version
from replicator.salesforce.cdc import CdcSchema, SchemaCache, decode_bitmap, decode_event, field_layout

DATA = Path(__file__).parent / "data"
V1 = json.loads((DATA / "AccountChangeEvent.v1.avsc").read_text())
V2 = json.loads((DATA / "AccountChangeEvent.v2.avsc").read_text())
TOPIC = "/data/AccountChangeEvent"
REPLAY = bytes([0, 0, 0, 0, 0, 7, 111, 91, 0, 0])


def doc_schema() -> dict[str, Any]:
    """The layout of the org behind the documented examples: v1 without RecordTypeId (that org had no record
    types), so 4 = BillingAddress, 7 = Fax, 22 = LastModifiedDate exactly as docs/pubsub-cdc.md §6
    lists them."""
    schema = copy.deepcopy(V1)
    schema["fields"] = [f for f in schema["fields"] if f["name"] != "RecordTypeId"]
    return schema


# ---------------------------------------------------------------------------------------------------------
# decode_bitmap


def test_documented_example_fax_and_last_modified_date():
    assert decode_bitmap(["0x400080"], doc_schema()) == ["Fax", "LastModifiedDate"]


def test_documented_nested_example_billing_state():
    assert decode_bitmap(["0x400000", "4-0x04"], doc_schema()) == ["LastModifiedDate", "BillingAddress.State"]


def test_documented_examples_over_captured_v1_schema():
    # The captured v1 schema has RecordTypeId at 3, so the same fields sit one bit higher.
    assert [f["name"] for f in V1["fields"][:9]] == [
        "ChangeEventHeader", "Name", "Type", "RecordTypeId", "ParentId", "BillingAddress", "ShippingAddress",
        "Phone", "Fax",
    ]
    assert decode_bitmap(["0x800100"], V1) == ["Fax", "LastModifiedDate"]
    assert decode_bitmap(["0x800000", "5-0x04"], V1) == ["LastModifiedDate", "BillingAddress.State"]
    # The documented bitmap read against this org's schema names other fields: positions are per schema.
    assert decode_bitmap(["0x400080"], V1) == ["Phone", "CreatedById"]
    # ... and its nested element points at ParentId, a string: not a compound, so the event is refused.
    with pytest.raises(ValueError, match="not a compound"):
        decode_bitmap(["0x400000", "4-0x04"], V1)


def test_v2_bitmaps_decode_against_v2_schema():
    assert V2["fields"][82]["name"] == "Some_Check_Box__c"
    bitmap = [hex((1 << 82) | (1 << 83) | (1 << 85) | (1 << 23))]
    assert decode_bitmap(bitmap, V2) == ["LastModifiedDate", "Some_Check_Box__c", "Level__pc", "GUID__pc"]


def test_wrong_schema_names_other_fields():
    """Why schemas are cached by the event's own schema_id: a v2 bitmap read with v1 is silently wrong."""
    bitmap = [hex((1 << 82) | (1 << 84))]
    assert decode_bitmap(bitmap, V2) == ["Some_Check_Box__c", "Languages__pc"]
    assert decode_bitmap(bitmap, V1) == ["Level__pc", "GUID__pc"]
    # The last v2 field has no position in v1 at all.
    with pytest.raises(ValueError, match="beyond"):
        decode_bitmap([hex(1 << 85)], V1)


def test_named_type_reference_resolves_to_the_earlier_record():
    layout = field_layout(V1)
    address = ("Street", "City", "State", "PostalCode", "Country", "StateCode", "CountryCode", "Latitude",
               "Longitude", "Xyz", "GeocodeAccuracy")
    for pos, name in ((5, "BillingAddress"), (6, "ShippingAddress"), (26, "PersonMailingAddress")):
        assert layout.names[pos] == name
        assert layout.nested[pos] == address
    assert decode_bitmap(["6-0x3"], V1) == ["ShippingAddress.Street", "ShippingAddress.City"]
    assert decode_bitmap(["72-0x2"], V1) == ["Some_Geolocation__c.Longitude"]


def test_three_way_union_takes_the_record_branch():
    assert decode_bitmap(["1-0x06"], V1) == ["Name.FirstName", "Name.LastName"]


def test_lowercase_odd_digits_and_any_order():
    assert decode_bitmap(["5-0x4", "0x800100"], V1) == ["Fax", "LastModifiedDate", "BillingAddress.State"]
    assert decode_bitmap(["0x80010a"], V1) == decode_bitmap(["0X80010A"], V1)
    assert decode_bitmap(["0x2"], V1) == ["Name"]


def test_fully_set_compound_is_not_collapsed():
    names = decode_bitmap(["0x20", "5-0x7FF"], V1)
    assert names[0] == "BillingAddress"
    assert len(names) == 12 and all(n.startswith("BillingAddress.") for n in names[1:])


def test_empty_bitmap_is_no_fields():
    assert decode_bitmap([], V1) == []
    assert decode_bitmap(["0x0"], V1) == []


@pytest.mark.parametrize(
    "bitmaps",
    [[hex(1 << 85)], ["5-0x800"], ["2-0x1"], ["99-0x1"], ["400080"], ["0x"], ["0x4_0"], ["0xZZ"], ["-0x1"]],
)
def test_malformed_or_out_of_range_bitmaps_raise(bitmaps):
    with pytest.raises(ValueError):
        decode_bitmap(bitmaps, V1)


def test_cdc_schema_memoises_bitmaps_without_changing_results():
    cdc = CdcSchema("s1", V1)
    assert decode_bitmap(["0x800100"], cdc) == ["Fax", "LastModifiedDate"]
    assert decode_bitmap(["0x800100"], cdc) == ["Fax", "LastModifiedDate"]
    with pytest.raises(ValueError):
        decode_bitmap(["5-0x800"], cdc)


# ---------------------------------------------------------------------------------------------------------
# decode_event


def header(change_type: str, *, ids=("001000000000001AAA",), changed=(), nulled=(), diff=()) -> dict[str, Any]:
    return {
        "entityName": "Account",
        "recordIds": list(ids),
        "changeType": change_type,
        "changeOrigin": "com/salesforce/api/rest/62.0;client=test",
        "transactionKey": "00097360-44a0-7c2e-a172-97381ae22f82",
        "sequenceNumber": 3,
        "commitTimestamp": 1714172795000,
        "commitNumber": 72657170033,
        "commitUser": "005000000000001AAA",
        "nulledFields": list(nulled),
        "diffFields": list(diff),
        "changedFields": list(changed),
    }


def encode(schema: dict[str, Any], body: dict[str, Any]) -> bytes:
    record = {f["name"]: None for f in schema["fields"]}
    record.update(body)
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(copy.deepcopy(schema)), record)
    return out.getvalue()


@pytest.fixture(scope="module")
def v1() -> CdcSchema:
    return CdcSchema("schema-v1", V1)


@pytest.fixture(scope="module")
def v2() -> CdcSchema:
    return CdcSchema("schema-v2", V2)


def full_create_body() -> dict[str, Any]:
    return {
        "ChangeEventHeader": header("CREATE"),
        "Name": "Acme",
        "Type": "Customer",
        "BillingAddress": {"Street": "1 Main", "City": "Paris", "State": None, "Latitude": 48.85},
        "Phone": "+33 1",
        "AnnualRevenue": 12.5,
        "NumberOfEmployees": 40,
        "CreatedDate": 1714172795000,
        "LastModifiedDate": 1714172795000,
        "PersonHasOptedOutOfEmail": False,
        "Some_Date__c": 1714089600000,
        "Some_Time__c": 3_600_000,
    }


def test_create_carries_every_non_null_field(v1):
    event = decode_event(TOPIC, REPLAY, "schema-v1", encode(V1, full_create_body()), v1)
    assert event.error is None and not event.keepalive
    assert event.commit_timestamp == 1714172795000 and event.schema_id == "schema-v1"
    (change,) = event.changes
    assert change.object == "Account" and change.record_id == "001000000000001AAA"
    assert change.change_type == "CREATE"
    assert change.version == Version(1714172795000, 72657170033, 3)
    assert change.transaction_key == "00097360-44a0-7c2e-a172-97381ae22f82"
    assert change.commit_user == "005000000000001AAA"
    assert change.change_origin == "com/salesforce/api/rest/62.0;client=test"
    assert change.replay_id == REPLAY and change.schema_id == "schema-v1"
    assert change.fields == {
        "Name": "Acme",
        "Type": "Customer",
        "BillingAddress.Street": "1 Main",
        "BillingAddress.City": "Paris",
        "BillingAddress.Latitude": 48.85,
        "Phone": "+33 1",
        "AnnualRevenue": 12.5,
        "NumberOfEmployees": 40,
        "CreatedDate": 1714172795000,
        "LastModifiedDate": 1714172795000,
        "PersonHasOptedOutOfEmail": False,
        "Some_Date__c": 1714089600000,
        "Some_Time__c": 3_600_000,
    }
    assert change.nulled == frozenset() and change.diff_fields == frozenset()


def test_update_carries_only_changed_fields_and_nested_subfields(v1):
    body = {
        "ChangeEventHeader": header(
            "UPDATE", changed=["0x800100", "5-0x04"], nulled=["0x80"], diff=["0x20000"]
        ),
        "Fax": "+1 555",
        "Description": "long text",
        "LastModifiedDate": 1714172795001,
        "BillingAddress": {"State": "CA"},
    }
    (change,) = decode_event(TOPIC, REPLAY, "schema-v1", encode(V1, body), v1).changes
    assert change.change_type == "UPDATE"
    # Description carries a value but its bit is not in changedFields: it is not a change.
    assert change.fields == {"Fax": "+1 555", "LastModifiedDate": 1714172795001, "BillingAddress.State": "CA"}
    assert change.nulled == frozenset({"Phone"})
    assert change.diff_fields == frozenset({"Description"})


def test_update_of_changed_field_set_to_null(v1):
    body = {"ChangeEventHeader": header("UPDATE", changed=["0x800080"], nulled=["0x80"]), "LastModifiedDate": 5}
    (change,) = decode_event(TOPIC, REPLAY, "s", encode(V1, body), v1).changes
    assert change.fields == {"Phone": None, "LastModifiedDate": 5}
    assert change.nulled == frozenset({"Phone"})


def test_update_against_v2_uses_v2_positions(v2):
    body = {
        "ChangeEventHeader": header("UPDATE", changed=[hex((1 << 82) | (1 << 85) | (1 << 23))]),
        "Some_Check_Box__c": True,
        "GUID__pc": "g-1",
        "LastModifiedDate": 9,
    }
    (change,) = decode_event(TOPIC, REPLAY, "schema-v2", encode(V2, body), v2).changes
    assert change.fields == {"LastModifiedDate": 9, "Some_Check_Box__c": True, "GUID__pc": "g-1"}


@pytest.mark.parametrize("change_type", ["DELETE", "GAP_CREATE", "GAP_UPDATE", "GAP_DELETE", "GAP_UNDELETE"])
def test_delete_and_gap_events_carry_no_fields(v1, change_type):
    ids = ["001000000000001AAA", "001000000000002AAA"]
    body = {"ChangeEventHeader": header(change_type, ids=ids)}
    event = decode_event(TOPIC, REPLAY, "s", encode(V1, body), v1)
    assert [c.record_id for c in event.changes] == ids
    assert all(c.change_type == change_type and c.fields == {} for c in event.changes)


def test_one_change_per_record_id_with_own_fields_dict(v1):
    ids = ["001000000000001AAA", "001000000000002AAA", "001*"]
    body = {"ChangeEventHeader": header("UPDATE", ids=ids, changed=["0x100"]), "Fax": "f"}
    event = decode_event(TOPIC, REPLAY, "s", encode(V1, body), v1)
    assert [c.record_id for c in event.changes] == ids
    assert all(c.fields == {"Fax": "f"} for c in event.changes)
    assert event.changes[0].fields is not event.changes[1].fields


def test_overflow_event(v1):
    body = {"ChangeEventHeader": header("GAP_OVERFLOW", ids=["000000000000000AAA"])}
    (change,) = decode_event(TOPIC, REPLAY, "s", encode(V1, body), v1).changes
    assert change.change_type == "GAP_OVERFLOW" and change.record_id == "000000000000000AAA"


def test_undelete_carries_the_record(v1):
    body = full_create_body()
    body["ChangeEventHeader"] = header("UNDELETE")
    (change,) = decode_event(TOPIC, REPLAY, "s", encode(V1, body), v1).changes
    assert change.fields["Name"] == "Acme" and change.fields["BillingAddress.City"] == "Paris"


def test_person_name_record_in_three_way_union(v1):
    body = {
        "ChangeEventHeader": header("UPDATE", changed=["0x800000", "1-0x06"]),
        "Name": {"FirstName": "Ada", "LastName": "Lovelace"},
        "LastModifiedDate": 1,
    }
    (change,) = decode_event(TOPIC, REPLAY, "s", encode(V1, body), v1).changes
    assert change.fields == {"LastModifiedDate": 1, "Name.FirstName": "Ada", "Name.LastName": "Lovelace"}


def test_platform_event_keeps_the_record():
    schema = {
        "type": "record",
        "name": "Order_Event__e",
        "fields": [{"name": "CreatedDate", "type": "long"}, {"name": "Amount__c", "type": ["null", "double"]}],
    }
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(copy.deepcopy(schema)), {"CreatedDate": 7, "Amount__c": 2.0})
    event = decode_event("/event/Order_Event__e", REPLAY, "pe", out.getvalue(), schema)
    assert event.error is None and event.changes == ()
    assert event.record == {"CreatedDate": 7, "Amount__c": 2.0} and event.commit_timestamp == 7


def assert_dead_letter(event: StreamEvent, payload: bytes) -> None:
    assert event.error and event.changes == () and event.payload == payload
    assert event.schema_id == "schema-v1" and event.replay_id == REPLAY


def test_corrupt_payload_becomes_an_error_event(v1):
    good = encode(V1, full_create_body())
    for payload in (good[:40], b"\xff" * 30, b"", good + b"\x00\x00"):
        assert_dead_letter(decode_event(TOPIC, REPLAY, "schema-v1", payload, v1), payload)


def test_bad_bitmap_becomes_an_error_event(v1):
    payload = encode(V1, {"ChangeEventHeader": header("UPDATE", changed=[hex(1 << 90)])})
    event = decode_event(TOPIC, REPLAY, "schema-v1", payload, v1)
    assert_dead_letter(event, payload)
    assert "beyond" in event.error


def test_event_decoded_with_an_older_schema_is_an_error_not_a_wrong_change(v1):
    payload = encode(V2, {"ChangeEventHeader": header("UPDATE", changed=[hex(1 << 85)]), "GUID__pc": "x"})
    assert decode_event(TOPIC, REPLAY, "schema-v1", payload, v1).error


# ---------------------------------------------------------------------------------------------------------
# SchemaCache


async def test_schema_cache_fetches_each_id_once_even_when_concurrent():
    calls: list[str] = []
    release = asyncio.Event()

    async def fetch(schema_id: str) -> str:
        calls.append(schema_id)
        await release.wait()
        return json.dumps(V1 if schema_id == "a" else V2)

    cache = SchemaCache(fetch)
    waiting = [asyncio.ensure_future(cache.get("a")) for _ in range(5)]
    second = asyncio.ensure_future(cache.get("b"))
    await asyncio.sleep(0)
    release.set()
    results = await asyncio.gather(*waiting, second)
    assert calls == ["a", "b"] and cache.fetches == 2
    assert all(r is results[0] for r in results[:5])
    assert results[5].layout.names[82] == "Some_Check_Box__c"
    assert await cache.get("a") is results[0] and calls == ["a", "b"]


async def test_schema_cache_failed_fetch_is_retried_next_time():
    attempts = 0

    async def fetch(schema_id: str) -> dict[str, Any]:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise RuntimeError("boom")
        return V1

    cache = SchemaCache(fetch)
    with pytest.raises(RuntimeError):
        await cache.get("a")
    assert (await cache.get("a")).schema_id == "a"
    assert "a" in cache and len(cache) == 1


def test_invalid_schema_is_a_value_error():
    with pytest.raises(ValueError):
        CdcSchema("x", "{not json")
    with pytest.raises(ValueError):
        CdcSchema("x", {"type": "record", "name": "R", "fields": [{"name": "a", "type": "nope"}]})
