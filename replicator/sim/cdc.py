"""Change Data Capture: applies transactions of changes to the org store and publishes their change events.

The store overlay is the single source of truth, so Bulk, REST, `/__sim/objects/X/records` and the events
always agree. Rules every change follows (the client relies on them):
- every changed record gets `SystemModstamp` = the transaction's commitTimestamp; CREATE, UPDATE and UNDELETE
  also set `LastModifiedDate` to it (so an UPDATE's changedFields always names LastModifiedDate);
- DELETE sets IsDeleted=true and its event is header only; UNDELETE sets IsDeleted=false and carries all fields;
- HARD_DELETE publishes a DELETE event like DELETE's and then removes its records from the store; PURGE removes
  soft-deleted records with no event, no commit of its own and no new SystemModstamp (changes.py has the
  Salesforce rules); neither Bulk, REST nor the ground truth sees a removed record again;
- CREATE carries every field (changedFields empty); UPDATE carries only its changed fields, with bitmaps as in
  docs/pubsub-cdc.md §6 (a nulled field is in both changedFields and nulledFields); with the
  `diff_fields` knob on, a large text value of a single-record UPDATE may travel as a unified diff, listed in
  diffFields as well as changedFields (diffs.py has the rules); with it off (the default) full values are sent;
- one item of a transaction is one event, even when it names several records (recordIds has them all, the
  body is shared); events of a transaction share transactionKey, commitTimestamp and commitNumber, and
  sequenceNumber counts 1, 2, … in the order published; commitNumber increases per transaction;
- an event whose encoding exceeds `gap_event_bytes` (or an item with force_gap) becomes GAP_<type>: header
  only, all bitmaps empty (docs/pubsub-cdc.md §7);
- values the org computes follow their inputs in the store (derived.py: Contact's Name, formula fields), and a
  formula is never in an event (docs/pubsub-cdc.md §5);
- `touch` changes fields that change without an event (LastActivityDate, LastViewedDate): no event, and
  SystemModstamp and LastModifiedDate stay as they were (this simulator's choice: viewing a record or logging an
  activity is not an edit of it), so only a comparison of values can see it (docs/salesforce-coverage.md §2);
- entity selection (docs/salesforce-coverage.md §2, §4): only selected objects publish change events; a change to
  any other object changes the store (new SystemModstamp, LastModifiedDate) and publishes nothing, and its
  `/data/<Object>ChangeEvent` topic does not exist (GetTopic and Subscribe answer NOT_FOUND `topic.not.found`,
  docs/pubsub-cdc.md §4). The default selection is every object but polled.POLLED_OBJECTS;
  `select` replaces it (`--cdc-objects`, `PUT /__sim/cdc`);
- overflow (docs/pubsub-cdc.md §7): a transaction counts 1 per created/deleted/undeleted record and
  1 per changed field of each updated record; once the count would pass `overflow_threshold`, that change and
  every later one of the transaction still change the store but publish nothing, and the transaction ends with
  one GAP_OVERFLOW per entity (recordIds ["000000000000000AAA"]).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import time
from collections import Counter
from dataclasses import dataclass

from .avro import ChangeEventSchema, PlatformEventSchema, event_name, from_epoch_ms, null_body
from .changes import EVENT_TYPE, TYPES, ChangeError, ChangeItem, validate
from .derived import recompute
from .diffs import text_diff
from .events import ALL_CHANGE_EVENTS, EventBus
from .faults import Faults
from .polled import POLLED_OBJECTS
from .schema import SILENT_FIELDS, FieldSpec
from .store import ObjectStore, OrgStore

__all__ = ["TYPES", "ChangeCapture", "ChangeError", "ChangeItem", "CommitResult"]
EMPTY_RECORD_ID = "000000000000000AAA"  # docs/pubsub-cdc.md §7: recordIds of a GAP_OVERFLOW event
# The SCN magnitude of the documented example (commitNumber in docs/pubsub-cdc.md §5).
FIRST_COMMIT_NUMBER = 72_657_170_000
NOT_SETTABLE = {"Id", "IsDeleted", "CreatedDate", "LastModifiedDate", "SystemModstamp"}
ADDABLE_TYPES = {"string", "textarea", "picklist", "multipicklist", "email", "phone", "url", "boolean", "int",
                 "double", "currency", "percent", "date", "datetime", "time"}


@dataclass
class CommitResult:
    transaction_key: str
    commit_timestamp: int
    commit_number: int
    replay_ids: list[str]
    ids: list[list[str]]


def _lock_keys(items) -> set[tuple[str, int]]:
    return {(item.store.spec.name, pos) for item in items for pos in item.positions}


class ChangeCapture:
    """Owns the CDC schemas (every version, by id), the commit sequence and change statistics."""

    def __init__(self, org: OrgStore, faults: Faults, bus: EventBus, user_id: str) -> None:
        self.org, self.faults, self.bus, self.user_id = org, faults, bus, user_id
        self.schemas_by_id: dict[str, str] = {}
        self._current: dict[str, ChangeEventSchema] = {}
        self._columns: dict[str, dict[str, int]] = {}
        self.platform = PlatformEventSchema()
        self.schemas_by_id[self.platform.id] = self.platform.json
        self.topics: dict[str, str] = {ALL_CHANGE_EVENTS: ""}
        for name in org.stores:
            self.topics["/data/" + event_name(name)] = name
            self.schema(name)
        unselected = {entry[0] for entry in POLLED_OBJECTS}
        self.selected: set[str] = {name for name in org.stores if name not in unselected}
        self._in_flight: list[int] = []  # SystemModstamps (epoch ms) of transactions begun, not yet committed
        self._locks: set[tuple[str, int]] = set()  # (object, position) of records those transactions changed
        self._lock_waiters: list[asyncio.Future] = []
        self.commit_number = FIRST_COMMIT_NUMBER
        self.last_timestamp = 0
        self.changes = 0
        self.by_object: Counter = Counter()
        self.by_type: Counter = Counter()
        self.transactions = 0
        self.silent = 0  # records changed by `touch`
        self.purged = 0  # records removed by PURGE (no event)
        self.rolled_back = 0  # late commits that no longer applied when due

    def schema(self, object_name: str) -> ChangeEventSchema:
        current = self._current.get(object_name)
        if current is None:
            store = self.org.stores[object_name]
            current = self._current[object_name] = ChangeEventSchema(store.spec, store.names)
            self.schemas_by_id[current.id] = current.json
            self._columns[object_name] = {n: i for i, n in enumerate(store.names)}
        return current

    def topic_schema_id(self, topic: str) -> str | None:
        if topic == ALL_CHANGE_EVENTS:
            return None
        name = self.topics.get(topic)
        return None if name is None or name not in self.selected else self.schema(name).id

    def select(self, names: list[str]) -> list[str]:
        """Replace the entity selection (object API names, any case); returns it in the org's order. Raises
        ChangeError, selection unchanged, for a name the org does not have."""
        chosen = set()
        for name in names:
            store = self.org.lookup(str(name))
            if store is None:
                raise ChangeError(f"unknown object: {name!r}")
            chosen.add(store.spec.name)
        self.selected = chosen
        return self.selection()

    def selection(self) -> list[str]:
        return [name for name in self.org.stores if name in self.selected]

    # -- schema change ----------------------------------------------------------------------------------------
    def add_field(self, object_name: str, name: str, ftype: str) -> str:
        """Add a custom field after the object's last custom field (so later fields move by one, like the
        captured v2 schema); returns the new schema id. Describe, Bulk and REST see the field at once."""
        store = self.org.lookup(object_name)
        if store is None:
            raise ChangeError(f"unknown object: {object_name}")
        if not name.endswith("__c") or store.spec.field(name) is not None or ftype not in ADDABLE_TYPES:
            raise ChangeError("the field needs a new name ending in __c and one of: " + ", ".join(sorted(ADDABLE_TYPES)))
        spec = store.spec
        custom = [i for i, f in enumerate(spec.fields) if f.custom]
        at = custom[-1] + 1 if custom else spec.position("CreatedDate")
        length = {"string": 255, "textarea": 32768, "picklist": 255, "multipicklist": 4099, "email": 80,
                  "phone": 40, "url": 255}.get(ftype, 0)
        spec.fields.insert(at, FieldSpec(name, ftype, name[:-3].replace("_", " "), length=length, custom=True,
                                         precision=18 if ftype in ("double", "currency", "percent") else 0))
        spec.__post_init__()
        store.add_field(name, ftype)
        self._current.pop(spec.name, None)
        return self.schema(spec.name).id

    # -- transactions -----------------------------------------------------------------------------------------
    def validate(self, items: list[ChangeItem]) -> None:
        """Raise ChangeError unless every item applies, in order (changes.validate)."""
        validate(items)

    def commit(self, items: list[ChangeItem], origin: str = "", stamp_ms: int | None = None,
               at_ms: int | None = None) -> CommitResult:
        """Apply `items` as ONE transaction (call validate() first) and publish its events. `stamp_ms`: the
        SystemModstamp its records get, when the transaction began before it commits (`begin`); else the commit's
        own time. `at_ms`: the commit's time, given rather than read from the clock (a recorded transaction
        replayed: `replayable` says whether it may commit then)."""
        ts = self._commit_timestamp() if at_ms is None else self._replayed_timestamp(at_ms)
        stamp = from_epoch_ms(ts if stamp_ms is None else stamp_ms)
        self.commit_number += 1
        self.transactions += 1
        raw = os.urandom(16).hex()
        key = f"{raw[:8]}-{raw[8:12]}-{raw[12:16]}-{raw[16:20]}-{raw[20:]}"
        header = {"changeOrigin": origin, "transactionKey": key, "sequenceNumber": 0, "commitTimestamp": ts,
                  "commitNumber": self.commit_number, "commitUser": self.user_id, "diffFields": []}
        budget = self.faults.overflow_threshold
        used = 0
        overflowed: dict[str, None] = {}
        replay_ids: list[str] = []
        ids_out: list[list[str]] = []
        for item in items:
            ids, changed = self._apply(item, stamp)
            ids_out.append(ids)
            if item.type == "PURGE":  # removed from the Recycle Bin: no event
                self.purged += len(ids)
                continue
            entity = item.store.spec.name
            n = len(ids)
            self.changes += n
            self.by_object[entity] += n
            self.by_type[item.type] += n
            if entity not in self.selected:  # not selected for Change Data Capture: no event
                continue
            cost = len(changed) if item.type == "UPDATE" else 1
            fit = 0 if overflowed else min(n, (budget - used) // max(cost, 1))
            used += fit * cost
            if fit < n:
                overflowed[entity] = None
            if fit:
                header["sequenceNumber"] += 1
                event = self._event(item, ids[:fit], changed, header)
                replay_ids.append(event.replay_id.hex())
        for entity in overflowed:
            header["sequenceNumber"] += 1
            schema = self.schema(entity)
            h = {**header, "entityName": entity, "recordIds": [EMPTY_RECORD_ID], "changeType": "GAP_OVERFLOW",
                 "nulledFields": [], "changedFields": []}
            payload = schema.encode(h, null_body(schema))
            replay_ids.append(self.bus.publish(self._topic(entity), True, schema.id, payload).replay_id.hex())
        self.bus.notify()
        return CommitResult(key, ts, self.commit_number, replay_ids, ids_out)

    def next_stamp(self) -> int:
        """A SystemModstamp (epoch ms) for transactions committed now that must share one."""
        return self._commit_timestamp()

    def begin(self, items: list[ChangeItem] = ()) -> int:
        """Start a transaction that commits later (a late commit): its records' SystemModstamp, epoch ms. Until
        `end`, getUpdated and getDeleted hold latestDateCovered back to it (rest_replication.py), and it holds the
        row lock of every record its items change (`locked`). The caller checks `locked(items)` first."""
        stamp_ms = self._commit_timestamp()
        self._in_flight.append(stamp_ms)
        self._locks.update(_lock_keys(items))
        return stamp_ms

    def end(self, stamp_ms: int, items: list[ChangeItem] = ()) -> None:
        """The late transaction committed or rolled back: no longer in flight, its row locks released."""
        self._in_flight.remove(stamp_ms)
        self._locks.difference_update(_lock_keys(items))
        waiters, self._lock_waiters = self._lock_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def locked(self, items: list[ChangeItem]) -> str | None:
        """The Id of the first record of `items` whose row lock a transaction in flight holds, else None. In
        Salesforce a transaction that changes a record holds its row lock until it ends; another one changing it
        waits for the lock, at most 10 seconds, then fails with UNABLE_TO_LOCK_ROW (Apex Developer Guide,
        "Locking Statements", https://developer.salesforce.com/docs/atlas.en-us.apexcode.meta/apexcode/langCon_apex_locking_statements.htm;
        "Record Locking Cheat Sheet"). So a change never lands between a late commit's stamp and its commit."""
        for item in items:
            for pos in item.positions:
                if (item.store.spec.name, pos) in self._locks:
                    return item.store.row(pos)[0]
        return None

    async def wait_unlocked(self, items: list[ChangeItem], timeout: float) -> str | None:
        """Wait until no transaction in flight holds a row lock of `items`; the Id still locked after `timeout`
        seconds, else None."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (held := self.locked(items)) is not None:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return held
            waiter = loop.create_future()
            self._lock_waiters.append(waiter)
            try:
                async with asyncio.timeout(remaining):  # not wait_for (replicator/retry.py wait_event)
                    await waiter
            except TimeoutError:
                return self.locked(items)
        return None

    def in_flight_since(self) -> dt.datetime | None:
        """The SystemModstamp of the oldest transaction still in flight, if any."""
        return from_epoch_ms(min(self._in_flight)).replace(microsecond=0) if self._in_flight else None

    def touch(self, store: ObjectStore, positions: list[int], values: dict) -> list[str]:
        """Set SILENT_FIELDS of live records without an event and without a new SystemModstamp; returns the ids.
        Raises ChangeError (nothing applied) for another field or a deleted record."""
        self.schema(store.spec.name)
        col = self._columns[store.spec.name]
        for name in values:
            if name not in SILENT_FIELDS or name not in col:
                raise ChangeError(f"INVALID_FIELD: {name} does not change silently on {store.spec.name}")
        for pos in positions:
            if store.row(pos)[store.deleted_pos]:
                raise ChangeError(f"ENTITY_IS_DELETED: {store.row(pos)[0]}")
        ids = []
        for pos in positions:
            row = list(store.row(pos))
            for name, value in values.items():
                row[col[name]] = value
            store.put(pos, tuple(row))
            ids.append(row[0])
        self.silent += len(ids)
        return ids

    def replayable(self, at_ms: int) -> str | None:
        """Why a transaction cannot commit at `at_ms` (epoch ms), else None: commits are delivered in commit order,
        so none may commit before the previous one."""
        if at_ms < self.last_timestamp:
            return f"commit_timestamp {at_ms} is before the previous commit ({self.last_timestamp})"
        return None

    def _replayed_timestamp(self, at_ms: int) -> int:
        self.last_timestamp = at_ms
        return at_ms

    def _commit_timestamp(self) -> int:
        """Epoch milliseconds of the next commit: never before the previous one (delivery order is commit
        order); whole seconds when `timestamp_precision` is "s", rounding up after a switch from "ms"."""
        now, last = time.time_ns() // 1_000_000, self.last_timestamp
        if self.faults.whole_seconds:
            now, last = now - now % 1000, -(-last // 1000) * 1000
        self.last_timestamp = max(now, last)
        return self.last_timestamp

    def _topic(self, entity: str) -> str:
        return "/data/" + event_name(entity)

    def _event(self, item: ChangeItem, ids: list[str], changed: list[str], header: dict):
        store = item.store
        schema = self.schema(store.spec.name)
        kind = EVENT_TYPE.get(item.type, item.type)
        h = {**header, "entityName": store.spec.name, "recordIds": ids, "changeType": kind,
             "nulledFields": [], "changedFields": []}
        row = store.get(ids[0])
        if item.type == "UPDATE":
            diffs = self._diffs(item, row) if len(ids) == 1 else {}
            h["changedFields"] = schema.bitmap(changed)
            h["nulledFields"] = schema.bitmap(item.nulled)
            h["diffFields"] = schema.bitmap(list(diffs))
            body = {**schema.body(row, set(changed)), **diffs}
        elif kind == "DELETE":
            body = null_body(schema)
        else:
            body = schema.body(row)
        payload = b"" if item.force_gap else schema.encode(h, body)
        if item.force_gap or len(payload) > self.faults.gap_event_bytes:
            h.update(changeType="GAP_" + kind, nulledFields=[], diffFields=[], changedFields=[])
            payload = schema.encode(h, null_body(schema))
        return self.bus.publish(self._topic(store.spec.name), True, schema.id, payload)

    def _diffs(self, item: ChangeItem, row: tuple) -> dict[str, str]:
        """Text fields of a single-record UPDATE to send as a diff (knob `diff_fields`): field -> diff value."""
        if self.faults.diff_fields != "on" or item.before is None:
            return {}
        store, out = item.store, {}
        for name in item.values:
            spec = store.spec.field(name)
            if spec is None or spec.type != "textarea" or spec.compound_field_name:
                continue
            col = self._columns[store.spec.name][name]
            diff = text_diff(item.before[col], row[col])
            if diff is not None:
                out[name] = diff
        return out

    def _apply(self, item: ChangeItem, stamp: dt.datetime) -> tuple[list[str], list[str]]:
        """Change the store; returns the record ids and (UPDATE) the changed stored field names."""
        store = item.store
        self.schema(store.spec.name)
        if item.type == "CREATE":
            return self._apply_create(item, stamp), []
        if item.type == "PURGE":  # the row stays as it was: nothing edits a record emptied from the Recycle Bin
            ids = [store.row(pos)[0] for pos in item.positions]
            for pos in item.positions:
                store.remove(pos)
            return ids, []
        changed: list[str] = []
        if item.type == "UPDATE":
            changed = [*item.values, *item.nulled]
            if "LastModifiedDate" not in changed:
                changed.append("LastModifiedDate")
        ids = self._apply_change(item, stamp)
        if item.type == "HARD_DELETE":
            for pos in item.positions:
                store.remove(pos)
        return ids, changed

    def _apply_create(self, item: ChangeItem, stamp: dt.datetime) -> list[str]:
        store = item.store
        col = self._columns[store.spec.name]
        template = self._create_template(item, col)
        for audit in ("CreatedDate", "LastModifiedDate", "SystemModstamp"):  # those the object has (schema.py)
            if audit in col:
                template[col[audit]] = stamp
        ids = []
        # external ids not given get the generator's value for each record; a unique field's value was chosen by
        # validate (changes.py: never a duplicate)
        own = [col[f.name] for f in store.spec.stored_fields
               if f.external_id and not f.unique and f.name in col and f.name not in item.values]
        for k in range(item.count):
            pos = store.count()
            template[0] = store.record_id(pos)
            if own:
                generated = store.generator.row(pos)
                for c in own:
                    template[c] = generated[c]
            for name, value in (item.unique_values[k] if k < len(item.unique_values) else {}).items():
                template[col[name]] = value
            store.put(pos, tuple(template))
            ids.append(template[0])
        return ids

    def _apply_change(self, item: ChangeItem, stamp: dt.datetime) -> list[str]:
        """UPDATE, DELETE, HARD_DELETE, UNDELETE of the item's records; an UPDATE of one record keeps its old row in
        `item.before` (the base of a diff)."""
        store = item.store
        col = self._columns[store.spec.name]
        ids = []
        for pos in item.positions:
            before = store.row(pos)
            if item.type == "UPDATE" and len(item.positions) == 1:
                item.before = before
            row = list(before)
            if "SystemModstamp" in col:
                row[col["SystemModstamp"]] = stamp
            elif "LastModifiedDate" in col:  # a share object: its one audit datetime follows deletes too
                row[col["LastModifiedDate"]] = stamp
            if item.type in ("DELETE", "HARD_DELETE"):
                row[store.deleted_pos] = True
            else:
                if "LastModifiedDate" in col:
                    row[col["LastModifiedDate"]] = stamp
                row[store.deleted_pos] = False
                for name, value in item.values.items():
                    row[col[name]] = value
                for name in item.nulled:
                    row[col[name]] = None
                recompute(store.spec.name, col, row)  # values the org computes follow their inputs
            store.put(pos, tuple(row))
            ids.append(row[0])
        return ids

    def _create_template(self, item: ChangeItem, col: dict[str, int]) -> list:
        store = item.store
        generated = store.generator.row(store.count()) + store._pad
        if item.generated:
            row = list(generated)
        else:  # only the given values, plus a generated value for each required field
            row = [None] * len(store.names)
            for f in store.spec.stored_fields:
                if not f.nillable and f.name in col:  # checkboxes default to false, like describe says
                    row[col[f.name]] = False if f.type == "boolean" else generated[col[f.name]]
        row[store.deleted_pos] = False
        for name in SILENT_FIELDS:  # a new record has not been viewed, nor had an activity
            if name in col:
                row[col[name]] = None
        for name, value in item.values.items():
            row[col[name]] = value
        recompute(store.spec.name, col, row)
        return row

    def stats(self) -> dict:
        last = self.bus.last_counter
        return {
            "changes": {"total": self.changes, "by_object": dict(self.by_object), "by_type": dict(self.by_type)},
            "transactions": self.transactions,
            "silent_changes": self.silent,
            "purged": self.purged,
            "rolled_back": self.rolled_back,
            "events_published": self.bus.published,
            "events_retained": self.bus.retained(),
            "last_replay_id": (last.to_bytes(8, "big") + b"\0\0").hex() if last else None,
        }
