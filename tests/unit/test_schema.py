"""describe → TableSpec → DDL, and the DDL run against a real Postgres (hostile names included)."""

from __future__ import annotations

import pytest

from replicator.model import ConfigError, FieldSpec, ObjectDescribe
from replicator.pipeline.schema import soql, table_spec, version_column
from replicator.postgres import ddl


def describe(*extra: FieldSpec, name: str = "Account") -> ObjectDescribe:
    base = (
        FieldSpec("Id", "id"),
        FieldSpec("Name", "string"),
        FieldSpec("IsDeleted", "boolean"),
        FieldSpec("BillingAddress", "address"),
        FieldSpec("BillingCity", "string", compound_field_name="BillingAddress"),
        FieldSpec("AnnualRevenue", "currency"),
        FieldSpec("NumberOfEmployees", "int"),
        FieldSpec("SystemModstamp", "datetime"),
        FieldSpec("External_Id__c", "string", external_id=True, unique=True),
    )
    return ObjectDescribe(name=name, fields=base + extra)


def test_columns_are_lower_cased_fields_without_compound_ones():
    spec = table_spec(describe(), schema="salesforce")
    assert spec.name == "account"
    assert [c.name for c in spec.columns] == [
        "id", "name", "isdeleted", "billingcity", "annualrevenue", "numberofemployees", "systemmodstamp",
        "external_id__c",
    ]
    assert spec.column("annualrevenue").pg_type == "numeric"
    assert spec.column("numberofemployees").pg_type == "integer"
    assert spec.key == "id" and not spec.column("id").nullable
    assert version_column(spec) == "systemmodstamp"
    assert soql(spec).startswith("SELECT Id, Name, IsDeleted, BillingCity,")


def test_external_id_key_and_bad_keys():
    spec = table_spec(describe(), schema="s", key_field="External_Id__c")
    assert spec.key == "external_id__c"
    with pytest.raises(ConfigError, match="no field 'Nope'"):
        table_spec(describe(), schema="s", key_field="Nope")
    with pytest.raises(ConfigError, match="Name is not unique in Salesforce"):
        table_spec(describe(), schema="s", key_field="Name")


def test_fingerprint_changes_with_columns():
    a = table_spec(describe(), schema="s")
    b = table_spec(describe(FieldSpec("New__c", "double")), schema="s")
    assert a.fingerprint != b.fingerprint
    assert a.fingerprint == table_spec(describe(), schema="s").fingerprint


def test_field_outside_soql_grammar_is_left_out():
    spec = table_spec(describe(FieldSpec('Bad"Name;DROP__c', "string")), schema="s")
    assert all('"' not in c.field for c in spec.columns)


def test_quote_ident_doubles_quotes():
    assert ddl.quote_ident('a"b') == '"a""b"'
    with pytest.raises(ValueError):
        ddl.quote_ident("a\x00b")


async def test_hostile_identifiers_are_quoted_in_real_ddl(pg):
    from replicator.model import ColumnSpec, TableSpec

    hostile = 'x"; DROP TABLE victim; --'
    spec = TableSpec(
        object="Evil", schema='we"ird', name='tab"le;', key="id",
        columns=(ColumnSpec("id", "Id", "varchar(18)", False), ColumnSpec(hostile, "X", "text"),
                 ColumnSpec("systemmodstamp", "SystemModstamp", "timestamptz")),
    )
    await pg.execute("CREATE TABLE IF NOT EXISTS victim (x int)")
    await pg.execute(ddl.create_table(spec, "systemmodstamp", has_isdeleted=False))
    cols = await pg.fetch(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = $1 AND table_name = $2",
        spec.schema, spec.name,
    )
    assert hostile in {r["column_name"] for r in cols}
    assert await pg.fetchval("SELECT to_regclass('victim') IS NOT NULL")
    await pg.execute(f"DROP SCHEMA {ddl.quote_ident(spec.schema)} CASCADE; DROP TABLE victim")
