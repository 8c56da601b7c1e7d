"""Bulk API 2.0 query jobs: creation checks, the background lifecycle, and result pages on disk
(docs/bulk-rest-oauth.md §1).

Lifecycle (docs/bulk-rest-oauth.md §1.4): UploadComplete -> InProgress -> JobComplete | Failed |
Aborted. A job is processed by an asyncio task that renders the CSV in a worker thread (render.py), so the event
loop keeps serving.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .faults import Faults
from .ids import make_id
from .plan import Plan, bind
from .render import DELIMITERS, LINE_ENDINGS, Rendered, render_csv
from .soql import SoqlError
from .store import OrgStore

TERMINAL = ("JobComplete", "Failed", "Aborted")
_WIRE_STATE = {"UploadComplete": "UPLOAD_COMPLETE", "InProgress": "IN_PROGRESS", "JobComplete": "JOB_COMPLETE",
               "Failed": "FAILED", "Aborted": "ABORTED"}


class JobError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def encode_locator(offset: int) -> str:
    # From v49.0 locators are opaque strings like `MTAwMDA` (base64 of "10000"); ours encode the offset too
    # (docs/bulk-rest-oauth.md §1.5).
    return base64.b64encode(str(offset).encode()).decode().rstrip("=")


def decode_locator(locator: str) -> int:
    try:
        text = base64.b64decode(locator + "=" * (-len(locator) % 4), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise JobError(400, "INVALIDLOCATOR", f"Invalid locator: {locator}") from None
    if not text.isdigit():
        raise JobError(400, "INVALIDLOCATOR", f"Invalid locator: {locator}")
    return int(text)


def sf_timestamp(moment: float) -> str:
    """Job JSON timestamps: yyyy-MM-ddTHH:mm:ss.SSS+0000 (docs/bulk-rest-oauth.md §1.3)."""
    return dt.datetime.fromtimestamp(moment, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "+0000"


def check_bulk_query(plan: Plan) -> None:
    """What Bulk 2.0 query rejects (docs/bulk-rest-oauth.md §1.8, §1.9). Only the compound-field text
    is documented wire text (FUNCTIONALITY_NOT_ENABLED); the others reuse that form, unverified."""
    q = plan.query

    def reject(what: str) -> SoqlError:
        return SoqlError("FUNCTIONALITY_NOT_ENABLED", f"{what} not supported in Bulk Query")

    for item in q.select:
        if item.kind == "subquery":
            raise reject("Aggregate Relationships (parent-to-child subqueries) are")
        if item.kind == "typeof":
            raise reject("TYPEOF is")
        if item.kind == "function" and item.name == "FIELDS":
            raise reject("FIELDS() is")
        if item.kind == "function":
            raise reject(f"Aggregate function {item.name}() is")
    if q.group_by:
        raise reject("GROUP BY is")
    if q.offset is not None:
        raise reject("OFFSET is")
    if any(c.spec.is_compound for c in plan.columns):
        raise SoqlError("FUNCTIONALITY_NOT_ENABLED", "Selecting compound data not supported in Bulk Query")


@dataclass
class Job:
    id: str
    operation: str
    plan: Plan
    query: str
    api_version: float
    column_delimiter: str
    line_ending: str
    created: float
    fail: bool
    malformed_rows: int
    state: str = "UploadComplete"
    modified: float = 0.0
    processing_ms: int = 0
    rendered: Rendered | None = None
    error_message: str | None = None
    pages_served: int = 0
    requests_by_locator: Counter = field(default_factory=Counter)
    requests_by_offset: Counter = field(default_factory=Counter)
    task: asyncio.Task | None = None

    def info(self, full: bool, user_id: str, error_message: bool = False) -> dict:
        body = {
            "id": self.id, "operation": self.operation, "object": self.plan.object_name,
            "createdById": user_id, "createdDate": sf_timestamp(self.created),
            "systemModstamp": sf_timestamp(self.modified or self.created), "state": self.state,
            "concurrencyMode": "Parallel", "contentType": "CSV", "apiVersion": self.api_version,
            "lineEnding": self.line_ending, "columnDelimiter": self.column_delimiter,
        }
        if full:  # GET job info adds these (docs/bulk-rest-oauth.md §1.3)
            body.update({
                "jobType": "V2Query",
                "numberRecordsProcessed": self.rendered.count if self.rendered else 0,
                "retries": 0, "totalProcessingTime": self.processing_ms,
                # automatic chunking applies to custom objects (docs/bulk-rest-oauth.md §1.9)
                "isPkChunkingSupported": self.plan.store.spec.custom,
            })
            if self.state == "Failed" and error_message and self.error_message:
                body["errorMessage"] = self.error_message
        return body

    def wire_state(self) -> str:
        return _WIRE_STATE[self.state]


class JobManager:
    def __init__(self, org: OrgStore, faults: Faults, directory: str) -> None:
        self.org = org
        self.faults = faults
        self.directory = directory
        self.jobs: dict[str, Job] = {}
        self._counter = 0
        # Rendering is CPU-bound; two threads keep two jobs moving without starving request handling.
        self.executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="sim-render")

    def _now(self) -> float:
        """Wall-clock seconds for job timestamps: whole seconds when timestamp_precision is "s"."""
        now = time.time()
        return float(int(now)) if self.faults.whole_seconds else now

    def create(self, body: dict, api_version: float) -> Job:
        operation = body.get("operation")
        if operation not in ("query", "queryAll"):
            raise JobError(400, "INVALIDJOB", f"Invalid operation: {operation}")
        text = body.get("query")
        if not isinstance(text, str) or not text.strip():
            raise JobError(400, "INVALIDJOB", "A query is required for a query job")
        content = body.get("contentType", "CSV")
        delimiter = body.get("columnDelimiter", "COMMA")
        line_ending = body.get("lineEnding", "LF")
        if content != "CSV":  # only CSV (docs/bulk-rest-oauth.md §1.2)
            raise JobError(400, "INVALIDJOB", f"Invalid contentType: {content}")
        if delimiter not in DELIMITERS:
            raise JobError(400, "INVALIDJOB", f"Invalid columnDelimiter: {delimiter}")
        if line_ending not in LINE_ENDINGS:
            raise JobError(400, "INVALIDJOB", f"Invalid lineEnding: {line_ending}")
        try:
            plan = bind(text, self.org)
            check_bulk_query(plan)
        except SoqlError as exc:
            raise JobError(400, exc.code, exc.message) from None
        self._counter += 1
        job = Job(make_id("750", self._counter, self.org.pod), operation, plan, text, api_version, delimiter, line_ending,
                  self._now(), self.faults.take_failed_job(plan.object_name), 0)
        self.jobs[job.id] = job
        job.task = asyncio.get_running_loop().create_task(self._process(job))
        return job

    async def _process(self, job: Job) -> None:
        while self.faults.hold_jobs and job.state == "UploadComplete":
            await asyncio.sleep(0.01)  # server-side wait while a test holds jobs
        if job.state != "UploadComplete":
            return  # aborted while queued
        job.state, job.modified = "InProgress", self._now()
        started = time.monotonic()
        if job.fail:
            job.state, job.modified = "Failed", self._now()
            job.error_message = "InternalServerError : simulated job failure (fail_jobs)"
            return
        job.malformed_rows = self.faults.take_malformed_rows()  # the next job that renders results
        path = os.path.join(self.directory, f"{job.id}.csv")
        # queryAll also returns deleted records (docs/bulk-rest-oauth.md §1.2)
        include_deleted = job.operation == "queryAll"

        def work() -> Rendered:
            return render_csv(job.plan, include_deleted, path, job.column_delimiter, job.line_ending,
                              job.api_version, job.malformed_rows, cancelled=lambda: job.state == "Aborted")

        try:
            rendered = await asyncio.get_running_loop().run_in_executor(self.executor, work)
        except Exception as exc:  # a render bug must surface as a Failed job, not a hung one
            job.state, job.modified, job.error_message = "Failed", self._now(), f"InternalServerError : {exc}"
            return
        job.processing_ms = int((time.monotonic() - started) * 1000)
        if job.state == "Aborted":
            _remove(path)
            return
        job.rendered = rendered
        job.state, job.modified = "JobComplete", self._now()

    def get(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise JobError(404, "NOT_FOUND", "The requested resource does not exist")
        return job

    def abort(self, job: Job) -> None:
        # Abort only from UploadComplete or InProgress (docs/bulk-rest-oauth.md §1.4).
        if job.state not in ("UploadComplete", "InProgress"):
            raise JobError(400, "INVALIDJOBSTATE", f"Job is already in state {job.state} and cannot be aborted")
        job.state, job.modified = "Aborted", self._now()

    def delete(self, job: Job) -> None:
        # Delete only terminal jobs, else 400 API_ERROR (docs/bulk-rest-oauth.md §1.4).
        if job.state not in TERMINAL:
            raise JobError(400, "API_ERROR", "Error encountered when deleting the job because the job is not "
                                             "terminated")
        del self.jobs[job.id]
        if job.rendered:
            _remove(job.rendered.path)

    def page_bounds(self, job: Job, locator: str | None, max_records: int) -> tuple[int, int, str]:
        """(first record, end record, next locator) of one results page; 'null' after the last
        (docs/bulk-rest-oauth.md §1.5)."""
        assert job.rendered is not None
        total = job.rendered.count
        start = decode_locator(locator) if locator else 0
        if start > total or (start == total and total > 0):
            raise JobError(400, "INVALIDLOCATOR", f"Invalid locator: {locator}")
        end = min(start + max_records, total)
        return start, end, encode_locator(end) if end < total else "null"

    async def close(self) -> None:
        for job in list(self.jobs.values()):
            if job.task and not job.task.done():
                job.state = "Aborted"
                job.task.cancel()
        for job in list(self.jobs.values()):
            if job.task:
                try:
                    await job.task
                except (asyncio.CancelledError, Exception):  # noqa: S110 - shutting down
                    pass
            if job.rendered:
                _remove(job.rendered.path)
        self.executor.shutdown(wait=True, cancel_futures=True)


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
