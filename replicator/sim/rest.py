"""REST API: versions, describeGlobal, describe, query/queryAll with nextRecordsUrl paging, sObject
Collections retrieve, a single-record retrieve, limits and record counts (docs/bulk-rest-oauth.md §3).

Authentication, fault injection and `Sforce-Limit-Info` are handled by middleware (server.py).
"""

from __future__ import annotations

import asyncio
import email.utils
from array import array
from collections import OrderedDict
from dataclasses import dataclass

import orjson
from aiohttp import web

from .errors import json_ok, not_found, sf_error
from .ids import make_id
from .plan import Column, Plan, _resolve, bind, iter_matches
from .schema import child_relationships
from .soql import SoqlError, Token
from .state import RELEASES, STATE, SimState
from .store import ObjectStore
from .values import address_value, rest_value

# Up to 2,000 records per batch; Sforce-Query-Options batchSize 200..2,000 (docs/bulk-rest-oauth.md §3.4;
# Salesforce: "Query More Results",
# https://developer.salesforce.com/docs/platform/api-rest/guide/resources-query-more-results.html).
QUERY_BATCH = 2000
MAX_CURSORS = 200  # open query cursors kept (oldest dropped first)
# sObject Collections retrieve: GET works up to about 800 ids (URL length), POST takes 2,000
# (docs/bulk-rest-oauth.md §3.5; Salesforce: "sObject Collections",
# https://developer.salesforce.com/docs/platform/api-rest/guide/resources-composite-sobjects-collections-retrieve.html).
GET_IDS_LIMIT = 800
POST_IDS_LIMIT = 2000


@dataclass
class Cursor:
    plan: Plan
    positions: array
    version: str
    all_rows: bool


def _version(request: web.Request) -> str:
    return request.match_info["version"][1:]


def record_json(store: ObjectStore, row: tuple, columns: list[Column], version: str) -> dict:
    rec_id = row[0]
    out: dict = {"attributes": {"type": store.spec.name,
                                "url": f"/services/data/v{version}/sobjects/{store.spec.name}/{rec_id}"}}
    for col in columns:
        if col.position is not None:
            out[col.name] = rest_value(col.spec.type, row[col.position])
        else:  # compound address: assemble from its components
            prefix = col.name[: -len("Address")]
            parts = {}
            for f in store.spec.fields:
                if f.compound_field_name == col.name:
                    parts[f.name[len(prefix):]] = row[store.names.index(f.name)]
            out[col.name] = address_value(parts)
    return out


async def versions(request: web.Request) -> web.Response:
    # No auth (docs/bulk-rest-oauth.md §3.1), and no Sforce-Limit-Info and no API usage for this
    # resource (docs/bulk-rest-oauth.md §2.1).
    return json_ok([{"label": label, "url": f"/services/data/v{v}.0", "version": f"{v}.0"}
                    for v, label in RELEASES.items()])


async def resources(request: web.Request) -> web.Response:
    base = f"/services/data/v{_version(request)}"
    return json_ok({name: f"{base}/{name}" for name in
                    ("sobjects", "query", "queryAll", "limits", "composite", "jobs")})


async def describe_global(request: web.Request) -> web.Response:
    """`{"encoding", "maxBatchSize", "sobjects": [...]}`: every object with its name, label, key prefix and what may be
    done with it (queryable, replicateable, retrieveable, …). REST API Developer Guide, "Describe Global",
    https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/resources_describeGlobal.htm
    (docs/bulk-rest-oauth.md §3.1)."""
    state = request.app[STATE]
    v = _version(request)
    return json_ok({"encoding": "UTF-8", "maxBatchSize": 200,
                    "sobjects": [o.describe_global_entry(v) for o in state.org.objects.values()]})


async def describe(request: web.Request) -> web.Response:
    state = request.app[STATE]
    store = state.org.lookup(request.match_info["object"])
    if store is None:
        return not_found()
    started = state.extras["metadata_modified"]
    since = request.headers.get("If-Modified-Since")
    if since:  # unchanged metadata returns 304 with no body (docs/bulk-rest-oauth.md §3.1)
        try:
            if email.utils.parsedate_to_datetime(since).timestamp() >= int(started):
                return web.Response(status=304)
        except (TypeError, ValueError):
            pass
    doc = store.spec.describe(_version(request), child_relationships(state.org.objects, store.spec.name))
    return json_ok(doc, headers={"Last-Modified": email.utils.formatdate(started, usegmt=True)})


def _soql_error(exc: SoqlError) -> web.Response:
    return sf_error(400, exc.code, exc.message)


def _count_only(plan: Plan) -> bool:
    """`SELECT COUNT() FROM …`: the number of matching records as `totalSize`, no records ("COUNT() and
    COUNT(fieldName)", SOQL and SOSL Reference,
    https://developer.salesforce.com/docs/atlas.en-us.soql_sosl.meta/soql_sosl/sforce_api_calls_soql_select_count.htm).
    COUNT(fieldName) and the other aggregates are not served here."""
    q = plan.query
    if len(q.select) != 1 or q.select[0].kind != "function" or q.select[0].name != "COUNT":
        return False
    rest = q.text[q.select[0].token.pos + len(q.select[0].token.text):].lstrip()
    return rest.startswith("(") and rest[1:].lstrip().startswith(")")


def _rest_supported(plan: Plan) -> None:
    q = plan.query
    for item in q.select:
        if item.kind != "field":
            raise SoqlError("MALFORMED_QUERY", f"{item.name or 'subquery'} is not supported by replicator.sim")
    if q.group_by:
        raise SoqlError("MALFORMED_QUERY", "GROUP BY is not supported by replicator.sim")


def _batch_size(request: web.Request) -> int:
    options = request.headers.get("Sforce-Query-Options", "")
    for part in options.split(","):
        key, _, value = part.strip().partition("=")
        if key.strip().lower() == "batchsize" and value.strip().isdigit():
            return max(200, min(QUERY_BATCH, int(value)))
    return QUERY_BATCH


def _page(state: SimState, cursor_id: str, cursor: Cursor, offset: int, size: int) -> web.Response:
    store = cursor.plan.store
    end = min(offset + size, len(cursor.positions))
    records = [record_json(store, store.row(p), cursor.plan.columns, cursor.version)
               for p in cursor.positions[offset:end]]
    done = end >= len(cursor.positions)
    kind = "queryAll" if cursor.all_rows else "query"
    body = {"totalSize": len(cursor.positions), "done": done, "records": records}
    if not done:
        body["nextRecordsUrl"] = f"/services/data/v{cursor.version}/{kind}/{cursor_id}-{end}"
    return web.Response(body=orjson.dumps(body), content_type="application/json")


def _cursors(state: SimState) -> OrderedDict:
    return state.extras.setdefault("cursors", OrderedDict())


async def query(request: web.Request) -> web.Response:
    state = request.app[STATE]
    all_rows = request.path.rstrip("/").endswith("queryAll")
    text = request.query.get("q")
    if text is None:
        return sf_error(400, "MALFORMED_QUERY", "A query string has to be specified")
    try:
        plan = bind(text, state.org)
        counted = _count_only(plan)
        if not counted:
            _rest_supported(plan)
    except SoqlError as exc:
        return _soql_error(exc)
    if counted:
        total = await asyncio.get_running_loop().run_in_executor(
            None, lambda: sum(1 for _ in iter_matches(plan, all_rows)))
        return json_ok({"totalSize": total, "done": True, "records": []})
    positions = await asyncio.get_running_loop().run_in_executor(
        None, lambda: array("q", (pos for pos, _ in iter_matches(plan, all_rows))))
    cursors = _cursors(state)
    counter = state.extras["cursor_counter"] = state.extras.get("cursor_counter", 0) + 1
    cursor_id = make_id("01g", counter, state.org.pod)
    cursor = Cursor(plan, positions, _version(request), all_rows)
    cursors[cursor_id] = cursor
    while len(cursors) > MAX_CURSORS:
        cursors.popitem(last=False)
    return _page(state, cursor_id, cursor, 0, _batch_size(request))


async def query_more(request: web.Request) -> web.Response:
    state = request.app[STATE]
    cursor_id, _, offset = request.match_info["locator"].rpartition("-")
    cursor = _cursors(state).get(cursor_id)
    if cursor is None or not offset.isdigit():
        return sf_error(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
    _cursors(state).move_to_end(cursor_id)
    return _page(state, cursor_id, cursor, int(offset), _batch_size(request))


def _columns(store: ObjectStore, names: list[str]) -> list[Column]:
    text = ", ".join(names)
    columns = []
    pos = 0
    for name in names:
        columns.append(_resolve(_FieldsQuery(text), store, Token("IDENT", name, name, pos)))
        pos += len(name) + 2
    return columns


@dataclass
class _FieldsQuery:
    """Enough of a Query for plan._resolve to position errors inside a `fields` list."""
    text: str


async def retrieve_collection(request: web.Request) -> web.Response:
    state = request.app[STATE]
    store = state.org.lookup(request.match_info["object"])
    if store is None:
        return not_found()
    if request.method == "POST":
        try:
            body = orjson.loads(await request.read())
            ids, names = list(body["ids"]), list(body["fields"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return sf_error(400, "JSON_PARSER_ERROR", "expected a JSON object with 'ids' and 'fields' arrays")
        limit = POST_IDS_LIMIT
    else:
        ids = [i for i in request.query.get("ids", "").split(",") if i]
        names = [f.strip() for f in request.query.get("fields", "").split(",") if f.strip()]
        limit = GET_IDS_LIMIT
    if not ids or not names:
        return sf_error(400, "MISSING_ARGUMENT", "ids and fields are required")
    if len(ids) > limit:
        return sf_error(400, "EXCEEDED_ID_LIMIT", f"too many ids: the limit is {limit}")
    try:
        columns = _columns(store, names)
    except SoqlError as exc:
        return _soql_error(exc)
    out = []
    for record_id in ids:
        row = store.get(str(record_id))
        # An inaccessible or invalid id is null at its position (docs/bulk-rest-oauth.md §3.5);
        # soft-deleted rows are not retrievable.
        out.append(None if row is None or row[store.deleted_pos] else
                   record_json(store, row, columns, _version(request)))
    return json_ok(out)


async def retrieve_record(request: web.Request) -> web.Response:
    state = request.app[STATE]
    store = state.org.lookup(request.match_info["object"])
    if store is None:
        return not_found()
    row = store.get(request.match_info["id"])
    if row is None or row[store.deleted_pos]:
        return not_found()
    names = [f.strip() for f in request.query.get("fields", "").split(",") if f.strip()]
    try:
        columns = _columns(store, names) if names else _columns(store, [f.name for f in store.spec.fields])
    except SoqlError as exc:
        return _soql_error(exc)
    return json_ok(record_json(store, row, columns, _version(request)))


async def limits(request: web.Request) -> web.Response:
    """`{Name: {Max, Remaining}}` (docs/bulk-rest-oauth.md §2.1); what is counted and enforced: limits.py."""
    state = request.app[STATE]
    return json_ok(state.limits.limits_body(state.jobs_created))


# Record Count leaves out "associated objects such as ChangeEvent, Feed, History, OwnerSharingRule, and Share objects"
# (below): an object named after another one of the org with one of these suffixes (`AccountShare`, and for a custom
# object `Invoice__Share`).
ASSOCIATED_SUFFIXES = ("ChangeEvent", "Feed", "History", "OwnerSharingRule", "Share")


def associated(name: str, names: set[str]) -> bool:
    """True for an associated object of another object of the org (AccountShare of Account, Invoice__History of
    Invoice__c)."""
    for suffix in ASSOCIATED_SUFFIXES:
        parent = name.removesuffix(suffix)
        if parent != name and (parent in names or (parent.endswith("__") and parent + "c" in names)):
            return True
    return False


async def record_count(request: web.Request) -> web.Response:
    """`GET limits/recordCount?sObjects=A,B` → `{"sObjects": [{"count": n, "name": "Account"}]}`: the records of each
    listed object (every object without the parameter), soft-deleted ones not counted; a listed object the org does
    not have is left out, not an error; associated objects (Share, History, …) are never counted. REST API Developer
    Guide, "Record Count",
    https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/resources_record_count.htm, and "Record
    Count Response Body",
    https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/responses_record_count.htm (available
    from v40.0: every version served here). Salesforce answers from a snapshot refreshed now and then ("may not
    accurately represent the number of records ... at the time of the request"); the simulator counts at the
    request, which a snapshot may equal."""
    state = request.app[STATE]
    listed = request.query.get("sObjects")
    if listed is None:
        stores = list(state.org.stores.values())
    else:
        found = (state.org.lookup(n.strip()) for n in listed.split(",") if n.strip())
        stores = list({id(s): s for s in found if s is not None}.values())
    names = set(state.org.stores)
    stores = [s for s in stores if not associated(s.spec.name, names)]
    loop = asyncio.get_running_loop()
    out = []
    for store in stores:
        deleted = await loop.run_in_executor(None, store.deleted_count)
        out.append({"count": store.present() - deleted, "name": store.spec.name})
    return json_ok({"sObjects": out})


def add_routes(app: web.Application) -> None:
    v = "/services/data/{version:v[0-9]+\\.[0-9]}"
    app.router.add_get("/services/data", versions)
    app.router.add_get("/services/data/", versions)
    app.router.add_get(v, resources)
    app.router.add_get(v + "/", resources)
    app.router.add_get(v + "/sobjects", describe_global)
    app.router.add_get(v + "/sobjects/", describe_global)
    app.router.add_get(v + "/sobjects/{object}/describe", describe)
    app.router.add_get(v + "/sobjects/{object}/describe/", describe)
    app.router.add_get(v + "/sobjects/{object}/{id}", retrieve_record)
    for kind in ("query", "queryAll"):
        app.router.add_get(f"{v}/{kind}", query)
        app.router.add_get(f"{v}/{kind}/", query)
        app.router.add_get(f"{v}/{kind}/{{locator}}", query_more)
    app.router.add_get(v + "/composite/sobjects/{object}", retrieve_collection)
    app.router.add_post(v + "/composite/sobjects/{object}", retrieve_collection)
    app.router.add_get(v + "/limits", limits)
    app.router.add_get(v + "/limits/", limits)
    app.router.add_get(v + "/limits/recordCount", record_count)
    app.router.add_get(v + "/limits/recordCount/", record_count)

