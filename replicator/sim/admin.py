"""Admin endpoints under /__sim/ (no auth, never faulted): ground truth, counts, fault knobs, jobs, info.

    GET  /__sim/info                      the ready info (same JSON as the ready line)
    GET  /__sim/counts                    {Object: {"total": n, "deleted": d}} (records the org has: none removed)
    GET  /__sim/objects/{Object}/records  NDJSON, every record incl. IsDeleted ones, every non-compound
                                          field; JSON types; datetimes 2024-05-01T12:34:56.000Z
    GET  /__sim/faults                    the knobs (faults.py)
    PUT  /__sim/faults                    merge knobs; {"expire_tokens_now": true} also expires every token;
                                          {"purge_before_now": true} expires every stored event (retention)
    POST /__sim/tokens/expire             expire every access token now -> {"expired": n}
    GET  /__sim/jobs                      [{id, state, object, operation, query, apiVersion, numberRecordsProcessed,
                                            pages_served, results_requests: {locator or "": n},
                                            results_by_offset: {record offset: n}}]
"""

from __future__ import annotations

import asyncio

import orjson
from aiohttp import web

from .bulk import JOBS
from .errors import json_ok
from .state import STATE
from .values import truth_value

TRUTH_CHUNK = 5000  # records generated per executor call while streaming ground truth


async def info(request: web.Request) -> web.Response:
    return json_ok(request.app[STATE].extras["info"])


async def counts(request: web.Request) -> web.Response:
    org = request.app[STATE].org
    loop = asyncio.get_running_loop()
    out = {}
    for name, store in org.stores.items():
        deleted = await loop.run_in_executor(None, store.deleted_count)
        out[name] = {"total": store.present(), "deleted": deleted}
    return json_ok(out)


async def records(request: web.Request) -> web.StreamResponse:
    store = request.app[STATE].org.lookup(request.match_info["object"])
    if store is None:
        return json_ok({"error": "unknown object"}, status=404)
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    loop = asyncio.get_running_loop()
    names, types = store.names, store.types
    total = store.count()

    def chunk(start: int) -> bytes:
        lines = []
        for row in store.rows(start, start + TRUTH_CHUNK):
            record = {n: truth_value(t, v) for n, t, v in zip(names, types, row, strict=True)}
            lines.append(orjson.dumps(record))
        return b"\n".join(lines) + b"\n" if lines else b""

    for start in range(0, total, TRUTH_CHUNK):
        await response.write(await loop.run_in_executor(None, chunk, start))
    await response.write_eof()
    return response


async def get_faults(request: web.Request) -> web.Response:
    return json_ok(request.app[STATE].faults.to_dict())


async def put_faults(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        changes = orjson.loads(await request.read())
        if not isinstance(changes, dict):
            raise ValueError("body must be a JSON object")
        expire = bool(changes.pop("expire_tokens_now", False))
        purge = bool(changes.pop("purge_before_now", False))
        state.faults.update(changes)
    except (orjson.JSONDecodeError, ValueError) as exc:
        return json_ok({"error": str(exc)}, status=400)
    if expire:
        state.tokens.expire_all()
    if state.capture is not None:
        if purge:
            state.capture.bus.purge_now()
        state.capture.bus.notify()  # a lowered retention_seconds takes effect now; streams see new knobs
    return json_ok(state.faults.to_dict())


async def expire_tokens(request: web.Request) -> web.Response:
    return json_ok({"expired": request.app[STATE].tokens.expire_all()})


async def jobs(request: web.Request) -> web.Response:
    out = []
    for job in request.app[JOBS].jobs.values():
        out.append({
            "id": job.id, "state": job.state, "object": job.plan.object_name, "operation": job.operation,
            "query": job.query, "apiVersion": job.api_version,
            "numberRecordsProcessed": job.rendered.count if job.rendered else 0,
            "pages_served": job.pages_served, "results_requests": dict(job.requests_by_locator),
            "results_by_offset": dict(job.requests_by_offset),
        })
    return json_ok(out)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/__sim/info", info)
    app.router.add_get("/__sim/counts", counts)
    app.router.add_get("/__sim/objects/{object}/records", records)
    app.router.add_get("/__sim/faults", get_faults)
    app.router.add_put("/__sim/faults", put_faults)
    app.router.add_post("/__sim/tokens/expire", expire_tokens)
    app.router.add_get("/__sim/jobs", jobs)
