"""Avro decode micro-benchmark (issue 13): fastavro `schemaless_reader` against the reader specialised per schema
(`replicator.salesforce.avro_fast`), on the captured `AccountChangeEvent` v2 schema (tests/salesforce/data), for a
narrow UPDATE (header + LastModifiedDate + one changed field, every other field null) and a fully populated record.
Also `decode_event` (Avro + header + bitmaps) with each decoder.

    python -m bench.decode [--seconds 0.5] [--repeats 7]

Prints events/s and µs per event, the median of the repeats. Decoding only: no sockets, no Postgres.
When `cavro` is importable (it is not a dependency: install it into a scratch venv beside the project to compare),
its `binary_decode` with `record_decodes_to_dict=True` is measured too, after checking it equals fastavro's dict.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fastavro

from replicator.salesforce.avro_fast import compile_reader
from replicator.salesforce.cdc import CdcSchema, decode_event

try:
    import cavro  # optional, for comparison only (issue 13)
except ImportError:
    cavro = None

SCHEMA_FILE = Path(__file__).parent.parent / "tests/salesforce/data/AccountChangeEvent.v2.avsc"
TOPIC = "/data/AccountChangeEvent"
REPLAY = bytes(10)


def header(change_type: str, changed: list[str]) -> dict[str, Any]:
    return {"entityName": "Account", "recordIds": ["001Dp00000Xyz12AAB"], "changeType": change_type,
            "changeOrigin": "com/salesforce/api/soap/60.0;client=SfdcInternalAPI/",
            "transactionKey": "00097360-44a0-7c2e-a172-97381ae22f82", "sequenceNumber": 1,
            "commitTimestamp": 1714172795000, "commitNumber": 1709303151782928388,
            "commitUser": "0055J000001D89MQAS", "nulledFields": [], "diffFields": [], "changedFields": changed}


def sample(node: Any, named: dict[str, Any], i: int) -> Any:
    """A value for every field (the first non-null branch of a union)."""
    if isinstance(node, list):
        return sample(next(b for b in node if b != "null"), named, i)
    if isinstance(node, str):
        if node in named:
            return sample(named[node], named, i)
        return {"string": f"value {i} ünïcode", "long": 1714172795000 + i, "int": 40 + i, "double": 1234.5 + i,
                "boolean": i % 2 == 0}[node]
    if node["type"] == "record":
        named[node["name"]] = node
        return {f["name"]: sample(f["type"], named, i + k) for k, f in enumerate(node["fields"])}
    if node["type"] == "enum":
        return node["symbols"][0]
    if node["type"] == "array":
        return [sample(node["items"], named, i)]
    return sample(node["type"], named, i)


def payloads(schema: dict[str, Any]) -> dict[str, bytes]:
    parsed = fastavro.parse_schema(dict(schema), named_schemas={})
    names = [f["name"] for f in schema["fields"]]
    narrow = dict.fromkeys(names)
    narrow["LastModifiedDate"] = 1714172795000
    narrow["Phone"] = "+1 415 555 0100"
    bits = (1 << names.index("LastModifiedDate")) | (1 << names.index("Phone"))
    narrow["ChangeEventHeader"] = header("UPDATE", [f"0x{bits:X}"])
    full = sample(schema, {}, 0)
    full["ChangeEventHeader"] = header("CREATE", [])
    out = {}
    for name, record in (("narrow", narrow), ("full", full)):
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, parsed, record)
        out[name] = buf.getvalue()
    return out


def rate(fn: Callable[[], Any], seconds: float, repeats: int) -> float:
    """Median events/s over `repeats` runs of about `seconds` each."""
    n = 1
    while True:  # calibrate a batch size that takes ~seconds/10
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        if time.perf_counter() - t0 > seconds / 10:
            break
        n *= 2
    rates = []
    for _ in range(repeats):
        done = 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            for _ in range(n):
                fn()
            done += n
        rates.append(done / (time.perf_counter() - t0))
    return statistics.median(rates)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=0.5)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args(argv)
    schema = json.loads(SCHEMA_FILE.read_text())
    parsed = fastavro.parse_schema(dict(schema), named_schemas={})
    fast = compile_reader(schema, "AccountChangeEvent.v2")
    cdc_fast = CdcSchema("v2", schema)
    cdc_slow = CdcSchema("v2", schema)
    cdc_slow.reader = None  # decode_event takes fastavro when the schema has no specialised reader
    print(f"schema {SCHEMA_FILE.name}: {len(schema['fields'])} fields; median of {args.repeats} x {args.seconds}s")
    print(f"{'case':<8} {'decoder':<28} {'events/s':>10} {'µs/event':>9}")
    for case, payload in payloads(schema).items():
        assert fast(payload)[0] == fastavro.schemaless_reader(io.BytesIO(payload), parsed, None)
        runs = {
            "fastavro schemaless_reader": lambda p=payload: fastavro.schemaless_reader(io.BytesIO(p), parsed, None),
            "avro_fast reader": lambda p=payload: fast(p),
            "decode_event (fastavro)": lambda p=payload: decode_event(TOPIC, REPLAY, "v2", p, cdc_slow),
            "decode_event (avro_fast)": lambda p=payload: decode_event(TOPIC, REPLAY, "v2", p, cdc_fast),
        }
        if cavro is not None:
            decoder = cavro.Schema(json.dumps(schema),
                                   options=cavro.DEFAULT_OPTIONS.replace(record_decodes_to_dict=True))
            assert decoder.binary_decode(payload) == fast(payload)[0]
            runs["cavro binary_decode"] = lambda p=payload, d=decoder: d.binary_decode(p)
        for name, fn in runs.items():
            r = rate(fn, args.seconds, args.repeats)
            print(f"{case:<8} {name:<28} {r:>10,.0f} {1e6 / r:>9.2f}")


if __name__ == "__main__":
    main()
