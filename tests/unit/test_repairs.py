"""The derivation repairs' registry (pipeline/repairs.py): which columns each repairs, and the refresh's rules for a
column only ever lowered (postgres/refresh.py)."""

from __future__ import annotations

from replicator.config import ObjectSettings
from replicator.model import FieldSpec, ObjectDescribe
from replicator.pipeline.repairs import (
    REPAIRS,
    computed_name_columns,
    diff_shaped,
    long_text_columns,
    modstamp_column,
)
from replicator.pipeline.schema import object_table
from replicator.postgres.migrate import migration_files
from replicator.postgres.refresh import Refresh

CONTACT = ObjectDescribe(name="Contact", fields=(
    FieldSpec("Id", "id"), FieldSpec("Name", "string"), FieldSpec("Phone", "phone"),
    FieldSpec("FirstName", "string", compound_field_name="Name"),
    FieldSpec("Salutation", "picklist", compound_field_name="Name"),
    FieldSpec("MailingStreet", "textarea", length=255, compound_field_name="MailingAddress"),
    FieldSpec("MailingCity", "string", compound_field_name="MailingAddress"),
    FieldSpec("Notes__c", "textarea", length=32000), FieldSpec("Summary__c", "textarea", calculated=True),
    FieldSpec("SystemModstamp", "datetime"),
))
ACCOUNT = ObjectDescribe(name="Account", fields=(FieldSpec("Id", "id"), FieldSpec("Name", "string")))


def _table(describe):
    return object_table(describe, "sf", ObjectSettings())


def test_each_repair_names_its_columns():
    contact, account = _table(CONTACT), _table(ACCOUNT)
    assert computed_name_columns(CONTACT, contact) == ["name"]  # an address parent is not a column
    assert computed_name_columns(ACCOUNT, account) == []  # Account.Name is a field of its own
    assert long_text_columns(CONTACT, contact) == ["mailingstreet", "notes__c"]  # not a formula
    assert modstamp_column(CONTACT, contact) == ["systemmodstamp"] and modstamp_column(ACCOUNT, account) == []
    assert diff_shaped(contact, ["notes__c"]) == """left("notes__c", 9) = '--- ' || chr(10) || '+++ '"""


def test_repairs_have_unique_ids_and_a_migration_that_exists():
    assert len({r.id for r in REPAIRS}) == len(REPAIRS)
    versions = {version for version, _, _ in migration_files()}
    assert all(r.since in versions for r in REPAIRS)


def test_a_lower_only_column_is_never_moved_forward():
    refresh = Refresh(None, _table(CONTACT), ["name", "systemmodstamp"], frozenset({"systemmodstamp"}))
    assert refresh._differs("t", "s") == \
        't."name" IS DISTINCT FROM s."name" OR s."systemmodstamp" < t."systemmodstamp"'
    assert refresh._set("systemmodstamp") == \
        '"systemmodstamp" = CASE WHEN s."systemmodstamp" < t."systemmodstamp" THEN s."systemmodstamp"' \
        ' ELSE t."systemmodstamp" END'
    assert refresh._set("name") == '"name" = s."name"'
