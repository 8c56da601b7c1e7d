"""Changes → row operations: map fields to columns, convert values, fold per key (pure functions).

Folding merges rather than replaces (docs/design.md, Principles 6): within a batch, changes to one key are
merged in version order; a later value of a field wins; a delete wins over earlier changes; an undelete or
create restores the full record. The result is at most one operation per key.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from ..model import Change, HistoryStep, ObjectDescribe, RowOp, TableSpec, TerminalError
from ..salesforce.compounds import find_component, flatten_compound, group_components
from ..salesforce.diffs import TextDiff, apply_diffs
from ..salesforce.topics import FULL_BODY_TYPES, GAP_TYPES
from ..salesforce.values import decode_avro_value, decode_rest_value, encode_epoch_ms


class UnknownFieldError(TerminalError):
    """A change names a field the table does not have (a field added in Salesforce): describe again before
    folding (the same fold fails again without it)."""

    def __init__(self, fields: set[str]):
        super().__init__(f"unknown fields {sorted(fields)}")
        self.fields = fields


class ColumnMap:
    """Field names of change events (including `Parent.Child` compound subfields) → table columns."""

    def __init__(self, spec: TableSpec, describe: ObjectDescribe):
        self.spec = spec
        self.types = {c.name: c.pg_type for c in spec.columns}
        self.by_field: dict[str, str] = {c.field: c.name for c in spec.columns}
        for c in spec.columns:
            self.by_field.setdefault(c.field.lower(), c.name)
        self.compounds = group_components(f for f in describe.fields if f.name.lower() in self.types)
        # Compound parents that are columns themselves (Contact.Name): their value is computed by the org from
        # components events carry, so it only comes with a record fetched from the org.
        self._cache: dict[str, str | None] = {}
        self.derived = frozenset(p for p in self.compounds if self.column(p) is not None)
        # The names a change may use for a part of such a compound: `Name.LastName` starts with the parent's name,
        # a flat `LastName` is one of its components.
        self._derived_parts = self.derived | {c for p in self.derived for c in self.compounds[p]}

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
        comp = find_component(parent, child, self.compounds.get(parent, ()))
        return comp.lower() if comp is not None else None

    def values(self, fields: dict[str, Any], strict: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {}
        unknown: set[str] = set()
        for name, value in fields.items():
            if isinstance(value, dict):  # a whole compound value: spread its subfields
                for sub_name, subvalue in flatten_compound(name, value):
                    col = self.column(sub_name)
                    if col is not None:
                        out[col] = decode_avro_value(subvalue, self.types[col])
                continue
            col = self.column(name)
            if col is None:
                unknown.add(name)
                continue
            out[col] = decode_avro_value(value, self.types[col])
        if unknown and strict:
            raise UnknownFieldError(unknown)
        return out

    def touches_derived(self, ch: Change) -> bool:
        """The change sets or nulls a component of a computed compound (`Name.FirstName` of Contact.Name)."""
        return bool(self.derived) and any(n.split(".", 1)[0] in self._derived_parts for n in (*ch.fields, *ch.nulled))

    def columns_of(self, names: frozenset[str]) -> set[str]:
        """The columns of these field names (those the table has)."""
        return {col for n in names if (col := self.column(n)) is not None}

    def nulled(self, names: frozenset[str]) -> set[str]:
        cols = set()
        for n in names:
            col = self.column(n)
            if col is not None and col != self.spec.key:
                cols.add(col)
        return cols


def fold(changes: list[Change], cmap: ColumnMap, strict: bool = True, history: bool = False) -> dict[str, RowOp]:
    """Fold changes (in delivery order) into one operation per record id.

    Order: commit time, then delivery order, which is the topic's replay order (a stable sort keeps it for
    changes of the same second; commitNumber is diagnostic only and never reorders). Each operation keeps the
    replay id of its newest change (`RowOp.position`), so the sink can order changes of the same second.

    Raises UnknownFieldError when a change names a field the table lacks (unless not `strict`: such fields
    are then left out, after the caller added what it could).

    With `history`, each operation also keeps every change folded into it (`RowOp.steps`, in order), with the
    columns it set: a history table needs each committed change, and the fold keeps only their sum. Keeping them
    beside the fold, rather than folding less, leaves the batch's one write per record (and its one statement)
    as it is; postgres/history.py makes each step's full image from the record's previous version.
    """
    ops: dict[str, RowOp] = {}
    for ch in sorted(changes, key=lambda c: c.version.commit_timestamp):
        key = ch.record_id
        cur = ops.get(key)
        ver, ms, pos = ch.version.key(), ch.version.commit_timestamp, ch.replay_id
        steps = (cur.steps if cur is not None and cur.steps is not None else []) if history else None
        if ch.change_type in GAP_TYPES:
            ops[key] = RowOp(key, "refetch", version=ver, commit_ms=ms, position=pos)
        elif ch.change_type == "UNDELETE" or (ch.change_type in FULL_BODY_TYPES and cmap.derived) or \
                (ch.change_type == "UPDATE" and cmap.touches_derived(ch)):
            # The undeleted record's fields events never carry, or a computed name: only the org has them now.
            ops[key] = RowOp(key, "refetch", version=ver, commit_ms=ms, position=pos)
        elif ch.change_type in FULL_BODY_TYPES:
            values = cmap.values(ch.fields, strict)
            kind = "undelete" if ch.change_type == "UNDELETE" else "upsert"
            ops[key] = RowOp(key, kind, values, ver, ms, position=pos)
        elif ch.change_type == "DELETE":
            # A delete wins, but a soft-deleted row keeps the values the record had when it was deleted.
            if cur is not None and cur.kind in ("upsert", "undelete"):
                ops[key] = RowOp(key, "upsert", cur.values, ver, ms, deleted=True, position=pos)
            elif cur is not None and cur.kind == "update":
                ops[key] = RowOp(key, "delete", cur.values, ver, ms, position=pos)
            elif cur is not None and cur.kind == "refetch":
                # the gap's values are unknown: fetch the deleted record (queryAll includes it) at this version
                ops[key] = RowOp(key, "refetch", version=ver, commit_ms=ms, position=pos)
            else:
                ops[key] = RowOp(key, "delete", version=ver, commit_ms=ms, position=pos)
        elif ch.change_type == "UPDATE":
            values = cmap.values(ch.fields, strict)
            if ch.nulled:
                for col in cmap.nulled(ch.nulled):
                    values[col] = None
            if ch.diff_fields:
                for col in cmap.columns_of(ch.diff_fields):
                    if isinstance(values.get(col), str):  # sent as a diff of the stored value (diffFields)
                        values[col] = TextDiff((values[col],))
            if cur is None or cur.kind == "refetch":
                merged = values
            else:  # only a change that carries diffs needs more than a plain merge (the hot path: no diffs)
                merged = merge_values(cur.values, values) if ch.diff_fields else {**cur.values, **values}
            if merged is None or (cur is not None and cur.kind == "refetch"):
                # a diff that does not fit the value before it, or values unknown: fetch the record
                ops[key] = RowOp(key, "refetch", version=ver, commit_ms=ms, position=pos)
            elif cur is None or cur.kind == "update":
                ops[key] = RowOp(key, "update", merged, ver, ms, position=pos)
            elif cur.kind in ("upsert", "undelete"):
                ops[key] = RowOp(key, cur.kind, merged, ver, ms, position=pos)
            # an update after a delete in the same batch cannot happen in Salesforce; the delete stands
        if steps is not None:
            steps.append(_step(ch, ops[key], cmap, strict))
            ops[key].steps = steps
    return ops


_STEP_OPS = {"CREATE": "create", "UPDATE": "update", "DELETE": "delete", "UNDELETE": "undelete"}


def _step(ch: Change, op: RowOp, cmap: ColumnMap, strict: bool) -> HistoryStep:
    """The history step of one change (`fold` with `history`): the columns it set, None when unknown here."""
    kind = _STEP_OPS.get(ch.change_type, "gap")
    values: dict[str, Any] | None = None
    if op.kind != "refetch" and kind in ("create", "update"):
        values = cmap.values(ch.fields, strict)
        for col in cmap.nulled(ch.nulled) if ch.nulled else ():
            values[col] = None
        for col in cmap.columns_of(ch.diff_fields) if ch.diff_fields else ():
            if isinstance(values.get(col), str):  # a diff of the value before it: its image is the folded one
                values[col] = TextDiff((values[col],))
    elif kind == "delete":
        values = {}
    changed = tuple(sorted({*ch.fields, *ch.nulled})) if kind == "update" else ()
    return HistoryStep(kind, ch.version.commit_timestamp, ch.replay_id, values, ch.commit_user, ch.change_origin,
                       changed)


def merge_values(before: dict[str, Any], later: dict[str, Any]) -> dict[str, Any] | None:
    """`later`'s values over `before`'s. A diff applies to the value before it (a full value, or earlier diffs
    of the batch, which it follows); None when it does not fit (or follows a NULL): the record must be fetched."""
    merged = dict(before)
    for col, value in later.items():
        prev = merged.get(col)
        if isinstance(value, TextDiff) and col in before:
            if isinstance(prev, TextDiff):
                value = prev.then(value)
            elif isinstance(prev, str):
                value = apply_diffs(prev, value)
                if value is None:
                    return None
            else:
                return None
        merged[col] = value
    return merged


def record_op(record: dict[str, Any], spec: TableSpec, fallback_ms: int) -> RowOp:
    """A full record fetched by id → a full upsert (of a deleted row if it is deleted), versioned by its
    SystemModstamp."""
    values = {}
    for c in spec.columns:
        if c.field in record:
            values[c.name] = decode_rest_value(record[c.field], c.pg_type)
    stamp = values.get("systemmodstamp")
    ms = encode_epoch_ms(stamp) if isinstance(stamp, dt.datetime) else fallback_ms
    # a deleted record (from queryAll) lands as a full row that is deleted: soft deletes keep its last values
    return RowOp(str(record.get("Id") or values.get("id")), "upsert", values, (ms, 0, 0), ms,
                 deleted=bool(values.get("isdeleted")), fetched=True)
