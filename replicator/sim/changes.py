"""The changes of one transaction and the rules they must pass before anything is applied (cdc.py applies them).

Change types:
- CREATE, UPDATE, DELETE (to the Recycle Bin: IsDeleted=true) and UNDELETE publish a change event of that type;
- HARD_DELETE removes live records for good and publishes a DELETE event, like a Bulk API `hardDelete` (its
  records skip the Recycle Bin), so `queryAll` no longer returns them;
- PURGE removes soft-deleted records for good, as emptying the Recycle Bin (or its 15 days running out) does, and
  publishes nothing: "Hard-deleting a record, that is, deleting a record from the Recycle Bin" generates no change
  event ("General Considerations", Change Data Capture Developer Guide,
  https://developer.salesforce.com/docs/atlas.en-us.change_data_capture.meta/change_data_capture/cdc_general_considerations.htm;
  docs/salesforce-coverage.md §2).
Items apply in order, so a later item sees what an earlier one did (a record deleted by one item may be purged or
undeleted by the next; nothing may follow its removal).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .store import ObjectStore

TYPES = ("CREATE", "UPDATE", "DELETE", "UNDELETE")  # the change types of events (and of the traffic's mix)
REMOVALS = ("HARD_DELETE", "PURGE")  # records removed for good
ALL_TYPES = TYPES + REMOVALS
EVENT_TYPE = {"HARD_DELETE": "DELETE"}  # the changeType published for a type of another name


class ChangeError(ValueError):
    """A change that cannot be applied (unknown record, wrong state, unknown field); nothing was applied."""


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
