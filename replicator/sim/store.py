"""The org's records: lazily generated base rows plus an overlay of mutations.

Record positions are 0-based and equal to the Id counter minus one, so iteration in position order is
iteration in Id order (ids.py). The overlay maps a position to a replacement row (a later CDC simulator
writes there); positions at or beyond the generated count are records created after start.
A record removed for good (emptied from the Recycle Bin, or hard-deleted: cdc.py) keeps its position, and its Id
is never issued again, but no lookup, iteration or count sees it any more (`removed`).
Unique fields (describe `unique: true`) have an index of who holds each value (unique.py), kept up to date by
`put` and `remove`.
Fields added at run time (`add_field`, a schema change) are appended to the row tuple, whatever their describe
position: `names` is the storage order and is the only way to find a column in a row.
Thread-safety: reads may run in executor threads while the event loop mutates the overlay; every
mutation replaces a whole tuple in a dict, which is atomic under the GIL.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator

from .generated import generated_objects, is_generated
from .generator import Generator
from .ids import POD, make_id, parse_counter, to_id18
from .polled import POLLED_OBJECTS
from .schema import ObjectSpec, build_objects
from .unique import UniqueIndex


class ObjectStore:
    """The records of one object."""

    def __init__(self, spec: ObjectSpec, seed: int, count: int, n_accounts: int, pod: str = POD) -> None:
        self.spec = spec
        self.pod = pod  # the org's Id pod (ids.org_pod)
        self.generator = Generator(spec, seed, n_accounts, pod)
        self.base_count = count
        self.overlay: dict[int, tuple] = {}
        self._seed_prefix = f"{seed}:{spec.name}:".encode()
        self._base_deleted: int | None = None
        self._lock = threading.Lock()
        self.names = [f.name for f in spec.stored_fields]
        self.types = [f.type for f in spec.stored_fields]
        self.deleted_pos = self.names.index("IsDeleted")
        self._count = count
        self._pad: tuple = ()  # values of fields added after start, for generated (base) rows
        self.removed: set[int] = set()  # positions of records removed for good (see the module docstring)
        self.unique = UniqueIndex(self)

    def count(self) -> int:
        """Record Ids issued so far (the next record takes position count()); removed records included."""
        return self._count

    def record_id(self, pos: int) -> str:
        """The Id of the record at `pos` (its counter is pos + 1)."""
        return make_id(self.spec.key_prefix, pos + 1, self.pod)

    def present(self) -> int:
        """Every record the org still has, including soft-deleted ones."""
        return self._count - len(self.removed)

    def exists(self, pos: int) -> bool:
        return 0 <= pos < self._count and pos not in self.removed

    def live(self, pos: int) -> bool:
        """The record exists and is not soft-deleted."""
        return self.exists(pos) and not self.row(pos)[self.deleted_pos]

    def row(self, pos: int) -> tuple:
        hit = self.overlay.get(pos)
        return hit if hit is not None else self.generator.row(pos) + self._pad

    def rows(self, start: int = 0, stop: int | None = None) -> Iterator[tuple]:
        """Rows in Id order from position `start` (inclusive) to `stop` (exclusive), removed records skipped."""
        return (row for _, row in self.items(start, stop))

    def items(self, start: int = 0, stop: int | None = None) -> Iterator[tuple[int, tuple]]:
        """(position, row) in Id order from position `start` (inclusive) to `stop` (exclusive), removed
        records skipped."""
        stop = self.count() if stop is None else min(stop, self.count())
        overlay, gen_row, pad, removed = self.overlay, self.generator.row, self._pad, self.removed
        for pos in range(start, stop):
            if pos in removed:
                continue
            hit = overlay.get(pos)
            yield pos, (hit if hit is not None else gen_row(pos) + pad)

    def position(self, record_id: str) -> int | None:
        """The position of a record by 15- or 18-character Id, or None when no such record exists (or it was
        removed)."""
        try:
            to_id18(record_id)
        except ValueError:
            return None
        counter = parse_counter(record_id, self.spec.key_prefix, self.pod)
        if counter is None or not self.exists(counter - 1):
            return None
        return counter - 1

    def get(self, record_id: str) -> tuple | None:
        pos = self.position(record_id)
        return None if pos is None else self.row(pos)

    def as_dict(self, row: tuple) -> dict:
        return dict(zip(self.names, row, strict=True))

    def put(self, pos: int, row: tuple) -> None:
        """Replace (or, beyond count(), create) the record at `pos` (overlay only; base rows never change)."""
        if len(row) != len(self.names):
            raise ValueError("row does not match the object's fields")
        if self.unique.columns:
            self.unique.replace(pos, self.overlay.get(pos), row)
        self.overlay[pos] = row
        if pos >= self._count:
            self._count = pos + 1

    def remove(self, pos: int) -> None:
        """Remove a record for good: its position (and Id) stays taken, its values leave the unique index. Its
        last row stays readable by position (`row`) for a query cursor opened before (rest.py)."""
        if self.unique.columns:
            self.unique.replace(pos, self.overlay.get(pos), None)
        self.removed.add(pos)

    def add_field(self, name: str, ftype: str) -> None:
        """Append a column to every row (None everywhere): the storage side of a schema change."""
        for pos, row in list(self.overlay.items()):
            self.overlay[pos] = row + (None,)
        self._pad = self._pad + (None,)
        self.names.append(name)
        self.types.append(ftype)

    def _base_is_deleted(self, pos: int) -> bool:
        # Mirrors Generator.row's IsDeleted rule without building the whole row (much cheaper).
        digest = hashlib.blake2b(self._seed_prefix + pos.to_bytes(8, "little"), digest_size=64).digest()
        return int.from_bytes(digest, "little") % 50 == 0

    def deleted_count(self) -> int:
        with self._lock:
            if self._base_deleted is None:
                self._base_deleted = sum(1 for p in range(self.base_count) if self._base_is_deleted(p))
        delta = 0
        removed = set(self.removed)
        for pos, row in list(self.overlay.items()):
            if pos not in removed:
                base = self._base_is_deleted(pos) if pos < self.base_count else False
                delta += int(bool(row[self.deleted_pos])) - int(base)
        for pos in removed:  # a removed record is counted nowhere, whatever its last state
            delta -= int(pos < self.base_count and self._base_is_deleted(pos))
        return self._base_deleted + delta


class OrgStore:
    """Every object of the simulated org."""

    def __init__(self, records: int | dict[str, int], seed: int, hostile_field: bool = False,
                 wide_object: bool = False, generated: int = 0, generated_records: int | None = None,
                 pod: str = POD) -> None:
        """`generated`: that many generated custom objects (generated.py), `generated_records` records each
        (default: as many as the other objects); `pod`: the org's Id pod (ids.org_pod), in every Id it issues."""
        self.pod = pod
        self.objects = build_objects(hostile_field, wide_object, POLLED_OBJECTS + generated_objects(generated))
        counts = dict(records) if isinstance(records, dict) else {name: records for name in self.objects}
        if generated_records is not None:
            counts.update({name: generated_records for name in self.objects if is_generated(name)})
        n_accounts = counts.get("Account", 0)
        self.stores = {
            name: ObjectStore(spec, seed, counts.get(name, 0), n_accounts, pod) for name, spec in self.objects.items()
        }

    def lookup(self, name: str) -> ObjectStore | None:
        """The object store by API name, case-insensitively (Salesforce object names are)."""
        for key, store in self.stores.items():
            if key.lower() == name.lower():
                return store
        return None
