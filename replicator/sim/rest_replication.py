"""REST replication resources: sObject Get Updated and sObject Get Deleted (docs/bulk-rest-oauth.md §3.5;
REST API Developer Guide, "sObject Get Updated",
https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/resources_getupdated.htm, and
"sObject Get Deleted", https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/resources_getdeleted.htm).

    GET /services/data/vXX.X/sobjects/{Object}/updated/?start=<ISO 8601>&end=<ISO 8601>
        -> {"ids": [...], "latestDateCovered": "…+0000"}: live records whose SystemModstamp is in the window
    GET /services/data/vXX.X/sobjects/{Object}/deleted/?start=…&end=…
        -> {"deletedRecords": [{"id", "deletedDate"}], "earliestDateAvailable", "latestDateCovered"}: records
           deleted in the window (soft-deleted, emptied from the Recycle Bin or hard-deleted; deletedDate is the
           SystemModstamp of the delete, as the SOAP API's DeletedRecord says), oldest first

The rules, from §3.5 and the pages above: the seconds of `start` and `end` are truncated; getUpdated covers the
last 30 days and getDeleted the last 15, so an earlier start is 400 `INVALID_REPLICATION_DATE`, as is a start after
the end; more than 600,000 ids is 400 `EXCEEDED_ID_LIMIT` ("choose start and end dates that are closer together";
`PUT /__sim/limits {"replication_id_limit": N}` lowers the limit, limits.py). `latestDateCovered` is at most the end
and is held back to the SystemModstamp of the oldest transaction still in flight (a late commit, cdc.py: "the start
time of that long-running transaction until it completes", SOAP API "GetUpdatedResult"): the next call must start
there. This simulator's readings: a window is inclusive at both ends; an end in the future is covered up to the
current second; `earliestDateAvailable` is the start of the 15 days (the delete log is never purged early here); an
undeleted record is no longer in the delete log.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator

from aiohttp import web

from .errors import json_ok, not_found, sf_error
from .generator import END
from .state import STATE
from .store import ObjectStore
from .values import rest_value

UPDATED_DAYS = 30
DELETED_DAYS = 15


class ReplicationError(ValueError):
    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)


def _minute(value: dt.datetime) -> dt.datetime:
    return value.replace(second=0, microsecond=0)


def parse_when(text: str | None, name: str) -> dt.datetime:
    """An ISO 8601 query parameter as naive UTC, its seconds truncated."""
    try:
        parsed = dt.datetime.fromisoformat(str(text).replace("Z", "+00:00").replace("+0000", "+00:00"))
    except ValueError:
        raise ReplicationError("INVALID_REPLICATION_DATE", f"{name}: not an ISO 8601 dateTime: {text!r}") from None
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(dt.UTC).replace(tzinfo=None)
    return _minute(parsed)


def window(query, days: int, now: dt.datetime, in_flight: dt.datetime | None) -> tuple[dt.datetime, dt.datetime]:
    """(start, latestDateCovered) of a request, or ReplicationError."""
    start, end = parse_when(query.get("start"), "start"), parse_when(query.get("end"), "end")
    if start > end:
        raise ReplicationError("INVALID_REPLICATION_DATE", "start must be before end")
    if start < _minute(now) - dt.timedelta(days=days):
        raise ReplicationError("INVALID_REPLICATION_DATE",
                               f"start must be within the last {days} days")
    covered = min(end, now.replace(microsecond=0))
    if in_flight is not None:
        covered = min(covered, in_flight)
    return start, max(covered, start)


def _candidates(store: ObjectStore, start: dt.datetime) -> Iterator[int]:
    """Positions whose SystemModstamp may be at or after `start`, in Id order: generated rows are stamped before
    generator.END, so after it only records changed since start (the overlay) can be."""
    if start <= END:
        return iter(range(store.count()))
    return iter(sorted(store.overlay))


def _stamp(store: ObjectStore) -> int:
    """The column getUpdated and getDeleted read: SystemModstamp, else LastModifiedDate (§3.5: "uses SystemModstamp
    (else LastModifiedDate)"; a share object has only that), else CreatedDate (a history object: never edited)."""
    for name in ("SystemModstamp", "LastModifiedDate", "CreatedDate"):
        if name in store.names:
            return store.names.index(name)
    raise ValueError(f"{store.spec.name} has no audit datetime")


def updated_ids(store: ObjectStore, start: dt.datetime, covered: dt.datetime) -> list[str]:
    stamp = _stamp(store)
    out = []
    for pos in _candidates(store, start):
        if store.exists(pos):
            row = store.row(pos)
            if not row[store.deleted_pos] and start <= row[stamp] <= covered:
                out.append(row[0])
    return out


def deleted_records(store: ObjectStore, start: dt.datetime, covered: dt.datetime) -> list[tuple[dt.datetime, str]]:
    stamp = _stamp(store)
    out = []
    for pos in _candidates(store, start):
        if pos < store.count():
            row = store.row(pos)  # a removed record's last row: deleted, stamped with its delete
            if row[store.deleted_pos] and start <= row[stamp] <= covered:
                out.append((row[stamp], row[0]))
    return sorted(out)


async def _answer(request: web.Request, days: int):
    """(store, start, latestDateCovered, now), or an error response."""
    state = request.app[STATE]
    store = state.org.lookup(request.match_info["object"])
    if store is None:
        return not_found()
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    try:
        start, covered = window(request.query, days, now, state.capture.in_flight_since())
    except ReplicationError as exc:
        return sf_error(400, exc.code, str(exc))
    return store, start, covered, now


async def get_updated(request: web.Request) -> web.Response:
    answer = await _answer(request, UPDATED_DAYS)
    if isinstance(answer, web.Response):
        return answer
    store, start, covered, _ = answer
    ids = await asyncio.get_running_loop().run_in_executor(None, updated_ids, store, start, covered)
    if len(ids) > request.app[STATE].limits.replication_id_limit:
        return sf_error(400, "EXCEEDED_ID_LIMIT", "Too many ids: choose start and end dates closer together")
    return json_ok({"ids": ids, "latestDateCovered": rest_value("datetime", covered)})


async def get_deleted(request: web.Request) -> web.Response:
    answer = await _answer(request, DELETED_DAYS)
    if isinstance(answer, web.Response):
        return answer
    store, start, covered, now = answer
    found = await asyncio.get_running_loop().run_in_executor(None, deleted_records, store, start, covered)
    if len(found) > request.app[STATE].limits.replication_id_limit:
        return sf_error(400, "EXCEEDED_ID_LIMIT", "Too many ids: choose start and end dates closer together")
    return json_ok({
        "deletedRecords": [{"id": rec_id, "deletedDate": rest_value("datetime", when)} for when, rec_id in found],
        "earliestDateAvailable": rest_value("datetime", _minute(now) - dt.timedelta(days=DELETED_DAYS)),
        "latestDateCovered": rest_value("datetime", covered),
    })


def add_routes(app: web.Application) -> None:
    """Registered before rest.py's `/sobjects/{object}/{id}`, which would otherwise take "updated" for an Id."""
    v = "/services/data/{version:v[0-9]+\\.[0-9]}/sobjects/{object}"
    for suffix in ("", "/"):
        app.router.add_get(f"{v}/updated{suffix}", get_updated)
        app.router.add_get(f"{v}/deleted{suffix}", get_deleted)
