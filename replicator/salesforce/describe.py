"""REST describe JSON → `model.ObjectDescribe` / `model.FieldSpec` (docs/bulk-rest-oauth.md §3.2).
Pure functions, no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from replicator.model import FieldSpec, ObjectDescribe


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def field_spec(item: Mapping[str, Any]) -> FieldSpec:
    """One describe `fields[]` item, reduced to what a table needs. Missing keys take FieldSpec defaults."""
    return FieldSpec(
        name=str(item["name"]),
        type=str(item.get("type") or "string"),
        label=str(item.get("label") or ""),
        length=_int(item.get("length")),
        precision=_int(item.get("precision")),
        scale=_int(item.get("scale")),
        digits=_int(item.get("digits")),
        nillable=bool(item.get("nillable", True)),
        external_id=bool(item.get("externalId", False)),
        unique=bool(item.get("unique", False)),
        id_lookup=bool(item.get("idLookup", False)),
        calculated=bool(item.get("calculated", False)),
        compound_field_name=item.get("compoundFieldName") or None,
        reference_to=tuple(str(r) for r in (item.get("referenceTo") or ())),
        relationship_name=item.get("relationshipName") or None,
        extra_type_info=item.get("extraTypeInfo") or None,
    )


def object_describe(data: Mapping[str, Any]) -> ObjectDescribe:
    """A `GET sobjects/{Object}/describe` body, fields in describe order."""
    return ObjectDescribe(
        name=str(data["name"]),
        label=str(data.get("label") or ""),
        key_prefix=data.get("keyPrefix") or None,
        custom=bool(data.get("custom", False)),
        queryable=bool(data.get("queryable", True)),
        replicateable=bool(data.get("replicateable", True)),
        fields=tuple(field_spec(f) for f in data.get("fields") or ()),
    )


def strip_attributes(record: Any) -> Any:
    """A REST record without its `attributes` entries, also inside relationship sub-records."""
    if isinstance(record, dict):
        return {k: strip_attributes(v) for k, v in record.items() if k != "attributes"}
    if isinstance(record, list):
        return [strip_attributes(v) for v in record]
    return record
