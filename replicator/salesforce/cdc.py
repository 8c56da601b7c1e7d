"""Change Data Capture decoding: Avro payload + header bitmaps → `model.StreamEvent` of `model.Change`s.

Pure: no sockets, no gRPC. `pubsub.py` hands each delivered event here with the schema named by the event's
*own* `schema_id` (docs/pubsub-cdc.md §3: a schema change may insert a field in the middle, so a
bitmap read against an older schema silently names the wrong fields; `SchemaCache` keys by id for that reason).

Bitmaps (`changedFields`, `nulledFields`, `diffFields`) follow docs/pubsub-cdc.md §6 ("Event
Deserialization Considerations", Pub/Sub API Developer Guide:
https://developer.salesforce.com/docs/platform/pub-sub-api/guide/event-deserialization-considerations.html):
an element `0x…` is a bitmap over the top-level fields (bit i, least significant = 0, names `schema.fields[i]`);
an element `{pos}-0x…` is a bitmap over the record inside the union of top-level field `pos` and yields
`Parent.Child` names. A fully set compound is *not* collapsed into its parent name: `compounds.py` maps
`Parent.Child` to component fields.

Values stay as fastavro decodes them (`avro_fast`, the reader specialised per schema id that decodes when it can
take the schema, gives the same dict); `values.decode_avro_value` converts them (units documented there).
"""

from __future__ import annotations

import asyncio
import io
import json
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import fastavro
import structlog
from fastavro import schemaless_reader

from replicator.model import CHANGE_TYPES, Change, StreamEvent, Version
from replicator.salesforce.avro_fast import Reader, compile_reader
from replicator.salesforce.compounds import flatten_compound
from replicator.salesforce.topics import FULL_BODY_TYPES

log = structlog.get_logger(__name__)

HEADER = "ChangeEventHeader"

_TOP = re.compile(r"0[xX]([0-9a-fA-F]+)")
_NESTED = re.compile(r"(\d+)-0[xX]([0-9a-fA-F]+)")

# Narrow UPDATE streams repeat a handful of bitmap shapes; a decoded shape is remembered per schema. The bound
# keeps a stream of ever-new shapes (wide random updates) from growing memory; past it the memo starts over.
_BITMAP_MEMO_LIMIT = 4096


@dataclass(frozen=True, slots=True)
class FieldLayout:
    """Field names by position: what a bitmap indexes. `nested[pos]` are the subfield names of the record
    branch of top-level field `pos` (compound fields: Address, Location, Switchable_PersonName)."""

    names: tuple[str, ...]
    nested: Mapping[int, tuple[str, ...]]


def field_layout(schema: Mapping[str, Any]) -> FieldLayout:
    """The layout of a CDC (or any record) schema, resolving named type references defined earlier."""
    named: dict[str, Mapping[str, Any]] = {}
    namespace = schema.get("namespace", "")
    _register(schema, namespace, named)
    fields = schema.get("fields")
    if not isinstance(fields, list):
        raise ValueError("schema is not an Avro record (no fields)")
    names = []
    nested: dict[int, tuple[str, ...]] = {}
    for pos, f in enumerate(fields):
        names.append(f["name"])
        record = _record_branch(f["type"], named, namespace)
        if record is not None:
            nested[pos] = tuple(sub["name"] for sub in record["fields"])
    return FieldLayout(tuple(names), nested)


def _register(node: Any, namespace: str, named: dict[str, Mapping[str, Any]]) -> None:
    """Collect every named type (record, enum, fixed) under its short and full name, in schema order."""
    if isinstance(node, list):
        for branch in node:
            _register(branch, namespace, named)
        return
    if not isinstance(node, Mapping):
        return
    kind = node.get("type")
    if kind in ("record", "error", "enum", "fixed") and "name" in node:
        name = node["name"]
        ns = node.get("namespace", namespace)
        named.setdefault(name.rsplit(".", 1)[-1], node)
        named[name if "." in name or not ns else f"{ns}.{name}"] = node
        namespace = ns
    if kind in ("record", "error"):
        for f in node.get("fields", ()):
            _register(f.get("type"), namespace, named)
    elif kind == "array":
        _register(node.get("items"), namespace, named)
    elif kind == "map":
        _register(node.get("values"), namespace, named)
    elif isinstance(kind, (Mapping, list)):
        _register(kind, namespace, named)


def _record_branch(node: Any, named: Mapping[str, Mapping[str, Any]], namespace: str) -> Mapping[str, Any] | None:
    """The record schema a field's type holds: X of `X`, `["null", X]`, `["null", "string", X]`; else None."""
    if isinstance(node, list):
        for branch in node:
            record = _record_branch(branch, named, namespace)
            if record is not None:
                return record
        return None
    if isinstance(node, str):
        target = named.get(node) or named.get(f"{namespace}.{node}")
        return _record_branch(target, named, namespace) if isinstance(target, Mapping) else None
    if isinstance(node, Mapping):
        kind = node.get("type")
        if kind in ("record", "error"):
            return node
        if isinstance(kind, (str, list, Mapping)) and kind not in ("enum", "fixed", "array", "map"):
            return _record_branch(kind, named, namespace)
    return None


class CdcSchema:
    """One schema id: the JSON, fastavro's parsed form (parsed once), the reader specialised for it (`avro_fast`;
    None when the schema has a construct it does not handle, and fastavro decodes) and the bitmap layout."""

    __slots__ = ("schema_id", "json", "parsed", "reader", "layout", "_memo")

    def __init__(self, schema_id: str, schema: Mapping[str, Any] | str):
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except json.JSONDecodeError as exc:
                raise ValueError(f"schema {schema_id} is not JSON: {exc}") from None
        if not isinstance(schema, Mapping):
            raise ValueError(f"schema {schema_id} is not an Avro record schema")
        self.schema_id = schema_id
        self.json = schema
        try:
            # A fresh named-type registry per schema: v1 and v2 of an object both define `Address`.
            self.parsed = fastavro.parse_schema(dict(schema), named_schemas={})
        except Exception as exc:  # fastavro raises SchemaParseException, KeyError, TypeError, ...
            raise ValueError(f"schema {schema_id} is not a valid Avro schema: {exc}") from None
        # Chosen once per schema id: the specialised reader gives the dict fastavro gives (the differential test,
        # tests/salesforce/test_fast_decode.py), faster on the mostly-null records of CDC (issue 13).
        self.reader: Reader | None
        try:
            self.reader = compile_reader(schema, schema_id)
        except Exception as exc:  # Unsupported, or a schema shape the generator did not expect: fastavro decodes
            self.reader = None
            log.debug("avro_fast_fallback", schema_id=schema_id, reason=f"{type(exc).__name__}: {exc}")
        self.layout = field_layout(schema)
        self._memo: dict[tuple[str, ...], tuple[str, ...]] = {}

    def bitmap_names(self, bitmaps: list[str]) -> tuple[str, ...]:
        """`decode_bitmap` for this schema, memoised per bitmap shape."""
        if not bitmaps:
            return ()
        key = tuple(bitmaps)
        names = self._memo.get(key)
        if names is None:
            names = tuple(_decode(bitmaps, self.layout))
            if len(self._memo) >= _BITMAP_MEMO_LIMIT:
                self._memo.clear()
            self._memo[key] = names
        return names


def decode_bitmap(bitmaps: list[str], schema: Mapping[str, Any] | FieldLayout | CdcSchema) -> list[str]:
    """Field names of a bitmap array (docs/pubsub-cdc.md §6): top-level names in position order,
    then `Parent.Child` names by parent position and subfield position. Any element order, lowercase hex and
    odd digit counts are accepted. A malformed element, a nested element on a non-record field or a bit beyond
    the field count raises ValueError (the caller dead-letters the event)."""
    if isinstance(schema, CdcSchema):
        return list(schema.bitmap_names(bitmaps))
    layout = schema if isinstance(schema, FieldLayout) else field_layout(schema)
    return _decode(bitmaps, layout)


def _decode(bitmaps: Iterable[str], layout: FieldLayout) -> list[str]:
    top = 0
    nested: dict[int, int] = {}
    for element in bitmaps:
        match = _TOP.fullmatch(element)
        if match:
            top |= int(match.group(1), 16)
            continue
        match = _NESTED.fullmatch(element)
        if not match:
            raise ValueError(f"bitmap element {element!r} is neither 0x… nor {{pos}}-0x…")
        pos = int(match.group(1))
        if pos not in layout.nested:
            where = f"field {pos} ({layout.names[pos]})" if pos < len(layout.names) else f"position {pos}"
            raise ValueError(f"bitmap element {element!r}: {where} is not a compound field")
        nested[pos] = nested.get(pos, 0) | int(match.group(2), 16)
    out = _bit_names(top, layout.names, "top-level")
    for pos in sorted(nested):
        parent = layout.names[pos]
        out.extend(f"{parent}.{child}" for child in _bit_names(nested[pos], layout.nested[pos], parent))
    return out


def _bit_names(value: int, names: tuple[str, ...], where: str) -> list[str]:
    if value.bit_length() > len(names):
        raise ValueError(f"bitmap bit {value.bit_length() - 1} is beyond the {len(names)} fields of {where}")
    out = []
    while value:
        low = value & -value
        out.append(names[low.bit_length() - 1])
        value ^= low
    return out


class SchemaCache:
    """Parsed schemas by schema id, filled on a miss by an async fetcher (Pub/Sub GetSchema).

    Concurrent misses for one id share one fetch. A schema id names immutable content, so entries never
    expire; an org has a handful per object.
    """

    def __init__(self, fetch: Callable[[str], Awaitable[Mapping[str, Any] | str]] | None = None):
        self._fetch = fetch
        self._schemas: dict[str, CdcSchema] = {}
        self._inflight: dict[str, asyncio.Future[CdcSchema]] = {}
        self.fetches = 0  # fetcher calls made, for tests and metrics

    def __contains__(self, schema_id: str) -> bool:
        return schema_id in self._schemas

    def __len__(self) -> int:
        return len(self._schemas)

    def put(self, schema_id: str, schema: Mapping[str, Any] | str) -> CdcSchema:
        """Parse and store a schema (ValueError when it is not a usable Avro record schema)."""
        parsed = CdcSchema(schema_id, schema)
        self._schemas[schema_id] = parsed
        return parsed

    async def get(self, schema_id: str) -> CdcSchema:
        cached = self._schemas.get(schema_id)
        if cached is not None:
            return cached
        pending = self._inflight.get(schema_id)
        if pending is not None:
            return await asyncio.shield(pending)
        if self._fetch is None:
            raise KeyError(schema_id)
        future: asyncio.Future[CdcSchema] = asyncio.get_running_loop().create_future()
        self._inflight[schema_id] = future
        try:
            self.fetches += 1
            schema = self.put(schema_id, await self._fetch(schema_id))
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning when nobody else waited
            raise
        finally:
            del self._inflight[schema_id]
        future.set_result(schema)
        return schema


@dataclass(slots=True)
class _Header:
    entity: str
    record_ids: list[str]
    change_type: str
    version: Version
    transaction_key: str
    commit_user: str
    change_origin: str
    bitmaps: dict[str, list[str]] = field(default_factory=dict)


def decode_event(
    topic: str, replay_id: bytes, schema_id: str, payload: bytes, schema: CdcSchema | Mapping[str, Any]
) -> StreamEvent:
    """One delivered event → StreamEvent. Never raises for bad input: a payload that does not decode against
    the schema, trailing bytes, a bad bitmap or an unknown change type give `StreamEvent(error=…)` carrying
    the raw payload, which the pipeline dead-letters."""
    try:
        cdc = schema if isinstance(schema, CdcSchema) else CdcSchema(schema_id, schema)
        if cdc.reader is not None:
            record, used = cdc.reader(payload if isinstance(payload, bytes) else bytes(payload))
        else:
            buffer = io.BytesIO(payload)
            record = schemaless_reader(buffer, cdc.parsed, None)
            used = buffer.tell()
        if used != len(payload):
            raise ValueError(f"{len(payload) - used} bytes left after the record: wrong schema?")
        if not isinstance(record, dict):
            raise ValueError("payload is not an Avro record")
        header = record.get(HEADER)
        if header is None:
            created = record.get("CreatedDate")
            return StreamEvent(
                topic=topic,
                replay_id=replay_id,
                commit_timestamp=created if isinstance(created, int) else None,
                schema_id=schema_id,
                record=record,
            )
        return _change_event(topic, replay_id, schema_id, record, header, cdc)
    except Exception as exc:  # decoding must not stop the stream: every failure becomes a dead letter
        return StreamEvent(
            topic=topic,
            replay_id=replay_id,
            error=f"undecodable event ({type(exc).__name__}: {exc})",
            payload=payload,
            schema_id=schema_id,
        )


def _change_event(
    topic: str, replay_id: bytes, schema_id: str, record: dict[str, Any], header: dict[str, Any], cdc: CdcSchema
) -> StreamEvent:
    change_type = header["changeType"]
    if change_type not in CHANGE_TYPES:
        raise ValueError(f"unknown changeType {change_type!r}")
    version = Version(header["commitTimestamp"], header["commitNumber"], header["sequenceNumber"])
    nulled = frozenset(cdc.bitmap_names(header["nulledFields"]))
    diff = frozenset(cdc.bitmap_names(header["diffFields"]))
    if change_type in FULL_BODY_TYPES:
        fields = _full_body(record)
    elif change_type == "UPDATE":
        fields = _changed_body(record, cdc.bitmap_names(header["changedFields"]))
    else:  # DELETE and GAP_*: header only (docs/pubsub-cdc.md §5, §7)
        fields = {}
    changes = []
    for i, record_id in enumerate(header["recordIds"]):
        changes.append(
            Change(
                object=header["entityName"],
                record_id=record_id,
                change_type=change_type,
                version=version,
                transaction_key=header["transactionKey"],
                fields=fields if i == 0 else dict(fields),
                nulled=nulled,
                diff_fields=diff,
                replay_id=replay_id,
                schema_id=schema_id,
                commit_user=header["commitUser"],
                change_origin=header["changeOrigin"],
            )
        )
    return StreamEvent(
        topic=topic,
        replay_id=replay_id,
        changes=tuple(changes),
        commit_timestamp=version.commit_timestamp,
        schema_id=schema_id,
    )


def _full_body(record: dict[str, Any]) -> dict[str, Any]:
    """CREATE/UNDELETE: every non-null field; a compound's non-null subfields as `Parent.Child`."""
    fields: dict[str, Any] = {}
    for name, value in record.items():
        if value is None or name == HEADER:
            continue
        if isinstance(value, dict):
            fields.update((sub_name, sub) for sub_name, sub in flatten_compound(name, value) if sub is not None)
        else:
            fields[name] = value
    return fields


def _changed_body(record: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    """UPDATE: the value of each changed field. `Parent.Child` takes the subfield out of the compound record;
    a compound named only by its parent bit gives all its subfields."""
    fields: dict[str, Any] = {}
    for name in names:
        parent, dot, child = name.partition(".")
        if dot:
            value = record.get(parent)
            fields[name] = value.get(child) if isinstance(value, dict) else None
            continue
        if name == HEADER:
            continue
        value = record.get(name)
        if isinstance(value, dict):
            prefix = name + "."
            if not any(n.startswith(prefix) for n in names):
                fields.update(flatten_compound(name, value))
        else:
            fields[name] = value
    return fields
