"""Admin endpoints for change capture and traffic (no auth, never faulted):

    POST /__sim/changes                  a JSON list of changes applied as ONE transaction:
        [{"object": "Account", "type": "UPDATE", "ids": ["001…"], "fields": {"Phone": "555", "BillingState": "CA"},
          "nulled": ["Fax"], "force_gap": false},
         {"object": "Account", "type": "CREATE", "fields": {...}, "count": 1},
         {"object": "Account", "type": "DELETE", "ids": [...]}, {"object": "Account", "type": "UNDELETE", "ids": [...]},
         {"object": "Account", "type": "HARD_DELETE", "ids": [...]}, {"object": "Account", "type": "PURGE", "ids": [...]}]
        -> {"transaction_key", "commit_timestamp", "commit_number", "replay_ids": [hex…], "ids": [[ids per item]]}
        The body may instead be {"changes": [...], "separate_transactions": true, "visible_after_seconds": 5}:
        - separate_transactions: each change is its own transaction (its own transactionKey, commitNumber and
          events), every record stamped with ONE SystemModstamp (many records share one whole second, as in
          Salesforce: docs/salesforce-coverage.md §1) -> {"transactions": [one result as above per change]};
        - visible_after_seconds: a late commit, a transaction in flight (docs/salesforce-coverage.md §1 "Time and
          visibility"): its SystemModstamp is taken now, but nothing (store, queries, Bulk, ground truth, events)
          sees it until it commits that many seconds later; meanwhile getUpdated/getDeleted hold latestDateCovered
          back to it -> at once {"commit_timestamp": null, "system_modstamp": epoch ms, "visible_after_seconds"}.
          It is validated now and again when it commits; if it no longer applies it is rolled back (`/__sim/stats`
          "rolled_back"). Meanwhile it holds the row locks of the records it changes, as in Salesforce: a
          request changing one of them waits until it commits (then is stamped after it), at most 10 s, then
          fails 400 [{"errorCode": "UNABLE_TO_LOCK_ROW", …}]; the traffic generator leaves them alone;
        - commit_timestamp (epoch ms) and system_modstamp (epoch ms, at most commit_timestamp; default the same):
          the transaction commits at that time, its records stamped with that SystemModstamp, instead of now: a
          recorded transaction replayed, so that a test makes an org again exactly as an earlier run had it
          (tests/fixtures/upgrade_2026_11_30). 400 when it is before the previous commit (events are delivered in
          commit order); not with visible_after_seconds.
        HARD_DELETE (live records) publishes a DELETE event, then removes them for good; PURGE (soft-deleted
        records only: 400 for a live one) removes them with no event (changes.py). A removed record's Id is
        INVALID_ID from then on.
        Compound components are given by their flat names (BillingState, FirstName) and travel as the nested
        subfield (BillingAddress.State, Name.FirstName); read-only fields (Contact.Name, formulas, system fields)
        cannot be set.
        Values: JSON types; datetimes ISO 8601 (…Z or +0000) or epoch ms; dates YYYY-MM-DD; times HH:MM:SS.sssZ.
        400 {"error": …} and nothing applied when any item is invalid; a unique field given a value another live
        record holds (at the end of the request: swaps are allowed) is 400 in Salesforce's shape instead,
        [{"message": "duplicate value found: External_Id__c duplicates value on record with id: a0X…",
          "errorCode": "DUPLICATE_VALUE", "fields": []}] (changes.py).
    POST /__sim/silent-changes           {"object": "Account", "ids": ["001…"], "fields": {"LastViewedDate": "…Z",
                                          "LastActivityDate": "2026-01-31"}} -> {"ids": [...]}: set fields that
                                          change without an event (cdc.ChangeCapture.touch); 400, nothing applied,
                                          for another field or a deleted record
    POST /__sim/schema/{Object}/fields   {"name": "Loyalty_Tier__c", "type": "string"} -> {"schema_id", "topic",
                                          "position"}: a schema change (cdc.ChangeCapture.add_field)
    GET  /__sim/cdc                      {"objects": [...]}: the entity selection, the objects that publish change
                                          events (cdc.py); the others have no /data/<Object>ChangeEvent topic
    PUT  /__sim/cdc                      {"objects": ["Account", "Task"]} replaces it ([] selects none); 400 and
                                          no change for an unknown object
    GET  /__sim/traffic                  the traffic settings (traffic.TrafficConfig) plus "made"
    PUT  /__sim/traffic                  merge settings; {"running": false} pauses
    GET  /__sim/stats                    {"changes": {"total", "by_object", "by_type"}, "transactions", "silent_changes",
                                          "purged" (records PURGE removed), "rolled_back" (late
                                          commits that no longer applied), "events_published", "events_retained",
                                          "last_replay_id": hex|null, "subscribers", "streams_cut"}
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from dataclasses import dataclass

import orjson
from aiohttp import web

from .avro import event_name, from_epoch_ms
from .cdc import NOT_SETTABLE, ChangeError, ChangeItem
from .changes import DuplicateValue
from .errors import json_ok
from .state import STATE
from .store import ObjectStore

ADMIN_ORIGIN = "com/salesforce/api/rest/67.0;client=replicator-sim-admin"
LOCK_WAIT_S = 10.0  # how long a change waits for a row lock a late commit holds (cdc.ChangeCapture.locked)


def parse_value(ftype: str, value: object, whole_seconds: bool = False) -> object:
    """A JSON value as the store keeps it (datetimes to the millisecond, or to the second with
    `whole_seconds`); ValueError when it does not fit the type."""
    if value is None:
        return None
    if ftype == "datetime":
        if isinstance(value, int) and not isinstance(value, bool):
            parsed = from_epoch_ms(value)
        else:
            text = str(value).replace("Z", "+00:00").replace("+0000", "+00:00")
            parsed = dt.datetime.fromisoformat(text)
            if parsed.tzinfo is not None:
                parsed = parsed.astimezone(dt.UTC).replace(tzinfo=None)
        return parsed.replace(microsecond=0 if whole_seconds else parsed.microsecond // 1000 * 1000)
    if ftype == "date":
        return dt.date.fromisoformat(str(value))
    if ftype == "time":
        return dt.time.fromisoformat(str(value).rstrip("Z"))
    if ftype == "boolean":
        if not isinstance(value, bool):
            raise ValueError("expected a boolean")
        return value
    if ftype == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError("expected an integer")
        return value
    if ftype in ("double", "currency", "percent"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError("expected a number")
        return float(value)
    if not isinstance(value, str):
        raise ValueError("expected a string")
    return value


def _records(org, raw: dict) -> tuple[ObjectStore, list[int]]:
    """The object store and record positions named by a change's "object" and "ids"."""
    if not isinstance(raw, dict):
        raise ChangeError("each change must be a JSON object")
    store = org.lookup(str(raw.get("object", "")))
    if store is None:
        raise ChangeError(f"unknown object: {raw.get('object')!r}")
    positions = []
    for record_id in raw.get("ids") or []:
        pos = store.position(str(record_id))
        if pos is None:
            raise ChangeError(f"INVALID_ID: {record_id}")
        positions.append(pos)
    return store, positions


def _item(org, raw: dict, whole_seconds: bool) -> ChangeItem:
    store, positions = _records(org, raw)
    kind = str(raw.get("type", "")).upper()
    item = ChangeItem(store, kind, positions=positions, force_gap=bool(raw.get("force_gap", False)))
    fields_in = raw.get("fields") or {}
    nulled = raw.get("nulled") or []
    if kind in ("DELETE", "UNDELETE", "HARD_DELETE", "PURGE") and (fields_in or nulled):
        raise ChangeError(f"{kind} takes no fields")
    if kind == "CREATE":
        if item.positions:
            raise ChangeError("CREATE takes no ids")
        item.count = int(raw.get("count", 1))
        if not 1 <= item.count <= 100_000:
            raise ChangeError("count must be 1..100000")
    for name, value in {**fields_in, **{n: None for n in nulled}}.items():
        spec = store.spec.field(name)
        if spec is None or not spec.writable or spec.name in NOT_SETTABLE:
            raise ChangeError(f"INVALID_FIELD: {name} cannot be set on {store.spec.name}")
        try:
            parsed = parse_value(spec.type, value, whole_seconds)
        except (ValueError, TypeError) as exc:
            raise ChangeError(f"INVALID_FIELD_VALUE: {name}: {exc}") from None
        if parsed is None:
            item.nulled.append(spec.name)
        else:
            item.values[spec.name] = parsed
    if kind == "UPDATE" and not item.values and not item.nulled:
        raise ChangeError("UPDATE needs fields or nulled")
    return item


@dataclass(frozen=True, slots=True)
class _Options:
    changes: list
    separate: bool = False
    delay: float = 0.0  # visible_after_seconds
    at_ms: int | None = None  # commit_timestamp, given (a replay)
    stamp_ms: int | None = None  # system_modstamp, given (a replay)


def _epoch_ms(body: dict, key: str) -> int | None:
    value = body.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise ChangeError(f"{key} must be epoch milliseconds")
    return value


def _options(body) -> _Options:
    """The options of a POST /__sim/changes body: a list of changes, or an object {"changes": [...],
    "separate_transactions": bool, "visible_after_seconds": number, "commit_timestamp": ms, "system_modstamp": ms}."""
    if not isinstance(body, dict):
        body = {"changes": body}
    unknown = set(body) - {"changes", "separate_transactions", "visible_after_seconds", "commit_timestamp",
                           "system_modstamp"}
    if unknown:
        raise ChangeError(f"unknown option: {sorted(unknown)[0]}")
    separate, delay = body.get("separate_transactions", False), body.get("visible_after_seconds", 0)
    if not isinstance(separate, bool):
        raise ChangeError("separate_transactions must be a boolean")
    if isinstance(delay, bool) or not isinstance(delay, int | float) or not 0 <= delay <= 3600:
        raise ChangeError("visible_after_seconds must be a number of seconds, 0..3600")
    at_ms, stamp_ms = _epoch_ms(body, "commit_timestamp"), _epoch_ms(body, "system_modstamp")
    if stamp_ms is not None and at_ms is None:
        raise ChangeError("system_modstamp needs commit_timestamp")
    if at_ms is not None and delay:
        raise ChangeError("commit_timestamp and visible_after_seconds exclude each other")
    if stamp_ms is not None and stamp_ms > at_ms:
        raise ChangeError("system_modstamp must not be after commit_timestamp")
    changes = body.get("changes")
    if not isinstance(changes, list) or not changes:
        raise ChangeError("changes must be a non-empty JSON list")
    return _Options(changes, separate, float(delay), at_ms, stamp_ms)


def _result(result) -> dict:
    return {"transaction_key": result.transaction_key, "commit_timestamp": result.commit_timestamp,
            "commit_number": result.commit_number, "replay_ids": result.replay_ids, "ids": result.ids}


def _commit(capture, items: list[ChangeItem], separate: bool, stamp_ms: int | None, at_ms: int | None = None) -> dict:
    """One transaction, or one per item sharing one SystemModstamp (`separate`); at `at_ms` when given."""
    if not separate:
        return _result(capture.commit(items, ADMIN_ORIGIN, stamp_ms, at_ms))
    if stamp_ms is None:
        stamp_ms = capture.next_stamp() if at_ms is None else at_ms
    return {"transactions": [_result(capture.commit([item], ADMIN_ORIGIN, stamp_ms, at_ms)) for item in items]}


def _commit_late(capture, items: list[ChangeItem], separate: bool, stamp_ms: int) -> None:
    """The end of a late commit: applied if it still applies (a record it creates may clash with one created
    meanwhile), else rolled back; either way no longer in flight, its row locks released."""
    try:
        capture.validate(items)
        _commit(capture, items, separate, stamp_ms)
    except ChangeError:
        capture.rolled_back += 1
    finally:
        capture.end(stamp_ms, items)


def _refused(exc: Exception) -> web.Response:
    """400 for a change that does not apply: a duplicate unique value in the REST error shape
    (docs/bulk-rest-oauth.md §2.2), anything else as {"error": …}."""
    if isinstance(exc, DuplicateValue):
        return json_ok([{"message": str(exc), "errorCode": "DUPLICATE_VALUE", "fields": []}], status=400)
    return json_ok({"error": str(exc)}, status=400)


def _lock_refused(record_id: str) -> web.Response:
    """Salesforce's answer when a row lock is not granted in time (the REST error shape)."""
    return json_ok([{"message": f"unable to obtain exclusive access to this record or 1 records: {record_id}",
                     "errorCode": "UNABLE_TO_LOCK_ROW", "fields": []}], status=400)


async def post_changes(request: web.Request) -> web.Response:
    state = request.app[STATE]
    capture = state.capture
    try:
        options = _options(orjson.loads(await request.read()))
        items = [_item(state.org, raw, state.faults.whole_seconds) for raw in options.changes]
        capture.validate(items)
        if options.at_ms is not None and (why := capture.replayable(options.at_ms)):
            raise ChangeError(why)
    except (orjson.JSONDecodeError, ChangeError, ValueError) as exc:
        return _refused(exc)
    if capture.locked(items) is not None:  # a late commit holds a record's row lock: wait for it, like Salesforce
        held = await capture.wait_unlocked(items, LOCK_WAIT_S)
        if held is not None:
            return _lock_refused(held)
        try:  # the late commit may have changed what applies
            capture.validate(items)
        except (ChangeError, ValueError) as exc:
            return _refused(exc)
    if options.delay > 0:
        stamp_ms = capture.begin(items)
        asyncio.get_running_loop().call_later(options.delay, _commit_late, capture, items, options.separate, stamp_ms)
        return json_ok({"commit_timestamp": None, "system_modstamp": stamp_ms, "visible_after_seconds": options.delay})
    if options.at_ms is not None and (why := capture.replayable(options.at_ms)):
        return _refused(ChangeError(why))  # a commit while this one waited for a row lock
    return json_ok(_commit(capture, items, options.separate, options.stamp_ms, options.at_ms))


async def post_silent(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        body = orjson.loads(await request.read())
        if not isinstance(body, dict) or not isinstance(body.get("fields"), dict):
            raise ChangeError("body must be a JSON object with object, ids and fields")
        store, positions = _records(state.org, body)
        if not positions:
            raise ChangeError("ids: at least one record id")
        spec = store.spec
        values = {}
        for name, value in body["fields"].items():
            field = spec.field(name)
            if field is None:
                raise ChangeError(f"INVALID_FIELD: {name} is not a field of {spec.name}")
            values[field.name] = parse_value(field.type, value, state.faults.whole_seconds)
        ids = state.capture.touch(store, positions, values)
    except (orjson.JSONDecodeError, ChangeError, ValueError, TypeError) as exc:
        return json_ok({"error": str(exc)}, status=400)
    return json_ok({"ids": ids})


async def post_field(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        body = orjson.loads(await request.read())
        if not isinstance(body, dict):
            raise ChangeError("body must be a JSON object")
        schema_id = state.capture.add_field(request.match_info["object"], str(body.get("name", "")),
                                            str(body.get("type", "")))
    except (orjson.JSONDecodeError, ChangeError) as exc:
        return json_ok({"error": str(exc)}, status=400)
    store = state.org.lookup(request.match_info["object"])
    schema = state.capture.schema(store.spec.name)
    state.extras["metadata_modified"] = time.time()
    return json_ok({"schema_id": schema_id, "topic": "/data/" + event_name(store.spec.name),
                    "position": schema.field_names.index(body["name"])})


async def get_traffic(request: web.Request) -> web.Response:
    return json_ok(request.app[STATE].traffic.to_dict())


async def put_traffic(request: web.Request) -> web.Response:
    traffic = request.app[STATE].traffic
    try:
        changes = orjson.loads(await request.read())
        if not isinstance(changes, dict):
            raise ValueError("body must be a JSON object")
        traffic.update(changes)
    except (orjson.JSONDecodeError, ValueError) as exc:
        return json_ok({"error": str(exc)}, status=400)
    return json_ok(traffic.to_dict())


async def get_cdc(request: web.Request) -> web.Response:
    return json_ok({"objects": request.app[STATE].capture.selection()})


async def put_cdc(request: web.Request) -> web.Response:
    capture = request.app[STATE].capture
    try:
        body = orjson.loads(await request.read())
        if not isinstance(body, dict) or not isinstance(body.get("objects"), list):
            raise ChangeError('body must be {"objects": [object names]}')
        selection = capture.select(body["objects"])
    except (orjson.JSONDecodeError, ChangeError) as exc:
        return json_ok({"error": str(exc)}, status=400)
    return json_ok({"objects": selection})


async def stats(request: web.Request) -> web.Response:
    state = request.app[STATE]
    out = state.capture.stats()
    out["subscribers"] = state.pubsub.subscribers if state.pubsub is not None else 0
    out["streams_cut"] = state.pubsub.streams_cut if state.pubsub is not None else 0
    out["peak_streams_per_connection"] = state.pubsub.peak_streams_per_connection if state.pubsub is not None else 0
    return json_ok(out)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/__sim/changes", post_changes)
    app.router.add_post("/__sim/silent-changes", post_silent)
    app.router.add_post("/__sim/schema/{object}/fields", post_field)
    app.router.add_get("/__sim/cdc", get_cdc)
    app.router.add_put("/__sim/cdc", put_cdc)
    app.router.add_get("/__sim/traffic", get_traffic)
    app.router.add_put("/__sim/traffic", put_traffic)
    app.router.add_get("/__sim/stats", stats)
