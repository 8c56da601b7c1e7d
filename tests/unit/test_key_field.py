"""Which fields may key a table: the Id, or a field describe marks `unique` (docs/bulk-rest-oauth.md §3.2)."""

from __future__ import annotations

import pytest

from replicator.model import ConfigError, FieldSpec, ObjectDescribe
from replicator.pipeline.schema import table_spec


def describe(key: FieldSpec) -> ObjectDescribe:
    return ObjectDescribe(name="Invoice__c", fields=(FieldSpec("Id", "id"), FieldSpec("Name", "string"),
                                                    FieldSpec("SystemModstamp", "datetime"), key))


@pytest.mark.parametrize("field", [
    FieldSpec("Legacy__c", "string", external_id=True),  # an External ID that is not Unique can repeat
    FieldSpec("Legacy__c", "string", id_lookup=True),
    FieldSpec("Legacy__c", "email", external_id=True, id_lookup=True),
    FieldSpec("Legacy__c", "double"),
])
def test_a_key_field_describe_does_not_mark_unique_is_refused_in_one_line(field):
    with pytest.raises(ConfigError) as refused:
        table_spec(describe(field), schema="s", key_field="Legacy__c")
    message = str(refused.value)
    assert message.startswith("objects.Invoice__c.key: Legacy__c is not unique") and "\n" not in message
    assert "remove objects.Invoice__c.key" in message  # what to do


@pytest.mark.parametrize("field", [
    FieldSpec("Legacy__c", "string", external_id=True, unique=True),
    FieldSpec("Legacy__c", "double", external_id=True, unique=True, id_lookup=True),
    FieldSpec("Legacy__c", "email", unique=True),
])
def test_a_unique_field_or_the_id_keys_a_table(field):
    assert table_spec(describe(field), schema="s", key_field="Legacy__c").key == "legacy__c"
    assert table_spec(describe(field), schema="s", key_field="Id").key == "id"
