"""Folding changes per key and mapping event fields to columns: pure logic, no sockets."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from replicator.model import Change, FieldSpec, ObjectDescribe, Version
from replicator.pipeline.changes import ColumnMap, UnknownFieldError, fold
from replicator.pipeline.schema import table_spec

DESCRIBE = ObjectDescribe(
    name="Account",
    fields=(
        FieldSpec("Id", "id"),
        FieldSpec("Name", "string"),
        FieldSpec("Phone", "phone"),
        FieldSpec("Fax", "phone"),
        FieldSpec("BillingAddress", "address"),
        FieldSpec("BillingState", "string", compound_field_name="BillingAddress"),
        FieldSpec("BillingCity", "string", compound_field_name="BillingAddress"),
        FieldSpec("AnnualRevenue", "currency"),
        FieldSpec("Founded__c", "date"),
        FieldSpec("Opens__c", "time"),
        FieldSpec("LastModifiedDate", "datetime"),
        FieldSpec("SystemModstamp", "datetime"),
        FieldSpec("IsDeleted", "boolean"),
    ),
)
SPEC = table_spec(DESCRIBE, schema="s")
CMAP = ColumnMap(SPEC, DESCRIBE)


def ch(kind, rid="001A", ts=1000, seq=1, fields=None, nulled=(), txn="t1"):
    return Change("Account", rid, kind, Version(ts, 7, seq), txn, fields or {}, frozenset(nulled))


def test_compound_subfield_lands_in_its_component_column():
    assert CMAP.column("BillingAddress.State") == "billingstate"
    assert CMAP.values({"BillingAddress": {"State": "CA", "City": None}}) == {"billingstate": "CA", "billingcity": None}


def test_values_are_converted_by_column_type():
    day = int(dt.datetime(2024, 5, 1, tzinfo=dt.UTC).timestamp() * 1000)
    v = CMAP.values({"AnnualRevenue": 12.5, "Founded__c": day, "Opens__c": 8 * 3600_000 + 30 * 60_000,
                     "LastModifiedDate": day + 1500})
    assert v["annualrevenue"] == Decimal("12.5")
    assert v["founded__c"] == dt.date(2024, 5, 1)
    assert v["opens__c"] == dt.time(8, 30)
    assert v["lastmodifieddate"] == dt.datetime(2024, 5, 1, 0, 0, 1, 500000, tzinfo=dt.UTC)


def test_updates_merge_in_version_order_and_nulled_fields_become_null():
    ops = fold([
        ch("UPDATE", ts=2000, fields={"Phone": "2"}),
        ch("UPDATE", ts=1000, fields={"Phone": "1", "Name": "n"}),
        ch("UPDATE", ts=3000, fields={"BillingAddress.State": "CA"}, nulled=["Fax"]),
    ], CMAP)
    op = ops["001A"]
    assert op.kind == "update"
    assert op.values == {"phone": "2", "name": "n", "billingstate": "CA", "fax": None}
    assert op.commit_ms == 3000


def test_delete_wins_and_undelete_fetches_the_whole_record():
    ops = fold([ch("UPDATE", ts=1, fields={"Phone": "1"}), ch("DELETE", ts=2)], CMAP)
    assert ops["001A"].kind == "delete"
    # An undelete's body lacks the fields events never carry (LastActivityDate, …): only the org has them.
    ops = fold([ch("DELETE", ts=1), ch("UNDELETE", ts=2, fields={"Name": "back"})], CMAP)
    assert ops["001A"].kind == "refetch" and ops["001A"].commit_ms == 2


def test_a_computed_compound_name_is_fetched():
    describe = ObjectDescribe(name="Contact", fields=(
        FieldSpec("Id", "id"), FieldSpec("Name", "string"), FieldSpec("Phone", "phone"),
        FieldSpec("FirstName", "string", compound_field_name="Name"),
        FieldSpec("LastName", "string", compound_field_name="Name"),
    ))
    cmap = ColumnMap(table_spec(describe, schema="s"), describe)
    assert cmap.derived == {"Name"}
    contact = lambda kind, ts, **f: Change("Contact", "003A", kind, Version(ts), "t", f)  # noqa: E731
    assert fold([contact("UPDATE", 1, **{"Name.LastName": "Doe"})], cmap)["003A"].kind == "refetch"
    assert fold([contact("UPDATE", 1, Phone="1")], cmap)["003A"].kind == "update"
    assert fold([contact("CREATE", 1, Phone="1", **{"Name.LastName": "Doe"})], cmap)["003A"].kind == "refetch"


def test_create_then_update_is_one_full_upsert():
    ops = fold([ch("CREATE", ts=1, fields={"Name": "a", "Phone": "1"}), ch("UPDATE", ts=2, fields={"Phone": "2"})],
               CMAP)
    assert ops["001A"].kind == "upsert" and ops["001A"].values == {"name": "a", "phone": "2"}


def test_gap_event_asks_for_a_refetch():
    ops = fold([ch("UPDATE", ts=1000, fields={"Phone": "1"}), ch("GAP_UPDATE", ts=5000)], CMAP)
    assert ops["001A"].kind == "refetch" and ops["001A"].commit_ms == 5000
    # an update after the gap still needs the full record: the refetch stands, at the newest version
    ops = fold([ch("GAP_UPDATE", ts=1000), ch("UPDATE", ts=5000, fields={"Phone": "1"})], CMAP)
    assert ops["001A"].kind == "refetch" and ops["001A"].commit_ms == 5000


def test_unknown_field_is_reported_so_the_table_can_grow():
    with pytest.raises(UnknownFieldError) as err:
        fold([ch("UPDATE", fields={"Loyalty__c": "gold"})], CMAP)
    assert err.value.fields == {"Loyalty__c"}


def test_delete_after_a_gap_still_fetches_the_record():
    ops = fold([ch("GAP_UPDATE", ts=1000), ch("DELETE", ts=2000)], CMAP)
    assert ops["001A"].kind == "refetch" and ops["001A"].commit_ms == 2000


def test_text_diffs_fold_onto_the_value_before_them_or_ask_for_a_fetch():
    import difflib
    import hashlib

    from replicator.salesforce.diffs import TextDiff

    def diff(old: str, new: str) -> str:
        hunks = list(difflib.unified_diff(old.split("\n"), new.split("\n"), n=0, lineterm=""))[2:]
        return "--- \n+++ " + hashlib.sha256(new.encode()).hexdigest() + "\n" + "\n".join(hunks)

    def upd(ts, old, new):
        return Change("Account", "001A", "UPDATE", Version(ts), "t", {"Name": diff(old, new)},
                      diff_fields=frozenset({"Name"}))

    v1 = "\n".join(f"line {i}" for i in range(30))
    v2, v3 = v1.replace("line 4", "LINE 4"), v1.replace("line 4", "LINE 4").replace("line 9", "LINE 9")
    created = fold([ch("CREATE", ts=1, fields={"Name": v1}), upd(2, v1, v2)], CMAP)["001A"]
    assert created.kind == "upsert" and created.values["name"] == v2  # applied to the full value in the batch
    chained = fold([upd(2, v1, v2), upd(3, v2, v3)], CMAP)["001A"]
    assert chained.kind == "update" and chained.values["name"] == TextDiff((diff(v1, v2), diff(v2, v3)))
    unfit = fold([ch("CREATE", ts=1, fields={"Name": "something else"}), upd(2, v1, v2)], CMAP)["001A"]
    assert unfit.kind == "refetch"


def test_history_keeps_each_change_beside_the_folded_operation():
    ops = fold([
        ch("UPDATE", ts=2000, fields={"Phone": "2"}),
        ch("UPDATE", ts=1000, fields={"Phone": "1", "Name": "n"}),
        ch("UPDATE", ts=3000, nulled=["Fax"]),
        ch("DELETE", ts=4000),
    ], CMAP, history=True)
    op = ops["001A"]
    assert op.kind == "delete"
    assert [(s.op, s.commit_ms, s.values) for s in op.steps] == [
        ("update", 1000, {"phone": "1", "name": "n"}), ("update", 2000, {"phone": "2"}),
        ("update", 3000, {"fax": None}), ("delete", 4000, {})]
    assert op.steps[0].changed_fields == ("Name", "Phone")
    assert fold([ch("UPDATE", fields={"Phone": "1"})], CMAP)["001A"].steps is None  # history off: nothing kept


def test_history_step_of_a_gap_or_an_undelete_has_no_values():
    ops = fold([ch("UPDATE", ts=1000, fields={"Phone": "1"}), ch("UNDELETE", ts=2000)], CMAP, history=True)
    assert ops["001A"].kind == "refetch"
    assert [(s.op, s.values) for s in ops["001A"].steps] == [("update", {"phone": "1"}), ("undelete", None)]
