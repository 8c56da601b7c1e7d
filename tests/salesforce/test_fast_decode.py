"""avro_fast: the reader specialised per schema decodes exactly what fastavro decodes (a differential test), on the
captured Account schemas, on every schema the simulator emits (its change events, a schema change adding each
field type, its platform event) and on a synthetic schema with the types CDC does not use; bad payloads raise
(and `decode_event` turns them into dead letters) with either decoder; a schema it cannot take stays on fastavro."""

from __future__ import annotations

import io
import json
import math
import random
import ssl
import struct
from pathlib import Path
from typing import Any

import fastavro
import httpx
import pytest

from replicator.salesforce.avro_fast import Unsupported, compile_reader
from replicator.salesforce.cdc import CdcSchema, decode_event
from replicator.sim.server import SimulatorThread

DATA = Path(__file__).parent / "data"
CAPTURED = {p.name: json.loads(p.read_text()) for p in sorted(DATA.glob("*.avsc"))}
TOPIC = "/data/AccountChangeEvent"
REPLAY = bytes(10)
ADDED_TYPES = ("string", "textarea", "picklist", "multipicklist", "email", "phone", "url", "boolean", "int",
               "double", "currency", "percent", "date", "datetime", "time")

# Types CDC schemas do not use but the reader generates: float, bytes, map, enum, arrays of records, a union whose
# null is not branch 0, a named type used twice, a record inside an array inside a union.
SYNTHETIC = {
    "type": "record", "name": "Synthetic", "namespace": "test.ns",
    "fields": [
        {"name": "f", "type": "float"},
        {"name": "b", "type": ["null", "bytes"]},
        {"name": "m", "type": {"type": "map", "values": ["null", "long"]}},
        {"name": "e", "type": {"type": "enum", "name": "Color", "symbols": ["RED", "GREEN", "BLUE"]}},
        {"name": "e2", "type": ["null", "Color"]},
        {"name": "s_first", "type": ["string", "null"]},
        {"name": "three", "type": ["null", "int", "double", "boolean"]},
        {"name": "items", "type": ["null", {"type": "array", "items": {
            "type": "record", "name": "Item", "fields": [
                {"name": "k", "type": "string"}, {"name": "n", "type": ["null", "long"]},
                {"name": "tags", "type": {"type": "array", "items": "string"}}]}}]},
        {"name": "again", "type": ["null", "test.ns.Item"]},
        {"name": "nested", "type": {"type": "array", "items": {"type": "array", "items": "double"}}},
        {"name": "plain", "type": {"type": "string", "doc": "a primitive with attributes"}},
        {"name": "n0", "type": "null"},
    ] + [{"name": f"opt{i}", "type": ["null", "string"], "default": None} for i in range(40)],
}


@pytest.fixture(scope="module")
def sim_schemas() -> dict[str, dict]:
    """Every schema the simulator serves by id (GetSchema reads the same table): its change events with a wide
    object and a hostile field name, one schema change per addable field type, and its platform event."""
    with SimulatorThread(records=5, seed=3, hostile_field=True, wide_object=True) as running:
        verify = ssl.create_default_context(cafile=running.info["ca_file"])
        with httpx.Client(base_url=running.info["instance_url"], verify=verify, timeout=30) as http:
            for ftype in ADDED_TYPES:
                response = http.post("/__sim/schema/Account/fields", json={"name": f"Added_{ftype}__c", "type": ftype})
                assert response.status_code == 200, response.text
        by_id = dict(running.simulator.traffic.capture.schemas_by_id)
    assert len(by_id) > len(ADDED_TYPES) + 2
    return {sid: json.loads(text) for sid, text in by_id.items()}


# ---------------------------------------------------------------------------------------------------------------
# random records of a schema, and exact comparison


STRINGS = ("", "a", "ünïcödé €", "日本語テキスト", "emoji 😀🎉", "x" * 300, "y" * 5000, "nul\x00inside", "0x2080")
LONGS = (0, 1, -1, 63, -64, 64, -65, 8191, 2**31 - 1, -(2**31), 1714172795000, 1709303151782928388, 2**63 - 1,
         -(2**63))
INTS = (0, 1, -1, 63, -64, 64, 2**31 - 1, -(2**31), 300, -300)
DOUBLES = (0.0, -0.0, 1.5, -1234.5678, 1e308, -1e-308, 5e-324, math.inf, -math.inf, math.nan)


class Gen:
    def __init__(self, schema: dict, rng: random.Random):
        self.rng = rng
        self.named: dict[str, Any] = {}
        self.register(schema, "")

    def register(self, node: Any, ns: str) -> None:
        """Named types by short and full name, so a reference resolves even when its definition drew null."""
        if isinstance(node, list):
            for branch in node:
                self.register(branch, ns)
        elif isinstance(node, dict):
            if node.get("type") in ("record", "enum", "fixed"):
                ns = node.get("namespace", ns)
                self.named[node["name"]] = self.named[f"{ns}.{node['name']}" if ns else node["name"]] = node
            for f in node.get("fields", ()):
                self.register(f["type"], ns)
            for key in ("items", "values"):
                if key in node:
                    self.register(node[key], ns)
            if isinstance(node.get("type"), (list, dict)):
                self.register(node["type"], ns)

    def value(self, node: Any, ns: str = "") -> Any:
        rng = self.rng
        if isinstance(node, list):
            weights = [3 if b == "null" else 2 for b in node]
            return self.value(rng.choices(node, weights)[0], ns)
        if isinstance(node, dict):
            kind = node["type"]
            if kind == "record":
                ns = node.get("namespace", ns)
                return {f["name"]: self.value(f["type"], ns) for f in node["fields"]}
            if kind == "enum":
                return rng.choice(node["symbols"])
            if kind == "array":
                return [self.value(node["items"], ns) for _ in range(rng.choice((0, 0, 1, 2, 5, 70)))]
            if kind == "map":
                return {rng.choice(STRINGS[:5]) + str(i): self.value(node["values"], ns)
                        for i in range(rng.choice((0, 1, 3)))}
            return self.value(kind, ns)
        if node == "null":
            return None
        if node == "string":
            return rng.choice(STRINGS) if rng.random() < 0.6 else "".join(
                chr(rng.randrange(32, 0x2FFF)) for _ in range(rng.randrange(0, 40)))
        if node == "long":
            return rng.choice(LONGS) if rng.random() < 0.6 else rng.randrange(-(2**63), 2**63)
        if node == "int":
            return rng.choice(INTS) if rng.random() < 0.6 else rng.randrange(-(2**31), 2**31)
        if node == "double":
            return rng.choice(DOUBLES) if rng.random() < 0.6 else rng.uniform(-1e12, 1e12)
        if node == "float":
            return struct.unpack("<f", struct.pack("<f", rng.uniform(-1e6, 1e6)))[0]
        if node == "boolean":
            return rng.random() < 0.5
        if node == "bytes":
            return bytes(rng.randrange(256) for _ in range(rng.choice((0, 1, 16, 200))))
        return self.value(self.named.get(f"{ns}.{node}") or self.named[node], ns)


def same(a: Any, b: Any) -> bool:
    """Equal values of the same Python types (True is not 1, NaN equals NaN, -0.0 is not 0.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        return struct.pack("<d", a) == struct.pack("<d", b)
    return a == b


def encode(parsed: Any, record: Any) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, parsed, record)
    return buf.getvalue()


def fastavro_decode(parsed: Any, payload: bytes) -> Any:
    buf = io.BytesIO(payload)
    out = fastavro.schemaless_reader(buf, parsed, None)
    if buf.tell() != len(payload):
        raise ValueError("trailing bytes")
    return out


def fast_decode(reader: Any, payload: bytes) -> Any:
    out, used = reader(payload)
    if used != len(payload):
        raise ValueError("trailing bytes")
    return out


def records(schema: dict, seed: int, n: int) -> list[Any]:
    gen = Gen(schema, random.Random(seed))
    out = [gen.value(schema) for _ in range(n)]
    if schema.get("type") == "record":  # the CDC extremes: every optional field null, and every field set
        nulls = gen.value(schema)
        for f in schema["fields"]:
            if isinstance(f["type"], list) and "null" in f["type"]:
                nulls[f["name"]] = None
        out.append(nulls)
    return out


def check_schema(schema: dict, seed: int, n: int = 150) -> int:
    parsed = fastavro.parse_schema(json.loads(json.dumps(schema)), named_schemas={})
    reader = compile_reader(schema)
    checked = 0
    for record in records(schema, seed, n):
        payload = encode(parsed, record)
        expected = fastavro_decode(parsed, payload)
        got = fast_decode(reader, payload)
        assert same(got, expected), (record, got, expected)
        checked += 1
    return checked


# ---------------------------------------------------------------------------------------------------------------
# equal results


@pytest.mark.parametrize("name", sorted(CAPTURED))
def test_captured_schema_decodes_like_fastavro(name):
    assert check_schema(CAPTURED[name], seed=13) > 100


def test_every_simulator_schema_decodes_like_fastavro(sim_schemas):
    names = {s["name"] for s in sim_schemas.values()}
    assert {"AccountChangeEvent", "ContactChangeEvent", "Order_Ready__e"} <= names
    added = max((s for s in sim_schemas.values() if s["name"] == "AccountChangeEvent"), key=lambda s: len(s["fields"]))
    assert {f"Added_{t}__c" for t in ADDED_TYPES} <= {f["name"] for f in added["fields"]}
    for i, (sid, schema) in enumerate(sorted(sim_schemas.items())):
        assert check_schema(schema, seed=i, n=60) > 50, sid


def test_synthetic_schema_with_types_cdc_does_not_use_decodes_like_fastavro():
    assert check_schema(SYNTHETIC, seed=7, n=400) > 400


def test_names_resolve_in_the_enclosing_namespace_first():
    """Avro specification, "Names": a bare reference means the type of that name in the enclosing namespace."""
    schema = {"type": "record", "name": "Top", "namespace": "a", "fields": [
        {"name": "x", "type": {"type": "record", "name": "X", "fields": [{"name": "s", "type": "string"}]}},
        {"name": "inner", "type": {"type": "record", "name": "Inner", "namespace": "b", "fields": [
            {"name": "x", "type": {"type": "record", "name": "X", "fields": [{"name": "n", "type": "long"}]}},
            {"name": "again", "type": ["null", "X"]},
            {"name": "outer", "type": ["null", "a.X"]}]}},
        {"name": "again", "type": ["null", "X"]}]}
    assert check_schema(schema, seed=3, n=80) > 80


def test_array_blocks_with_negative_counts_decode_like_fastavro():
    """Avro "Binary Encoding", Complex Types: a negative block count is followed by the block's size in bytes."""
    schema = {"type": "array", "items": "long"}
    parsed = fastavro.parse_schema(schema)
    payload = bytes([0x03, 0x04, 0x02, 0x04, 0x02, 0x06, 0x00])  # block of -2 items (2 bytes): 1, 2; block of 1: 3
    assert fast_decode(compile_reader(schema), payload) == fastavro_decode(parsed, payload) == [1, 2, 3]


def test_over_long_varint_wraps_to_64_bits_like_fastavro():
    parsed = fastavro.parse_schema("long")
    for payload in (b"\xff" * 9 + b"\x01", b"\x80" * 9 + b"\x7f", b"\xfe" + b"\xff" * 8 + b"\x01"):
        assert fast_decode(compile_reader("long"), payload) == fastavro_decode(parsed, payload)


# ---------------------------------------------------------------------------------------------------------------
# bad payloads raise with both decoders, and become dead letters


def bad_payloads(schema: dict, seed: int) -> list[bytes]:
    parsed = fastavro.parse_schema(json.loads(json.dumps(schema)), named_schemas={})
    out = []
    for record in records(schema, seed, 4):
        payload = encode(parsed, record)
        # every cut in the first 300 bytes (header, unions, lengths), then one every 53 bytes (inside long values)
        cuts = sorted(set(range(min(len(payload), 300))) | set(range(0, len(payload), 53)))
        out.extend(payload[:cut] for cut in cuts)
        out.extend((payload + b"\x00", payload + b"\x02abc"))  # trailing bytes
    return out


@pytest.mark.parametrize("schema", [CAPTURED["AccountChangeEvent.v2.avsc"], SYNTHETIC], ids=["v2", "synthetic"])
def test_truncated_and_trailing_payloads_raise_with_both_decoders(schema):
    parsed = fastavro.parse_schema(json.loads(json.dumps(schema)), named_schemas={})
    reader = compile_reader(schema)
    kinds = (EOFError, IndexError, ValueError, UnicodeDecodeError, struct.error)
    payloads = bad_payloads(schema, seed=5)
    assert len(payloads) > 200
    for payload in payloads:
        with pytest.raises(kinds) as slow:
            fastavro_decode(parsed, payload)
        with pytest.raises(kinds) as fast:
            fast_decode(reader, payload)
        if slow.type in (EOFError, ValueError, UnicodeDecodeError):
            assert fast.type in (slow.type, IndexError), payload  # fastavro also raises IndexError on a cut varint


def test_invalid_indexes_and_utf8_raise():
    enum = {"type": "enum", "name": "E", "symbols": ["A", "B"]}
    cases = [(["null", "string"], b"\x04"), (["null", "string"], b"\x01\x00"), (enum, b"\x12"), (enum, b"\x01"),
             ("string", b"\x02\xff"), ("string", b"\x03ab"), ("bytes", b"\x06ab"), ("double", b"\x00" * 7),
             ("float", b"\x00" * 3), ("boolean", b"")]
    for schema, payload in cases:
        # fastavro answers a negative union or enum index (b"\x01" is -1) with the last branch; this reader refuses
        with pytest.raises((EOFError, IndexError, UnicodeDecodeError)):
            compile_reader(schema)(payload)


def test_undecodable_payloads_are_dead_letters_with_either_decoder():
    schema = CAPTURED["AccountChangeEvent.v2.avsc"]
    fast, slow = CdcSchema("v2", schema), CdcSchema("v2", schema)
    slow.reader = None
    assert fast.reader is not None
    for payload in bad_payloads(schema, seed=9)[::7]:
        a = decode_event(TOPIC, REPLAY, "v2", payload, fast)
        b = decode_event(TOPIC, REPLAY, "v2", payload, slow)
        assert a.error and b.error and a.payload == b.payload == payload


def test_decode_event_gives_the_same_events_with_either_decoder():
    schema = CAPTURED["AccountChangeEvent.v2.avsc"]
    parsed = fastavro.parse_schema(json.loads(json.dumps(schema)), named_schemas={})
    fast, slow = CdcSchema("v2", schema), CdcSchema("v2", schema)
    slow.reader = None
    names = [f["name"] for f in schema["fields"]]
    rng = random.Random(21)
    for record in records(schema, seed=21, n=40):
        header = record["ChangeEventHeader"]
        header["changeType"] = rng.choice(["CREATE", "UPDATE", "DELETE", "UNDELETE"])
        header["recordIds"] = header["recordIds"][:2] or ["001000000000001AAA"]
        set_bits = [i for i, n in enumerate(names) if i and record[n] is not None]
        for key in ("changedFields", "nulledFields", "diffFields"):
            header[key] = [hex(sum(1 << i for i in set_bits if rng.random() < 0.5))]
        payload = encode(parsed, record)
        a = decode_event(TOPIC, REPLAY, "v2", payload, fast)
        b = decode_event(TOPIC, REPLAY, "v2", payload, slow)
        assert a.error is None and b.error is None
        assert same(list(a.changes[0].fields.items()), list(b.changes[0].fields.items()))
        assert [c.record_id for c in a.changes] == [c.record_id for c in b.changes]
        assert a.changes[0].version == b.changes[0].version and a.changes[0].nulled == b.changes[0].nulled


# ---------------------------------------------------------------------------------------------------------------
# schemas the reader does not take stay on fastavro


@pytest.mark.parametrize("field_type", [
    {"type": "long", "logicalType": "timestamp-millis"},
    ["null", {"type": "fixed", "name": "F", "size": 4}],
    ["null", {"type": "string", "logicalType": "uuid"}],
], ids=["timestamp-millis", "fixed", "uuid"])
def test_schema_with_unhandled_construct_falls_back_to_fastavro(field_type):
    schema = {"type": "record", "name": "X", "fields": [{"name": "v", "type": field_type}]}
    with pytest.raises(Unsupported):
        compile_reader(schema)
    cdc = CdcSchema("x", schema)
    assert cdc.reader is None
    parsed = fastavro.parse_schema(json.loads(json.dumps(schema)), named_schemas={})
    value = Gen(schema, random.Random(1)).value(schema)
    if field_type == ["null", {"type": "fixed", "name": "F", "size": 4}]:
        value = {"v": b"abcd"}
    elif isinstance(field_type, dict):
        value = {"v": 1714172795000}
    else:
        value = {"v": "8b5a3c5e-6f7d-4d3b-9a43-4f0a2e8d9c11"}
    event = decode_event("/event/X", REPLAY, "x", encode(parsed, value), cdc)
    assert event.error is None and event.record == fastavro_decode(parsed, encode(parsed, value))


def test_recursive_schema_falls_back_to_fastavro():
    schema = {"type": "record", "name": "Node", "fields": [
        {"name": "v", "type": "long"}, {"name": "next", "type": ["null", "Node"]}]}
    with pytest.raises(Unsupported, match="recursive"):
        compile_reader(schema)
    assert CdcSchema("n", schema).reader is None


def test_generated_source_holds_no_schema_names():
    """Field names come from the schema: they are constants of the reader, never spliced into its source."""
    hostile = {"type": "record", "name": "H", "fields": [
        {"name": "x'] = 1; import os #", "type": ["null", "string"]},
        {"name": 'y"):\n    raise SystemExit', "type": {"type": "enum", "name": "E", "symbols": ["Q", "Z"]}}]}
    reader = compile_reader(hostile)
    for f in hostile["fields"]:
        assert f["name"] not in reader.source
    parsed = fastavro.parse_schema(json.loads(json.dumps(hostile)), named_schemas={})
    record = {"x'] = 1; import os #": "v", 'y"):\n    raise SystemExit': "Z"}
    assert fast_decode(reader, encode(parsed, record)) == record
