"""Avro schemas of change events and platform events in Salesforce's shape, and their binary encoding.

Shape (docs/pubsub-cdc.md §5, modelled on the captured Account schema that the tests keep in
tests/salesforce/data/AccountChangeEvent.v1.avsc): record `<Object>ChangeEvent` (custom objects:
`<Name>__ChangeEvent`) in namespace `com.sforce.eventbus`; field 0 is the non-null `ChangeEventHeader` record (the
12 fields of the header table in docs/pubsub-cdc.md §5); then every replicated field in describe order
as `["null", T]` with default null and a `doc` tag (`Data:Text`, `CreatedDate:DateTime`, custom fields
`Data:Text:00N…`). Never included (docs/pubsub-cdc.md §5): Id (it is in `recordIds`), IsDeleted,
SystemModstamp, calculated (formula) fields, LastActivityDate and LastViewedDate.
A compound address is one field `["null", Address{Street, City, State, PostalCode, Country, StateCode,
CountryCode, Latitude, Longitude, Xyz, GeocodeAccuracy}]` at the position of its first component (where the
captured schema has it); the first one defines the named record `Address`, later ones refer to it by name.
Contact's Name is `["null", PersonName{Salutation, FirstName, LastName, MiddleName, InformalName, Suffix}]`
(doc `Data:PersonName`; the subfields of the captured Account schema's Switchable_PersonName, without its
string branch: docs/pubsub-cdc.md §5), also at the position of its first component. Component fields
(BillingStreet…, FirstName…) are not Avro fields of their own, nor is the computed Name string.

Value encoding: datetime -> epoch milliseconds (docs/pubsub-cdc.md §5, confirmed); the units of
DateOnly and TimeOnly are not documented (docs/pubsub-cdc.md §10, question 4), and this simulator
DECIDES: **DateOnly = epoch milliseconds at UTC midnight; TimeOnly = milliseconds since midnight**.

Schema id: the first 16 bytes of SHA-256 over the schema JSON, URL-safe base64 without padding (22 characters,
like `I8b-dYxvxs5wOtCBr4qsew`, docs/pubsub-cdc.md §2).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import io
import json
from dataclasses import dataclass

import fastavro

from .ids import make_id
from .schema import FieldSpec, ObjectSpec

NAMESPACE = "com.sforce.eventbus"
CHANGE_TYPES = ("CREATE", "UPDATE", "DELETE", "UNDELETE", "GAP_CREATE", "GAP_UPDATE", "GAP_DELETE",
                "GAP_UNDELETE", "GAP_OVERFLOW")
ADDRESS_PARTS = ("Street", "City", "State", "PostalCode", "Country", "StateCode", "CountryCode", "Latitude",
                 "Longitude", "Xyz", "GeocodeAccuracy")
# The person-name record, in the order of the captured Switchable_PersonName (docs/pubsub-cdc.md §5)
PERSON_NAME_PARTS = ("Salutation", "FirstName", "LastName", "MiddleName", "InformalName", "Suffix")
# compound kind -> (named record, its subfields, doc tag)
COMPOUNDS = {"address": ("Address", ADDRESS_PARTS, "Data:Address"),
             "personname": ("PersonName", PERSON_NAME_PARTS, "Data:PersonName")}
# Fields change events never include (docs/pubsub-cdc.md §5); the Id travels in recordIds.
# LastActivityDate and LastViewedDate are absent from the captured Account schema too
# (tests/salesforce/data/AccountChangeEvent.v1.avsc): they change without an event (docs/salesforce-coverage.md §2).
NEVER_INCLUDED = {"Id", "IsDeleted", "SystemModstamp", "LastActivityDate", "LastViewedDate"}
AVRO_TYPES = {"boolean": "boolean", "int": "int", "double": "double", "currency": "double", "percent": "double",
              "date": "long", "datetime": "long", "time": "long"}  # everything else is a string
DOC_TAGS = {"string": "Text", "textarea": "TextArea", "picklist": "DynamicEnum", "multipicklist": "MultiEnum",
            "email": "Email", "phone": "Phone", "url": "Url", "currency": "Currency", "double": "Double",
            "percent": "Percent", "int": "Integer", "boolean": "Boolean", "date": "DateOnly",
            "datetime": "DateTime", "time": "TimeOnly", "address": "Address"}

_EPOCH = dt.datetime(1970, 1, 1)
_EPOCH_DATE = dt.date(1970, 1, 1)
_MS = dt.timedelta(milliseconds=1)


def header_schema() -> dict:
    strings = {"type": "array", "items": "string"}
    return {
        "type": "record", "name": "ChangeEventHeader",
        "fields": [
            {"name": "entityName", "type": "string"},
            {"name": "recordIds", "type": strings},
            {"name": "changeType", "type": {"type": "enum", "name": "ChangeType", "namespace": "",
                                            "symbols": list(CHANGE_TYPES)}},
            {"name": "changeOrigin", "type": "string"},
            {"name": "transactionKey", "type": "string"},
            {"name": "sequenceNumber", "type": "int"},
            {"name": "commitTimestamp", "type": "long"},
            {"name": "commitNumber", "type": "long"},
            {"name": "commitUser", "type": "string"},
            {"name": "nulledFields", "type": strings},
            {"name": "diffFields", "type": strings},
            {"name": "changedFields", "type": strings},
        ],
    }


def schema_id_of(schema_json: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(schema_json.encode()).digest()[:16]).decode().rstrip("=")


def event_name(object_name: str) -> str:
    """AccountChangeEvent; Invoice__c -> Invoice__ChangeEvent (docs/pubsub-cdc.md §5)."""
    return (object_name[:-3] + "__" if object_name.endswith("__c") else object_name) + "ChangeEvent"


def _doc(f: FieldSpec, object_name: str) -> str:
    if f.name == "CreatedDate":
        return "CreatedDate:DateTime"
    if f.type == "reference":
        tag = "ForeignKey:EntityId"
    elif f.type == "textarea" and f.length > 255:
        tag = "Data:StringPlusClob"
    else:
        tag = "Data:" + DOC_TAGS[f.type]
    if f.custom:  # custom fields carry their 15-character field id, like `Data:Text:00NDp00000BbvCY`
        digest = int.from_bytes(hashlib.sha256(f"{object_name}.{f.name}".encode()).digest()[:6], "big")
        tag += ":" + make_id("00N", digest % 62**9)[:15]
    return tag


def _converter(ftype: str):
    if ftype == "datetime":
        return lambda v: (v - _EPOCH) // _MS
    if ftype == "date":
        return lambda v: (v - _EPOCH_DATE).days * 86_400_000  # DateOnly decision, see module docstring
    if ftype == "time":
        return lambda v: ((v.hour * 60 + v.minute) * 60 + v.second) * 1000 + v.microsecond // 1000
    return None


def to_epoch_ms(value: dt.datetime) -> int:
    return (value - _EPOCH) // _MS


def from_epoch_ms(ms: int) -> dt.datetime:
    return _EPOCH + ms * _MS


@dataclass
class Slot:
    """One top-level Avro field after the header: a plain field or a compound (address, person name)."""
    name: str
    position: int  # position in the Avro record (the header is 0)
    row_index: int | None  # plain field: its column in the stored row
    convert: object  # plain field: stored value -> Avro value, or None when the value is already right
    # compound: (subfield name, subfield index, row column, component field name) per component the org has
    parts: tuple[tuple[str, int, int, str], ...] = ()
    subfields: tuple[str, ...] = ()  # compound: every subfield of its record, in record order


def _record_type(kind: str) -> dict:
    """The named record of a compound kind, as the captured schema spells it (docs/pubsub-cdc.md §5)."""
    name, parts = COMPOUNDS[kind][0], COMPOUNDS[kind][1]
    return {"type": "record", "name": name, "fields": [
        {"name": p, "type": ["null", "double" if p in ("Latitude", "Longitude") else "string"], "default": None}
        for p in parts]}


def compound_kind(spec: ObjectSpec, compound: str) -> str:
    """"address" for an address field, "personname" for a name whose components are its subfields."""
    parent = spec.field(compound)
    return "address" if parent is not None and parent.is_compound else "personname"


def component_name(compound: str, kind: str, part: str) -> str:
    """The describe field that holds subfield `part`: BillingAddress.State -> BillingState; Name.FirstName ->
    FirstName."""
    return compound[: -len("Address")] + part if kind == "address" else part


class ChangeEventSchema:
    """The CDC schema of one object at one version, and the layout that maps stored rows onto it."""

    def __init__(self, spec: ObjectSpec, names: list[str]) -> None:
        self.object_name = spec.name
        self.record_name = event_name(spec.name)
        fields: list[dict] = [{"name": "ChangeEventHeader", "type": header_schema(), "doc": "Data:ComplexValueType"}]
        self.slots: list[Slot] = []
        self.top_bit: dict[str, int] = {}  # stored field name -> top-level position
        self.nested_bit: dict[str, tuple[int, int]] = {}  # compound component -> (compound position, sub index)
        self._defined: set[str] = set()  # named record types already defined (later fields refer to them)
        parents = {f.compound_field_name for f in spec.fields if f.compound_field_name}
        column = {n: i for i, n in enumerate(names)}
        for f in spec.fields:
            if f.name in NEVER_INCLUDED or f.calculated:
                continue
            compound = f.compound_field_name or (f.name if f.is_compound or f.name in parents else None)
            if compound is not None:
                if compound not in {s.name for s in self.slots}:
                    fields.append(self._compound(spec, compound, len(fields), column))
                continue
            pos = len(fields)
            fields.append({"name": f.name, "type": ["null", AVRO_TYPES.get(f.type, "string")],
                           "doc": _doc(f, spec.name), "default": None})
            self.top_bit[f.name] = pos
            self.slots.append(Slot(f.name, pos, column[f.name], _converter(f.type)))
        self.schema = {"type": "record", "name": self.record_name, "namespace": NAMESPACE, "fields": fields}
        self.json = json.dumps(self.schema, separators=(",", ":"))
        self.id = schema_id_of(self.json)
        self.parsed = fastavro.parse_schema(self.schema)
        self.field_names = [f["name"] for f in fields]

    def _compound(self, spec: ObjectSpec, compound: str, pos: int, column: dict[str, int]) -> dict:
        """The Avro field of a compound at `pos` (where its first component is in describe), and its slot."""
        kind = compound_kind(spec, compound)
        record_name, subfields, doc = COMPOUNDS[kind]
        parts = []
        for k, part in enumerate(subfields):
            name = component_name(compound, kind, part)
            if name in column and spec.field(name) is not None:
                parts.append((part, k, column[name], name))
                self.nested_bit[name] = (pos, k)
        avro_type: object = record_name if record_name in self._defined else _record_type(kind)
        self._defined.add(record_name)
        self.slots.append(Slot(compound, pos, None, None, tuple(parts), subfields))
        return {"name": compound, "type": ["null", avro_type], "doc": doc, "default": None}

    def body(self, row: tuple, only: set[str] | None = None) -> dict:
        """The Avro record body (without header) from a stored row; `only`: stored names to include."""
        out: dict = {}
        for slot in self.slots:
            if slot.row_index is not None:
                if only is not None and slot.name not in only:
                    out[slot.name] = None
                    continue
                v = row[slot.row_index]
                out[slot.name] = v if v is None or slot.convert is None else slot.convert(v)
            else:
                sub = dict.fromkeys(slot.subfields)
                any_set = False
                for part, _k, col, name in slot.parts:
                    if only is None or name in only:
                        sub[part] = row[col]
                        any_set = any_set or row[col] is not None or only is not None
                out[slot.name] = sub if any_set else None
        return out

    def encode(self, header: dict, body: dict | None) -> bytes:
        record = dict(body) if body else {}
        record["ChangeEventHeader"] = header
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, self.parsed, record)
        return buf.getvalue()

    def bitmap(self, names: list[str]) -> list[str]:
        """Bitmap strings naming `names` (stored field names; docs/pubsub-cdc.md §6): element 0
        `0x…` over top-level positions, then `"{pos}-0x…"` per compound whose subfields are named. A subfield
        change sets only the nested element, not the compound's own top-level bit (worked example 2 of
        docs/pubsub-cdc.md §6). Empty list for no names."""
        if not names:
            return []
        top = 0
        nested: dict[int, int] = {}
        for name in names:
            if name in self.top_bit:
                top |= 1 << self.top_bit[name]
            elif name in self.nested_bit:
                pos, k = self.nested_bit[name]
                nested[pos] = nested.get(pos, 0) | 1 << k
        out = [hex_bits(top)]  # element 0 is always the top-level map, "0x00" when only subfields are named
        out.extend(f"{pos}-{hex_bits(bits)}" for pos, bits in sorted(nested.items()))
        return out


def hex_bits(value: int) -> str:
    """Uppercase, zero-padded to whole bytes like Salesforce's examples `0x400080`, `0x06`
    (docs/pubsub-cdc.md §6)."""
    text = format(value, "X")
    return "0x" + ("0" + text if len(text) % 2 else text)


def null_body(schema: ChangeEventSchema) -> dict:
    return {slot.name: None for slot in schema.slots}


ORDER_READY_TOPIC = "/event/Order_Ready__e"
ORDER_READY_SCHEMA = {
    "type": "record", "name": "Order_Ready__e", "namespace": NAMESPACE,
    "fields": [
        {"name": "CreatedDate", "type": "long", "doc": "CreatedDate:DateTime"},
        {"name": "CreatedById", "type": "string", "doc": "CreatedBy:EntityId"},
        {"name": "Order_Id__c", "type": ["null", "string"], "doc": "Data:Text:00N5g00000OrdId", "default": None},
        {"name": "Amount__c", "type": ["null", "double"], "doc": "Data:Double:00N5g00000OrdAm", "default": None},
        {"name": "Ready_At__c", "type": ["null", "long"], "doc": "Data:DateTime:00N5g00000OrdRd", "default": None},
    ],
}


class PlatformEventSchema:
    """The schema of the platform event `Order_Ready__e` (publishable with Publish)."""

    def __init__(self, schema: dict = ORDER_READY_SCHEMA) -> None:
        self.schema = schema
        self.json = json.dumps(schema, separators=(",", ":"))
        self.id = schema_id_of(self.json)
        self.parsed = fastavro.parse_schema(schema)

    def encode(self, record: dict) -> bytes:
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, self.parsed, record)
        return buf.getvalue()

    def decode(self, payload: bytes) -> dict:
        """Raises on a payload that is not a valid record of this schema."""
        buf = io.BytesIO(payload)
        record = fastavro.schemaless_reader(buf, self.parsed, self.parsed)
        if buf.read(1):
            raise ValueError("trailing bytes after the record")
        return record
