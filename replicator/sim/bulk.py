"""Bulk API 2.0 query HTTP endpoints (docs/bulk-rest-oauth.md §1.1): create, list, info, abort,
delete, results, resultPages.

Result pages are byte ranges of the job's rendered file with the header line prepended
(docs/bulk-rest-oauth.md §1.5, §1.8), streamed in 1 MiB reads; gzip when the request's
Accept-Encoding includes gzip (docs/bulk-rest-oauth.md §1.7).
"""

from __future__ import annotations

import asyncio
import os
import zlib

import orjson
from aiohttp import web

from .errors import json_ok, sf_error
from .jobs import Job, JobError, JobManager, encode_locator
from .state import STATE

JOBS: web.AppKey[JobManager] = web.AppKey("sim_jobs", JobManager)
READ_CHUNK = 1 << 20
# "Up to five URIs" per response: Get Parallel Results for a Query Job,
# https://developer.salesforce.com/docs/atlas.en-us.api_asynch.meta/api_asynch/query_get_parallel_job_results.htm
RESULT_PAGES_PER_CALL = 5
# At most 1,000 jobs per list call: Get Information About All Query Jobs (docs/bulk-rest-oauth.md §1.4)
LIST_PAGE = 1000


def _error(exc: JobError) -> web.Response:
    return sf_error(exc.status, exc.code, exc.message)


def _version(request: web.Request) -> float:
    return float(request.match_info["version"][1:])


def _job(request: web.Request) -> Job:
    return request.app[JOBS].get(request.match_info["job"])


def _completed(request: web.Request, job: Job) -> None:
    # A different API version than the job's returns 409 (docs/bulk-rest-oauth.md §1.5, §1.6).
    if _version(request) != job.api_version:
        raise JobError(409, "API_ERROR", f"Job {job.id} was created with API version {job.api_version}; use the "
                                         "same version to get its results")
    if job.state != "JobComplete":  # 412 JOB_NOT_COMPLETE (docs/bulk-rest-oauth.md §1.5)
        raise JobError(412, "JOB_NOT_COMPLETE", "can only download query results of successfully completed bulk "
                                                f"job with status: JOB_COMPLETE. Current status: {job.wire_state()}")


async def create_job(request: web.Request) -> web.Response:
    if _version(request) < 47.0:
        return sf_error(404, "NOT_FOUND", "The requested resource does not exist")
    try:
        body = orjson.loads(await request.read())
        if not isinstance(body, dict):
            raise TypeError
    except (orjson.JSONDecodeError, TypeError):
        return sf_error(400, "JSON_PARSER_ERROR", "The request body must be a JSON object")
    state = request.app[STATE]
    try:
        job = request.app[JOBS].create(body, _version(request))
    except JobError as exc:
        return _error(exc)
    state.jobs_created += 1
    # The status is not documented (docs/bulk-rest-oauth.md §1.3); clients accept any below 300.
    return json_ok(job.info(False, state.user_id))


async def list_jobs(request: web.Request) -> web.Response:
    state = request.app[STATE]
    jobs = list(request.app[JOBS].jobs.values())
    job_type = request.query.get("jobType")
    if job_type and job_type != "V2Query":
        jobs = []
    start = 0
    locator = request.query.get("queryLocator")
    if locator and locator.isdigit():
        start = int(locator)
    page = jobs[start:start + LIST_PAGE]
    more = start + LIST_PAGE < len(jobs)
    next_url = (f"/services/data/{request.match_info['version']}/jobs/query?queryLocator={start + LIST_PAGE}"
                if more else None)
    return json_ok({"done": not more, "records": [j.info(False, state.user_id) for j in page],
                    "nextRecordsUrl": next_url})


async def job_info(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        job = _job(request)
    except JobError as exc:
        return _error(exc)
    return json_ok(job.info(True, state.user_id, state.faults.failed_job_error_message))


async def patch_job(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        job = _job(request)
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return sf_error(400, "JSON_PARSER_ERROR", "The request body must be a JSON object")
        if not isinstance(body, dict) or body.get("state") != "Aborted":
            raise JobError(400, "INVALIDJOBSTATE", "A query job can only be changed to state Aborted")
        request.app[JOBS].abort(job)
    except JobError as exc:
        return _error(exc)
    return json_ok(job.info(False, state.user_id))  # 200 with the job body (docs/bulk-rest-oauth.md §1.4)


async def delete_job(request: web.Request) -> web.Response:
    try:
        request.app[JOBS].delete(_job(request))
    except JobError as exc:
        return _error(exc)
    return web.Response(status=204)


def _max_records(request: web.Request, default: int) -> int:
    raw = request.query.get("maxRecords")
    if raw is None:
        return default  # omitted: a service default, configurable here (docs/bulk-rest-oauth.md §1.5)
    if not raw.isdigit() or int(raw) < 1:
        raise JobError(400, "INVALIDMAXRECORDS", f"Invalid maxRecords: {raw}")
    return int(raw)


async def results(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    manager = request.app[JOBS]
    try:
        job = _job(request)
        _completed(request, job)
        locator = request.query.get("locator") or None
        size = _max_records(request, state.page_size)
        start, end, next_locator = manager.page_bounds(job, locator, size)
    except JobError as exc:
        return _error(exc)
    rendered = job.rendered
    assert rendered is not None
    job.pages_served += 1
    job.requests_by_locator[locator or ""] += 1
    job.requests_by_offset[str(start)] += 1
    first, last = rendered.offsets[start], rendered.offsets[end]
    gzip = "gzip" in request.headers.get("Accept-Encoding", "").lower()
    response = web.StreamResponse(headers={
        "Content-Type": "text/csv; charset=UTF-8",
        "Sforce-Locator": next_locator,
        "Sforce-NumberOfRecords": str(end - start),
    })
    if gzip:
        response.headers["Content-Encoding"] = "gzip"
        response.enable_chunked_encoding()
    else:
        response.content_length = len(rendered.header) + (last - first)
    await response.prepare(request)
    loop = asyncio.get_running_loop()
    compressor = zlib.compressobj(state.gzip_level, zlib.DEFLATED, 31) if gzip else None
    fd = os.open(rendered.path, os.O_RDONLY)
    try:
        head = rendered.header
        position = first
        while True:
            length = min(READ_CHUNK, last - position)

            def step(position=position, length=length, head=head) -> bytes:
                data = head + (os.pread(fd, length, position) if length > 0 else b"")
                if compressor is None:
                    return data
                out = compressor.compress(data)
                return out + compressor.flush() if position + length >= last else out

            chunk = await loop.run_in_executor(None, step)
            head = b""
            position += length
            if chunk:
                await response.write(chunk)
            if position >= last:
                break
    finally:
        os.close(fd)
    await response.write_eof()
    return response


async def result_pages(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if _version(request) < 58.0:  # available since v58.0 (docs/bulk-rest-oauth.md §1.6)
        return sf_error(404, "NOT_FOUND", "The requested resource does not exist")
    try:
        job = _job(request)
        _completed(request, job)
        size = _max_records(request, state.page_size)
        start = 0
        if request.query.get("locator"):
            start, _, _ = request.app[JOBS].page_bounds(job, request.query["locator"], size)
    except JobError as exc:
        return _error(exc)
    assert job.rendered is not None
    total = job.rendered.count
    base = f"/services/data/{request.match_info['version']}/jobs/query/{job.id}"
    pages = []
    offset = start
    while len(pages) < RESULT_PAGES_PER_CALL and (offset < total or (total == 0 and offset == 0 and not pages)):
        # Every resultUrl carries an explicit locator, the first page's too (`MA` = offset 0).
        pages.append({"resultUrl": f"{base}/results?locator={encode_locator(offset)}&maxRecords={size}"})
        offset += size
    done = offset >= total
    next_url = None if done else f"{base}/resultPages?locator={encode_locator(offset)}&maxRecords={size}"
    return json_ok({"resultPages": pages, "nextRecordsUrl": next_url, "done": done})


def add_routes(app: web.Application) -> None:
    base = "/services/data/{version:v[0-9]+\\.[0-9]}/jobs/query"
    app.router.add_post(base, create_job)
    app.router.add_get(base, list_jobs)
    app.router.add_get(base + "/{job}", job_info)
    app.router.add_patch(base + "/{job}", patch_job)
    app.router.add_delete(base + "/{job}", delete_job)
    app.router.add_get(base + "/{job}/results", results)
    app.router.add_get(base + "/{job}/resultPages", result_pages)
