"""Bind a parsed SOQL query to the org: resolve the object and fields, type-check literals, build a row
predicate, and run the query in Id order (or ORDER BY order) with OFFSET/LIMIT.

Errors follow Salesforce's codes (docs/bulk-rest-oauth.md §2.2): INVALID_TYPE for an unknown object,
INVALID_FIELD for an unknown field or a literal of the wrong type, MALFORMED_QUERY for what the simulator does
not support.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .ids import to_id18
from .schema import NUMBER_TYPES, TEXT_TYPES, FieldSpec
from .soql import BoolExpr, Cond, Literal, Query, SoqlError, Token, error_at, parse
from .store import ObjectStore, OrgStore

_LITERAL_FOR = {"boolean": "boolean", "date": "date", "datetime": "datetime", **{t: "number" for t in NUMBER_TYPES}}
_TYPE_WORD = {"boolean": "boolean", "date": "date", "datetime": "dateTime", "number": "number",
              "string": "string"}


@dataclass
class Column:
    name: str  # canonical API name
    spec: FieldSpec
    position: int | None  # position in the stored row; None for a compound field


@dataclass
class Plan:
    query: Query
    store: ObjectStore
    columns: list[Column]
    predicate: Callable[[tuple], bool] | None

    @property
    def object_name(self) -> str:
        return self.store.spec.name


def _no_column(q: Query, tok: Token, obj: str) -> SoqlError:
    return error_at(q.text, tok.pos, "INVALID_FIELD",
                    f"No such column '{tok.value}' on entity '{obj}'. If you are attempting to use a custom "
                    "field, be sure to append the '__c' after the custom field name. Please reference your "
                    "WSDL or the describe call for the appropriate names.")


def _resolve(q: Query, store: ObjectStore, tok: Token) -> Column:
    name = str(tok.value)
    spec = store.spec.field(name)
    if spec is None:
        if "." in name:
            rel = name.split(".", 1)[0]
            raise error_at(q.text, tok.pos, "INVALID_FIELD",
                           f"Didn't understand relationship '{rel}' in field path. (relationship fields are "
                           "not supported by replicator.sim)")
        raise _no_column(q, tok, store.spec.name)
    pos = None if spec.is_compound else store.names.index(spec.name)
    return Column(spec.name, spec, pos)


def bind(text: str, org: OrgStore) -> Plan:
    """Parse and bind `text`; raise SoqlError on any problem."""
    q = parse(text)
    store = org.lookup(str(q.object.value))
    if store is None:
        raise error_at(q.text, q.object.pos, "INVALID_TYPE",
                       f"sObject type '{q.object.value}' is not supported. If you are attempting to use a custom "
                       "object, be sure to append the '__c' after the entity name. Please reference your WSDL "
                       "or the describe call for the appropriate names.")
    columns = [_resolve(q, store, item.token) for item in q.select if item.kind == "field"]
    predicate = _compile(q, store, q.where) if q.where is not None else None
    for item in q.order_by:
        _resolve(q, store, item.field)
    return Plan(q, store, columns, predicate)


def _coerce(q: Query, col: Column, lit: Literal) -> object:
    if lit.kind == "null":
        return None
    ftype = col.spec.type
    want = _LITERAL_FOR.get(ftype, "string")
    if ftype == "time" and lit.kind == "string":
        return lit.value
    if lit.kind != want:
        quoted = "should not be enclosed in quotes" if want != "string" else "must be enclosed in quotes"
        raise error_at(q.text, lit.token.pos, "INVALID_FIELD",
                       f"value of filter criterion for field '{col.name}' must be of type {_TYPE_WORD[want]} "
                       f"and {quoted}")
    if ftype in ("id", "reference"):
        try:
            return to_id18(str(lit.value))
        except ValueError:
            raise error_at(q.text, lit.token.pos, "INVALID_QUERY_FILTER_OPERATOR",
                           f"invalid ID field: {lit.value}") from None
    if ftype in TEXT_TYPES:
        return str(lit.value).lower()
    return lit.value


def _compile(q: Query, store: ObjectStore, node) -> Callable[[tuple], bool]:
    if isinstance(node, BoolExpr):
        parts = [_compile(q, store, a) for a in node.args]
        if node.op == "and":
            return lambda r: all(p(r) for p in parts)
        if node.op == "or":
            return lambda r: any(p(r) for p in parts)
        inner = parts[0]
        return lambda r: not inner(r)
    assert isinstance(node, Cond)
    col = _resolve(q, store, node.field)
    if col.position is None or (col.spec.type == "textarea" and col.spec.length > 255):
        raise error_at(q.text, node.field.pos, "INVALID_FIELD",
                       f"field '{col.name}' can not be filtered in a query call")
    pos = col.position
    ftype = col.spec.type
    fold = ftype in TEXT_TYPES and ftype not in ("id", "reference")

    def value(r: tuple) -> object:
        v = r[pos]
        return v.lower() if fold and v is not None else v

    if ftype in ("id", "reference"):
        def value(r: tuple) -> object:  # noqa: F811 - ids compare in 18-character form
            return r[pos]

    op = node.op
    if op == "like":
        pattern = re.compile("".join(".*" if c == "%" else "." if c == "_" else re.escape(c)
                                     for c in str(node.values[0].value)), re.IGNORECASE | re.DOTALL)
        return lambda r: r[pos] is not None and pattern.fullmatch(r[pos]) is not None
    if op in ("includes", "excludes"):
        wanted = [set(str(lit.value).lower().split(";")) for lit in node.values]

        def includes(r: tuple) -> bool:
            have = set((r[pos] or "").lower().split(";"))
            return any(w <= have for w in wanted)
        if op == "includes":
            return includes
        return lambda r: not includes(r)
    values = [_coerce(q, col, lit) for lit in node.values]
    if op in ("in", "notin"):
        members = set(values)
        if op == "in":
            return lambda r: value(r) in members
        return lambda r: value(r) not in members
    target = values[0]
    if target is None:
        if op == "=":
            return lambda r: r[pos] is None
        if op == "!=":
            return lambda r: r[pos] is not None
        return lambda r: False
    compare = {
        "=": lambda a: a == target, "!=": lambda a: a != target, "<": lambda a: a < target,
        "<=": lambda a: a <= target, ">": lambda a: a > target, ">=": lambda a: a >= target,
    }[op]
    if op == "!=":
        return lambda r: (v := value(r)) is None or compare(v)
    return lambda r: (v := value(r)) is not None and compare(v)


def iter_rows(plan: Plan, include_deleted: bool) -> Iterator[tuple]:
    """Matching rows in Id order (or ORDER BY order), after OFFSET, up to LIMIT."""
    return (row for _, row in iter_matches(plan, include_deleted))


def iter_matches(plan: Plan, include_deleted: bool) -> Iterator[tuple[int, tuple]]:
    """(position, row) of matching records in Id order (or ORDER BY order), after OFFSET, up to LIMIT."""
    store, q = plan.store, plan.query
    deleted_pos, predicate = store.deleted_pos, plan.predicate

    def matches() -> Iterator[tuple[int, tuple]]:
        for pos, row in store.items():
            if not include_deleted and row[deleted_pos]:
                continue
            if predicate is None or predicate(row):
                yield pos, row

    if q.order_by:
        keys = [(_resolve(q, store, o.field), o) for o in q.order_by]
        hits: list[tuple[int, list]] = []
        for pos, row in matches():
            hits.append((pos, [row[c.position] if c.position is not None else None for c, _ in keys]))
        for k in range(len(keys) - 1, -1, -1):  # stable sorts, last key first
            col, order = keys[k]
            # Text sorts without case; ids do not: they sort as WHERE compares them (18-character form, `_compile`),
            # so a keyset `ORDER BY SystemModstamp, Id` with `Id > :last` never skips a record whose id differs from
            # another's by case alone (tests/sim/test_sim_id_order.py)
            text = col.spec.type in TEXT_TYPES and col.spec.type not in ("id", "reference")

            def sort_key(hit, k=k, text=text, order=order):
                v = hit[1][k]
                if v is None:
                    return (0 if order.nulls_last == order.descending else 1, "")
                return (1 if order.nulls_last == order.descending else 0, v.lower() if text else v)
            hits.sort(key=sort_key, reverse=order.descending)
        source: Iterator[tuple[int, tuple]] = ((pos, store.row(pos)) for pos, _ in hits)
    else:
        source = matches()
    skip, left = q.offset or 0, q.limit
    for hit in source:
        if skip:
            skip -= 1
            continue
        if left is not None:
            if left <= 0:
                return
            left -= 1
        yield hit
