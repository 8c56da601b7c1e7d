"""A schemaless Avro reader specialised per schema: Python source generated once per schema id, compiled with
`compile()`, giving the same dict fastavro's `schemaless_reader` gives (writer schema only, no resolution).

Why: a CDC record is mostly `["null", T]` unions (docs/pubsub-cdc.md §5: every body field is optional,
and an UPDATE carries values only in its changed fields). In Avro's binary encoding a union is its branch index as a
zig-zag varint long followed by the branch's value, and null is written as zero bytes (Avro 1.11.1 specification,
"Binary Encoding", https://avro.apache.org/docs/1.11.1/specification/#binary-encoding): a null field of such a
union is the single byte 0x00. The generated reader tests a run of nullable fields at once (`startswith` a run of
zero bytes) and decodes only the fields that hold a value; every other type is read inline, without the per-value
function dispatch of a general reader.

Handled: null, boolean, int, long, float, double, bytes, string, record (error), enum, array, map, unions of
those, and references to named types defined earlier. Not handled (`Unsupported`, the caller keeps fastavro):
`fixed`, any `logicalType` (fastavro converts some of them to datetime/Decimal/UUID), recursive named types, and
anything the generator does not recognise.

Safety: names from the schema (field names, enum symbols) never appear in the generated source. They are
constants in the function's globals (`K0`, `S0`, …) and the source holds only generated identifiers and integers.

Invalid input raises (the caller dead-letters the event, docs/design.md, contract 9): a truncated payload raises
IndexError or EOFError, a negative length EOFError, bad UTF-8 UnicodeDecodeError, a union or enum index out of
range IndexError. Unlike fastavro, a *negative* union or enum index is refused instead of picking a branch from
the end of the list (fastavro indexes a Python list with it); the Avro specification defines no negative index.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from typing import Any

_LONG_MASK = (1 << 64) - 1
_unpack_double = struct.Struct("<d").unpack_from  # Avro "Binary Encoding": double is 8 bytes, little-endian
_unpack_float = struct.Struct("<f").unpack_from  # float is 4 bytes, little-endian

# Runs of nullable fields tested at once, longest first: a run of n null fields is n zero bytes.
_RUNS = (32, 8)

Reader = Callable[[bytes], tuple[Any, int]]


class Unsupported(Exception):
    """The schema uses a construct this reader does not generate; use fastavro for it."""


def _read_long(buf: bytes, pos: int) -> tuple[int, int]:
    """A zig-zag varint long (Avro "Binary Encoding": int and long) starting at `pos`; the multi-byte path.
    Wraps to 64 bits like fastavro does for over-long varints."""
    b = buf[pos]
    pos += 1
    n = b & 0x7F
    shift = 7
    while b & 0x80:
        b = buf[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        shift += 7
    n &= _LONG_MASK
    return (n >> 1) ^ -(n & 1), pos


def _eof(wanted: int, left: int) -> None:
    raise EOFError(f"Expected {wanted} bytes, read {max(left, 0)}")


def _bad_index(what: str, index: int) -> None:
    raise IndexError(f"{what} index {index} out of range")


class _Gen:
    """Source of one reader: lines, and the constants (names, templates) the lines refer to."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.consts: dict[str, Any] = {}
        self.named: dict[str, Any] = {}
        self.expanding: list[int] = []  # ids of the records being generated (a reference to one is recursion)
        self.counter = 0

    # -- helpers ---------------------------------------------------------------------------------------------
    def const(self, prefix: str, value: Any) -> str:
        name = f"{prefix}{len(self.consts)}"
        self.consts[name] = value
        return name

    def local(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def emit(self, indent: int, line: str) -> None:
        self.lines.append("    " * indent + line)

    def register(self, node: Mapping[str, Any], namespace: str) -> str:
        """Record a named type under its full name; returns the namespace its own fields live in (Avro
        specification, "Names": a dotted name carries its namespace, else the `namespace` attribute, else the
        enclosing one)."""
        name = node.get("name")
        if not isinstance(name, str):
            raise Unsupported("named type without a name")
        if "." in name:
            full, ns = name, name.rsplit(".", 1)[0]
        else:
            ns = node.get("namespace", namespace) or ""
            full = f"{ns}.{name}" if ns else name
        self.named[full] = node
        return ns

    def resolve(self, node: str, namespace: str) -> Any:
        """A type name → the definition met earlier in the schema (Avro names are defined before use): a dotted
        name is full; a bare one is looked up in the enclosing namespace, then in the null namespace."""
        target = self.named.get(node) if "." in node else (
            namespace and self.named.get(f"{namespace}.{node}")) or self.named.get(node)
        if target is None:
            raise Unsupported(f"unknown type name {node!r}")
        if id(target) in self.expanding:
            raise Unsupported(f"recursive type {node!r}")
        return target

    # -- code ------------------------------------------------------------------------------------------------
    def value(self, node: Any, dest: str, ind: int, namespace: str, preset_none: bool = False) -> None:
        """Lines that read one value of type `node` at `pos` into `dest` and advance `pos`."""
        if isinstance(node, list):
            self.union(node, dest, ind, namespace, preset_none)
            return
        if isinstance(node, Mapping):
            if "logicalType" in node:
                raise Unsupported(f"logicalType {node['logicalType']!r}")
            kind = node.get("type")
            if kind in ("record", "error"):
                inner = self.register(node, namespace)
                self.expanding.append(id(node))
                self.record(node, dest, ind, inner)
                self.expanding.pop()
                return
            if kind == "enum":
                self.register(node, namespace)
                symbols = node.get("symbols")
                if not isinstance(symbols, list) or not all(isinstance(s, str) for s in symbols):
                    raise Unsupported("enum without string symbols")
                syms = self.const("S", tuple(symbols))
                idx = self.local("i")
                self.long(idx, ind)
                self.emit(ind, f"if {idx} < 0: _bad_index('enum', {idx})")
                self.emit(ind, f"{dest} = {syms}[{idx}]")
                return
            if kind == "array":
                self.block(node.get("items"), dest, ind, namespace, is_map=False)
                return
            if kind == "map":
                self.block(node.get("values"), dest, ind, namespace, is_map=True)
                return
            if kind == "fixed":
                raise Unsupported("fixed")
            if isinstance(kind, (list, Mapping, str)):  # {"type": T} with attributes (doc, …) is T
                self.value(kind, dest, ind, namespace, preset_none)
                return
            raise Unsupported(f"type {kind!r}")
        if isinstance(node, str):
            if node == "null":
                if not preset_none:
                    self.emit(ind, f"{dest} = None")
            elif node == "boolean":  # one byte; fastavro reads any non-zero byte as true
                self.emit(ind, f"{dest} = buf[pos] != 0")
                self.emit(ind, "pos += 1")
            elif node in ("int", "long"):
                self.long(dest, ind)
            elif node == "double":
                self.emit(ind, "if pos + 8 > end: _eof(8, end - pos)")
                self.emit(ind, f"{dest} = _unpack_double(buf, pos)[0]")
                self.emit(ind, "pos += 8")
            elif node == "float":
                self.emit(ind, "if pos + 4 > end: _eof(4, end - pos)")
                self.emit(ind, f"{dest} = _unpack_float(buf, pos)[0]")
                self.emit(ind, "pos += 4")
            elif node in ("string", "bytes"):
                # a long length, then that many bytes (UTF-8 for string)
                n = self.local("n")
                stop = self.local("e")
                self.long(n, ind)
                self.emit(ind, f"{stop} = pos + {n}")
                self.emit(ind, f"if {n} < 0 or {stop} > end: _eof({n}, end - pos)")
                self.emit(ind, f"{dest} = buf[pos:{stop}]" + (".decode()" if node == "string" else ""))
                self.emit(ind, f"pos = {stop}")
            else:
                self.value(self.resolve(node, namespace), dest, ind, namespace, preset_none)
            return
        raise Unsupported(f"schema node {node!r}")

    def long(self, dest: str, ind: int) -> None:
        """A zig-zag varint long: one byte inline (values -64..63), longer ones through `_read_long`."""
        self.emit(ind, "b = buf[pos]")
        self.emit(ind, "if b < 128:")
        self.emit(ind + 1, "pos += 1")
        self.emit(ind + 1, f"{dest} = (b >> 1) ^ -(b & 1)")
        self.emit(ind, "else:")
        self.emit(ind + 1, f"{dest}, pos = _read_long(buf, pos)")

    def union(self, branches: list, dest: str, ind: int, namespace: str, preset_none: bool) -> None:
        """The branch index (a long; branch k < 64 is the single byte 2k), then that branch's value."""
        if not branches:
            raise Unsupported("empty union")
        if len(branches) > 63:
            raise Unsupported("union of more than 63 branches")
        self.emit(ind, "b = buf[pos]")
        for k, branch in enumerate(branches):
            if isinstance(branch, list):
                raise Unsupported("union inside a union")
            self.emit(ind, f"{'if' if k == 0 else 'elif'} b == {2 * k}:")
            self.emit(ind + 1, "pos += 1")
            before = len(self.lines)
            self.value(branch, dest, ind + 1, namespace, preset_none)
            if len(self.lines) == before:
                self.emit(ind + 1, "pass")
        self.emit(ind, "else:")
        self.emit(ind + 1, "_bad_index('union', _read_long(buf, pos)[0])")

    def record(self, node: Mapping[str, Any], dest: str, ind: int, namespace: str) -> None:
        """A record is its fields in schema order. The dict starts as a copy of an all-None template, so a
        null field costs no store; runs of nullable fields whose bytes are all 0x00 are skipped at once."""
        fields = node.get("fields")
        if not isinstance(fields, list):
            raise Unsupported("record without fields")
        names = []
        for f in fields:
            if not isinstance(f, Mapping) or not isinstance(f.get("name"), str):
                raise Unsupported("field without a name")
            names.append(f["name"])
        if len(set(names)) != len(names):
            raise Unsupported("duplicate field names")
        template = self.const("T", dict.fromkeys(names))
        rec = self.local("r")
        self.emit(ind, f"{rec} = {template}.copy()")
        keys = [self.const("K", name) for name in names]
        items = [(key, f["type"]) for key, f in zip(keys, fields, strict=True)]
        self.fields(items, rec, ind, namespace, _RUNS)
        self.emit(ind, f"{dest} = {rec}")

    def fields(self, items: list, rec: str, ind: int, namespace: str, runs: tuple[int, ...]) -> None:
        i = 0
        while i < len(items):
            j = i
            while j < len(items) and self.nullable_first(items[j][1]):
                j += 1
            if j - i >= 2 and runs:
                size = runs[0]
                for start in range(i, j, size):
                    chunk = items[start:min(start + size, j)]
                    if len(chunk) >= 2:
                        zeros = self.const("Z", bytes(len(chunk)))
                        self.emit(ind, f"if buf.startswith({zeros}, pos):  # {len(chunk)} null fields")
                        self.emit(ind + 1, f"pos += {len(chunk)}")
                        self.emit(ind, "else:")
                        self.fields(chunk, rec, ind + 1, namespace, runs[1:])
                    else:
                        self.fields(chunk, rec, ind, namespace, ())
                i = j
                continue
            if j > i:
                for key, ftype in items[i:j]:
                    self.value(ftype, f"{rec}[{key}]", ind, namespace, preset_none=True)
                i = j
                continue
            key, ftype = items[i]
            self.value(ftype, f"{rec}[{key}]", ind, namespace, preset_none=True)
            i += 1

    @staticmethod
    def nullable_first(node: Any) -> bool:
        """A union whose branch 0 is null: its null is the one byte 0x00."""
        if isinstance(node, Mapping) and isinstance(node.get("type"), list) and len(node) == 1:
            node = node["type"]
        return isinstance(node, list) and bool(node) and node[0] == "null"

    def block(self, inner: Any, dest: str, ind: int, namespace: str, is_map: bool) -> None:
        """Arrays and maps are blocks: a count (long), then that many items (a map item is a string key and a
        value); a negative count is followed by the block's size in bytes; a count of 0 ends them."""
        if inner is None:
            raise Unsupported("array or map without item type")
        out = self.local("m" if is_map else "a")
        count = self.local("c")
        item = self.local("v")
        self.emit(ind, f"{out} = {{}}" if is_map else f"{out} = []")
        self.emit(ind, "while True:")
        self.long(count, ind + 1)
        self.emit(ind + 1, f"if {count} == 0: break")
        self.emit(ind + 1, f"if {count} < 0:")
        self.emit(ind + 2, f"{count} = -{count}")
        self.long("_", ind + 2)
        self.emit(ind + 1, f"for _ in range({count}):")
        if is_map:
            key = self.local("k")
            self.value("string", key, ind + 2, namespace)
            self.value(inner, item, ind + 2, namespace)
            self.emit(ind + 2, f"{out}[{key}] = {item}")
        else:
            self.value(inner, item, ind + 2, namespace)
            self.emit(ind + 2, f"{out}.append({item})")
        self.emit(ind, f"{dest} = {out}")


_PRIMITIVES = frozenset(("null", "boolean", "int", "long", "float", "double", "bytes", "string"))


def compile_reader(schema: Mapping[str, Any] | list | str, name: str = "schema") -> Reader:
    """A reader for `schema` (parsed JSON): `reader(payload) -> (value, bytes consumed)`. Raises Unsupported for
    a schema it cannot specialise. The caller checks the consumed count against the payload length."""
    gen = _Gen()
    gen.emit(0, "def read(buf):")
    gen.emit(1, "pos = 0")
    gen.emit(1, "end = len(buf)")
    gen.value(schema, "out", 1, schema.get("namespace", "") if isinstance(schema, Mapping) else "")
    gen.emit(1, "return out, pos")
    source = "\n".join(gen.lines) + "\n"
    namespace: dict[str, Any] = {
        "__builtins__": {"range": range, "len": len},
        "_read_long": _read_long,
        "_eof": _eof,
        "_bad_index": _bad_index,
        "_unpack_double": _unpack_double,
        "_unpack_float": _unpack_float,
    }
    namespace.update(gen.consts)
    try:
        code = compile(source, f"<avro reader {name}>", "exec")
    except (SyntaxError, RecursionError, MemoryError) as exc:  # e.g. "too many statically nested blocks"
        raise Unsupported(f"generated reader does not compile: {exc}") from None
    exec(code, namespace)  # noqa: S102 - source built above from generated identifiers and integers only
    reader = namespace["read"]
    reader.source = source  # type: ignore[attr-defined]  # for debugging and tests
    return reader
