"""NUL leaves every Salesforce value on its way to a Python value (salesforce/values.py), nested ones included."""

from __future__ import annotations

from replicator.salesforce.values import decode_avro_value, decode_rest_value, strip_nul


def test_rest_and_avro_text_values_lose_their_nul():
    assert decode_rest_value("Acme\x00 Corp", "text") == "Acme Corp"
    assert decode_rest_value("\x00", "varchar(18)") == ""
    assert decode_avro_value("Acme\x00 Corp", "text") == "Acme Corp"


def test_strip_nul_reaches_strings_inside_lists_and_dicts_and_leaves_other_values():
    event = {"Order_Id__c": "ORD\x00-1", "Lines\x00": [{"Sku": "\x00A"}, 2.5, None], "Flag": True}
    assert strip_nul(event) == {"Order_Id__c": "ORD-1", "Lines": [{"Sku": "A"}, 2.5, None], "Flag": True}
    assert strip_nul(b"\x00") == b"\x00"  # bytes are not text: Avro `bytes` fields stay as they are
