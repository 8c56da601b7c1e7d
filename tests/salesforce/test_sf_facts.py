"""topics.py, values.py, compounds.py: CDC topics and placeholder ids, value units, compound fields."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from replicator.model import FieldSpec
from replicator.salesforce.compounds import find_component, flatten_compound, group_components
from replicator.salesforce.topics import (
    EMPTY_RECORD_ID,
    GAP_OVERFLOW,
    GAP_TYPES,
    identifies_record,
    topic_for,
)
from replicator.salesforce.values import (
    decode_avro_value,
    decode_epoch_ms,
    decode_rest_value,
    encode_epoch_ms,
)

# ---------------------------------------------------------------------------------------------------------
# topics


@pytest.mark.parametrize(("name", "topic"), [
    ("Account", "/data/AccountChangeEvent"),
    ("Invoice__c", "/data/Invoice__ChangeEvent"),  # a custom object drops the `c`
    ("ns__Thing__c", "/data/ns__Thing__ChangeEvent"),
])
def test_topic_for_names_the_object_channel(name, topic):
    assert topic_for(name) == topic


def test_overflow_empty_and_wildcard_ids_identify_no_record():
    assert not identifies_record(GAP_OVERFLOW, EMPTY_RECORD_ID)
    assert not identifies_record("UPDATE", EMPTY_RECORD_ID)
    assert not identifies_record("UPDATE", "001*")
    assert identifies_record("GAP_UPDATE", "001000000000001AAA")
    assert GAP_OVERFLOW not in GAP_TYPES and len(GAP_TYPES) == 4


# ---------------------------------------------------------------------------------------------------------
# values


def test_avro_units_become_python_values():
    day = int(dt.datetime(2024, 5, 1, tzinfo=dt.UTC).timestamp() * 1000)
    assert decode_avro_value(day + 1500, "timestamptz") == dt.datetime(2024, 5, 1, 0, 0, 1, 500000, tzinfo=dt.UTC)
    assert decode_avro_value(day, "date") == dt.date(2024, 5, 1)
    assert decode_avro_value(8 * 3600_000 + 30 * 60_000, "time") == dt.time(8, 30)
    assert decode_avro_value(0.1, "numeric") == Decimal("0.1")  # the shortest repr, not the binary float
    assert decode_avro_value(7, "bigint") == 7 and decode_avro_value(1, "boolean") is True
    assert decode_avro_value("a\x00b", "text") == "ab"  # Postgres text cannot hold NUL
    assert decode_avro_value(None, "date") is None


def test_rest_values_become_python_values():
    stamp = decode_rest_value("2024-05-01T12:34:56.000+0000", "timestamptz")
    assert stamp == dt.datetime(2024, 5, 1, 12, 34, 56, tzinfo=dt.UTC)
    assert decode_rest_value("2024-05-01T12:34:56.000Z", "timestamptz") == stamp
    assert decode_rest_value("2024-05-01", "date") == dt.date(2024, 5, 1)
    assert decode_rest_value("08:30:00.000Z", "time") == dt.time(8, 30)
    assert decode_rest_value(12.5, "numeric") == Decimal("12.5")
    assert decode_rest_value("", "text") is None


def test_epoch_ms_round_trips():
    ms = 1_714_566_896_123
    assert encode_epoch_ms(decode_epoch_ms(ms)) == ms


# ---------------------------------------------------------------------------------------------------------
# compounds

FIELDS = (
    FieldSpec("Id", "id"),
    FieldSpec("BillingState", "string", compound_field_name="BillingAddress"),
    FieldSpec("BillingCity", "string", compound_field_name="BillingAddress"),
    FieldSpec("FirstName", "string", compound_field_name="Name"),
    FieldSpec("Loc__Latitude__s", "double", compound_field_name="Loc__c"),
    FieldSpec("Loc__Longitude__s", "double", compound_field_name="Loc__c"),
)


def test_components_are_grouped_by_compound_in_describe_order():
    assert group_components(FIELDS) == {
        "BillingAddress": ["BillingState", "BillingCity"],
        "Name": ["FirstName"],
        "Loc__c": ["Loc__Latitude__s", "Loc__Longitude__s"],
    }


@pytest.mark.parametrize(("compound", "child", "component"), [
    ("BillingAddress", "State", "BillingState"),
    ("Name", "FirstName", "FirstName"),
    ("Loc__c", "Longitude", "Loc__Longitude__s"),
    ("BillingAddress", "GeocodeAccuracy", None),  # not a field of this org
])
def test_event_subfield_maps_to_its_component_field(compound, child, component):
    assert find_component(compound, child, group_components(FIELDS).get(compound, ())) == component


def test_flattening_names_every_subfield_nulls_included():
    flat = list(flatten_compound("BillingAddress", {"State": "CA", "City": None}))
    assert flat == [("BillingAddress.State", "CA"), ("BillingAddress.City", None)]
