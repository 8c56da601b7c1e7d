"""Changes → row operations: map fields to columns, convert values, fold per key (pure functions).

Folding follows STYLE.md 6 (merge rather than replace): within a batch, changes to one key are merged in
version order; a later value of a field wins; a delete wins over earlier changes; an undelete or create
restores the full record. The result is at most one operation per key.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from ..model import Change, ObjectDescribe, RowOp, TableSpec

UTC = dt.UTC
EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)

FULL_TYPES = frozenset({"CREATE", "UNDELETE"})
GAP_TYPES = frozenset({"GAP_CREATE", "GAP_UPDATE", "GAP_DELETE", "GAP_UNDELETE"})
# The overflow event's recordIds is always this "empty record ID" (§7).
EMPTY_RECORD_ID = "000000000000000AAA"


class UnknownFieldError(Exception):
    """A change names a field the table does not have (a field added in Salesforce): describe again."""

    def __init__(self, fields: set[str]):
        super().__init__(f"unknown fields {sorted(fields)}")
        self.fields = fields


def ms_to_datetime(ms: int) -> dt.datetime:
    return EPOCH + dt.timedelta(milliseconds=ms)


def _convert(value: Any, pg_type: str) -> Any:
    """An Avro-decoded value → the Python value asyncpg sends for `pg_type`.

    Units (the simulator documents the same choice; Salesforce's docs leave date/time open, pubsub-cdc.md §10):
    datetime = epoch milliseconds; date = epoch milliseconds at UTC midnight; time = milliseconds since midnight.
    """
    if value is None:
        return None
    if pg_type == "timestamptz":
        return ms_to_datetime(value) if isinstance(value, int) else value
    if pg_type == "date":
        return ms_to_datetime(value).date() if isinstance(value, int) else value
    if pg_type == "time":
        if isinstance(value, int):
            return (dt.datetime.min + dt.timedelta(milliseconds=value)).time()
        return value
    if pg_type == "numeric":
        return Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    if pg_type in ("integer", "bigint"):
        return int(value)
    if pg_type == "boolean":
        return bool(value)
    text = value if isinstance(value, str) else str(value)
    return text.replace("\x00", "") if "\x00" in text else text  # Postgres text cannot hold NUL


class ColumnMap:
    """Field names of change events (including `Parent.Child` compound subfields) → table columns."""

    def __init__(self, spec: TableSpec, describe: ObjectDescribe):
        self.spec = spec
        self.types = {c.name: c.pg_type for c in spec.columns}
        self.by_field: dict[str, str] = {c.field: c.name for c in spec.columns}
        for c in spec.columns:
            self.by_field.setdefault(c.field.lower(), c.name)
        components: dict[str, list[str]] = {}
        for f in describe.fields:
            if f.compound_field_name and f.name.lower() in self.types:
                components.setdefault(f.compound_field_name, []).append(f.name)
        self.compounds = components
        self._cache: dict[str, str | None] = {}

    def column(self, name: str) -> str | None:
        try:
            return self._cache[name]
        except KeyError:
            col = self._cache[name] = self._column(name)
            return col

    def _column(self, name: str) -> str | None:
        if "." not in name:
            return self.by_field.get(name) or self.by_field.get(name.lower())
        parent, child = name.split(".", 1)
        for comp in self.compounds.get(parent, ()):
            # BillingAddress.State → BillingState; Name.FirstName → FirstName; Loc__c.Latitude → Loc__Latitude__s
            stem = parent[: -len("Address")] if parent.endswith("Address") else ""
            if comp in (stem + child, child) or comp.endswith(child) or comp.endswith(f"{child}__s"):
                return comp.lower()
        return None

    def values(self, fields: dict[str, Any], strict: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {}
        unknown: set[str] = set()
        for name, value in fields.items():
            if isinstance(value, dict):  # a whole compound value (CREATE/UNDELETE): spread its subfields
                for sub, subvalue in value.items():
                    col = self.column(f"{name}.{sub}")
                    if col is not None:
                        out[col] = _convert(subvalue, self.types[col])
                continue
            col = self.column(name)
            if col is None:
                unknown.add(name)
                continue
            out[col] = _convert(value, self.types[col])
        if unknown and strict:
            raise UnknownFieldError(unknown)
        return out

    def nulled(self, names: frozenset[str]) -> set[str]:
        cols = set()
        for n in names:
            col = self.column(n)
            if col is not None and col != self.spec.key:
                cols.add(col)
        return cols


def fold(changes: list[Change], cmap: ColumnMap, strict: bool = True) -> dict[str, RowOp]:
    """Fold changes (in delivery order) into one operation per record id.

    Raises UnknownFieldError when a change names a field the table lacks (unless not `strict`: such fields
    are then left out, after the caller added what it could).
    """
    ops: dict[str, RowOp] = {}
    for ch in sorted(changes, key=lambda c: c.version.key()):
        key = ch.record_id
        cur = ops.get(key)
        ver, ms = ch.version.key(), ch.version.commit_timestamp
        if ch.change_type in GAP_TYPES:
            ops[key] = RowOp(key, "refetch", version=ver, commit_ms=ms)
        elif ch.change_type in FULL_TYPES:
            values = cmap.values(ch.fields, strict)
            kind = "undelete" if ch.change_type == "UNDELETE" else "upsert"
            ops[key] = RowOp(key, kind, values, ver, ms)
        elif ch.change_type == "DELETE":
            # A delete wins, but a soft-deleted row keeps the values the record had when it was deleted.
            if cur is not None and cur.kind in ("upsert", "undelete"):
                ops[key] = RowOp(key, "upsert", cur.values, ver, ms, deleted=True)
            elif cur is not None and cur.kind == "update":
                ops[key] = RowOp(key, "delete", cur.values, ver, ms)
            elif cur is not None and cur.kind == "refetch":
                # the gap's values are unknown: fetch the deleted record (queryAll includes it) at this version
                ops[key] = RowOp(key, "refetch", version=ver, commit_ms=ms)
            else:
                ops[key] = RowOp(key, "delete", version=ver, commit_ms=ms)
        elif ch.change_type == "UPDATE":
            values = cmap.values(ch.fields, strict)
            for col in cmap.nulled(ch.nulled):
                values[col] = None
            if cur is None or cur.kind == "update":
                merged = {**(cur.values if cur else {}), **values}
                ops[key] = RowOp(key, "update", merged, ver, ms)
            elif cur.kind in ("upsert", "undelete"):
                ops[key] = RowOp(key, cur.kind, {**cur.values, **values}, ver, ms)
            elif cur.kind == "refetch":
                ops[key] = RowOp(key, "refetch", version=ver, commit_ms=ms)
            # an update after a delete in the same batch cannot happen in Salesforce; the delete stands
    return ops


def _rest_value(value: Any, pg_type: str) -> Any:
    """A REST JSON value (sObject Collections retrieve) → the Python value for `pg_type`."""
    if value is None or value == "":
        return None
    if pg_type == "timestamptz":
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00").replace("+0000", "+00:00"))
    if pg_type == "date":
        return dt.date.fromisoformat(value)
    if pg_type == "time":
        return dt.time.fromisoformat(value.rstrip("Z"))
    if pg_type == "numeric":
        return Decimal(str(value))
    if pg_type in ("integer", "bigint"):
        return int(value)
    if pg_type == "boolean":
        return bool(value)
    return value if isinstance(value, str) else str(value)


def record_op(record: dict[str, Any], spec: TableSpec, fallback_ms: int) -> RowOp:
    """A full record fetched by id → a full upsert (of a deleted row if it is deleted), versioned by its
    SystemModstamp."""
    values = {}
    for c in spec.columns:
        if c.field in record:
            values[c.name] = _rest_value(record[c.field], c.pg_type)
    stamp = values.get("systemmodstamp")
    ms = int((stamp - EPOCH).total_seconds() * 1000) if isinstance(stamp, dt.datetime) else fallback_ms
    # a deleted record (from queryAll) lands as a full row that is deleted: soft deletes keep its last values
    return RowOp(str(record.get("Id") or values.get("id")), "upsert", values, (ms, 0, 0), ms,
                 deleted=bool(values.get("isdeleted")))
