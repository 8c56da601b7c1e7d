"""Describe → TableSpec: which fields become which columns, of which Postgres type.

Pure functions over model types; the type table of docs/tables.md is generated from `PG_TYPES`.
"""

from __future__ import annotations

import hashlib

import structlog

from ..config import ObjectSettings, Settings
from ..model import (
    FIVETRAN_HISTORY,
    ColumnSpec,
    ConfigError,
    FieldSpec,
    HistoryNames,
    ObjectDescribe,
    TableInfo,
    TableSpec,
)
from ..salesforce.names import API_NAME
from ..salesforce.topics import EVENTLESS_FIELDS

# Describe `type` → Postgres type. Text types are unbounded `text`: Salesforce can lengthen a field at any
# time, and a varchar(n) would then reject rows. Numbers are unconstrained `numeric` so the CSV value
# round-trips exactly (a double or currency never passes through a binary float).
PG_TYPES: dict[str, str] = {
    "id": "varchar(18)",
    "reference": "varchar(18)",
    "masterrecord": "varchar(18)",
    "string": "text",
    "textarea": "text",
    "picklist": "text",
    "multipicklist": "text",  # values joined by ';', as Salesforce sends them
    "combobox": "text",
    "email": "text",
    "phone": "text",
    "url": "text",
    "encryptedstring": "text",
    "datacategorygroupreference": "text",
    "anyType": "text",
    "complexvalue": "text",
    "json": "text",
    "boolean": "boolean",
    "int": "integer",
    "long": "bigint",
    "double": "numeric",
    "currency": "numeric",
    "percent": "numeric",
    "date": "date",
    "datetime": "timestamptz",
    "time": "time",
}

# Compound fields are rejected by Bulk queries (docs/bulk-rest-oauth.md §1.9): their components are
# ordinary fields. base64 is not supported by Bulk API queries either (airbyte leaves it out, docs/bulk-rest-oauth.md §1.8).
SKIPPED_TYPES = frozenset({"address", "location", "base64"})

# The record version of a bulk row, in order of preference (docs/design.md, contract 2).
VERSION_FIELDS = ("SystemModstamp", "LastModifiedDate", "CreatedDate")

log = structlog.get_logger(__name__)


# Postgres truncates identifiers to 63 bytes; two long names could then collide silently.
MAX_IDENTIFIER_BYTES = 63


def pg_type(field: FieldSpec) -> str:
    return PG_TYPES.get(field.type, "text")


def column_name(field_name: str) -> str:
    name = field_name.lower()
    if len(name.encode()) > MAX_IDENTIFIER_BYTES:
        raise ConfigError(f"field {field_name!r} is longer than Postgres' {MAX_IDENTIFIER_BYTES}-byte identifier limit")
    return name


def table_spec(
    describe: ObjectDescribe,
    *,
    schema: str,
    key_field: str = "Id",
    fields: list[str] | None = None,
) -> TableSpec:
    """Build the table for an sObject from its describe.

    Columns follow describe order (the SOQL select order). `fields` limits the selection; Id, the key field,
    IsDeleted and the version fields are always kept when the object has them.
    """
    _check_key(describe, key_field)
    wanted = None
    if fields is not None:
        wanted = {f.lower() for f in fields} | {"id", key_field.lower(), "isdeleted"} | {
            v.lower() for v in VERSION_FIELDS
        }
        unknown = {f.lower() for f in fields} - {f.name.lower() for f in describe.fields}
        if unknown:
            raise ConfigError(f"objects.{describe.name}.fields: unknown field(s) {sorted(unknown)}")
    columns: list[ColumnSpec] = []
    seen: set[str] = set()
    for f in describe.fields:
        if f.type in SKIPPED_TYPES:
            continue
        if wanted is not None and f.name.lower() not in wanted:
            continue
        if not API_NAME.match(f.name):  # SOQL has no identifier quoting: such a field cannot be selected
            log.warning("schema.field_skipped", object=describe.name, field=f.name,
                        reason="not a valid Salesforce API name; it cannot appear in SOQL")
            continue
        name = column_name(f.name)
        if name in seen:
            raise ConfigError(f"{describe.name}: two fields map to the same column {name!r}")
        seen.add(name)
        is_key = f.name.lower() == key_field.lower()
        columns.append(ColumnSpec(name=name, field=f.name, pg_type=pg_type(f), nullable=not is_key))
    spec = TableSpec(
        object=describe.name,
        schema=schema,
        name=column_name(describe.name),
        columns=tuple(columns),
        key=key_field.lower(),
    )
    return TableSpec(**{**_asdict(spec), "fingerprint": fingerprint(spec)})


def _check_key(describe: ObjectDescribe, key_field: str) -> None:
    """The key must exist and be unique in Salesforce (ConfigError in one line otherwise)."""
    key = describe.field(key_field)
    if key is None:
        raise ConfigError(f"objects.{describe.name}.key: {describe.name} has no field {key_field!r}")
    if key.type != "id" and not key.unique:
        # The key is the table's primary key: only a field Salesforce keeps unique can be one. An External ID
        # that is not also Unique (describe `externalId` without `unique`), or an `idLookup` field, can repeat,
        # and the second record would replace the first one's row (docs/bulk-rest-oauth.md §3.2;
        # "Field", SOAP API Developer Guide, `unique`: https://developer.salesforce.com/docs/atlas.en-us.api.meta/
        # api/sforce_api_calls_describesobjects_describesobjectresult.htm).
        raise ConfigError(
            f"objects.{describe.name}.key: {key_field} is not unique in Salesforce (describe unique=false), so two "
            f"records can share a value; remove objects.{describe.name}.key to key the table by Id, or name a field "
            "marked Unique (External ID and Unique)"
        )


def _asdict(spec: TableSpec) -> dict:
    return {s: getattr(spec, s) for s in TableSpec.__slots__}


def fingerprint(spec: TableSpec) -> str:
    """A short hash of the column list and key: a different value means the table must change."""
    text = spec.key + "|" + "|".join(f"{c.name}:{c.pg_type}" for c in spec.columns)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def version_column(spec: TableSpec) -> str | None:
    for f in VERSION_FIELDS:
        if spec.column(f.lower()) is not None:
            return f.lower()
    return None


def soql(spec: TableSpec) -> str:
    """The Bulk query that extracts the table's columns (no ORDER BY: it disables PK chunking, docs/bulk-rest-oauth.md §1.9)."""
    return f"SELECT {', '.join(spec.fields)} FROM {spec.object}"


def object_table(describe: ObjectDescribe, schema: str, obj: ObjectSettings,
                 history: HistoryNames | None = None) -> TableInfo:
    """The target table of a configured object, as backfill, stream and verify all see it. `history`: the names
    of its history table's validity columns when the object keeps history (`history_names`)."""
    spec = table_spec(describe, schema=schema, key_field=obj.key, fields=obj.fields)
    return TableInfo(
        spec=spec,
        version_column=version_column(spec),
        has_isdeleted=spec.column("isdeleted") is not None,
        hard_deletes=obj.deletes == "hard",
        eventless=eventless_columns(describe, spec),
        history=history,
    )


def history_names(settings: Settings, obj: ObjectSettings) -> HistoryNames | None:
    """The validity column names of the object's history table, or None when it keeps no history."""
    if not (settings.history.default if obj.history is None else obj.history):
        return None
    return FIVETRAN_HISTORY if settings.history.columns == "fivetran" else HistoryNames()


def eventless_columns(describe: ObjectDescribe, spec: TableSpec) -> frozenset[str]:
    """The table's columns that change events never carry: formula fields and other derived fields
    (salesforce/topics.EVENTLESS_FIELDS), and compound parents that are columns themselves (Contact.Name; an
    address is not a column)."""
    parents = {f.compound_field_name for f in describe.fields if f.compound_field_name}
    return frozenset(refreshed_columns(describe, spec)) | frozenset(c.name for c in spec.columns if c.field in parents)


def refreshed_columns(describe: ObjectDescribe, spec: TableSpec) -> list[str]:
    """The columns the scheduled refresh owns (pipeline/refresh.py), in column order: formula (calculated) fields
    and the derived fields of salesforce/topics.EVENTLESS_FIELDS. Change events never carry them ("Change Event
    Body Fields", Change Data Capture Developer Guide,
    https://developer.salesforce.com/docs/atlas.en-us.change_data_capture.meta/change_data_capture/cdc_event_fields_body.htm;
    docs/salesforce-coverage.md §2) and a formula changes when its inputs change without SystemModstamp moving
    past them, so only a comparison of values keeps them current. The key and Id are never refreshed. A computed
    compound name (Contact.Name) is not among them: its components travel in events, and a change of one fetches
    the record (pipeline/changes.py)."""
    calculated = {f.name.lower() for f in describe.fields if f.calculated}
    return [c.name for c in spec.columns
            if c.name not in ("id", spec.key) and (c.name in calculated or c.field in EVENTLESS_FIELDS)]
