"""SOQL tokenizer/parser/binder: supported subset and Salesforce-shaped errors."""

from __future__ import annotations

import datetime as dt

import pytest

from replicator.sim.plan import bind, iter_rows
from replicator.sim.soql import SoqlError, parse
from replicator.sim.store import OrgStore

ORG = OrgStore(400, seed=9)


def run(text: str, include_deleted: bool = False) -> list[dict]:
    plan = bind(text, ORG)
    return [plan.store.as_dict(r) for r in iter_rows(plan, include_deleted)]


def test_parse_clauses():
    q = parse("SELECT Id, Name FROM Account WHERE (Name = 'a' OR NOT Id IN ('x')) AND SystemModstamp >= "
              "2024-01-01T00:00:00Z ORDER BY Name DESC NULLS LAST LIMIT 5")
    assert [i.name for i in q.select] == ["Id", "Name"]
    assert q.limit == 5 and q.order_by[0].descending and q.order_by[0].nulls_last


def test_datetime_literal_with_offset():
    q = parse("SELECT Id FROM Account WHERE CreatedDate > 2024-01-01T02:00:00+02:00")
    assert q.where.values[0].value == dt.datetime(2024, 1, 1)


def test_where_in_order_limit():
    all_rows = run("SELECT Id, Name, Industry FROM Account")
    assert [r["Id"] for r in all_rows] == sorted(r["Id"] for r in all_rows)
    banking = run("SELECT Id FROM Account WHERE Industry IN ('Banking', 'Retail') AND IsDeleted = false")
    assert banking and all(r["Industry"] in ("Banking", "Retail") for r in banking)
    ordered = run("SELECT Id, NumberOfEmployees FROM Account WHERE NumberOfEmployees != null "
                  "ORDER BY NumberOfEmployees DESC LIMIT 7")
    values = [r["NumberOfEmployees"] for r in ordered]
    assert len(values) == 7 and values == sorted(values, reverse=True)


def test_systemmodstamp_and_id_filters():
    rows = run("SELECT Id, SystemModstamp FROM Contact WHERE SystemModstamp >= 2025-06-01T00:00:00Z")
    assert rows and all(r["SystemModstamp"] >= dt.datetime(2025, 6, 1) for r in rows)
    first = run("SELECT Id FROM Contact LIMIT 3")
    got = run(f"SELECT Id FROM Contact WHERE Id > '{first[0]['Id'][:15]}' LIMIT 2")
    assert [r["Id"] for r in got] == [r["Id"] for r in first[1:3]]


def test_deleted_rows_only_with_query_all():
    assert not any(r["IsDeleted"] for r in run("SELECT Id, IsDeleted FROM Account"))
    assert any(r["IsDeleted"] for r in run("SELECT Id, IsDeleted FROM Account", include_deleted=True))


def test_unknown_field_is_invalid_field_with_position():
    with pytest.raises(SoqlError) as exc:
        bind("SELECT Id, BadField FROM Account", ORG)
    assert exc.value.code == "INVALID_FIELD"
    assert "ERROR at Row:1:Column:12" in exc.value.message
    assert "No such column 'BadField' on entity 'Account'" in exc.value.message


@pytest.mark.parametrize("text", ["SELECT FROM Account", "SELECT Id Account", "SELECT Id FROM Account WHERE",
                                  "SELECT Id FROM Account LIMIT x", "SELECT Id FROM Account WHERE Name = 'x"])
def test_syntax_errors_are_malformed_query(text):
    with pytest.raises(SoqlError) as exc:
        bind(text, ORG)
    assert exc.value.code == "MALFORMED_QUERY"


def test_literal_type_mismatch_and_unknown_object():
    with pytest.raises(SoqlError) as exc:
        bind("SELECT Id FROM Account WHERE CreatedDate > '2024-01-01'", ORG)
    assert exc.value.code == "INVALID_FIELD"
    with pytest.raises(SoqlError) as exc:
        bind("SELECT Id FROM Nope__c", ORG)
    assert exc.value.code == "INVALID_TYPE"
