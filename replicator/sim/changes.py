"""The changes of one transaction and the rules they must pass before anything is applied (cdc.py applies them).

Change types:
- CREATE, UPDATE, DELETE (to the Recycle Bin: IsDeleted=true) and UNDELETE publish a change event of that type;
- HARD_DELETE removes live records for good and publishes a DELETE event, like a Bulk API `hardDelete` (its
  records skip the Recycle Bin), so `queryAll` no longer returns them (this simulator's reading: the no-event rule
  below names deleting from the Recycle Bin only);
- PURGE removes soft-deleted records for good, as emptying the Recycle Bin (or its 15 days running out) does, and
  publishes nothing: "Hard-deleting a record, that is, deleting a record from the Recycle Bin" generates no change
  event ("General Considerations", Change Data Capture Developer Guide,
  https://developer.salesforce.com/docs/atlas.en-us.change_data_capture.meta/change_data_capture/cdc_general_considerations.htm;
  docs/salesforce-coverage.md §2).
Items apply in order, so a later item sees what an earlier one did (a record deleted by one item may be purged or
undeleted by the next; nothing may follow its removal).

Unique fields (describe `unique: true`, unique.py): a CREATE or UPDATE that gives one a value another live record
holds is refused with DUPLICATE_VALUE, worded as Salesforce words it ("duplicate value found: <field> duplicates
value on record with id: <id>"; the error shape of docs/bulk-rest-oauth.md §2.2). A transaction is
judged by its end state, so values swapped or passed along a chain inside one request are allowed. A soft-deleted
record holds no value a live one may not take, so an UNDELETE whose value a live record took meanwhile is
refused the same way (this simulator's reading of the Recycle Bin). A CREATE that gives a unique field no value
gets the generator's value for the new record, made unique with a suffix ("-2", "-3", …) if another record,
live or soft-deleted, holds it already: the traffic generator never makes a duplicate.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .store import ObjectStore
from .unique import value_key

TYPES = ("CREATE", "UPDATE", "DELETE", "UNDELETE")  # the change types of events (and of the traffic's mix)
REMOVALS = ("HARD_DELETE", "PURGE")  # records removed for good
ALL_TYPES = TYPES + REMOVALS
EVENT_TYPE = {"HARD_DELETE": "DELETE"}  # the changeType published for a type of another name


class ChangeError(ValueError):
    """A change that cannot be applied (unknown record, wrong state, unknown field); nothing was applied."""


class DuplicateValue(ChangeError):
    """Salesforce's DUPLICATE_VALUE: a unique field would hold a value another record holds."""

    def __init__(self, field_name: str, holder_id: str) -> None:
        self.field = field_name
        super().__init__(f"duplicate value found: {field_name} duplicates value on record with id: {holder_id[:15]}")


@dataclass
class ChangeItem:
    store: ObjectStore
    type: str
    positions: list[int] = field(default_factory=list)  # every type but CREATE
    values: dict = field(default_factory=dict)  # stored field name -> Python value (UPDATE, CREATE)
    nulled: list[str] = field(default_factory=list)  # UPDATE
    count: int = 1  # CREATE: how many records (one event, shared body)
    force_gap: bool = False
    generated: bool = False  # CREATE: start from the generator's row (traffic) rather than from nulls
    before: tuple | None = None  # UPDATE of one record: the row as it was (the base of a diff)
    unique_values: list[dict] = field(default_factory=list)  # CREATE: per record, unique fields given no value


def validate(items: list[ChangeItem]) -> None:
    """Raise ChangeError unless every item applies, in order."""
    states: dict[tuple[str, int], str] = {}  # (object, position) -> "live" | "deleted" | "gone"
    for item in items:
        if item.type not in ALL_TYPES:
            raise ChangeError(f"unknown change type: {item.type}")
        store = item.store
        if item.type != "CREATE" and not item.positions:
            raise ChangeError(f"{item.type} needs at least one record id")
        for pos in item.positions:
            key = (store.spec.name, pos)
            state = states.get(key) or ("deleted" if store.row(pos)[store.deleted_pos] else "live")
            states[key] = _next_state(item.type, state, store.row(pos)[0])
    _Uniqueness(items).check()


def _next_state(kind: str, state: str, record_id: str) -> str:
    """The state a record of `state` goes to by a change of `kind`; ChangeError when it cannot."""
    if state == "gone":
        raise ChangeError(f"INVALID_ID: {record_id} was removed by an earlier change of this request")
    if kind in ("UPDATE", "DELETE", "HARD_DELETE") and state == "deleted":
        raise ChangeError(f"ENTITY_IS_DELETED: {record_id}")
    if kind == "UNDELETE" and state == "live":
        raise ChangeError(f"UNDELETE_FAILED: {record_id} is not deleted")
    if kind == "PURGE" and state == "live":
        raise ChangeError(f"PURGE: {record_id} is not in the Recycle Bin: only a soft-deleted record can be purged "
                          "(DELETE it first, or HARD_DELETE it)")
    return {"DELETE": "deleted", "HARD_DELETE": "gone", "PURGE": "gone"}.get(kind, "live")


class _Uniqueness:
    """The end state of a request's records on their unique fields, and the checks on it."""

    def __init__(self, items: list[ChangeItem]) -> None:
        self.items = items
        self.final: dict[tuple[str, int], list] = {}  # (object, position) -> [state, {field: value}]
        self.claims: list[tuple[ObjectStore, int, str]] = []  # a record comes to hold a value of a field
        self.creates: list[tuple[ChangeItem, range]] = []
        self.held: dict[tuple[str, str], dict[object, set[int]]] = {}  # (object, field) -> key -> positions

    def check(self) -> None:
        """Raise DuplicateValue for the first claim another live record contests; then choose the values of
        unique fields CREATE items did not give (`ChangeItem.unique_values`)."""
        self._simulate()
        for (name, pos), (_, values) in self.final.items():
            for fname, value in values.items():
                if value is not None:
                    self.held.setdefault((name, fname), {}).setdefault(value_key(value), set()).add(pos)
        for store, pos, fname in reversed(self.claims):  # the later of two claimants is the one refused
            state, values = self.final[(store.spec.name, pos)]
            if state == "live" and values[fname] is not None:
                holder = self._holder(store, pos, fname, values[fname], ("live",))
                if holder is not None:
                    raise DuplicateValue(fname, store.record_id(holder))
        self._assign_created()

    def _simulate(self) -> None:
        next_pos: dict[str, int] = {}
        for item in self.items:
            store = item.store
            name, columns = store.spec.name, store.unique.columns
            if not columns:
                continue
            if item.type == "CREATE":
                start = next_pos.get(name, store.count())
                next_pos[name] = start + item.count
                self.creates.append((item, range(start, start + item.count)))
                for pos in range(start, start + item.count):
                    self.final[(name, pos)] = ["live", {f: item.values.get(f) for f in columns}]
                    self.claims += [(store, pos, f) for f in columns if f in item.values]
                continue
            for pos in item.positions:
                final = self.final.get((name, pos))
                if final is None:
                    row = store.row(pos)
                    final = self.final[(name, pos)] = [
                        "deleted" if row[store.deleted_pos] else "live", {f: row[c] for f, c in columns.items()}]
                self._step(item, store, pos, final)

    def _step(self, item: ChangeItem, store: ObjectStore, pos: int, final: list) -> None:
        columns = store.unique.columns
        if item.type == "UPDATE":
            for fname in columns:
                if fname in item.values:
                    final[1][fname] = item.values[fname]
                    self.claims.append((store, pos, fname))
                elif fname in item.nulled:
                    final[1][fname] = None
        elif item.type == "UNDELETE":
            final[0] = "live"
            self.claims += [(store, pos, f) for f in columns]
        else:
            final[0] = {"DELETE": "deleted"}.get(item.type, "gone")

    def _holder(self, store: ObjectStore, pos: int, fname: str, value: object, states: tuple) -> int | None:
        """Another record whose end state is one of `states` and that holds `value` in `fname`, if any."""
        name = store.spec.name
        candidates = store.unique.holders(fname, value) | self.held.get((name, fname), {}).get(value_key(value), set())
        for other in sorted(candidates - {pos}):
            final = self.final.get((name, other))
            if final is None:
                state = "deleted" if store.row(other)[store.deleted_pos] else "live"
                if state in states:
                    return other
            elif final[0] in states and final[1][fname] is not None and \
                    value_key(final[1][fname]) == value_key(value):
                return other
        return None

    def _assign_created(self) -> None:
        for item, positions in self.creates:
            store = item.store
            auto = {f: c for f, c in store.unique.columns.items() if f not in item.values}
            item.unique_values = []
            for pos in positions:
                chosen = {}
                for fname, col in auto.items():
                    base = value = store.generator.row(pos)[col]
                    suffix = 1
                    while value is not None and self._holder(store, pos, fname, value, ("live", "deleted")) is not None:
                        suffix += 1
                        value = f"{base}-{suffix}"
                    chosen[fname] = value
                    self.final[(store.spec.name, pos)][1][fname] = value
                    if value is not None:
                        self.held.setdefault((store.spec.name, fname), {}).setdefault(value_key(value), set()).add(pos)
                item.unique_values.append(chosen)
