"""Who holds each value of an object's unique fields (describe `unique: true`, e.g. Invoice__c.External_Id__c).

Values compare without regard to case: every field of this org says `caseSensitive: false` in describe
(schema.DESCRIBE_CONSTANTS), and a unique field that is not case-sensitive takes "abc" as a duplicate of "ABC"
("Field", SOAP API Developer Guide, `caseSensitive` and `unique`:
https://developer.salesforce.com/docs/atlas.en-us.api.meta/api/sforce_api_calls_describesobjects_describesobjectresult.htm).
Only overlay rows (store.py) are indexed; a generated row that was never changed is found from the value itself
(Generator.base_position), so a million-record org is never scanned. The index answers "which records hold this
value" for records that still exist, live or soft-deleted; whether a holder counts is the caller's rule
(changes.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .store import ObjectStore


def value_key(value: object) -> object:
    """What two values of a unique field are compared by (case-insensitive text)."""
    return value.lower() if isinstance(value, str) else value


class UniqueIndex:
    """The holders of every value of one object's unique fields."""

    def __init__(self, store: ObjectStore) -> None:
        self._store = store
        self.columns = {f.name: store.names.index(f.name) for f in store.spec.stored_fields if f.unique}
        for name in self.columns:
            if not store.generator.has_base_positions(name):
                raise ValueError(f"{store.spec.name}.{name} is unique but its generated values name no record")
        self._held: dict[str, dict[object, set[int]]] = {name: {} for name in self.columns}

    def replace(self, pos: int, old: tuple | None, new: tuple | None) -> None:
        """The overlay row at `pos` goes from `old` to `new` (None: no overlay row, or the record is removed)."""
        for name, col in self.columns.items():
            held = self._held[name]
            if old is not None and old[col] is not None:
                key = value_key(old[col])
                holders = held.get(key)
                if holders is not None:
                    holders.discard(pos)
                    if not holders:
                        del held[key]
            if new is not None and new[col] is not None:
                held.setdefault(value_key(new[col]), set()).add(pos)

    def holders(self, name: str, value: object) -> set[int]:
        """Positions of the existing records (live or soft-deleted) whose field `name` holds `value`."""
        store = self._store
        key = value_key(value)
        out = set(self._held[name].get(key, ()))
        pos = store.generator.base_position(name, value)
        if pos is not None and pos < store.base_count and pos not in store.overlay and pos not in store.removed:
            if value_key(store.generator.row(pos)[self.columns[name]]) == key:
                out.add(pos)
        return out
